"""The protocol's vocabulary: roles, organisation kinds, trial states, round phases, units."""

from __future__ import annotations

import re
from typing import Final, Literal

Role = Literal["admin", "coordinator", "silo", "auditor"]
OrganisationKind = Literal["operator", "hospital", "auditor"]
TrialState = Literal["DRAFT", "ENROLLING", "RUNNING", "COMPLETED", "HALTED"]
Phase = Literal[
    "SUBMIT", "REVEAL", "VOTE_COMMIT", "VOTE_REVEAL", "AGGREGATE", "ATTEST", "FINALIZED", "HALTED"
]

ROLES: Final = ("admin", "coordinator", "silo", "auditor")
ORGANISATION_KINDS: Final = ("operator", "hospital", "auditor")
# Which bcfl roles a certificate may hold from each kind of organisation.
ROLES_BY_KIND: Final[dict[str, tuple[str, ...]]] = {
    "operator": ("admin", "coordinator"),
    "hospital": ("silo",),
    "auditor": ("auditor",),
}

TRIAL_STATES: Final = ("DRAFT", "ENROLLING", "RUNNING", "COMPLETED", "HALTED")
# A round's phases in order; a round ends FINALIZED or HALTED.
PHASES: Final = (
    "SUBMIT",
    "REVEAL",
    "VOTE_COMMIT",
    "VOTE_REVEAL",
    "AGGREGATE",
    "ATTEST",
    "FINALIZED",
)
DONE_PHASES: Final = ("FINALIZED", "HALTED")
# The trial.phase_seconds entries (and round.deadlines keys): one per phase with a deadline.
PhaseDuration = Literal["submit", "reveal", "vote_commit", "vote_reveal"]
# Which trial.phase_seconds entry gives the deadline of a phase that has one.
PHASE_DURATION: Final[dict[str, PhaseDuration]] = {
    "SUBMIT": "submit",
    "REVEAL": "reveal",
    "VOTE_COMMIT": "vote_commit",
    "VOTE_REVEAL": "vote_reveal",
}

# Units on the ledger: no float decides anything. Scores, thresholds and epsilons are integers
# in micro-units, gradient norms in milli-units; delta is a reduced fraction.
MICRO: Final = 1_000_000
MILLI: Final = 1_000

# Identifiers end up inside composite keys, so they must never contain U+0000 or U+10FFFF;
# a conservative alphabet also keeps them readable in logs and URLs.
IDENTIFIER: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LABEL: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:/+-]{0,127}")
SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
# CIDs, file-store ids ("sha256:..."), URLs: printable ASCII without spaces.
CONTENT_ID: Final = re.compile(r"[\x21-\x7e]{1,256}")
# At least 128 bits: a salt protects low-entropy committed values (scores) from guessing.
SALT_HEX: Final = re.compile(r"[0-9a-f]{32,128}")
ETH_TX_HASH: Final = re.compile(r"0x[0-9a-f]{64}")

# What a voter found that makes a candidate update unusable (a vote finding's ``problem``):
# the container could not be fetched or its sha256 did not match the ledger ("unavailable"),
# it is not an update container ("wrong_kind": e.g. a copied aggregate), it has the wrong
# parameter count or HE preset ("wrong_shape"), decryption failed ("undecryptable"), or it
# decrypts to NaN or infinite values ("not_finite").
Problem = Literal["unavailable", "wrong_kind", "wrong_shape", "undecryptable", "not_finite"]
PROBLEMS: Final = ("unavailable", "wrong_kind", "wrong_shape", "undecryptable", "not_finite")
