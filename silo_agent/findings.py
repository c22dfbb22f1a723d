"""What a voter reports about one peer candidate: a Finding (the contract's ``reveal_votes``).

``Finding = {score_micro, score_se_micro, norm_milli, similarity_micro, problem}``:

* ``problem``: what made the candidate unusable, checked first and in this order: its container
  is ``unavailable`` (no reveal, not in the store, or bytes that do not hash to the revealed
  sha256), of the ``wrong_kind`` (an aggregate rather than one hospital's update), of the
  ``wrong_shape`` (another CKKS preset or parameter count than the trial's model), or
  ``undecryptable``; or its decrypted values are ``not_finite``. With a problem the norm and the
  similarity are null and the score is the lowest (:data:`REJECT_SCORE_MICRO`).
* ``score_micro``: the decrease of the voter's validation log-loss when the update alone is
  applied to the base model, in micro-units, clamped to +-:data:`MAX_SCORE_MICRO`.
* ``score_se_micro``: the score's standard error over the validation rows (the spread of the
  per-row log-loss decreases / sqrt(rows)), in micro-units: the contract judges harm beyond both
  the trial's threshold and ``harm_se_milli / 1000`` times the lower median of the errors this
  voter reported in the round; null with a problem or a clamped score.
* ``norm_milli``: ``ceil(1000 * ||delta||)`` of the decrypted update: an update container holds
  the hospital's plain parameter delta (``privacy.he.aggregate`` applies the contract's weights).
* ``similarity_micro``: ``round(1e6 * max cosine similarity)`` of the delta with every update
  revealed in an earlier round or attempt of the trial (any author, its own included) and every
  earlier aggregate's delta; 0 when there is nothing earlier (or the delta is zero). A copy of an
  earlier update, re-encrypted so its bytes differ, still scores about 1e6.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from bcfl_common.errors import BcflError
from bcfl_common.vocabulary import PROBLEMS
from privacy import he

UNAVAILABLE, WRONG_KIND, WRONG_SHAPE, UNDECRYPTABLE, NOT_FINITE = PROBLEMS

MAX_SCORE_MICRO = 10**12
# The score of a candidate with a problem: the lowest there is.
REJECT_SCORE_MICRO = -MAX_SCORE_MICRO
MAX_SIMILARITY_MICRO = 1_000_000


class UnusableUpdate(Exception):
    """A candidate's container cannot be evaluated; ``problem`` is one of :data:`PROBLEMS`."""

    def __init__(self, problem: str, reason: str):
        super().__init__(f"{problem}: {reason}")
        self.problem = problem
        self.reason = reason


def problem_finding(problem: str) -> dict[str, Any]:
    if problem not in PROBLEMS:
        raise ValueError(f"problem: got {problem!r}, expected one of {PROBLEMS}")
    return {
        "score_micro": REJECT_SCORE_MICRO,
        "score_se_micro": None,
        "norm_milli": None,
        "similarity_micro": None,
        "problem": problem,
    }


def finding(
    delta: np.ndarray,
    *,
    base_losses: np.ndarray,
    losses: np.ndarray,
    history: Iterable[np.ndarray],
) -> dict[str, Any]:
    """The Finding of a usable candidate's (finite) delta, from the per-row validation
    log-losses of the base model and of the base model plus the delta."""
    score = score_micro(float(np.mean(base_losses)), float(np.mean(losses)))
    return {
        "score_micro": score,
        # a clamped (or non-finite) score has no meaningful error
        "score_se_micro": None
        if abs(score) >= MAX_SCORE_MICRO
        else score_se_micro(base_losses, losses),
        "norm_milli": norm_milli(delta),
        "similarity_micro": similarity_micro(delta, history),
        "problem": None,
    }


def score_micro(base_loss: float, loss: float) -> int:
    """``(base_loss - loss) * 1e6``, rounded and clamped; a non-finite result is the lowest."""
    value = (base_loss - loss) * 1e6
    if not math.isfinite(value):
        return REJECT_SCORE_MICRO
    return int(max(-MAX_SCORE_MICRO, min(MAX_SCORE_MICRO, round(value))))


def score_se_micro(base_losses: np.ndarray, losses: np.ndarray) -> int | None:
    """``ceil(1e6 * standard error)`` of the score: the sample standard deviation of the per-row
    log-loss decreases over sqrt(rows); None with fewer than 2 rows or a non-finite value."""
    decreases = np.asarray(base_losses, dtype=np.float64) - np.asarray(losses, dtype=np.float64)
    if decreases.size < 2 or not np.all(np.isfinite(decreases)):
        return None
    value = float(np.std(decreases, ddof=1)) / math.sqrt(decreases.size) * 1e6
    return int(min(MAX_SCORE_MICRO, math.ceil(value)))


def norm_milli(delta: np.ndarray) -> int:
    """``ceil(1000 * L2 norm)`` of a finite parameter delta, an integer >= 0."""
    return int(math.ceil(1000.0 * float(np.linalg.norm(np.asarray(delta, dtype=np.float64)))))


def similarity_micro(delta: np.ndarray, history: Iterable[np.ndarray]) -> int:
    """``round(1e6 * max cosine similarity)`` of ``delta`` with the ``history`` vectors, in
    [0, 1e6] (a negative similarity counts as 0); 0 for an empty history or a zero delta."""
    vector = np.asarray(delta, dtype=np.float64)
    norm = float(np.linalg.norm(vector))
    best = 0.0
    if norm == 0.0:
        return 0
    for earlier in history:
        other = np.asarray(earlier, dtype=np.float64)
        other_norm = float(np.linalg.norm(other))
        if other.shape != vector.shape or other_norm == 0.0:
            continue
        best = max(best, float(np.dot(vector, other)) / (norm * other_norm))
    return int(min(MAX_SIMILARITY_MICRO, max(0, round(best * 1e6))))


def container_problem(data: bytes, *, preset: str, n_params: int) -> str | None:
    """What the container's header says is wrong with it as a candidate update (None: nothing;
    the full validation and the decryption come after)."""
    try:
        head = he.peek_header(data)
    except BcflError:
        return UNDECRYPTABLE
    if head["kind"] != he.Kind.UPDATE:
        return WRONG_KIND
    if head["preset"] != preset or head["n_params"] != n_params:
        return WRONG_SHAPE
    return None


def finite_delta(delta: np.ndarray) -> np.ndarray:
    """``delta`` when every value is finite; UnusableUpdate ``not_finite`` otherwise."""
    bad = int(np.count_nonzero(~np.isfinite(delta)))
    if bad:
        raise UnusableUpdate(NOT_FINITE, f"{bad} decrypted values are NaN or Inf")
    return delta
