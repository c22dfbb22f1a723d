"""What a silo agent does and keeps per trial: its reported steps and per-trial context."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bcfl_common.errors import PrivacyError
from privacy import he
from privacy.he import keyholder
from silo_agent.data import EncodedData, LocalSplit


@dataclass(frozen=True)
class Step:
    """Something the agent did or noticed (what `bcfl silo run` prints)."""

    trial_id: str
    action: str
    detail: str = ""
    round: int | None = None
    attempt: int | None = None
    level: str = "info"  # info | warning | error

    def __str__(self) -> str:
        where = f"{self.trial_id}" + (
            f" r{self.round}.{self.attempt}" if self.round is not None else ""
        )
        return f"[{where}] {self.action}" + (f": {self.detail}" if self.detail else "")


def he_preset_name(trial: dict[str, Any]) -> str:
    """The privacy.he preset of a trial (refusing HE-off trials: no plaintext update kind exists)."""
    record = trial.get("he") or {}
    if not record.get("enabled", True):
        raise PrivacyError(
            f"trial {trial['trial_id']!r}: he.enabled is false; this silo agent sends updates only "
            "encrypted (privacy.he has no plaintext update kind), expected he.enabled = true",
            code="HE_REQUIRED",
            detail={"trial_id": trial["trial_id"], "field": "he.enabled"},
        )
    name = record.get("preset") or he.DEFAULT_PRESET
    return he.get_preset(name).name


def release_rng(secret_context: bytes, trial_id: str, aggregate_sha256: str) -> np.random.Generator:
    """The release noise generator: the same on every key holder, unknown to everyone else.

    Seeded by an HMAC keyed with the trial's secret context, so every silo floods and rounds the
    aggregate identically (equal attestations) while the coordinator, who saw the ciphertexts,
    cannot reproduce (and subtract) the flooding noise.
    """
    digest = hmac.new(
        secret_context, f"bcfl/release/1/{trial_id}/{aggregate_sha256}".encode(), hashlib.sha256
    ).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


@dataclass
class TrialContext:
    """One followed trial: its record, preset, opened keys and local data (cached per agent)."""

    trial: dict[str, Any]
    preset: str
    secret: keyholder.SecretContext | None = None
    secret_bytes: bytes | None = None
    split: LocalSplit | None = None
    test: EncodedData | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def all_done(trials: list[dict[str, Any]]) -> bool:
    return bool(trials) and all(t["state"] in ("COMPLETED", "HALTED") for t in trials)
