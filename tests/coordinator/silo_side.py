"""The hospitals' side of a round, driven straight on the ledger with real CKKS updates (for the scheduler tests)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from contract_flow import finding as contract_finding
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from chaincode.commitments import new_salt, update_commitment, votes_commitment
from consortium.storage import ArtifactStore
from privacy import he
from privacy.he import keyholder

N_PARAMS = 10
TRAINING_RECORDS = 100


def register_for_trial(
    ledger: Any,
    identity: Any,
    trial_id: str,
    *,
    dataset_id: str = "records-2026",
    training_records: int = TRAINING_RECORDS,
    records: int = 1000,
    lifetime_epsilon_micro: int = 10_000_000,
) -> str:
    """What a hospital does on the ledger before it is enrolled: register its dataset (once)
    and its encryption key for the trial on that dataset. Returns the key (base64 raw)."""
    mine = {d["dataset_id"] for d in ledger.evaluate("get_datasets", {"msp_id": identity.msp_id})}
    if dataset_id not in mine:
        ledger.submit(
            "register_dataset",
            {
                "dataset_id": dataset_id,
                "commitment": hashlib.sha256(
                    f"{identity.msp_id}/{dataset_id}".encode()
                ).hexdigest(),
                "records": records,
                "lifetime_epsilon_micro": lifetime_epsilon_micro,
            },
        )
    key = serialization.load_pem_public_key(identity.encryption_public_key_pem())
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    encoded = base64.b64encode(raw).decode()
    ledger.submit(
        "register_encryption_key",
        {
            "trial_id": trial_id,
            "encryption_public_key": encoded,
            "dataset_id": dataset_id,
            "training_records": training_records,
        },
    )
    return encoded


def finding(score_micro: int = 20_000, **fields: Any) -> dict[str, Any]:
    """A voter's finding on one peer's update (``contract_flow.finding``): by default harmless,
    with norm 0.3, within every schedule bound here."""
    return contract_finding(score_micro, **{"norm_milli": 300, **fields})


@dataclass
class Submitted:
    content_id: str
    sha256: str
    sample_weight: int
    salt: str
    delta: np.ndarray


class Hospitals:
    """Each hospital holds the trial's secret context (as if opened from its key envelope)."""

    def __init__(
        self, net: Any, store: ArtifactStore, trial_id: str, names: list[str], secret: he.HEContext
    ):
        self.net = net
        self.store = store
        self.trial_id = trial_id
        self.names = names
        self.secret = secret
        self.msp = {name: net.client(name).evaluate("whoami", {})["msp_id"] for name in names}
        self.updates: dict[str, Submitted] = {}
        self.votes: dict[str, tuple[dict[str, dict[str, Any]], str]] = {}

    def client(self, name: str) -> Any:
        return self.net.client(name)

    def round(self) -> dict[str, Any]:
        return self.client(self.names[0]).evaluate("get_round", {"trial_id": self.trial_id})

    def record_keys(self, by: str) -> dict[str, Any]:
        """``by`` made the trial's context: public context to the store, one sealed envelope per hospital."""
        public = self.store.put(self.secret.public_bytes())
        envelopes = {}
        for record in self.client(by).evaluate("get_enrolments", {"trial_id": self.trial_id}):
            if record["status"] != "enrolled":
                continue
            recipient_key = X25519PublicKey.from_public_bytes(
                base64.b64decode(record["encryption_public_key"])
            )
            sealed = keyholder.seal_envelope(
                self.secret.secret_bytes(),
                recipient_key,
                trial_id=self.trial_id,
                recipient=record["msp_id"],
            )
            stored = self.store.put(sealed)
            envelopes[record["msp_id"]] = {"content_id": stored.content_id, "sha256": stored.sha256}
        return self.client(by).submit(
            "record_trial_keys",
            {
                "trial_id": self.trial_id,
                "public_context": {"content_id": public.content_id, "sha256": public.sha256},
                "envelopes": envelopes,
            },
        )

    def commit(
        self, name: str, *, weight: int = 10, seed: int = 0, payload: bytes | None = None
    ) -> Submitted:
        rnd = self.round()
        delta = np.random.default_rng(
            [seed, rnd["round"], int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)]
        ).normal(0, 0.1, N_PARAMS)
        data = (
            payload
            if payload is not None
            else keyholder.encrypt_update(self.secret, delta)  # the aggregator applies weights
        )
        stored = self.store.put(data)
        update = Submitted(stored.content_id, stored.sha256, weight, new_salt(), delta)
        commitment = update_commitment(
            trial_id=self.trial_id,
            round=rnd["round"],
            msp_id=self.msp[name],
            sha256=update.sha256,
            sample_weight=weight,
            salt=update.salt,
        )
        self.client(name).submit(
            "commit_update",
            {
                "trial_id": self.trial_id,
                "round": rnd["round"],
                "base_model_sha256": rnd["base"]["model"]["sha256"],
                "commitment": commitment,
            },
        )
        self.updates[name] = update
        return update

    def reveal(self, name: str) -> None:
        u = self.updates[name]
        self.client(name).submit(
            "reveal_update",
            {
                "trial_id": self.trial_id,
                "round": self.round()["round"],
                "content_id": u.content_id,
                "sha256": u.sha256,
                "sample_weight": u.sample_weight,
                "salt": u.salt,
            },
        )

    def commit_votes(
        self, name: str, score: int = 20_000, findings: dict[str, dict[str, Any]] | None = None
    ) -> None:
        """Commit ``findings`` (peer msp id -> Finding), by default a harmless finding with
        ``score`` for every peer candidate."""
        rnd = self.round()
        if findings is None:
            findings = {m: finding(score) for m in rnd["candidates"] if m != self.msp[name]}
        salt = new_salt()
        commitment = votes_commitment(
            trial_id=self.trial_id,
            round=rnd["round"],
            msp_id=self.msp[name],
            findings=findings,
            salt=salt,
        )
        self.client(name).submit(
            "commit_votes",
            {"trial_id": self.trial_id, "round": rnd["round"], "commitment": commitment},
        )
        self.votes[name] = (findings, salt)

    def reveal_votes(self, name: str) -> None:
        findings, salt = self.votes[name]
        self.client(name).submit(
            "reveal_votes",
            {
                "trial_id": self.trial_id,
                "round": self.round()["round"],
                "findings": findings,
                "salt": salt,
            },
        )

    def decrypt_aggregate(self) -> np.ndarray:
        rnd = self.round()
        data = self.store.get(rnd["aggregate"]["content_id"])
        assert hashlib.sha256(data).hexdigest() == rnd["aggregate"]["sha256"]
        return keyholder.decrypt(
            self.secret, data, total_weight=float(rnd["aggregate"]["total_weight"])
        )

    def attest(self, name: str, sha256: str | None = None) -> dict[str, Any]:
        rnd = self.round()
        # A real silo applies the decrypted aggregate to its base model; any agreed hash will do here.
        sha256 = (
            sha256
            or hashlib.sha256(
                f"model/{rnd['round']}/{rnd['aggregate']['sha256']}".encode()
            ).hexdigest()
        )
        return self.client(name).submit(
            "attest_model", {"trial_id": self.trial_id, "round": rnd["round"], "sha256": sha256}
        )
