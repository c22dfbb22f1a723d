"""Where a trial stands and whom it waits for, from the ledger alone.

One function, :func:`trial_progress`, answers for the scheduler, ``GET /trials/{id}/progress``
and ``bcfl coordinator trial status``: the trial's state, a ``waiting_for`` naming the party
(hospitals by MSP id, "coordinator" or "admin"), a sentence ``reason`` a person can act on, and
for a trial that ended, its code. Nothing here writes; ``query`` is any ledger's ``evaluate``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bcfl_common.errors import ContractError

Query = Callable[[str, dict[str, Any]], Any]

ADMIN_NEXT = (
    "the admin decides: `bcfl coordinator trial next` opens the next attempt, "
    "`trial rollback` goes back to a finalized round, `trial halt` ends the trial"
)


def enrolled_members(query: Query, trial_id: str) -> list[str]:
    return sorted(
        e["msp_id"]
        for e in query("get_enrolments", {"trial_id": trial_id})
        if e["status"] == "enrolled"
    )


def expected(query: Query, trial: dict[str, Any], rnd: dict[str, Any]) -> list[str]:
    """The enrolled hospitals the round's current phase still waits for (as the contract does)."""
    trial_id, r, a = trial["trial_id"], rnd["round"], rnd["attempt"]
    enrolled = set(enrolled_members(query, trial_id))
    where = {"trial_id": trial_id, "round": r, "attempt": a}
    phase = rnd["phase"]
    if phase == "SUBMIT":
        # A hospital with no reveal left in its DP schedule (``rounds`` of them) cannot commit.
        spent = {
            acc["msp_id"]
            for acc in query("get_privacy_ledger", {"trial_id": trial_id})
            if trial["dp"]["enabled"] and len(acc["entries"]) >= trial["rounds"]
        }
        committed = {u["msp_id"] for u in query("get_submissions", where)}
        return sorted(enrolled - committed - spent)
    if phase == "REVEAL":
        return sorted(
            u["msp_id"]
            for u in query("get_submissions", where)
            if u["msp_id"] in enrolled and not u["revealed"]
        )
    if phase == "VOTE_COMMIT":
        return sorted(enrolled - {v["msp_id"] for v in query("get_votes", where)})
    if phase == "VOTE_REVEAL":
        return sorted(
            v["msp_id"]
            for v in query("get_votes", where)
            if v["msp_id"] in enrolled and not v["revealed"]
        )
    if phase == "ATTEST":
        attested = {x["msp_id"] for x in query("get_attestations", where)}
        return sorted((set(rnd["participants"]) & enrolled) - attested)
    return []


def resumed_after(trial: dict[str, Any], rnd: dict[str, Any]) -> bool:
    """Whether the admin rolled back or resumed the trial after this round halted."""
    halted_at = (rnd.get("halt") or {}).get("at", rnd["phase_changed_at"])
    return any(x["at"] >= halted_at for x in [*trial["rollbacks"], *trial.get("resumes", [])])


def _progress(
    trial: dict[str, Any],
    rnd: dict[str, Any] | None,
    waiting_for: list[str],
    reason: str,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "trial_id": trial["trial_id"],
        "state": trial["state"],
        "code": None,
        "round": None if rnd is None else rnd["round"],
        "attempt": None if rnd is None else rnd["attempt"],
        "phase": None if rnd is None else rnd["phase"],
        "deadline": None if rnd is None else rnd.get("deadline"),
        "finalized": trial["head"]["round"],
        "final_round": trial.get("final_round", trial["rounds"]),
        "failed_attempts": trial.get("failed_attempts", 0),
        "max_retries": trial.get("max_retries", 0),
        "waiting_for": waiting_for,
        "reason": reason,
        **extra,
    }


def trial_progress(query: Query, trial: dict[str, Any], now: int | None = None) -> dict[str, Any]:
    """The trial's state, whom it waits for and why (see the module docstring)."""
    trial_id, state = trial["trial_id"], trial["state"]
    final_round = trial.get("final_round", trial["rounds"])
    if state == "DRAFT":
        return _progress(trial, None, ["admin"], "created: the admin opens enrolment")
    if state == "ENROLLING":
        members = enrolled_members(query, trial_id)
        return _progress(
            trial,
            None,
            ["admin"],
            f"enrolling: {len(members)} hospitals enrolled ({', '.join(members) or 'none'}), "
            f"min_silos={trial['min_silos']}; the admin starts the trial",
        )
    if state == "COMPLETED":
        return _progress(
            trial,
            None,
            [],
            f"completed after {trial['head']['round']} rounds: final model "
            f"{trial['head']['model']['sha256'][:16]}",
            code="COMPLETED",
        )
    if state == "HALTED":
        halt = trial["halt"] or {}
        code = halt.get("code", "HALTED_BY_ADMIN")
        return _progress(
            trial,
            None,
            [],
            f"halted ({code}): {halt.get('reason')}; the admin may `bcfl coordinator trial "
            "resume` it if the hospitals' budgets allow",
            code=code,
        )
    current = trial["current"]
    rnd = (
        None
        if current is None
        else query(
            "get_round",
            {"trial_id": trial_id, "round": current["round"], "attempt": current["attempt"]},
        )
    )
    if rnd is None or rnd["phase"] in ("FINALIZED", "HALTED"):
        if rnd is not None and rnd["phase"] == "HALTED" and not resumed_after(trial, rnd):
            halt = rnd["halt"] or {}
            what = (
                f"round {rnd['round']} attempt {rnd['attempt']} halted ({halt.get('code')}: "
                f"{halt.get('reason')})"
            )
            if halt.get("retry"):
                return _progress(
                    trial,
                    rnd,
                    ["coordinator"],
                    f"{what}; the coordinator opens attempt {rnd['attempt'] + 1} "
                    f"(failed attempts {halt.get('failed_attempts')} of at most "
                    f"{trial.get('max_retries', 0) + 1})",
                )
            return _progress(trial, rnd, ["admin"], f"{what}; {ADMIN_NEXT}")
        if trial["head"]["round"] >= final_round:
            return _progress(
                trial,
                rnd,
                ["coordinator"],
                f"all {final_round} rounds finalized: the coordinator completes the trial",
            )
        try:
            query("get_trial_keys", {"trial_id": trial_id})
        except ContractError as exc:
            if exc.code != "NOT_FOUND":
                raise
            members = enrolled_members(query, trial_id)
            return _progress(
                trial,
                rnd,
                members,
                "no trial keys yet: one enrolled hospital's silo agent records them "
                f"({', '.join(members)}; is any silo agent running?)",
            )
        return _progress(
            trial,
            rnd,
            ["coordinator"],
            f"the coordinator opens round {trial['head']['round'] + 1}",
        )
    phase = rnd["phase"]
    if phase == "AGGREGATE":
        return _progress(
            trial, rnd, ["coordinator"], f"round {rnd['round']}: the coordinator aggregates"
        )
    waiting = expected(query, trial, rnd)
    label = f"round {rnd['round']} attempt {rnd['attempt']}, {phase}"
    if phase == "ATTEST" and not waiting:
        return _progress(
            trial,
            rnd,
            ["admin"],
            f"{label}: every participant still enrolled attested without a quorum of "
            f"{rnd['attestation_quorum']}; the admin aborts the round (`bcfl coordinator trial "
            "abort`)",
        )
    if phase == "ATTEST":
        return _progress(
            trial,
            rnd,
            waiting,
            f"{label}: waiting for attestations from {', '.join(waiting) or 'nobody'} "
            f"(quorum {rnd['attestation_quorum']})",
        )
    deadline = rnd["deadline"]
    if not waiting:
        return _progress(
            trial,
            rnd,
            ["coordinator"],
            f"{label}: everyone acted; the coordinator closes the phase",
        )
    if now is not None and deadline is not None and now > deadline:
        return _progress(
            trial,
            rnd,
            ["coordinator"],
            f"{label}: the deadline passed without {', '.join(waiting)}; the coordinator "
            "closes the phase",
        )
    return _progress(
        trial,
        rnd,
        waiting,
        f"{label}: waiting for {', '.join(waiting)} until {deadline}"
        + ("" if now is None or deadline is None else f" ({deadline - now} s left)"),
    )
