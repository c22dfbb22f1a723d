"""The commit-reveal hash rules, in one place: the silo agent builds commitments here, the contract checks them here."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from bcfl_common.canonical import canonical_json, sha256_hex

SALT_BYTES = 32  # 64 hex digits; the contract accepts 32 to 128 hex digits (at least 128 bits)
# The fields of a vote finding (bcfl_common.records.Finding).
FINDING_FIELDS = ("score_micro", "norm_milli", "similarity_micro", "problem")


def new_salt() -> str:
    """A fresh random salt (for silos; the contract itself never draws randomness)."""
    return secrets.token_hex(SALT_BYTES)


def update_commitment(
    *,
    trial_id: str,
    round: int,
    msp_id: str,
    sha256: str,
    sample_weight: int,
    salt: str,
) -> str:
    """sha256 of the canonical JSON of the committed part of a reveal, bound to the committing org.

    ``sha256`` fixes the update's bytes (the content id is only where to fetch them, so it is
    revealed but not committed) and ``sample_weight`` its weight; epsilon is not the hospital's
    to say (the contract charges it from the trial's DP schedule). Binding ``msp_id`` stops a
    hospital from revealing a value another hospital committed to; binding ``trial_id`` and
    ``round`` stops replaying a reveal from another round.
    """
    return sha256_hex(
        canonical_json(
            {
                "trial_id": trial_id,
                "round": round,
                "msp_id": msp_id,
                "sha256": sha256,
                "sample_weight": sample_weight,
                "salt": salt,
            }
        )
    )


def _hashed(finding: Mapping[str, Any]) -> dict[str, Any]:
    fields = {name: finding.get(name) for name in FINDING_FIELDS}
    if finding.get("score_se_micro") is not None:  # absent (or null) hashes as before it existed
        fields["score_se_micro"] = finding["score_se_micro"]
    return fields


def votes_commitment(
    *, trial_id: str, round: int, msp_id: str, findings: Mapping[str, Mapping[str, Any]], salt: str
) -> str:
    """sha256 of the canonical JSON of a voter's findings ({peer msp id: Finding}).

    Each finding is hashed with exactly its four fields (``score_micro``, ``norm_milli``,
    ``similarity_micro``, ``problem``; an absent one counts as null), so a silo that leaves out
    a null field commits to the same bytes the contract recomputes, plus ``score_se_micro`` when
    it is not null (so votes committed before that field existed still verify).
    """
    return sha256_hex(
        canonical_json(
            {
                "trial_id": trial_id,
                "round": round,
                "msp_id": msp_id,
                "findings": {peer: _hashed(finding) for peer, finding in findings.items()},
                "salt": salt,
            }
        )
    )
