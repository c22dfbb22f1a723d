"""A coordinator driver for the silo agent tests: the coordinator's and admin's ledger steps by hand.

The coordinator service is written elsewhere; ``CoordinatorDriver`` does its ledger steps
directly (create the trial, enrol the hospitals after each registered its dataset and key with
``silo_agent.enrolment.enrol``, start the trial with the DP schedule, open and close phases,
aggregate with privacy.he).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from bcfl_common.errors import ContractError
from model_registry.artifact import initial_model
from model_registry.training_settings import training_inputs
from privacy import dp as privacy_dp
from privacy import he
from silo_agent.agent import SiloAgent
from silo_agent.config import SiloConfig
from silo_agent.enrolment import enrol

HOSPITALS = ("hospital1", "hospital2", "hospital3", "hospital4")


def silo_config(
    tmp_path: Path,
    consortium: Any,
    ledger_url: str,
    store_url: str,
    name: str,
    data: dict[str, Path],
    **extra: Any,
) -> SiloConfig:
    return SiloConfig(
        identity=consortium.member_dir(name),
        state_dir=tmp_path / "silos" / name,
        ledger_url=ledger_url,
        store_url=store_url,
        data_path=data["train"],
        test_path=data["test"],
        **extra,
    )


@dataclass
class CoordinatorDriver:
    """The coordinator's and admin's ledger steps, done by hand."""

    net: Any
    store: Any
    config_for: Callable[[str], SiloConfig]
    trial_id: str = "trial-1"
    log: list[str] = field(default_factory=list)

    @property
    def admin(self) -> Any:
        return self.net.client("admin")

    @property
    def coordinator(self) -> Any:
        return self.net.client("coordinator")

    def create_trial(
        self,
        dataset: Any,
        *,
        rounds: int = 2,
        dp: dict[str, Any] | None = None,
        hospitals: tuple[str, ...] = HOSPITALS,
        start: bool = True,
        **overrides: Any,
    ) -> dict[str, Any]:
        model = overrides.pop("model", dataset.model)
        data = initial_model(model, dataset.schema, seed=1)
        stored = self.store.put(data)
        args = {
            "trial_id": self.trial_id,
            "task": "binary_classification",
            "data_schema": dataset.schema,
            "model": model,
            "initial_model": {"content_id": stored.content_id, "sha256": stored.sha256},
            "rounds": rounds,
            "min_silos": 2,
            "dp": dataset.dp if dp is None else dp,
            "evaluation": dataset.evaluation,
            **overrides,
        }
        self.admin.submit("create_trial", args)
        self.admin.submit("open_enrolment", {"trial_id": self.trial_id})
        for name in hospitals:
            self.enrol(name)
        return self.start_trial() if start else self.trial()

    def enrol(self, name: str, **options: Any) -> dict[str, Any]:
        """The hospital registers its dataset and key (its own transactions), the admin enrols it."""
        identity = self.net.consortium.identity(name)
        enrol(
            self.net.client(name).ledger, identity, self.config_for(name), self.trial_id, **options
        )
        pem = identity.encryption_public_key_pem()
        raw = serialization.load_pem_public_key(pem).public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return self.admin.submit(
            "enrol_hospital",
            {
                "trial_id": self.trial_id,
                "msp_id": identity.msp_id,
                "encryption_public_key": base64.b64encode(raw).decode(),
            },
        )

    def dp_schedule(self) -> dict[str, Any] | None:
        """What the coordinator records at start: every enrolled hospital's DP schedule entry."""
        trial = self.trial()
        if not trial["dp"].get("enabled", True):
            return None
        records = {
            e["msp_id"]: e["training_records"]
            for e in self.admin.evaluate("get_enrolments", {"trial_id": self.trial_id})
            if e["status"] == "enrolled"
        }
        return privacy_dp.dp_schedule(trial, records, training_inputs(trial))

    def start_trial(self, dp_schedule: dict[str, Any] | None = None) -> dict[str, Any]:
        schedule = self.dp_schedule() if dp_schedule is None else dp_schedule
        args: dict[str, Any] = {"trial_id": self.trial_id}
        if schedule is not None:
            args["dp_schedule"] = schedule
        return self.admin.submit("start_trial", args)

    def trial(self) -> dict[str, Any]:
        return self.coordinator.evaluate("get_trial", {"trial_id": self.trial_id})

    def round(self) -> dict[str, Any]:
        return self.coordinator.evaluate("get_round", {"trial_id": self.trial_id})

    def advance(self) -> bool:
        """Do the coordinator's next step if it is due; True when something changed."""
        trial = self.trial()
        if trial["state"] != "RUNNING":
            return False
        current = trial["current"]
        if current is None or self.round()["phase"] in ("FINALIZED", "HALTED"):
            if trial["head"]["round"] == trial["final_round"]:
                self.admin.submit("complete_trial", {"trial_id": self.trial_id})
                self.log.append("complete")
                return True
            try:
                self.coordinator.submit("open_round", {"trial_id": self.trial_id})
            except ContractError as exc:
                if exc.code == "WRONG_STATE":  # no keys yet
                    return False
                raise
            self.log.append("open")
            return True
        rnd = self.round()
        step = {
            "SUBMIT": "close_update_commits",
            "REVEAL": "close_update_reveals",
            "VOTE_COMMIT": "close_vote_commits",
            "VOTE_REVEAL": "close_voting",
        }.get(rnd["phase"])
        args = {"trial_id": self.trial_id, "round": rnd["round"]}
        if step is not None:
            try:
                self.coordinator.submit(step, args)
            except ContractError as exc:
                if exc.code == "TOO_EARLY":
                    return False
                raise
            self.log.append(step)
            return True
        if rnd["phase"] == "AGGREGATE":
            self.record_aggregate(rnd)
            self.log.append("record_aggregate")
            return True
        return False

    def record_aggregate(self, rnd: dict[str, Any]) -> None:
        keys = self.coordinator.evaluate("get_trial_keys", {"trial_id": self.trial_id})
        public = he.load_public_context(
            self.store.get(keys["public_context"]["content_id"]), he.DEFAULT_PRESET
        )
        submissions = {
            s["msp_id"]: s
            for s in self.coordinator.evaluate(
                "get_submissions", {"trial_id": self.trial_id, "round": rnd["round"]}
            )
        }
        acceptance = self.coordinator.evaluate(
            "get_acceptance", {"trial_id": self.trial_id, "round": rnd["round"]}
        )
        order = sorted(rnd["accepted"], key=lambda m: submissions[m]["sha256"])
        blobs = [self.store.get(submissions[m]["content_id"]) for m in order]
        # Each update times the weight the contract decided (capped), summed.
        weights = [acceptance["candidates"][m]["weight"] for m in order]
        aggregate = he.aggregate(public, blobs, weights=weights)
        stored = self.store.put(aggregate)
        self.coordinator.submit(
            "record_aggregate",
            {
                "trial_id": self.trial_id,
                "round": rnd["round"],
                "content_id": stored.content_id,
                "sha256": stored.sha256,
                "update_sha256s": sorted(submissions[m]["sha256"] for m in rnd["accepted"]),
            },
        )


def drive(
    driver: CoordinatorDriver,
    agents: list[SiloAgent],
    *,
    max_steps: int = 200,
    until: Callable[[], bool] | None = None,
) -> None:
    """Alternate silo ticks and coordinator steps until the trial is over (or ``until``)."""
    for _ in range(max_steps):
        for agent in agents:
            agent.tick()
        if until is not None and until():
            return
        if driver.trial()["state"] != "RUNNING":
            return
        driver.advance()
    raise AssertionError(f"trial did not finish in {max_steps} steps: {driver.log[-10:]}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
