"""The admin's recovery steps: abort a round, roll back, resume a halted trial.

Rollback: every finalized round's model stays in the lineage's history; ``rollback`` moves the
head back to an earlier finalized round (0 = the initial model), and the next ``open_round``
opens the round after it again as a new attempt. ``resume_trial`` sets a HALTED trial RUNNING
again (optionally rolled back in the same transaction). Both may shorten the plan
(``final_round``) and both refuse up front, INFEASIBLE, a plan the hospitals' remaining DP
budgets cannot carry (``liveness.require_plan``); resume also refuses BUDGET_EXCEEDED when a
hospital's dataset gave the epsilon the halt released to another trial meanwhile.
"""

from __future__ import annotations

from bcfl_common.records import Dataset, Enrolment, Head, Resume, Rollback, Round, Trial
from bcfl_common.vocabulary import DONE_PHASES
from chaincode.args import Args
from chaincode.contract.context import Caller, Tx, fail
from chaincode.contract.datasets import dataset_budget
from chaincode.contract.dispatch import function
from chaincode.contract.liveness import require_plan
from chaincode.contract.store import (
    MAX_ROUNDS,
    current_round,
    dataset_key,
    emit_halted,
    enrolled,
    enrolment_key,
    halt_open_round,
    halt_round,
    load_trial,
    privacy_account,
    require_no_round_in_progress,
    require_trial_state,
    round_args,
    round_label,
    set_trial_state,
    trial_key,
)


@function("abort_round", "admin")
def abort_round(tx: Tx, caller: Caller, a: Args) -> Round:
    """admin; {trial_id, round, reason}; halts the current round by hand (halt code ABORTED,
    not retried: the admin opens the next attempt, rolls back or halts); returns the round;
    event RoundHalted."""
    trial, r = round_args(tx, a)
    reason = a.string("reason")
    a.done()
    require_trial_state(trial, "RUNNING")
    rnd = current_round(tx, trial, r)
    if rnd["phase"] in DONE_PHASES:
        fail("WRONG_STATE", f"{round_label(rnd)} is already {rnd['phase']}", phase=rnd["phase"])
    rnd = halt_round(tx, caller, rnd, "ABORTED", reason)
    emit_halted(tx, rnd)
    return rnd


def final_round_arg(a: Args, trial: Trial, from_round: int) -> int:
    """``final_round``: the plan after a rollback or resume, from_round..rounds (default: as is,
    at least from_round)."""
    final_round = a.integer(
        "final_round",
        minimum=max(1, from_round),
        maximum=trial["rounds"],
        default=max(trial["final_round"], from_round),
    )
    assert final_round is not None
    return final_round


def rolled_back(
    tx: Tx, caller: Caller, trial: Trial, to_round: int, reason: str | None, final_round: int
) -> tuple[Trial, Rollback]:
    """``trial`` with its head and lineage back at ``to_round`` and the rollback recorded."""
    head = trial["head"]
    if to_round > head["round"]:
        fail(
            "NO_SUCH_ROUND",
            f"to_round: {to_round} is not a finalized round of trial {trial['trial_id']!r} "
            f"(its lineage holds rounds 0 to {head['round']})",
            field="to_round",
            value=to_round,
            head=head["round"],
        )
    lineage = trial["lineage"][:to_round]
    new_head: Head
    if to_round == 0:
        new_head = {"round": 0, "attempt": 0, "model": trial["initial_model"]}
    else:
        last = lineage[-1]
        new_head = {"round": last["round"], "attempt": last["attempt"], "model": last["model"]}
    record: Rollback = {
        "from_round": head["round"],
        "from_attempt": head["attempt"],
        "to_round": to_round,
        "to_attempt": new_head["attempt"],
        "reason": reason,
        "at": tx.now,
        "by": caller.who(),
        "rounds_before": trial["final_round"],
        "rounds_after": final_round,
    }
    updated: Trial = {
        **trial,
        "head": new_head,
        "lineage": lineage,
        "rollbacks": trial["rollbacks"] + [record],
        "final_round": final_round,
        "failed_attempts": 0,
    }
    return updated, record


@function("rollback", "admin")
def rollback(tx: Tx, caller: Caller, a: Args) -> Trial:
    """admin; {trial_id, to_round (0 = initial model), [reason], [final_round], [abort_current]};
    a RUNNING trial with no round in progress, unless ``abort_current`` (the current round is
    then halted ABORTED in the same transaction); the head and lineage go back to ``to_round``
    (a finalized round of the current lineage), the plan to ``final_round`` (default: as is),
    refused INFEASIBLE when the hospitals' remaining DP reveals cannot carry it; the rollback
    is recorded; returns the trial; event RolledBack."""
    trial = load_trial(tx, a.identifier("trial_id"))
    to_round = a.integer("to_round", minimum=0, maximum=MAX_ROUNDS)
    reason = a.string("reason", default=None)
    final_round = final_round_arg(a, trial, to_round)
    abort_current = a.boolean("abort_current", default=False)
    a.done()
    require_trial_state(trial, "RUNNING")
    if not abort_current:
        require_no_round_in_progress(tx, trial)  # refuses, naming the round and its phase
    why = f"rolled back to round {to_round}" + (f": {reason}" if reason else "")
    aborted = halt_open_round(tx, caller, trial, "ABORTED", why)
    trial, record = rolled_back(tx, caller, trial, to_round, reason, final_round)
    require_plan(tx, trial, to_round, final_round, "rollback")
    tx.put(trial_key(trial["trial_id"]), trial)
    tx.emit(
        "RolledBack",
        {
            "trial_id": trial["trial_id"],
            **{k: v for k, v in record.items() if k != "by"},
            "model": trial["head"]["model"],
            "aborted_round": None if aborted is None else aborted["round"],
        },
    )
    return trial


def require_dataset_budgets(tx: Tx, trial: Trial) -> None:
    """BUDGET_EXCEEDED when resuming would over-commit a hospital's dataset: a halted trial
    counts only what it spent, so its dataset may have given the rest to another trial."""
    if not trial["dp"]["enabled"]:
        return
    for msp_id in enrolled(tx, trial["trial_id"]):
        enrolment: Enrolment = tx.get(enrolment_key(trial["trial_id"], msp_id))
        dataset: Dataset | None = tx.get(dataset_key(msp_id, enrolment["dataset_id"]))
        if dataset is None:
            continue
        account = privacy_account(tx, trial, msp_id)
        again = (account["budget_micro"] or 0) - account["epsilon_spent_micro"]
        budget = dataset_budget(tx, dataset)
        if budget["remaining_micro"] < again:
            fail(
                "BUDGET_EXCEEDED",
                f"resume: dataset {dataset['dataset_id']!r} of {msp_id} has "
                f"{budget['remaining_micro']} micro-epsilon of its lifetime left uncommitted, "
                f"but trial {trial['trial_id']!r} would take back {again} (committed to other "
                "trials since it halted)",
                msp_id=msp_id,
                dataset_id=dataset["dataset_id"],
                remaining_micro=budget["remaining_micro"],
                needed_micro=again,
            )


@function("resume_trial", "admin")
def resume_trial(tx: Tx, caller: Caller, a: Args) -> Trial:
    """admin; {trial_id, reason, [to_round] (default: the head), [final_round]}; HALTED (after
    start) -> RUNNING, rolled back to ``to_round`` when it is before the head, the plan set to
    ``final_round``; refused up front (INSUFFICIENT_SILOS, INFEASIBLE, BUDGET_EXCEEDED) when the
    enrolled hospitals, their remaining DP reveals or their datasets' lifetime epsilon cannot
    carry the plan; the failed-attempt count starts again; returns the trial; event TrialResumed."""
    trial = load_trial(tx, a.identifier("trial_id"))
    reason = a.string("reason")
    head_round = trial["head"]["round"]
    to_round = a.integer("to_round", minimum=0, maximum=head_round, default=head_round)
    assert to_round is not None
    final_round = final_round_arg(a, trial, to_round)
    a.done()
    require_trial_state(trial, "HALTED")
    halt = trial["halt"]
    if halt is None or trial["enrolled_at_start"] is None:
        fail(
            "WRONG_STATE",
            f"trial {trial['trial_id']!r} was halted before it started; create a new trial",
        )
    rollback_record: Rollback | None = None
    if to_round < head_round:
        trial, rollback_record = rolled_back(
            tx, caller, trial, to_round, f"resume: {reason}", final_round
        )
    require_plan(tx, trial, to_round, final_round, "resume")
    require_dataset_budgets(tx, trial)
    record: Resume = {
        "reason": reason,
        "at": tx.now,
        "by": caller.who(),
        "halt": halt,
        "rounds_before": trial["final_round"]
        if rollback_record is None
        else rollback_record["rounds_before"],
        "rounds_after": final_round,
    }
    resumed: Trial = {
        **trial,
        "halt": None,
        "final_round": final_round,
        "failed_attempts": 0,
        "resumes": trial["resumes"] + [record],
    }
    trial = set_trial_state(tx, resumed, "RUNNING")
    tx.emit(
        "TrialResumed",
        {
            "trial_id": trial["trial_id"],
            "reason": reason,
            "halt_code": halt["code"] if "code" in halt else None,
            "to_round": to_round,
            "rolled_back_from": None if rollback_record is None else head_round,
            "final_round": final_round,
        },
    )
    return trial
