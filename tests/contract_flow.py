"""A driver that walks trials and rounds through the contract on any network with named clients."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from bcfl_common.errors import ContractError
from chaincode.commitments import update_commitment, votes_commitment

MEMBERS = ("admin", "coordinator", "auditor", "hospital1", "hospital2", "hospital3", "hospital4")
HOSPITALS = ("hospital1", "hospital2", "hospital3", "hospital4")


def digest(*parts: object) -> str:
    """A stand-in sha256 (tests never need the bytes behind it)."""
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()


def x25519_public_key(pem: bool = False) -> str:
    key = x25519.X25519PrivateKey.generate().public_key()
    if pem:
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
    return base64.b64encode(
        key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()


def finding(
    score_micro: int = 20_000,
    *,
    norm_milli: int | None = 1000,
    similarity_micro: int | None = 0,
    problem: str | None = None,
    score_se_micro: int | None = None,
) -> dict[str, Any]:
    """A vote finding; by default a harmless one with this score (norm 1.0, nothing similar,
    no standard error). With a ``problem`` the norm and similarity are null, as the contract
    requires."""
    if problem is not None:
        norm_milli = similarity_micro = None
    return {
        "score_micro": score_micro,
        "score_se_micro": score_se_micro,
        "norm_milli": norm_milli,
        "similarity_micro": similarity_micro,
        "problem": problem,
    }


def as_finding(value: int | dict[str, Any]) -> dict[str, Any]:
    """A bare int is a score (``finding(score)``); a dict is a finding as given."""
    return finding(value) if isinstance(value, int) else value


def refused(code: str, call: Any, *args: Any, **kwargs: Any) -> ContractError:
    """Run ``call(*args, **kwargs)`` and return the ContractError, which must carry ``code``."""
    with pytest.raises(ContractError) as info:
        call(*args, **kwargs)
    assert info.value.code == code, f"expected {code}, got {info.value.code}: {info.value.message}"
    return info.value


# Every hospital's default dataset: records, and how many of them it trains on in a trial.
DATASET_RECORDS = 5000
TRAINING_RECORDS = 1000


@dataclass(frozen=True)
class Update:
    content_id: str
    sha256: str
    sample_weight: int
    salt: str


class Flow:
    """Drives one trial: every helper is one or a few plain contract calls, in protocol order."""

    def __init__(self, net: Any, trial_id: str = "trial-1"):
        self.net = net
        self.trial_id = trial_id
        self.msp = {name: net.client(name).evaluate("whoami", {})["msp_id"] for name in MEMBERS}
        self.members: list[str] = []
        self.registered: set[tuple[str, str]] = set()  # (member name, dataset id) registered
        self.round = 0
        self.attempt = 0
        self.base = ""

    def client(self, name: str) -> Any:
        return self.net.client(name)

    @property
    def admin(self) -> Any:
        return self.client("admin")

    @property
    def coordinator(self) -> Any:
        return self.client("coordinator")

    # -- trial ------------------------------------------------------------------------------
    def trial_args(self, **overrides: Any) -> dict[str, Any]:
        args: dict[str, Any] = {
            "trial_id": self.trial_id,
            "task": "binary_classification",
            "data_schema": {"columns": {"age": "int", "sex": "category", "label": "bool"}},
            "model": {"name": "logreg", "hyperparameters": {"learning_rate": 0.05, "epochs": 1}},
            "initial_model": {
                "content_id": "cid-initial",
                "sha256": digest("initial", self.trial_id),
            },
            "rounds": 2,
            "min_silos": 2,
            "dp": {"target_epsilon_micro": 3_000_000},
            "evaluation": {
                "acceptance_threshold_micro": 10_000,
                "min_voters": 2,
                "reward_per_round": 1000,
            },
        }
        args.update(overrides)
        return args

    def create(self, **overrides: Any) -> dict[str, Any]:
        return self.admin.submit("create_trial", self.trial_args(**overrides))

    def dataset_id(self) -> str:
        """Each hospital's default dataset for this trial (one per trial, so budgets stay apart)."""
        return f"data-{self.trial_id}"

    def register_dataset(
        self,
        name: str,
        dataset_id: str | None = None,
        *,
        records: int = DATASET_RECORDS,
        lifetime_epsilon_micro: int = 10**9,
    ) -> dict[str, Any]:
        dataset_id = dataset_id or self.dataset_id()
        record = self.client(name).submit(
            "register_dataset",
            {
                "dataset_id": dataset_id,
                "commitment": digest("dataset", name, dataset_id),
                "records": records,
                "lifetime_epsilon_micro": lifetime_epsilon_micro,
            },
        )
        self.registered.add((name, dataset_id))
        return record

    def register_key(
        self,
        name: str,
        key: str | None = None,
        *,
        dataset_id: str | None = None,
        training_records: int = TRAINING_RECORDS,
    ) -> str:
        """Register ``name``'s key for the trial on ``dataset_id`` (its default dataset, which
        is registered first if it was not yet)."""
        key = key or x25519_public_key()
        if dataset_id is None:
            dataset_id = self.dataset_id()
            if (name, dataset_id) not in self.registered:
                self.register_dataset(name, dataset_id)
        self.client(name).submit(
            "register_encryption_key",
            {
                "trial_id": self.trial_id,
                "encryption_public_key": key,
                "dataset_id": dataset_id,
                "training_records": training_records,
            },
        )
        return key

    def enrol(self, name: str, **register: Any) -> dict[str, Any]:
        key = self.register_key(name, **register)
        args = {"trial_id": self.trial_id, "msp_id": self.msp[name], "encryption_public_key": key}
        return self.admin.submit("enrol_hospital", args)

    def enrolling(self, hospitals: tuple[str, ...] = HOSPITALS[:3], **overrides: Any) -> None:
        self.create(**overrides)
        self.admin.submit("open_enrolment", {"trial_id": self.trial_id})
        for name in hospitals:
            self.enrol(name)
        self.members = list(hospitals)

    def dp_schedule(self, epsilons: list[int] | None = None) -> dict[str, Any]:
        """A well-formed schedule for the enrolled hospitals: the contract checks shapes and
        bounds only, so these are made-up monotone epsilons reaching the target (or ``epsilons``)."""
        trial = self.trial()
        rounds, target = trial["rounds"], trial["dp"]["target_epsilon_micro"]
        cumulative = epsilons or [max(1, target * k // rounds) for k in range(1, rounds + 1)]
        enrolled = [
            e
            for e in self.admin.evaluate("get_enrolments", {"trial_id": self.trial_id})
            if e["status"] == "enrolled"
        ]
        return {
            e["msp_id"]: {
                "training_records": e["training_records"],
                "batches_per_epoch": -(-e["training_records"] // 64),
                "steps_per_round": -(-e["training_records"] // 64),
                "noise_multiplier_micro": 1_100_000,
                "epsilon_micro": list(cumulative),
                "max_update_norm_milli": 5000,
            }
            for e in enrolled
        }

    def start_args(self, **extra: Any) -> dict[str, Any]:
        """start_trial's arguments: with DP on, the schedule of ``dp_schedule()``."""
        args: dict[str, Any] = {"trial_id": self.trial_id}
        if self.trial()["dp"]["enabled"]:
            args["dp_schedule"] = self.dp_schedule()
        return {**args, **extra}

    def start(self, **extra: Any) -> dict[str, Any]:
        return self.admin.submit("start_trial", self.start_args(**extra))

    def running(
        self, hospitals: tuple[str, ...] = HOSPITALS[:3], keys: bool = True, **overrides: Any
    ) -> None:
        self.enrolling(hospitals, **overrides)
        self.start()
        if keys:
            self.record_keys(hospitals[0])

    def keys_args(self, holders: list[str] | None = None) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "public_context": {
                "content_id": "cid-context",
                "sha256": digest("context", self.trial_id),
            },
            "envelopes": {
                self.msp[h]: {"content_id": f"cid-envelope-{h}", "sha256": digest("envelope", h)}
                for h in (self.members if holders is None else holders)
            },
        }

    def record_keys(self, by: str, holders: list[str] | None = None) -> dict[str, Any]:
        return self.client(by).submit("record_trial_keys", self.keys_args(holders))

    def trial(self) -> dict[str, Any]:
        return self.admin.evaluate("get_trial", {"trial_id": self.trial_id})

    # -- round ------------------------------------------------------------------------------
    def open_round(self, by: str = "coordinator") -> dict[str, Any]:
        rnd = self.client(by).submit("open_round", {"trial_id": self.trial_id})
        self.round, self.attempt = rnd["round"], rnd["attempt"]
        self.base = rnd["base"]["model"]["sha256"]
        return rnd

    def get_round(self) -> dict[str, Any]:
        return self.admin.evaluate("get_round", {"trial_id": self.trial_id, "round": self.round})

    def at(self, **extra: Any) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "round": self.round, **extra}

    def close(self, step: str, by: str = "coordinator") -> dict[str, Any]:
        return self.client(by).submit(step, self.at())

    def make_update(self, name: str, *, weight: int = 100, tag: str = "") -> Update:
        where = (self.trial_id, self.round, self.attempt, name, tag)
        return Update(
            f"cid-update-{name}{tag}", digest("update", *where), weight, digest("salt", *where)
        )

    def commitment(self, name: str, u: Update, *, as_msp: str | None = None) -> str:
        return update_commitment(
            trial_id=self.trial_id,
            round=self.round,
            msp_id=as_msp or self.msp[name],
            sha256=u.sha256,
            sample_weight=u.sample_weight,
            salt=u.salt,
        )

    def commit_update(
        self, name: str, u: Update | None = None, *, base: str | None = None, **extra: Any
    ) -> Update:
        u = u or self.make_update(name)
        args = self.at(
            base_model_sha256=base or self.base, commitment=self.commitment(name, u), **extra
        )
        self.client(name).submit("commit_update", args)
        return u

    def reveal_args(self, u: Update, **extra: Any) -> dict[str, Any]:
        return self.at(
            content_id=u.content_id,
            sha256=u.sha256,
            sample_weight=u.sample_weight,
            salt=u.salt,
            **extra,
        )

    def reveal_update(self, name: str, u: Update, **extra: Any) -> dict[str, Any]:
        return self.client(name).submit("reveal_update", self.reveal_args(u, **extra))

    def submit_updates(self, names: list[str], **update_kw: Any) -> dict[str, Update]:
        updates = {n: self.commit_update(n, self.make_update(n, **update_kw)) for n in names}
        self.close("close_update_commits")
        for n in names:
            self.reveal_update(n, updates[n])
        self.close("close_update_reveals")
        return updates

    def votes_commitment(self, name: str, findings: dict[str, Any], salt: str) -> str:
        return votes_commitment(
            trial_id=self.trial_id,
            round=self.round,
            msp_id=self.msp[name],
            findings=findings,
            salt=salt,
        )

    def commit_votes(
        self, name: str, findings: dict[str, int | dict[str, Any]]
    ) -> tuple[dict[str, Any], str]:
        """``findings`` by member name (a bare int is just a score: ``finding(score)``);
        returns them by MSP id with the salt, ready to reveal."""
        by_msp = {self.msp[peer]: as_finding(value) for peer, value in findings.items()}
        salt = digest("vote-salt", self.trial_id, self.round, self.attempt, name)
        self.client(name).submit(
            "commit_votes", self.at(commitment=self.votes_commitment(name, by_msp, salt))
        )
        return by_msp, salt

    def reveal_votes(self, name: str, by_msp: dict[str, Any], salt: str) -> dict[str, Any]:
        return self.client(name).submit("reveal_votes", self.at(findings=by_msp, salt=salt))

    def scores(
        self, voters: list[str], candidates: list[str], score: int = 20_000
    ) -> dict[str, dict[str, int | dict[str, Any]]]:
        """The same score from every voter for every peer candidate (harmless findings)."""
        return {v: {c: score for c in candidates if c != v} for v in voters}

    def vote(
        self, by_voter: dict[str, dict[str, int | dict[str, Any]]], *, wait: float = 0
    ) -> dict[str, Any]:
        """Commit, reveal and close voting (findings or bare scores, by member name); returns
        the acceptance record. ``wait``: seconds the clock moves before the vote commits close
        (past the deadline, when an enrolled voter stays silent)."""
        committed = {v: self.commit_votes(v, s) for v, s in by_voter.items()}
        if wait:
            self.net.advance_time(wait)
        self.close("close_vote_commits")
        for v, (by_msp, salt) in committed.items():
            self.reveal_votes(v, by_msp, salt)
        return self.close("close_voting")

    def aggregate(self, update_sha256s: list[str] | None = None) -> dict[str, Any]:
        shas = self.get_round()["accepted_sha256s"] if update_sha256s is None else update_sha256s
        args = self.at(
            content_id=f"cid-aggregate-{self.round}-{self.attempt}",
            sha256=digest("aggregate", self.trial_id, self.round, self.attempt),
            update_sha256s=shas,
        )
        return self.coordinator.submit("record_aggregate", args)

    def model_sha(self) -> str:
        return digest("model", self.trial_id, self.round, self.attempt)

    def attest(self, name: str, sha: str | None = None, **extra: Any) -> dict[str, Any]:
        return self.client(name).submit(
            "attest_model", self.at(sha256=sha or self.model_sha(), **extra)
        )

    def full_round(self, names: list[str] | None = None) -> dict[str, Any]:
        """One round from open to FINALIZED with every named hospital submitting, voting and attesting."""
        names = names or self.members
        self.open_round()
        self.submit_updates(names)
        self.vote(self.scores(names, names))
        self.aggregate()
        result: dict[str, Any] = {}
        for n in names:
            result = (
                self.attest(n, content_id=f"cid-model-{self.round}")
                if n == names[0]
                else self.attest(n)
            )
            if result["round"]["phase"] == "FINALIZED":
                break
        assert result["round"]["phase"] == "FINALIZED", result["round"]
        return result

    def to_attest(self, names: list[str] | None = None) -> None:
        """Open a round and run it up to the ATTEST phase."""
        names = names or self.members
        self.open_round()
        self.submit_updates(names)
        self.vote(self.scores(names, names))
        self.aggregate()
