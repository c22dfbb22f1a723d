"""Liveness: a round that cannot finalize is retried a bounded number of times, and a trial that
cannot go on halts with a code and a reason; nothing is left RUNNING that cannot move.

A round attempt *fails* when it halts for a cause the next attempt may not share (NO_COMMITMENTS,
NO_REVEALS, NO_CANDIDATES, TOO_FEW_HOSPITALS, NO_VOTES, NONE_ACCEPTED, ATTESTATION_MISMATCH):
``round_failed`` records the halt with ``retry`` and the trial's count of ``failed_attempts`` in a
row, and the coordinator opens the next attempt. Each retry gets longer phase deadlines
(``deadline_factor``: twice the trial's phase seconds per failed attempt, at most eight times),
so an honest round that missed a deadline on a loaded network gets the time it needed.
``failed_attempts`` goes back to 0 when a round finalizes, and at every rollback and resume.

The trial halts (``TrialHalt``, in the same transaction as the round's halt) when

* a round failed more than ``max_retries`` times in a row: TOO_FEW_HOSPITALS when the last
  failure was a shortfall of hospitals, RETRIES_EXHAUSTED otherwise;
* fewer than ``min_silos`` hospitals are enrolled: TOO_FEW_HOSPITALS;
* with DP on, fewer than ``min_silos`` hospitals have a reveal left in their DP schedules for the
  next round: BUDGETS_SPENT (halted attempts and rolled-back rounds were charged: their updates
  were disclosed).

``require_plan`` checks up front, for ``rollback`` and ``resume_trial``, that the hospitals'
remaining reveals (from the ledger's privacy accounts) carry the rounds asked for, each with at
least ``min_silos`` hospitals, assuming every hospital takes part in every round while it has a
reveal left (what the silo agents do); otherwise INFEASIBLE, naming each hospital's reveals left
and the last ``final_round`` that would fit.
"""

from __future__ import annotations

from bcfl_common.records import Round, Trial, TrialHalt
from chaincode.contract.context import Caller, Tx, fail
from chaincode.contract.store import (
    emit_halted_payload,
    enrolled,
    halt_round,
    privacy_account,
    set_trial_state,
    trial_key,
)
from chaincode.contract.store import reveals_left as account_reveals_left

RETRYABLE = frozenset(
    {
        "NO_COMMITMENTS",
        "NO_REVEALS",
        "NO_CANDIDATES",
        "TOO_FEW_HOSPITALS",
        "NO_VOTES",
        "NONE_ACCEPTED",
        "ATTESTATION_MISMATCH",
    }
)
MAX_RETRIES = 20


def reveals_left(tx: Tx, trial: Trial) -> dict[str, int | None]:
    """Each enrolled hospital's reveals left in its DP schedule (None: DP off, no limit)."""
    return {
        m: account_reveals_left(trial, privacy_account(tx, trial, m))
        for m in enrolled(tx, trial["trial_id"])
    }


def feasible_rounds(left: dict[str, int | None], min_silos: int) -> int | None:
    """How many more rounds have at least ``min_silos`` hospitals, each hospital taking part in
    every round while it has a reveal left: the min_silos-th largest reveals left (None: no
    limit; 0 with fewer hospitals than min_silos)."""
    if len(left) < min_silos:
        return 0
    counts = [n for n in left.values() if n is not None]
    if not counts:
        return None
    return sorted(counts, reverse=True)[min_silos - 1]


def describe_left(left: dict[str, int | None]) -> str:
    if not left:
        return "no hospital is enrolled"
    return ", ".join(f"{m} {'unlimited' if n is None else n}" for m, n in sorted(left.items()))


def shortfall(trial: Trial, what: str, names: list[str], more: str = "") -> tuple[str, str]:
    """The TOO_FEW_HOSPITALS halt code and reason of a phase close with only ``names``."""
    return (
        "TOO_FEW_HOSPITALS",
        f"{len(names)} {what} ({', '.join(names) or 'none'}){more}, fewer than "
        f"min_silos={trial['min_silos']}",
    )


def trial_halt(tx: Tx, caller: Caller, code: str, reason: str) -> TrialHalt:
    """Why the trial halts, now, by the transaction's creator."""
    return {"code": code, "reason": reason, "at": tx.now, "by": caller.who()}


def trial_shortfall(tx: Tx, trial: Trial, caller: Caller) -> TrialHalt | None:
    """Why the trial cannot open its next round (None if it can, or has no round left)."""
    min_silos = trial["min_silos"]
    left = reveals_left(tx, trial)
    if len(left) < min_silos:
        return trial_halt(
            tx,
            caller,
            "TOO_FEW_HOSPITALS",
            f"{len(left)} hospitals are enrolled ({', '.join(sorted(left)) or 'none'}), "
            f"fewer than min_silos={min_silos}",
        )
    if trial["head"]["round"] >= trial["final_round"]:
        return None
    n = feasible_rounds(left, min_silos)
    if n is not None and n < 1:
        able = sorted(m for m, k in left.items() if k)
        return trial_halt(
            tx,
            caller,
            "BUDGETS_SPENT",
            f"only {len(able)} hospitals have a reveal left in their DP schedules "
            f"({describe_left(left)} reveals left), fewer than min_silos={min_silos}",
        )
    return None


def round_failed(
    tx: Tx,
    caller: Caller,
    trial: Trial,
    rnd: Round,
    code: str,
    reason: str,
    attestations: dict[str, str] | None = None,
    *,
    emit: bool = True,
) -> Round:
    """Halt ``rnd`` (``trial`` as loaded by the caller, who must not write it afterwards) for a
    retryable ``code``; count the failure, halt the trial if it cannot go on; event RoundHalted
    (unless ``emit`` is false: the caller emits its own)."""
    assert code in RETRYABLE, code
    failed = trial["failed_attempts"] + 1
    halt: TrialHalt | None
    if failed > trial["max_retries"]:
        halt = trial_halt(
            tx,
            caller,
            "TOO_FEW_HOSPITALS" if code == "TOO_FEW_HOSPITALS" else "RETRIES_EXHAUSTED",
            f"round {rnd['round']} failed {failed} times in a row (max_retries="
            f"{trial['max_retries']}); the last attempt: {code}: {reason}",
        )
    else:
        halt = trial_shortfall(tx, trial, caller)
    halted = halt_round(
        tx,
        caller,
        rnd,
        code,
        reason,
        attestations,
        retry=halt is None,
        failed_attempts=failed,
        trial_halted=None if halt is None else halt["code"],
    )
    counted: Trial = {**trial, "failed_attempts": failed}
    if halt is None:
        tx.put(trial_key(trial["trial_id"]), counted)
    else:
        set_trial_state(tx, {**counted, "halt": halt}, "HALTED")
    if emit:
        tx.emit("RoundHalted", emit_halted_payload(halted, halt))
    return halted


def require_plan(tx: Tx, trial: Trial, from_round: int, final_round: int, action: str) -> None:
    """Refuse (INSUFFICIENT_SILOS, INFEASIBLE) unless the enrolled hospitals can carry rounds
    ``from_round + 1 .. final_round`` with at least min_silos hospitals each."""
    trial_id, min_silos = trial["trial_id"], trial["min_silos"]
    left = reveals_left(tx, trial)
    if len(left) < min_silos:
        fail(
            "INSUFFICIENT_SILOS",
            f"{action}: trial {trial_id!r} has {len(left)} enrolled hospitals, expected at least "
            f"min_silos={min_silos}",
            enrolled=sorted(left),
            min_silos=min_silos,
        )
    needed = final_round - from_round
    n = feasible_rounds(left, min_silos)
    if n is not None and n < needed:
        fits = (
            f"final_round={from_round + n} would fit"
            if n > 0
            else "no further round fits: halt or complete the trial"
        )
        fail(
            "INFEASIBLE",
            f"{action}: rounds {from_round + 1} to {final_round} of trial {trial_id!r} need "
            f"{needed} more rounds with at least min_silos={min_silos} hospitals each, but the "
            f"hospitals' DP schedules have {describe_left(left)} reveals left, enough for "
            f"{n} more rounds; {fits}",
            reveals_left=left,
            needed=needed,
            feasible=n,
            final_round=final_round,
        )
