"""Queries: open to every consortium member (``whoami`` to any readable certificate); they write
nothing and emit nothing.

``get_round`` defaults to the current round and the latest attempt; the per-round queries
(``get_submissions``, ``get_votes``, ``get_attestations``, ``get_acceptance``) take
``{trial_id, round, [attempt]}``, the attempt defaulting to the latest.
"""

from __future__ import annotations

import json
from typing import Any

from bcfl_common.records import (
    Acceptance,
    ConsortiumRecord,
    Dataset,
    DatasetBudget,
    DpSchedule,
    Enrolment,
    HistoryEntry,
    Lineage,
    PrivacyAccount,
    RewardAccount,
    Rewards,
    Round,
    Trial,
    TrialKeys,
    WhoAmI,
)
from bcfl_common.vocabulary import ROLES_BY_KIND, TRIAL_STATES
from chaincode.args import Args
from chaincode.contract.context import Caller, Tx, fail
from chaincode.contract.datasets import dataset_budget
from chaincode.contract.dispatch import function
from chaincode.contract.store import (
    CONSORTIUM_KEY,
    MAX_ATTEMPTS,
    MAX_ROUNDS,
    dataset_key,
    dp_schedule_key,
    enrolments,
    find_round,
    load_trial,
    number,
    per_round_key,
    privacy_account,
    round_label,
    round_records,
    trial_keys_key,
    with_defaults,
)
from chaincode.state import create_composite_key


@function("whoami", read_only=True, access="anyone")
def whoami(tx: Tx, caller: Caller, a: Args) -> WhoAmI:
    """{} -> {msp_id, name, role, organisation_kind, member}: member is whether the role is
    honoured from the caller's organisation (any readable certificate may ask)."""
    a.done()
    honoured = caller.kind is not None and caller.role in ROLES_BY_KIND[caller.kind]
    return {
        "msp_id": caller.msp_id,
        "name": caller.name,
        "role": caller.role,
        "organisation_kind": caller.kind,
        "member": honoured,
    }


@function("get_consortium", read_only=True)
def get_consortium(tx: Tx, caller: Caller, a: Args) -> ConsortiumRecord:
    """{} -> the consortium."""
    a.done()
    record: ConsortiumRecord = tx.get(CONSORTIUM_KEY)
    return record


@function("get_trial", read_only=True)
def get_trial(tx: Tx, caller: Caller, a: Args) -> Trial:
    """{trial_id} -> the trial."""
    trial = load_trial(tx, a.identifier("trial_id"))
    a.done()
    return trial


@function("list_trials", read_only=True)
def list_trials(tx: Tx, caller: Caller, a: Args) -> list[Trial]:
    """{[state]} -> the trials (in that state), by trial id."""
    state = a.choice("state", TRIAL_STATES, default=None)
    a.done()
    trials: list[Trial] = [with_defaults(t) for t in tx.scan("trial", [])]
    return [t for t in trials if state is None or t["state"] == state]


@function("get_enrolments", read_only=True)
def get_enrolments(tx: Tx, caller: Caller, a: Args) -> list[Enrolment]:
    """{trial_id} -> every enrolment (enrolled or removed), by MSP id."""
    trial = load_trial(tx, a.identifier("trial_id"))
    a.done()
    return [rec for _, rec in sorted(enrolments(tx, trial["trial_id"]).items())]


@function("get_trial_keys", read_only=True)
def get_trial_keys(tx: Tx, caller: Caller, a: Args) -> TrialKeys:
    """{trial_id} -> the trial keys (NOT_FOUND before record_trial_keys)."""
    trial = load_trial(tx, a.identifier("trial_id"))
    a.done()
    record: TrialKeys | None = tx.get(trial_keys_key(trial["trial_id"]))
    if record is None:
        fail("NOT_FOUND", f"trial {trial['trial_id']!r} has no keys recorded yet")
    return record


@function("get_datasets", read_only=True)
def get_datasets(tx: Tx, caller: Caller, a: Args) -> list[Dataset]:
    """{[msp_id]} -> the registered datasets (of that hospital), by MSP id and dataset id."""
    msp_id = a.identifier("msp_id", default=None)
    a.done()
    datasets: list[Dataset] = tx.scan("dataset", [] if msp_id is None else [msp_id])
    return datasets


@function("get_dataset_budget", read_only=True)
def get_dataset_budget(tx: Tx, caller: Caller, a: Args) -> DatasetBudget:
    """{msp_id, dataset_id} -> the dataset's lifetime epsilon, what each of its trials counts
    against it (planned while running, spent once over) and what remains."""
    msp_id = a.identifier("msp_id")
    dataset_id = a.identifier("dataset_id")
    a.done()
    dataset: Dataset | None = tx.get(dataset_key(msp_id, dataset_id))
    if dataset is None:
        fail(
            "NOT_FOUND",
            f"{msp_id} has registered no dataset {dataset_id!r}",
            msp_id=msp_id,
            dataset_id=dataset_id,
        )
    return dataset_budget(tx, dataset)


@function("get_dp_schedule", read_only=True)
def get_dp_schedule(tx: Tx, caller: Caller, a: Args) -> DpSchedule:
    """{trial_id} -> the trial's DP schedule (NOT_FOUND with DP off or before start_trial)."""
    trial = load_trial(tx, a.identifier("trial_id"))
    a.done()
    record: DpSchedule | None = tx.get(dp_schedule_key(trial["trial_id"]))
    if record is None:
        why = "DP is off" if not trial["dp"]["enabled"] else f"it is {trial['state']}"
        fail("NOT_FOUND", f"trial {trial['trial_id']!r} has no DP schedule ({why})")
    return record


@function("get_round", read_only=True)
def get_round(tx: Tx, caller: Caller, a: Args) -> Round:
    """{trial_id, [round], [attempt]} -> the round (defaults: the current round, the latest attempt)."""
    trial = load_trial(tx, a.identifier("trial_id"))
    r = a.integer("round", minimum=1, maximum=MAX_ROUNDS, default=None)
    attempt = a.integer("attempt", minimum=1, maximum=MAX_ATTEMPTS, default=None)
    a.done()
    return find_round(tx, trial, r, attempt)


@function("list_rounds", read_only=True)
def list_rounds(tx: Tx, caller: Caller, a: Args) -> list[Round]:
    """{trial_id} -> every attempt of every round, in order."""
    trial = load_trial(tx, a.identifier("trial_id"))
    a.done()
    rounds: list[Round] = tx.scan("round", [trial["trial_id"]])
    return rounds


def round_attempt(tx: Tx, a: Args) -> Round:
    """The round named by ``{trial_id, round, [attempt]}`` (attempt defaults to the latest)."""
    trial = load_trial(tx, a.identifier("trial_id"))
    r = a.integer("round", minimum=1, maximum=MAX_ROUNDS)
    attempt = a.integer("attempt", minimum=1, maximum=MAX_ATTEMPTS, default=None)
    a.done()
    return find_round(tx, trial, r, attempt)


def per_round_records(tx: Tx, a: Args, kind: str) -> list[Any]:
    rnd = round_attempt(tx, a)
    return round_records(tx, kind, rnd["trial_id"], rnd["round"], rnd["attempt"])


@function("get_submissions", read_only=True)
def get_submissions(tx: Tx, caller: Caller, a: Args) -> list[Any]:
    """{trial_id, round, [attempt]} -> the update records, by MSP id."""
    return per_round_records(tx, a, "update")


@function("get_votes", read_only=True)
def get_votes(tx: Tx, caller: Caller, a: Args) -> list[Any]:
    """{trial_id, round, [attempt]} -> the vote records, by MSP id."""
    return per_round_records(tx, a, "vote")


@function("get_attestations", read_only=True)
def get_attestations(tx: Tx, caller: Caller, a: Args) -> list[Any]:
    """{trial_id, round, [attempt]} -> the attestation records, by MSP id."""
    return per_round_records(tx, a, "attestation")


@function("get_acceptance", read_only=True)
def get_acceptance(tx: Tx, caller: Caller, a: Args) -> Acceptance:
    """{trial_id, round, [attempt]} -> the acceptance (NOT_FOUND before close_voting)."""
    rnd = round_attempt(tx, a)
    key = per_round_key("acceptance", rnd["trial_id"], rnd["round"], rnd["attempt"])
    record: Acceptance | None = tx.get(key)
    if record is None:
        fail(
            "NOT_FOUND",
            f"{round_label(rnd)} has no acceptance yet (phase {rnd['phase']})",
            phase=rnd["phase"],
        )
    return record


@function("get_privacy_ledger", read_only=True)
def get_privacy_ledger(tx: Tx, caller: Caller, a: Args) -> list[PrivacyAccount]:
    """{trial_id, [msp_id]} -> [privacy]: every enrolled (or once enrolled) hospital, with zero
    spent if it never revealed."""
    trial = load_trial(tx, a.identifier("trial_id"))
    msp_id = a.identifier("msp_id", default=None)
    a.done()
    holders = sorted(enrolments(tx, trial["trial_id"])) if msp_id is None else [msp_id]
    return [privacy_account(tx, trial, m) for m in holders]


@function("get_rewards", read_only=True)
def get_rewards(tx: Tx, caller: Caller, a: Args) -> Rewards:
    """{trial_id, [msp_id]} -> {trial_id, accounts: [reward_account], rounds: [round_rewards]}
    (an MSP id without an account gets an empty one)."""
    trial = load_trial(tx, a.identifier("trial_id"))
    msp_id = a.identifier("msp_id", default=None)
    a.done()
    trial_id = trial["trial_id"]
    accounts: list[RewardAccount] = tx.scan("reward_account", [trial_id])
    if msp_id is not None:
        accounts = [acc for acc in accounts if acc["msp_id"] == msp_id] or [
            {"trial_id": trial_id, "msp_id": msp_id, "total": 0, "entries": []}
        ]
    return {
        "trial_id": trial_id,
        "accounts": accounts,
        "rounds": tx.scan("round_rewards", [trial_id]),
    }


HISTORY_RECORDS: dict[str, tuple[str, ...]] = {
    # record -> the arguments that locate it (besides trial_id)
    "trial": (),
    "trial_keys": (),
    "dp_schedule": (),
    "enrolment": ("msp_id",),
    "privacy": ("msp_id",),
    "reward_account": ("msp_id",),
    "round": ("round", "attempt"),
    "acceptance": ("round", "attempt"),
    "round_rewards": ("round", "attempt"),
    "update": ("round", "attempt", "msp_id"),
    "vote": ("round", "attempt", "msp_id"),
    "attestation": ("round", "attempt", "msp_id"),
}


@function("get_history", read_only=True)
def get_history(tx: Tx, caller: Caller, a: Args) -> list[HistoryEntry]:
    """{trial_id, record (a name of HISTORY_RECORDS, default "trial"), and round/[attempt]/msp_id
    as that record needs} -> [{tx_id, timestamp, is_delete, value}]: every value the record ever
    had, as the host's key history returns it (newest first on both hosts)."""
    trial = load_trial(tx, a.identifier("trial_id"))
    record = a.choice("record", tuple(HISTORY_RECORDS), default="trial")
    needs = HISTORY_RECORDS[record]
    trial_id = trial["trial_id"]
    if "round" in needs:
        rnd = find_round(
            tx,
            trial,
            a.integer("round", minimum=1, maximum=MAX_ROUNDS),
            a.integer("attempt", minimum=1, maximum=MAX_ATTEMPTS, default=None),
        )
        attrs = [trial_id, number(rnd["round"]), number(rnd["attempt"])]
    else:
        attrs = [trial_id]
    if "msp_id" in needs:
        attrs.append(a.identifier("msp_id"))
    a.done()
    key = create_composite_key(record, attrs)
    return [
        {
            "tx_id": entry.tx_id,
            "timestamp": entry.timestamp,
            "is_delete": entry.is_delete,
            "value": None if entry.value is None else json.loads(entry.value),
        }
        for entry in tx.state.get_history_for_key(key)
    ]


@function("get_model_lineage", read_only=True)
def get_model_lineage(tx: Tx, caller: Caller, a: Args) -> Lineage:
    """{trial_id} -> {trial_id, initial_model, head, rounds: lineage, rollbacks}."""
    trial = load_trial(tx, a.identifier("trial_id"))
    a.done()
    return {
        "trial_id": trial["trial_id"],
        "initial_model": trial["initial_model"],
        "head": trial["head"],
        "rounds": trial["lineage"],
        "rollbacks": trial["rollbacks"],
    }
