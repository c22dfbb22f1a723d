"""Keys and record access: where each record lives, loading it, and the checks every step shares.

Records are canonical JSON under composite keys (``chaincode.state.create_composite_key``); their
shapes are the TypedDicts of ``bcfl_common.records``. Round and attempt numbers are zero-padded to
6 digits in keys so that range scans return them in numeric order. The contract stores plain
dicts: the TypedDicts only let mypy check every access.

==============  ==========================================
record          key
==============  ==========================================
consortium      ("consortium", [])
dataset         ("dataset", [msp_id, dataset_id])
trial           ("trial", [trial_id])
encryption_key  ("encryption_key", [trial_id, msp_id])
enrolment       ("enrolment", [trial_id, msp_id])
dp_schedule     ("dp_schedule", [trial_id])
trial_keys      ("trial_keys", [trial_id])
round           ("round", [trial_id, r, a])
update          ("update", [trial_id, r, a, msp_id])
vote            ("vote", [trial_id, r, a, msp_id])
acceptance      ("acceptance", [trial_id, r, a])
attestation     ("attestation", [trial_id, r, a, msp_id])
round_rewards   ("round_rewards", [trial_id, r, a])
reward_account  ("reward_account", [trial_id, msp_id])
privacy         ("privacy", [trial_id, msp_id])
content         ("content", [trial_id, sha256])
==============  ==========================================
"""

from __future__ import annotations

from typing import Any

from bcfl_common.records import (
    DpSchedule,
    Enrolment,
    ModelRef,
    PrivacyAccount,
    Round,
    RoundHalt,
    RoundRewards,
    ScheduleEntry,
    Trial,
    TrialHalt,
)
from bcfl_common.vocabulary import DONE_PHASES, PHASE_DURATION, PHASES, Phase, TrialState
from chaincode.args import Args
from chaincode.contract.context import Caller, Tx, fail
from chaincode.state import create_composite_key

# Bounds of what the arguments may ask for.
MAX_ROUNDS = 1000
MAX_ATTEMPTS = 10**6
MAX_SILOS = 1000
MAX_SAMPLE_WEIGHT = 10**12
MAX_DATASET_RECORDS = 10**9  # also bounds training_records, hence every sample weight
MAX_SCORE_MICRO = 10**12
MAX_EPSILON_MICRO = 10**12
MAX_PHASE_SECONDS = 30 * 24 * 3600

# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------

CONSORTIUM_KEY = create_composite_key("consortium", [])


def number(n: int) -> str:
    return f"{n:06d}"  # fixed width so range scans return rounds in numeric order


def trial_key(trial_id: str) -> str:
    return create_composite_key("trial", [trial_id])


def enrolment_key(trial_id: str, msp_id: str) -> str:
    return create_composite_key("enrolment", [trial_id, msp_id])


def dataset_key(msp_id: str, dataset_id: str) -> str:
    return create_composite_key("dataset", [msp_id, dataset_id])


def dp_schedule_key(trial_id: str) -> str:
    return create_composite_key("dp_schedule", [trial_id])


def key_registration_key(trial_id: str, msp_id: str) -> str:
    return create_composite_key("encryption_key", [trial_id, msp_id])


def trial_keys_key(trial_id: str) -> str:
    return create_composite_key("trial_keys", [trial_id])


def round_key(trial_id: str, r: int, a: int) -> str:
    return create_composite_key("round", [trial_id, number(r), number(a)])


def per_round_key(kind: str, trial_id: str, r: int, a: int, msp_id: str | None = None) -> str:
    """A record of one round attempt (acceptance, round_rewards) or of one organisation in it."""
    attributes = [trial_id, number(r), number(a)] + ([msp_id] if msp_id else [])
    return create_composite_key(kind, attributes)


def per_org_key(kind: str, trial_id: str, msp_id: str) -> str:
    """A record of one organisation in a trial (privacy, reward_account)."""
    return create_composite_key(kind, [trial_id, msp_id])


def content_key(trial_id: str, sha256: str) -> str:
    return create_composite_key("content", [trial_id, sha256])


def round_records(tx: Tx, kind: str, trial_id: str, r: int, a: int) -> list[Any]:
    """Every ``kind`` record (update, vote, attestation) of round r attempt a, by MSP id."""
    return tx.scan(kind, [trial_id, number(r), number(a)])


# ---------------------------------------------------------------------------------------------
# Trials and enrolments
# ---------------------------------------------------------------------------------------------


DEFAULT_MAX_RETRIES = 2  # create_trial's default: a round may fail twice in a row, then halts
# create_trial's default: Fabric peers accept a proposal whose client-set time is within their
# CORE_PEER_AUTHENTICATION_TIMEWINDOW (15 minutes by default) of their own clock.
DEFAULT_CLOCK_TOLERANCE_SECONDS = 900
MAX_CLOCK_TOLERANCE_SECONDS = 86_400


def with_defaults(trial: Trial) -> Trial:
    """A trial record written before the liveness fields existed, read as its defaults say:
    the plan is every round, no failure counted, no resume, the trial's halt by the admin, and
    no clock tolerance."""
    filled: Trial = {
        "final_round": trial["rounds"],
        "max_retries": DEFAULT_MAX_RETRIES,
        "failed_attempts": 0,
        "resumes": [],
        # the rule such trials were decided under: the strictly earliest commitment owns content
        "clock_tolerance_seconds": 0,
        **trial,
    }
    filled["rollbacks"] = [
        {"rounds_before": trial["rounds"], "rounds_after": trial["rounds"], **rb}
        for rb in trial["rollbacks"]
    ]
    if filled["halt"] is not None:
        filled["halt"] = {"code": "HALTED_BY_ADMIN", **filled["halt"]}
    return filled


def load_trial(tx: Tx, trial_id: str) -> Trial:
    trial: Trial | None = tx.get(trial_key(trial_id))
    if trial is None:
        fail("NOT_FOUND", f"trial {trial_id!r} does not exist", trial_id=trial_id)
    return with_defaults(trial)


def require_trial_state(trial: Trial, *states: TrialState) -> None:
    if trial["state"] not in states:
        fail(
            "WRONG_STATE",
            f"trial {trial['trial_id']!r} is {trial['state']}, expected {' or '.join(states)}",
            trial_id=trial["trial_id"],
            state=trial["state"],
            expected=list(states),
        )


def set_trial_state(tx: Tx, trial: Trial, state: TrialState) -> Trial:
    """Store ``trial`` in ``state``, changed now."""
    updated: Trial = {**trial, "state": state, "state_changed_at": tx.now}
    tx.put(trial_key(trial["trial_id"]), updated)
    return updated


def enrolments(tx: Tx, trial_id: str) -> dict[str, Enrolment]:
    return {rec["msp_id"]: rec for rec in tx.scan("enrolment", [trial_id])}


def enrolled(tx: Tx, trial_id: str) -> list[str]:
    """The MSP ids enrolled now (not removed), sorted."""
    return sorted(m for m, rec in enrolments(tx, trial_id).items() if rec["status"] == "enrolled")


def require_enrolled(tx: Tx, trial_id: str, msp_id: str) -> None:
    rec: Enrolment | None = tx.get(enrolment_key(trial_id, msp_id))
    if rec is None or rec["status"] != "enrolled":
        fail(
            "NOT_ENROLLED",
            f"{msp_id} is not enrolled in trial {trial_id!r}",
            trial_id=trial_id,
            msp_id=msp_id,
        )


def require_enrolled_in_running(tx: Tx, trial: Trial, msp_id: str) -> None:
    """The trial is RUNNING and ``msp_id`` is enrolled in it (checked in this order)."""
    require_trial_state(trial, "RUNNING")
    require_enrolled(tx, trial["trial_id"], msp_id)


def own_organisation(a: Args, caller: Caller) -> str:
    """A silo acts for its own MSP id; naming another one is refused, not silently corrected."""
    claimed = a.identifier("msp_id", default=None)
    if claimed is not None and claimed != caller.msp_id:
        fail(
            "WRONG_ORGANISATION",
            f"msp_id: got {claimed!r}, expected the caller's own organisation {caller.msp_id!r}",
            field="msp_id",
            value=claimed,
            expected=caller.msp_id,
        )
    return caller.msp_id


def model_ref(a: Args, name: str) -> ModelRef:
    """An artifact reference argument ``{content_id, sha256}``."""
    ref = a.object(name)
    value: ModelRef = {"content_id": ref.content_id("content_id"), "sha256": ref.sha256("sha256")}
    ref.done()
    return value


def schedule_entry(tx: Tx, trial: Trial, msp_id: str) -> ScheduleEntry | None:
    """The hospital's DP schedule entry (None with DP off, before start_trial, or if absent)."""
    if not trial["dp"]["enabled"]:
        return None
    schedule: DpSchedule | None = tx.get(dp_schedule_key(trial["trial_id"]))
    return None if schedule is None else schedule["entries"].get(msp_id)


def privacy_account(tx: Tx, trial: Trial, msp_id: str) -> PrivacyAccount:
    """The hospital's privacy ledger entry; a fresh (unsaved) one if it never revealed.

    Its budget is the last cumulative epsilon of its DP schedule entry (the trial's target
    before the schedule is recorded), null with DP off."""
    existing: PrivacyAccount | None = tx.get(per_org_key("privacy", trial["trial_id"], msp_id))
    if existing is not None:
        return existing
    dp = trial["dp"]
    budget: int | None = None
    if dp["enabled"]:
        entry = schedule_entry(tx, trial, msp_id)
        budget = dp["target_epsilon_micro"] if entry is None else entry["epsilon_micro"][-1]
    return {
        "trial_id": trial["trial_id"],
        "msp_id": msp_id,
        "budget_micro": budget,
        "epsilon_spent_micro": 0,
        "entries": [],
    }


def reveals_left(trial: Trial, account: PrivacyAccount) -> int | None:
    """DP on: the reveals left in the hospital's schedule (every entry has exactly ``rounds``
    epsilons; halted attempts and rolled-back rounds count, their updates were disclosed);
    None with DP off (no limit)."""
    if not trial["dp"]["enabled"]:
        return None
    return max(0, trial["rounds"] - len(account["entries"]))


def has_budget_left(trial: Trial, account: PrivacyAccount) -> bool:
    left = reveals_left(trial, account)
    return left is None or left > 0


MAX_DEADLINE_FACTOR = 8


def deadline_factor(trial: Trial) -> int:
    """How many times its phase seconds a phase lasts: 2 ** the trial's failed attempts in a
    row, at most 8 (see ``liveness``)."""
    return int(min(MAX_DEADLINE_FACTOR, 2 ** trial.get("failed_attempts", 0)))


def halt_open_round(tx: Tx, caller: Caller, trial: Trial, code: str, reason: str) -> Round | None:
    """Halt the trial's current round if it is still in progress (record only); returns it."""
    current = trial["current"]
    if current is None:
        return None
    rnd: Round = tx.get(round_key(trial["trial_id"], current["round"], current["attempt"]))
    if rnd["phase"] in DONE_PHASES:
        return None
    return halt_round(tx, caller, rnd, code, reason)


# ---------------------------------------------------------------------------------------------
# Rounds
# ---------------------------------------------------------------------------------------------


def round_label(rnd: Round) -> str:
    return f"round {rnd['round']} (attempt {rnd['attempt']}) of trial {rnd['trial_id']!r}"


def round_args(tx: Tx, a: Args) -> tuple[Trial, int]:
    """The ``trial_id`` and ``round`` arguments of a round step."""
    trial = load_trial(tx, a.identifier("trial_id"))
    return trial, a.integer("round", minimum=1, maximum=MAX_ROUNDS)


def current_round(tx: Tx, trial: Trial, r: int) -> Round:
    """The current attempt of round r, which must be the trial's latest round."""
    current = trial["current"]
    if current is not None and current["round"] == r:
        rnd: Round = tx.get(round_key(trial["trial_id"], r, current["attempt"]))
        return rnd
    now = "none" if current is None else f"round {current['round']} (attempt {current['attempt']})"
    if str(r) in trial["attempts"]:
        fail(
            "LATE",
            f"round {r} of trial {trial['trial_id']!r} is over; the current round is {now}",
            round=r,
        )
    fail(
        "NO_SUCH_ROUND",
        f"round {r} of trial {trial['trial_id']!r} was never opened; the current round is {now}",
        round=r,
    )


def current_round_in(tx: Tx, trial: Trial, r: int, phase: Phase) -> Round:
    """Round r of a RUNNING trial, which must be its current round and in ``phase``."""
    require_trial_state(trial, "RUNNING")
    rnd = current_round(tx, trial, r)
    require_phase(rnd, phase)
    return rnd


def find_round(tx: Tx, trial: Trial, r: int | None, a: int | None) -> Round:
    """Any attempt of any round (queries, settlement): attempt defaults to the latest one."""
    if r is None:
        if trial["current"] is None:
            fail("NO_SUCH_ROUND", f"trial {trial['trial_id']!r} has no rounds yet")
        r = trial["current"]["round"]
    attempts = trial["attempts"].get(str(r), 0)
    a = attempts if a is None else a
    if not 1 <= a <= attempts:
        fail(
            "NO_SUCH_ROUND",
            f"round {r} attempt {a} of trial {trial['trial_id']!r} does not exist ({attempts} attempts opened)",
            round=r,
            attempt=a,
        )
    rnd: Round = tx.get(round_key(trial["trial_id"], r, a))
    return rnd


def require_no_round_in_progress(tx: Tx, trial: Trial) -> None:
    current = trial["current"]
    if current is None:
        return
    rnd: Round = tx.get(round_key(trial["trial_id"], current["round"], current["attempt"]))
    if rnd["phase"] not in DONE_PHASES:
        fail(
            "WRONG_STATE",
            f"{round_label(rnd)} is still in progress (phase {rnd['phase']}); finish or abort it first",
            round=rnd["round"],
            phase=rnd["phase"],
        )


def require_phase(rnd: Round, phase: Phase) -> None:
    """LATE if the round moved past ``phase``, WRONG_STATE if it is halted or not there yet."""
    current = rnd["phase"]
    if current == phase:
        return
    if current == "HALTED":
        halt = rnd["halt"]
        reason = None if halt is None else halt["reason"]
        fail("WRONG_STATE", f"{round_label(rnd)} was halted: {reason}", phase=current)
    if PHASES.index(current) > PHASES.index(phase):
        fail(
            "LATE",
            f"{round_label(rnd)} is in phase {current}; phase {phase} is over",
            phase=current,
            expected=phase,
        )
    fail(
        "WRONG_STATE",
        f"{round_label(rnd)} is in phase {current}; phase {phase} has not started",
        phase=current,
        expected=phase,
    )


def require_on_time(tx: Tx, rnd: Round) -> None:
    """On time up to and including the deadline second."""
    deadline = rnd["deadline"]
    if deadline is not None and tx.now > deadline:
        fail(
            "LATE",
            f"{round_label(rnd)}: phase {rnd['phase']} closed at {deadline}, transaction time is {tx.now}",
            deadline=deadline,
            now=tx.now,
        )


def require_closable(tx: Tx, rnd: Round, waiting_for: list[str]) -> None:
    """TOO_EARLY while someone is still expected and the deadline has not passed."""
    deadline = rnd["deadline"]
    if waiting_for and deadline is not None and tx.now <= deadline:
        fail(
            "TOO_EARLY",
            f"{round_label(rnd)}: phase {rnd['phase']} cannot close before its deadline {deadline} "
            f"(now {tx.now}) while waiting for {waiting_for}",
            waiting_for=waiting_for,
            deadline=deadline,
            now=tx.now,
        )


def next_phase(tx: Tx, trial: Trial, rnd: Round, phase: Phase) -> Round:
    """The round moved to ``phase``; a phase with a duration gets its deadline from now."""
    changed: Round = {**rnd, "phase": phase, "phase_changed_at": tx.now, "deadline": None}
    if phase in PHASE_DURATION:
        name = PHASE_DURATION[phase]
        deadline = tx.now + trial["phase_seconds"][name] * deadline_factor(trial)
        changed["deadline"] = deadline
        changed["deadlines"] = {**rnd["deadlines"], name: deadline}
    return changed


def save_round(tx: Tx, rnd: Round) -> None:
    tx.put(round_key(rnd["trial_id"], rnd["round"], rnd["attempt"]), rnd)


def halt_round(
    tx: Tx,
    caller: Caller,
    rnd: Round,
    code: str,
    reason: str,
    attestations: dict[str, str] | None = None,
    *,
    retry: bool = False,
    failed_attempts: int | None = None,
    trial_halted: str | None = None,
) -> Round:
    """Halt a round (record only; the caller emits the event). Pending rewards become void.
    A failure the coordinator retries goes through ``liveness.round_failed``, which counts it."""
    rewards_key = per_round_key("round_rewards", rnd["trial_id"], rnd["round"], rnd["attempt"])
    rewards: RoundRewards | None = tx.get(rewards_key)
    if rewards is not None and rewards["status"] == "pending":
        tx.put(rewards_key, {**rewards, "status": "void"})
    halt: RoundHalt = {"code": code, "reason": reason, "at": tx.now, "by": caller.who()}
    halt["phase"] = rnd["phase"]
    if attestations is not None:
        halt["attestations"] = attestations
    halt["retry"] = retry
    if failed_attempts is not None:
        halt["failed_attempts"] = failed_attempts
    if trial_halted is not None:
        halt["trial_halted"] = trial_halted
    halted: Round = {
        **rnd,
        "phase": "HALTED",
        "phase_changed_at": tx.now,
        "deadline": None,
        "halt": halt,
    }
    save_round(tx, halted)
    return halted


def round_event(rnd: Round, **payload: Any) -> dict[str, Any]:
    """An event payload of a round step: trial, round and attempt, then ``payload``."""
    return {
        "trial_id": rnd["trial_id"],
        "round": rnd["round"],
        "attempt": rnd["attempt"],
        **payload,
    }


def emit_halted_payload(rnd: Round, trial_halt: TrialHalt | None = None) -> dict[str, Any]:
    """The RoundHalted payload of a round ``halt_round`` just halted; ``trial_halt`` when the
    trial halted with it (one event per transaction: it rides on the round's)."""
    halt = rnd["halt"]
    assert halt is not None
    return round_event(
        rnd,
        code=halt["code"],
        reason=halt["reason"],
        phase=halt.get("phase"),
        retry=halt.get("retry", False),
        failed_attempts=halt.get("failed_attempts"),
        trial_halt=None
        if trial_halt is None
        else {"code": trial_halt["code"], "reason": trial_halt["reason"]},
    )


def emit_halted(tx: Tx, rnd: Round) -> None:
    """The RoundHalted event of a round ``halt_round`` just halted (not retried)."""
    tx.emit("RoundHalted", emit_halted_payload(rnd))
