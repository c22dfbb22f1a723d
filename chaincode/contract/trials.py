"""The consortium, trials, enrolment and trial keys.

Trial life cycle:  DRAFT -> ENROLLING -> RUNNING -> COMPLETED;  ENROLLING | RUNNING -> HALTED

A silo always acts for its own MSP id: silo functions accept an optional ``msp_id`` that must
equal the creator's (``WRONG_ORGANISATION`` otherwise).
"""

from __future__ import annotations

import base64

from bcfl_common.certificates import x25519_public_key_raw
from bcfl_common.records import (
    ConsortiumRecord,
    DpPolicy,
    DpSchedule,
    Enrolment,
    Evaluation,
    HePolicy,
    KeyRegistration,
    ModelSpec,
    OrganisationEntry,
    PhaseSeconds,
    Trial,
    TrialHalt,
    TrialKeys,
)
from bcfl_common.vocabulary import LABEL, MICRO, ORGANISATION_KINDS
from chaincode.args import Args, check_identifier_key
from chaincode.contract.context import Caller, Tx, fail
from chaincode.contract.datasets import (
    enrol_dataset,
    own_dataset,
    parse_dp_schedule,
    read_dp_schedule,
)
from chaincode.contract.dispatch import function
from chaincode.contract.liveness import MAX_RETRIES
from chaincode.contract.liveness import trial_halt as halted_by
from chaincode.contract.store import (
    CONSORTIUM_KEY,
    DEFAULT_CLOCK_TOLERANCE_SECONDS,
    DEFAULT_MAX_RETRIES,
    MAX_CLOCK_TOLERANCE_SECONDS,
    MAX_DATASET_RECORDS,
    MAX_EPSILON_MICRO,
    MAX_PHASE_SECONDS,
    MAX_ROUNDS,
    MAX_SCORE_MICRO,
    MAX_SILOS,
    dp_schedule_key,
    enrolled,
    enrolment_key,
    enrolments,
    halt_open_round,
    key_registration_key,
    load_trial,
    model_ref,
    own_organisation,
    require_enrolled,
    require_no_round_in_progress,
    require_trial_state,
    set_trial_state,
    trial_key,
    trial_keys_key,
)
from chaincode.rules import MAX_NORM_MILLI

# Mirrors privacy.dp.policy (ACCOUNTANTS, GRAD_SAMPLE_MODES) and privacy.he.presets.DEFAULT_PRESET;
# the contract may not import them (stdlib and cryptography only), so silos re-check the names.
DP_ACCOUNTANTS = ("rdp", "prv")
DP_GRAD_SAMPLE_MODES = ("ghost", "hooks")
DEFAULT_DP = {
    "target_epsilon_micro": 8_000_000,
    "delta": "1/100000",
    "max_grad_norm_milli": 1000,
    "local_epochs": 1,
    "accountant": "rdp",
    "grad_sample_mode": "ghost",
}
DEFAULT_HE_PRESET = "ckks-n4096-s33"
DEFAULT_EVALUATION = {
    "acceptance_threshold_micro": 10_000,
    "min_voters": 2,
    "reward_per_round": 1000,
    "max_weight_share_micro": 500_000,
    # A re-encrypted copy scores 1_000_000 (CKKS error ~1e-7); honest updates of consecutive
    # rounds reached 0.997 with DP off on the demo data (0.89 with DP on), hence 0.99999.
    "duplicate_similarity_micro": 999_990,
    "max_norm_ratio_milli": 3000,
    "max_update_norm_milli": None,
    "voter_reward_share_micro": 200_000,
    # Harm must exceed 2 standard errors (the round's level for the voter): in 4-centre heart
    # disease simulations this kept 97.5% of honest updates at epsilon 1 (86% with the threshold
    # alone) and still rejected 27 of 30 label-flipped ones at epsilon 3 (ARCHITECTURE.md).
    "harm_se_milli": 2000,
    # With DP off, step 5 compares norms per square root of sample weight (with DP on: raw,
    # parse_evaluation; chaincode.rules.norm_outlier).
    "norm_outlier_scaling": "sqrt_sample_weight",
}
NORM_OUTLIER_SCALINGS = ("none", "sqrt_sample_weight")
DEFAULT_PHASE_SECONDS = {"submit": 3600, "reveal": 900, "vote_commit": 1800, "vote_reveal": 900}

_TASK = "a task name: 1-128 of letters, digits, space . _ : / + - starting with a letter or digit"


# ---------------------------------------------------------------------------------------------
# Consortium
# ---------------------------------------------------------------------------------------------


@function("init_consortium", "admin", access="bootstrap")
def init_consortium(tx: Tx, caller: Caller, a: Args) -> ConsortiumRecord:
    """admin (of an operator organisation it lists); {organisations: [{msp_id, kind}]};
    returns the consortium; event ConsortiumInitialised. Runs once."""
    if tx.get(CONSORTIUM_KEY) is not None:
        fail("ALREADY_EXISTS", "the consortium is already initialised; init_consortium runs once")
    organisations: dict[str, OrganisationEntry] = {}
    items = a.list("organisations", min_items=1, max_items=256)
    for i, item in enumerate(items):
        org = a.item("organisations", i, item)
        msp_id = org.identifier("msp_id")
        kind = org.choice("kind", ORGANISATION_KINDS)
        org.done()
        if msp_id in organisations:
            a.fail(f"organisations[{i}].msp_id", msp_id, "each MSP id once")
        organisations[msp_id] = {"msp_id": msp_id, "kind": kind}
    a.done()
    # Otherwise any organisation's CA could mint an "admin" and bootstrap the consortium.
    mine = organisations.get(caller.msp_id)
    if mine is None or mine["kind"] != "operator":
        fail(
            "FORBIDDEN_ROLE",
            f"init_consortium must come from an admin of an operator organisation it lists; "
            f"{caller.msp_id} is {'not listed' if mine is None else 'a ' + mine['kind'] + ' organisation'}",
            msp_id=caller.msp_id,
        )
    record: ConsortiumRecord = {
        "organisations": organisations,
        "initialised_at": tx.now,
        "initialised_by": caller.who(),
    }
    tx.put(CONSORTIUM_KEY, record)
    tx.emit("ConsortiumInitialised", {"organisations": sorted(organisations)})
    return record


# ---------------------------------------------------------------------------------------------
# Trials
# ---------------------------------------------------------------------------------------------


def parse_dp(a: Args) -> DpPolicy:
    """DP is on unless switched off explicitly; the switch-off and its reason are recorded."""
    dp = a.object("dp", default={})
    if not dp.boolean("enabled", default=True):
        off: DpPolicy = {"enabled": False, "reason": dp.string("reason", default=None)}
        dp.done()
        return off
    policy: DpPolicy = {
        "enabled": True,
        "target_epsilon_micro": dp.integer(
            "target_epsilon_micro",
            minimum=1,
            maximum=MAX_EPSILON_MICRO,
            default=DEFAULT_DP["target_epsilon_micro"],
        ),
        "delta": dp.fraction("delta", default=DEFAULT_DP["delta"]),
        "max_grad_norm_milli": dp.integer(
            "max_grad_norm_milli",
            minimum=1,
            maximum=10**9,
            default=DEFAULT_DP["max_grad_norm_milli"],
        ),
        "local_epochs": dp.integer(
            "local_epochs", minimum=1, maximum=1000, default=DEFAULT_DP["local_epochs"]
        ),
        "accountant": dp.choice("accountant", DP_ACCOUNTANTS, default=DEFAULT_DP["accountant"]),
        "grad_sample_mode": dp.choice(
            "grad_sample_mode", DP_GRAD_SAMPLE_MODES, default=DEFAULT_DP["grad_sample_mode"]
        ),
    }
    dp.done()
    return policy


def parse_he(a: Args) -> HePolicy:
    """HE is on (with a preset name) unless switched off explicitly, with its reason."""
    he = a.object("he", default={})
    policy: HePolicy
    if not he.boolean("enabled", default=True):
        policy = {"enabled": False, "reason": he.string("reason", default=None)}
    else:
        policy = {
            "enabled": True,
            "preset": he.string(
                "preset", pattern=LABEL, expected="a preset name", default=DEFAULT_HE_PRESET
            ),
        }
    he.done()
    return policy


def parse_evaluation(a: Args, *, dp_enabled: bool = True) -> Evaluation:
    """The evaluation policy (``chaincode.rules.judge_round``), each field defaulted from
    DEFAULT_EVALUATION: acceptance_threshold_micro (0..MAX_SCORE_MICRO: harmful below minus it),
    min_voters (1..MAX_SILOS), reward_per_round (0..10**15), max_weight_share_micro
    (1..10**6), duplicate_similarity_micro (0..10**6), max_norm_ratio_milli (1000..10**6),
    max_update_norm_milli (null, or 1..MAX_NORM_MILLI: null takes each hospital's bound from
    the DP schedule), voter_reward_share_micro (0..10**6) and harm_se_milli (0..10_000: harm
    must also exceed this many thousandths of the voter's standard error of a score in the
    round; 0: the threshold alone; ``chaincode.rules.harm_floor``) and norm_outlier_scaling
    (``sqrt_sample_weight``: outliers judged per square root of sample weight, the default with
    DP off; ``none``: raw norms, the default with DP on, where an update's norm is mostly its
    noise, set by each hospital's noise multiplier rather than by its steps;
    ``chaincode.rules.norm_outlier``)."""
    ev = a.object("evaluation", default={})
    d = DEFAULT_EVALUATION
    policy: Evaluation = {
        "acceptance_threshold_micro": ev.integer(
            "acceptance_threshold_micro",
            minimum=0,
            maximum=MAX_SCORE_MICRO,
            default=d["acceptance_threshold_micro"],
        ),
        "min_voters": ev.integer(
            "min_voters", minimum=1, maximum=MAX_SILOS, default=d["min_voters"]
        ),
        "reward_per_round": ev.integer(
            "reward_per_round", minimum=0, maximum=10**15, default=d["reward_per_round"]
        ),
        "max_weight_share_micro": ev.integer(
            "max_weight_share_micro", minimum=1, maximum=MICRO, default=d["max_weight_share_micro"]
        ),
        "duplicate_similarity_micro": ev.integer(
            "duplicate_similarity_micro",
            minimum=0,
            maximum=MICRO,
            default=d["duplicate_similarity_micro"],
        ),
        "max_norm_ratio_milli": ev.integer(
            "max_norm_ratio_milli", minimum=1000, maximum=10**6, default=d["max_norm_ratio_milli"]
        ),
        "max_update_norm_milli": ev.integer(
            "max_update_norm_milli",
            minimum=1,
            maximum=MAX_NORM_MILLI,
            default=d["max_update_norm_milli"],
        ),
        "voter_reward_share_micro": ev.integer(
            "voter_reward_share_micro",
            minimum=0,
            maximum=MICRO,
            default=d["voter_reward_share_micro"],
        ),
        "harm_se_milli": ev.integer(
            "harm_se_milli", minimum=0, maximum=10_000, default=d["harm_se_milli"]
        ),
        "norm_outlier_scaling": ev.choice(
            "norm_outlier_scaling",
            NORM_OUTLIER_SCALINGS,
            default="none" if dp_enabled else d["norm_outlier_scaling"],
        ),
    }
    ev.done()
    return policy


def parse_phase_seconds(a: Args) -> PhaseSeconds:
    ph = a.object("phase_seconds", default={})
    d = DEFAULT_PHASE_SECONDS
    durations: PhaseSeconds = {
        "submit": ph.integer("submit", minimum=1, maximum=MAX_PHASE_SECONDS, default=d["submit"]),
        "reveal": ph.integer("reveal", minimum=1, maximum=MAX_PHASE_SECONDS, default=d["reveal"]),
        "vote_commit": ph.integer(
            "vote_commit", minimum=1, maximum=MAX_PHASE_SECONDS, default=d["vote_commit"]
        ),
        "vote_reveal": ph.integer(
            "vote_reveal", minimum=1, maximum=MAX_PHASE_SECONDS, default=d["vote_reveal"]
        ),
    }
    ph.done()
    return durations


@function("create_trial", "admin")
def create_trial(tx: Tx, caller: Caller, a: Args) -> Trial:
    """admin; {trial_id, task, data_schema, model: {name, [hyperparameters]}, initial_model: ref,
    rounds, min_silos (>= 2), [max_retries], [dp], [he], [evaluation], [phase_seconds],
    [clock_tolerance_seconds]}; returns the trial in DRAFT; event TrialCreated. Omitted fields
    take DEFAULT_DP, DEFAULT_HE_PRESET, DEFAULT_EVALUATION, DEFAULT_PHASE_SECONDS and
    DEFAULT_CLOCK_TOLERANCE_SECONDS (how far apart two commitments must be for the earlier to own
    content both revealed: ``chaincode.rules.content_owner``); DP and HE are on unless
    ``{"enabled": false, ["reason"]}`` is given."""
    trial_id = a.identifier("trial_id")
    model = a.object("model")
    model_spec: ModelSpec = {
        "name": model.string("name", pattern=LABEL, expected="a model name from the registry"),
        "hyperparameters": model.opaque_object("hyperparameters", default={}),
    }
    model.done()
    initial_model = model_ref(a, "initial_model")
    trial: Trial = {
        "trial_id": trial_id,
        "task": a.string("task", pattern=LABEL, expected=_TASK),
        "data_schema": a.opaque_object("data_schema"),
        "model": model_spec,
        "initial_model": initial_model,
        "rounds": a.integer("rounds", minimum=1, maximum=MAX_ROUNDS),
        # Peer evaluation needs peers: one hospital alone cannot be judged by anyone.
        "min_silos": a.integer("min_silos", minimum=2, maximum=MAX_SILOS),
        "dp": (dp := parse_dp(a)),
        "he": parse_he(a),
        "evaluation": parse_evaluation(a, dp_enabled=dp["enabled"]),
        "phase_seconds": parse_phase_seconds(a),
        "state": "DRAFT",
        "created_at": tx.now,
        "created_by": caller.who(),
        "state_changed_at": tx.now,
        "enrolled_at_start": None,
        "halt": None,
        "current": None,
        "attempts": {},
        "head": {"round": 0, "attempt": 0, "model": initial_model},
        "lineage": [],
        "rollbacks": [],
        "final_round": 0,  # set below to rounds
        "max_retries": a.integer(
            "max_retries", minimum=0, maximum=MAX_RETRIES, default=DEFAULT_MAX_RETRIES
        ),
        "failed_attempts": 0,
        "resumes": [],
        "clock_tolerance_seconds": a.integer(
            "clock_tolerance_seconds",
            minimum=0,
            maximum=MAX_CLOCK_TOLERANCE_SECONDS,
            default=DEFAULT_CLOCK_TOLERANCE_SECONDS,
        ),
    }
    trial["final_round"] = trial["rounds"]
    a.done()
    if tx.get(trial_key(trial_id)) is not None:
        fail("ALREADY_EXISTS", f"trial {trial_id!r} already exists", trial_id=trial_id)
    tx.put(trial_key(trial_id), trial)
    tx.emit(
        "TrialCreated",
        {
            "trial_id": trial_id,
            "rounds": trial["rounds"],
            "min_silos": trial["min_silos"],
            "max_retries": trial["max_retries"],
            "dp_enabled": trial["dp"]["enabled"],
            "he_enabled": trial["he"]["enabled"],
        },
    )
    return trial


@function("open_enrolment", "admin")
def open_enrolment(tx: Tx, caller: Caller, a: Args) -> Trial:
    """admin; {trial_id}; DRAFT -> ENROLLING; returns the trial; event EnrolmentOpened."""
    trial = load_trial(tx, a.identifier("trial_id"))
    a.done()
    require_trial_state(trial, "DRAFT")
    trial = set_trial_state(tx, trial, "ENROLLING")
    tx.emit("EnrolmentOpened", {"trial_id": trial["trial_id"]})
    return trial


def x25519_public_key(a: Args, name: str) -> str:
    """Normalise a PEM or base64 X25519 public key to base64 of its 32 raw bytes."""
    expected = "an X25519 public key: PEM (SubjectPublicKeyInfo) or base64 of its 32 raw bytes"
    text = a.string(name, max_len=4096, expected=expected)
    try:
        raw = x25519_public_key_raw(text)
    except ValueError:
        a.fail(name, text, expected)
    return base64.b64encode(raw).decode("ascii")


@function("register_encryption_key", "silo")
def register_encryption_key(tx: Tx, caller: Caller, a: Args) -> KeyRegistration:
    """silo; {trial_id, encryption_public_key, dataset_id, training_records}: the hospital's own
    X25519 key for the trial, signed by itself, and the dataset it trains on: one of its own
    registered datasets (NOT_FOUND otherwise) and 1..that dataset's records of it (which bound
    every sample weight it reveals); while DRAFT or ENROLLING and until it is enrolled; returns
    the registration; event EncryptionKeyRegistered.

    The trial's secret context is sealed to the enrolled keys, so they must come from the
    hospitals, not from the operator: ``enrol_hospital`` accepts only the key the hospital
    registered here (otherwise an operator could enrol a key of its own and open the envelope).
    """
    trial = load_trial(tx, a.identifier("trial_id"))
    msp_id = own_organisation(a, caller)
    public_key = x25519_public_key(a, "encryption_public_key")
    dataset_id = a.identifier("dataset_id")
    training_records = a.integer("training_records", minimum=1, maximum=MAX_DATASET_RECORDS)
    a.done()
    require_trial_state(trial, "DRAFT", "ENROLLING")
    enrolment: Enrolment | None = tx.get(enrolment_key(trial["trial_id"], msp_id))
    if enrolment is not None and enrolment["status"] == "enrolled":
        fail(
            "ALREADY_EXISTS",
            f"{msp_id} is already enrolled in trial {trial['trial_id']!r}; its key is fixed",
            msp_id=msp_id,
        )
    dataset = own_dataset(tx, msp_id, dataset_id)
    if training_records > dataset["records"]:
        a.fail(
            "training_records",
            training_records,
            f"an integer from 1 to {dataset['records']} (the records of dataset {dataset_id!r})",
        )
    record: KeyRegistration = {
        "trial_id": trial["trial_id"],
        "msp_id": msp_id,
        "encryption_public_key": public_key,
        "registered_at": tx.now,
        "dataset_id": dataset_id,
        "training_records": training_records,
    }
    tx.put(key_registration_key(trial["trial_id"], msp_id), record)
    tx.emit(
        "EncryptionKeyRegistered",
        {"trial_id": trial["trial_id"], "msp_id": msp_id, "dataset_id": dataset_id},
    )
    return record


@function("enrol_hospital", "admin")
def enrol_hospital(tx: Tx, caller: Caller, a: Args) -> Enrolment:
    """admin; {trial_id, msp_id, encryption_public_key (X25519, PEM or base64)}, which must equal
    the key that hospital registered itself (KEY_MISMATCH); while ENROLLING; with DP on, refused
    BUDGET_EXCEEDED when the registered dataset's remaining lifetime epsilon is below the trial's
    target; lists the trial on the dataset; returns the enrolment (with the registered dataset
    and training records); event HospitalEnrolled."""
    trial = load_trial(tx, a.identifier("trial_id"))
    msp_id = a.identifier("msp_id")
    public_key = x25519_public_key(a, "encryption_public_key")
    a.done()
    require_trial_state(trial, "ENROLLING")
    consortium: ConsortiumRecord = tx.get(CONSORTIUM_KEY)
    org = consortium["organisations"].get(msp_id)
    if org is None:
        fail(
            "NOT_FOUND",
            f"msp_id: {msp_id!r} is not an organisation of the consortium",
            field="msp_id",
            value=msp_id,
        )
    if org["kind"] != "hospital":
        fail(
            "WRONG_ORGANISATION",
            f"msp_id: {msp_id!r} is a {org['kind']} organisation, expected a hospital",
            field="msp_id",
            value=msp_id,
        )
    key = enrolment_key(trial["trial_id"], msp_id)
    existing: Enrolment | None = tx.get(key)
    if existing is not None and existing["status"] == "enrolled":
        fail(
            "ALREADY_EXISTS",
            f"{msp_id} is already enrolled in trial {trial['trial_id']!r}",
            msp_id=msp_id,
        )
    registered: KeyRegistration | None = tx.get(key_registration_key(trial["trial_id"], msp_id))
    if registered is None:
        fail(
            "NOT_FOUND",
            f"{msp_id} has not registered an encryption key for trial {trial['trial_id']!r}; "
            "the hospital itself must call register_encryption_key first",
            msp_id=msp_id,
        )
    if registered["encryption_public_key"] != public_key:
        fail(
            "KEY_MISMATCH",
            f"encryption_public_key: not the key {msp_id} registered itself for trial "
            f"{trial['trial_id']!r}; expected {registered['encryption_public_key']}",
            field="encryption_public_key",
            msp_id=msp_id,
        )
    enrol_dataset(tx, trial, own_dataset(tx, msp_id, registered["dataset_id"]))
    record: Enrolment = {
        "trial_id": trial["trial_id"],
        "msp_id": msp_id,
        "status": "enrolled",
        "encryption_public_key": public_key,
        "enrolled_at": tx.now,
        "enrolled_by": caller.who(),
        "removed_at": None,
        "removed_by": None,
        "removal_reason": None,
        "dataset_id": registered["dataset_id"],
        "training_records": registered["training_records"],
    }
    tx.put(key, record)
    tx.emit(
        "HospitalEnrolled",
        {"trial_id": trial["trial_id"], "msp_id": msp_id, "dataset_id": record["dataset_id"]},
    )
    return record


@function("remove_hospital", "admin")
def remove_hospital(tx: Tx, caller: Caller, a: Args) -> Enrolment:
    """admin; {trial_id, msp_id, [reason]}; while ENROLLING, RUNNING or HALTED (before a resume
    that hospital's budgets could not carry); returns the enrolment,
    now "removed"; event HospitalRemoved. Its records stay; it is no longer waited for. A RUNNING
    trial left with fewer than min_silos hospitals halts with it (TOO_FEW_HOSPITALS; the event's
    ``trial_halt`` says so), its open round too (TRIAL_HALTED)."""
    trial = load_trial(tx, a.identifier("trial_id"))
    msp_id = a.identifier("msp_id")
    reason = a.string("reason", default=None)
    a.done()
    require_trial_state(trial, "ENROLLING", "RUNNING", "HALTED")
    require_enrolled(tx, trial["trial_id"], msp_id)
    key = enrolment_key(trial["trial_id"], msp_id)
    current: Enrolment = tx.get(key)
    record: Enrolment = {
        **current,
        "status": "removed",
        "removed_at": tx.now,
        "removed_by": caller.who(),
        "removal_reason": reason,
    }
    tx.put(key, record)
    left = [m for m in enrolled(tx, trial["trial_id"]) if m != msp_id]
    trial_halt: TrialHalt | None = None
    if trial["state"] == "RUNNING" and len(left) < trial["min_silos"]:
        # No round could ever reach min_silos again: the trial ends here, saying why.
        trial_halt = halted_by(
            tx,
            caller,
            "TOO_FEW_HOSPITALS",
            f"{msp_id} was removed: {len(left)} hospitals are enrolled "
            f"({', '.join(left) or 'none'}), fewer than min_silos={trial['min_silos']}",
        )
        halt_open_round(tx, caller, trial, "TRIAL_HALTED", trial_halt["reason"])
        set_trial_state(tx, {**trial, "halt": trial_halt}, "HALTED")
    tx.emit(
        "HospitalRemoved",
        {
            "trial_id": trial["trial_id"],
            "msp_id": msp_id,
            "reason": reason,
            "trial_halt": None
            if trial_halt is None
            else {"code": trial_halt["code"], "reason": trial_halt["reason"]},
        },
    )
    return record


@function("start_trial", "admin")
def start_trial(tx: Tx, caller: Caller, a: Args) -> Trial:
    """admin; {trial_id, dp_schedule (required iff DP is on, refused otherwise): {msp_id:
    ScheduleEntry} for exactly the enrolled hospitals}; ENROLLING -> RUNNING with at least
    min_silos enrolled (INSUFFICIENT_SILOS); records the schedule (``DpSchedule``, checked by
    ``datasets.parse_dp_schedule``: training_records as enrolled, ``rounds`` non-decreasing
    cumulative epsilons each >= 1 and at most the target); returns the trial; event
    TrialStarted."""
    trial = load_trial(tx, a.identifier("trial_id"))
    require_trial_state(trial, "ENROLLING")
    raw_schedule = read_dp_schedule(a, trial)
    a.done()
    trial_id = trial["trial_id"]
    members = enrolled(tx, trial_id)
    if len(members) < trial["min_silos"]:
        fail(
            "INSUFFICIENT_SILOS",
            f"trial {trial_id!r} has {len(members)} enrolled hospitals, expected at least min_silos={trial['min_silos']}",
            enrolled=members,
            min_silos=trial["min_silos"],
        )
    if raw_schedule is not None:
        current = {m: rec for m, rec in enrolments(tx, trial_id).items() if m in members}
        schedule: DpSchedule = {
            "trial_id": trial_id,
            "entries": parse_dp_schedule(a, trial, raw_schedule, current),
            "recorded_at": tx.now,
            "recorded_by": caller.who(),
        }
        tx.put(dp_schedule_key(trial_id), schedule)
    trial = set_trial_state(tx, {**trial, "enrolled_at_start": members}, "RUNNING")
    tx.emit(
        "TrialStarted",
        {"trial_id": trial_id, "enrolled": members, "dp_schedule": raw_schedule is not None},
    )
    return trial


@function("halt_trial", "admin")
def halt_trial(tx: Tx, caller: Caller, a: Args) -> Trial:
    """admin; {trial_id, reason}; ENROLLING | RUNNING -> HALTED (code HALTED_BY_ADMIN), and an
    open round halts too (halt code TRIAL_HALTED); a started trial can be resumed
    (``recovery.resume_trial``); returns the trial; event TrialHalted."""
    trial = load_trial(tx, a.identifier("trial_id"))
    reason = a.string("reason")
    a.done()
    require_trial_state(trial, "ENROLLING", "RUNNING")
    # Leave no round looking open under a halted trial.
    halt_open_round(tx, caller, trial, "TRIAL_HALTED", reason)
    halted: Trial = {
        **trial,
        "halt": halted_by(tx, caller, "HALTED_BY_ADMIN", reason),
    }
    trial = set_trial_state(tx, halted, "HALTED")
    tx.emit(
        "TrialHalted", {"trial_id": trial["trial_id"], "code": "HALTED_BY_ADMIN", "reason": reason}
    )
    return trial


@function("complete_trial", "admin")
def complete_trial(tx: Tx, caller: Caller, a: Args) -> Trial:
    """admin; {trial_id}; RUNNING -> COMPLETED once the head is the plan's ``final_round`` and no
    round is in progress; returns the trial; event TrialCompleted."""
    trial = load_trial(tx, a.identifier("trial_id"))
    a.done()
    require_trial_state(trial, "RUNNING")
    require_no_round_in_progress(tx, trial)
    if trial["head"]["round"] != trial["final_round"]:
        fail(
            "WRONG_STATE",
            f"trial {trial['trial_id']!r} has finalized {trial['head']['round']} of "
            f"{trial['final_round']} rounds",
            finalized=trial["head"]["round"],
            rounds=trial["final_round"],
        )
    trial = set_trial_state(tx, trial, "COMPLETED")
    tx.emit(
        "TrialCompleted", {"trial_id": trial["trial_id"], "final_model": trial["head"]["model"]}
    )
    return trial


# ---------------------------------------------------------------------------------------------
# Trial keys
# ---------------------------------------------------------------------------------------------


@function("record_trial_keys", "silo")
def record_trial_keys(tx: Tx, caller: Caller, a: Args) -> TrialKeys:
    """silo (enrolled); {trial_id, public_context: ref, envelopes: {msp_id: ref} for exactly the
    enrolled hospitals}; once, while RUNNING; returns the trial keys; event TrialKeysRecorded."""
    trial = load_trial(tx, a.identifier("trial_id"))
    msp_id = own_organisation(a, caller)
    public_context = model_ref(a, "public_context")
    raw_envelopes = a.mapping("envelopes", key=check_identifier_key, max_items=MAX_SILOS)
    envelopes = {
        holder: model_ref(Args(raw_envelopes, prefix=a.field("envelopes") + "."), holder)
        for holder in raw_envelopes
    }
    a.done()
    require_trial_state(trial, "RUNNING")
    require_enrolled(tx, trial["trial_id"], msp_id)
    if tx.get(trial_keys_key(trial["trial_id"])) is not None:
        fail("ALREADY_EXISTS", f"trial {trial['trial_id']!r} already has its keys recorded")
    members = enrolled(tx, trial["trial_id"])
    missing = sorted(set(members) - set(envelopes))
    extra = sorted(set(envelopes) - set(members))
    if missing or extra:
        a.fail(
            "envelopes",
            sorted(envelopes),
            f"one envelope for each enrolled hospital {members} (missing {missing}, not enrolled {extra})",
        )
    record: TrialKeys = {
        "trial_id": trial["trial_id"],
        "msp_id": msp_id,
        "public_context": public_context,
        "envelopes": envelopes,
        "recorded_at": tx.now,
    }
    tx.put(trial_keys_key(trial["trial_id"]), record)
    tx.emit(
        "TrialKeysRecorded",
        {
            "trial_id": trial["trial_id"],
            "msp_id": msp_id,
            "public_context_sha256": public_context["sha256"],
        },
    )
    return record
