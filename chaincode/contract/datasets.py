"""Registered datasets, the epsilon each may spend over its lifetime, and a trial's DP schedule.

A hospital registers each training dataset once (``register_dataset``): a salted sha256
commitment to the data file, its number of records and the epsilon it may spend over its whole
life, across trials. It names the dataset, and how many of its records it trains on, when it
registers its key for a trial; the enrolment copies both, and every sample weight it reveals is
bounded by those training records (``chaincode.contract.rounds``).

A dataset's budget (``dataset_budget``): each trial it was enrolled in counts what it may still
spend while it runs (its ``planned``: the hospital's schedule budget, or the trial's target before
the schedule exists) and what it actually spent once COMPLETED or HALTED, or once the hospital
was removed; ``enrol_hospital`` refuses BUDGET_EXCEEDED when what remains is less than the
trial's target epsilon. Trials with DP off are listed with nothing planned.

The DP schedule (``parse_dp_schedule``, recorded by ``start_trial``) gives each enrolled hospital
its cumulative epsilon after 1..rounds reveals. It is computed with Opacus off the ledger
(``privacy.dp.schedule``) and recomputable by anyone; the contract checks its shape and bounds
and charges each reveal the difference of two consecutive entries.
"""

from __future__ import annotations

from typing import Any

from bcfl_common.records import (
    Dataset,
    DatasetBudget,
    DatasetTrial,
    DpEnabled,
    Enrolment,
    ScheduleEntry,
    Trial,
)
from chaincode.args import Args, check_identifier_key
from chaincode.contract.context import Caller, Tx, fail
from chaincode.contract.dispatch import function
from chaincode.contract.store import (
    MAX_DATASET_RECORDS,
    MAX_EPSILON_MICRO,
    MAX_SILOS,
    dataset_key,
    enrolment_key,
    own_organisation,
    privacy_account,
    trial_key,
    with_defaults,
)

MAX_BATCHES_PER_EPOCH = 10**9
MAX_STEPS_PER_ROUND = 10**12
MAX_NOISE_MULTIPLIER_MICRO = 10**12
MAX_UPDATE_NORM_MILLI = 10**15


@function("register_dataset", "silo")
def register_dataset(tx: Tx, caller: Caller, a: Args) -> Dataset:
    """silo; {dataset_id, commitment (sha256 hex: a salted sha256 of the data file), records
    (1..10**9), lifetime_epsilon_micro (1..MAX_EPSILON_MICRO)}; once per hospital and dataset id
    (ALREADY_EXISTS); returns the dataset; event DatasetRegistered."""
    msp_id = own_organisation(a, caller)
    dataset_id = a.identifier("dataset_id")
    commitment = a.sha256("commitment")
    records = a.integer("records", minimum=1, maximum=MAX_DATASET_RECORDS)
    lifetime = a.integer("lifetime_epsilon_micro", minimum=1, maximum=MAX_EPSILON_MICRO)
    a.done()
    key = dataset_key(msp_id, dataset_id)
    if tx.get(key) is not None:
        # A second registration could reset the lifetime budget or the list of trials.
        fail(
            "ALREADY_EXISTS",
            f"dataset_id: {msp_id} already registered dataset {dataset_id!r}; a dataset is registered once",
            field="dataset_id",
            value=dataset_id,
        )
    record: Dataset = {
        "msp_id": msp_id,
        "dataset_id": dataset_id,
        "commitment": commitment,
        "records": records,
        "lifetime_epsilon_micro": lifetime,
        "registered_at": tx.now,
        "trials": [],
    }
    tx.put(key, record)
    tx.emit(
        "DatasetRegistered",
        {
            "msp_id": msp_id,
            "dataset_id": dataset_id,
            "records": records,
            "lifetime_epsilon_micro": lifetime,
        },
    )
    return record


def own_dataset(tx: Tx, msp_id: str, dataset_id: str) -> Dataset:
    """The hospital's own dataset (NOT_FOUND otherwise: another hospital's is never found)."""
    dataset: Dataset | None = tx.get(dataset_key(msp_id, dataset_id))
    if dataset is None:
        fail(
            "NOT_FOUND",
            f"dataset_id: {msp_id} has registered no dataset {dataset_id!r} "
            "(a hospital trains only on its own registered datasets: register_dataset first)",
            field="dataset_id",
            value=dataset_id,
        )
    return dataset


def dataset_trial(tx: Tx, dataset: Dataset, trial: Trial) -> DatasetTrial:
    """What ``trial`` takes from ``dataset``'s lifetime epsilon (see DatasetTrial)."""
    msp_id = dataset["msp_id"]
    enrolment: Enrolment | None = tx.get(enrolment_key(trial["trial_id"], msp_id))
    # The dataset can change only while the trial is ENROLLING (remove, register again,
    # re-enrol), before anything is spent: all a trial spends is on its enrolment's dataset.
    uses = enrolment is not None and enrolment["dataset_id"] == dataset["dataset_id"]
    account = privacy_account(tx, trial, msp_id)
    planned = (account["budget_micro"] or 0) if uses else 0
    spent = account["epsilon_spent_micro"] if uses else 0
    live = trial["state"] in ("DRAFT", "ENROLLING", "RUNNING")
    counts_planned = live and enrolment is not None and enrolment["status"] == "enrolled"
    return {
        "state": trial["state"],
        "dp_enabled": trial["dp"]["enabled"],
        "planned_micro": planned,
        "spent_micro": spent,
        "counted_micro": planned if counts_planned and uses else spent,
    }


def dataset_budget(tx: Tx, dataset: Dataset) -> DatasetBudget:
    """The dataset's lifetime epsilon, what its trials count against it, and what remains."""
    trials: dict[str, DatasetTrial] = {}
    for trial_id in dataset["trials"]:
        trial: Trial = with_defaults(tx.get(trial_key(trial_id)))
        trials[trial_id] = dataset_trial(tx, dataset, trial)
    committed = sum(entry["counted_micro"] for entry in trials.values())
    return {
        "msp_id": dataset["msp_id"],
        "dataset_id": dataset["dataset_id"],
        "lifetime_epsilon_micro": dataset["lifetime_epsilon_micro"],
        "committed_micro": committed,
        "remaining_micro": dataset["lifetime_epsilon_micro"] - committed,
        "trials": trials,
    }


def enrol_dataset(tx: Tx, trial: Trial, dataset: Dataset) -> None:
    """Refuse BUDGET_EXCEEDED if a trial with DP on would over-commit the dataset's lifetime
    epsilon; otherwise list the trial on the dataset (writes the dataset)."""
    dp = trial["dp"]
    if dp["enabled"]:
        budget = dataset_budget(tx, dataset)
        planned = dp["target_epsilon_micro"]
        if budget["remaining_micro"] < planned:
            fail(
                "BUDGET_EXCEEDED",
                f"dataset {dataset['dataset_id']!r} of {dataset['msp_id']}: lifetime "
                f"{budget['lifetime_epsilon_micro']} micro-epsilon, committed "
                f"{budget['committed_micro']} to its trials, remaining {budget['remaining_micro']}; "
                f"trial {trial['trial_id']!r} plans {planned}",
                dataset_id=dataset["dataset_id"],
                lifetime_micro=budget["lifetime_epsilon_micro"],
                committed_micro=budget["committed_micro"],
                remaining_micro=budget["remaining_micro"],
                planned_micro=planned,
            )
    if trial["trial_id"] not in dataset["trials"]:
        updated: Dataset = {**dataset, "trials": [*dataset["trials"], trial["trial_id"]]}
        tx.put(dataset_key(dataset["msp_id"], dataset["dataset_id"]), updated)


# ---------------------------------------------------------------------------------------------
# The DP schedule
# ---------------------------------------------------------------------------------------------


def read_dp_schedule(a: Args, trial: Trial) -> dict[str, Any] | None:
    """The raw ``dp_schedule`` argument: required iff the trial has DP on (DP off has none)."""
    name = "dp_schedule"
    if not trial["dp"]["enabled"]:
        if a.has(name):
            a.fail(
                name,
                a.opaque_object(name),
                f"no DP schedule: trial {trial['trial_id']!r} has DP off",
            )
        a.string(name, default=None)  # an explicit null means none: read it so done() accepts it
        return None
    if not a.has(name):
        expected = (
            f"a DP schedule {{msp_id: entry}}: trial {trial['trial_id']!r} has DP on, so each "
            "hospital's epsilon per reveal is fixed when it starts"
        )
        fail(
            "INVALID_ARGUMENT",
            f"{name}: got missing, expected {expected}",
            field=name,
            value=None,
            expected=expected,
        )
    return a.mapping(name, key=check_identifier_key, max_items=MAX_SILOS)


def parse_dp_schedule(
    a: Args, trial: Trial, raw: dict[str, Any], enrolments: dict[str, Enrolment]
) -> dict[str, ScheduleEntry]:
    """Check the schedule against the trial and its enrolled hospitals (``enrolments``): one
    entry each, training_records as enrolled, ``rounds`` cumulative epsilons, each >= 1,
    non-decreasing and at most the trial's target."""
    dp = trial["dp"]
    assert dp["enabled"]
    members = sorted(enrolments)
    missing = sorted(set(members) - set(raw))
    extra = sorted(set(raw) - set(members))
    if missing or extra:
        a.fail(
            "dp_schedule",
            sorted(raw),
            f"one entry for each enrolled hospital {members} (missing {missing}, not enrolled {extra})",
        )
    schedule = Args(raw, prefix=a.field("dp_schedule") + ".")
    return {
        msp_id: schedule_entry(schedule.object(msp_id), trial, dp, enrolments[msp_id])
        for msp_id in members
    }


def schedule_entry(e: Args, trial: Trial, dp: DpEnabled, enrolment: Enrolment) -> ScheduleEntry:
    registered = enrolment["training_records"]
    records = e.integer("training_records", minimum=1, maximum=MAX_DATASET_RECORDS)
    if records != registered:
        e.fail(
            "training_records",
            records,
            f"{registered}, the training_records {enrolment['msp_id']} registered for the trial",
        )
    entry: ScheduleEntry = {
        "training_records": records,
        "batches_per_epoch": e.integer(
            "batches_per_epoch", minimum=1, maximum=MAX_BATCHES_PER_EPOCH
        ),
        "steps_per_round": e.integer("steps_per_round", minimum=1, maximum=MAX_STEPS_PER_ROUND),
        "noise_multiplier_micro": e.integer(
            "noise_multiplier_micro", minimum=1, maximum=MAX_NOISE_MULTIPLIER_MICRO
        ),
        "epsilon_micro": epsilons(e, trial, dp),
        "max_update_norm_milli": e.integer(
            "max_update_norm_milli", minimum=1, maximum=MAX_UPDATE_NORM_MILLI, default=None
        ),
    }
    e.done()
    return entry


def epsilons(e: Args, trial: Trial, dp: DpEnabled) -> list[int]:
    """``rounds`` cumulative epsilons: integers >= 1, non-decreasing, at most the target."""
    rounds, target = trial["rounds"], dp["target_epsilon_micro"]
    name = "epsilon_micro"
    values = e.list(name, min_items=0, max_items=1024)
    if len(values) != rounds:
        e.fail(
            name,
            values,
            f"exactly {rounds} cumulative epsilons, one after each of the trial's {rounds} "
            f"rounds (got {len(values)})",
        )
    items = Args({}, prefix=e.field(name))  # names its items "...epsilon_micro[i]"
    previous = 1
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int):
            items.fail(f"[{i}]", value, "an integer (micro-epsilon)")
        if value < previous:
            items.fail(
                f"[{i}]",
                value,
                f"at least {previous}: cumulative epsilons never decrease"
                if i
                else "at least 1 micro-epsilon",
            )
        if value > target:
            items.fail(f"[{i}]", value, f"at most the trial's target_epsilon_micro {target}")
        previous = value
    return list(values)
