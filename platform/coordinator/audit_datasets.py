"""Registered datasets' lifetime privacy budgets, recomputed by the auditor from the ledger alone.

A hospital registers a dataset once with a lifetime epsilon; every DP trial it joins with that
dataset commits the trial's target epsilon while the trial runs and what was actually spent once
it ended (or the hospital was removed). ``enrol_hospital`` refuses an enrolment that would commit
more than the lifetime. The auditor replays the ledger's events in order and checks that no
enrolment ever did, that the dataset's ``trials`` are the trials it joined, and that the
contract's ``get_dataset_budget`` answer is what the records give.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from bcfl_common.errors import ContractError

ACTIVE_STATES = ("DRAFT", "ENROLLING", "RUNNING")
DatasetKey = tuple[str, str]  # msp_id, dataset_id


def planned_micro(trial: Mapping[str, Any], schedule: Mapping[str, Any] | None, msp_id: str) -> int:
    """The most a trial may spend of a hospital's dataset: its schedule's last cumulative epsilon
    once the trial started (the trial's target before), 0 with DP off."""
    if not trial["dp"]["enabled"]:
        return 0
    entry = (schedule or {}).get("entries", {}).get(msp_id)
    return trial["dp"]["target_epsilon_micro"] if entry is None else entry["epsilon_micro"][-1]


def recompute_budget(
    dataset: Mapping[str, Any],
    trials: Mapping[str, Mapping[str, Any]],
    enrolments: Mapping[str, Mapping[str, Mapping[str, Any]]],
    accounts: Mapping[str, Mapping[str, Any]],
    schedules: Mapping[str, Mapping[str, Any] | None],
) -> dict[str, Any]:
    """The DatasetBudget of a dataset now: each trial it joined counts its planned epsilon while
    it is live with the hospital enrolled on this dataset, what it spent otherwise."""
    msp = dataset["msp_id"]
    rows: dict[str, dict[str, Any]] = {}
    for trial_id in dataset["trials"]:
        trial = trials[trial_id]
        enrolment = enrolments.get(trial_id, {}).get(msp)
        uses = enrolment is not None and enrolment["dataset_id"] == dataset["dataset_id"]
        account = accounts.get(trial_id, {}).get(msp)
        planned = planned_micro(trial, schedules.get(trial_id), msp) if uses else 0
        spent = account["epsilon_spent_micro"] if uses and account is not None else 0
        enrolled = enrolment is not None and enrolment["status"] == "enrolled"
        counted = planned if trial["state"] in ACTIVE_STATES and enrolled and uses else spent
        rows[trial_id] = {
            "state": trial["state"],
            "dp_enabled": trial["dp"]["enabled"],
            "planned_micro": planned,
            "spent_micro": spent,
            "counted_micro": counted,
        }
    committed = sum(row["counted_micro"] for row in rows.values())
    return {
        "msp_id": msp,
        "dataset_id": dataset["dataset_id"],
        "lifetime_epsilon_micro": dataset["lifetime_epsilon_micro"],
        "committed_micro": committed,
        "remaining_micro": dataset["lifetime_epsilon_micro"] - committed,
        "trials": rows,
    }


class DatasetAudit:
    """Every dataset's budget, recomputed and replayed; ``problems`` and ``rows`` after ``run``."""

    def __init__(self, ledger: Any):
        self.ledger = ledger
        self.trials: dict[str, dict[str, Any]] = {}
        self.enrolments: dict[str, dict[str, dict[str, Any]]] = {}
        self.accounts: dict[str, dict[str, dict[str, Any]]] = {}
        self.schedules: dict[str, dict[str, Any] | None] = {}

    def _load(self, trial_id: str) -> bool:
        if trial_id in self.trials:
            return True
        try:
            self.trials[trial_id] = self.ledger.evaluate("get_trial", {"trial_id": trial_id})
        except ContractError as exc:
            if exc.code == "NOT_FOUND":
                return False
            raise
        self.enrolments[trial_id] = {
            e["msp_id"]: e for e in self.ledger.evaluate("get_enrolments", {"trial_id": trial_id})
        }
        self.accounts[trial_id] = {
            acc["msp_id"]: acc
            for acc in self.ledger.evaluate("get_privacy_ledger", {"trial_id": trial_id})
        }
        try:
            self.schedules[trial_id] = self.ledger.evaluate(
                "get_dp_schedule", {"trial_id": trial_id}
            )
        except ContractError as exc:
            if exc.code != "NOT_FOUND":
                raise
            self.schedules[trial_id] = None
        return True

    def run(
        self, events: list[tuple[str, dict[str, Any]]], trial_id: str | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """(one row per dataset: recorded and recomputed budget; problems). With ``trial_id``,
        only the datasets that joined that trial."""
        datasets = {
            (d["msp_id"], d["dataset_id"]): d for d in self.ledger.evaluate("get_datasets", {})
        }
        if trial_id is not None:
            datasets = {k: d for k, d in datasets.items() if trial_id in d["trials"]}
        problems: list[str] = []
        for (msp, dataset_id), d in sorted(datasets.items()):
            for t in d["trials"]:
                if not self._load(t):
                    problems.append(
                        f"dataset {dataset_id} of {msp}: lists trial {t!r}, which does not exist"
                    )
        owners = {msp for msp, _ in datasets}
        for name, p in events:
            if name == "HospitalEnrolled" and p["msp_id"] in owners:
                self._load(p["trial_id"])
        problems.extend(self._replay(events, datasets))
        rows = []
        for (msp, dataset_id), d in sorted(datasets.items()):
            where = f"dataset {dataset_id} of {msp}"
            if any(t not in self.trials for t in d["trials"]):
                continue
            recomputed = recompute_budget(
                d, self.trials, self.enrolments, self.accounts, self.schedules
            )
            recorded = self.ledger.evaluate(
                "get_dataset_budget", {"msp_id": msp, "dataset_id": dataset_id}
            )
            for name in ("lifetime_epsilon_micro", "committed_micro", "remaining_micro", "trials"):
                if recorded.get(name) != recomputed[name]:
                    problems.append(
                        f"{where}: get_dataset_budget answers {name} {recorded.get(name)}, "
                        f"recomputed from the trials it joined: {recomputed[name]}"
                    )
            if recomputed["remaining_micro"] < 0:
                problems.append(
                    f"{where}: committed {recomputed['committed_micro']} micro-epsilon, over its lifetime "
                    f"of {d['lifetime_epsilon_micro']}"
                )
            rows.append(dict(recomputed, records=d["records"], registered_at=d["registered_at"]))
        return rows, problems

    def _replay(
        self,
        events: list[tuple[str, dict[str, Any]]],
        datasets: Mapping[DatasetKey, Mapping[str, Any]],
    ) -> list[str]:
        """Walk the ledger's events: at each enrolment with a dataset, what it had committed."""
        problems: list[str] = []
        ended: set[str] = set()
        started: set[str] = set()
        uses: dict[tuple[str, str], str | None] = {}  # (trial, msp) -> dataset of its enrolment
        removed: set[tuple[str, str]] = set()
        spent: dict[tuple[str, str], int] = defaultdict(int)
        joined: dict[DatasetKey, list[str]] = defaultdict(list)
        charges = {
            (t, msp, e["round"], e["attempt"]): e["epsilon_micro"]
            for t, accounts in self.accounts.items()
            for msp, acc in accounts.items()
            for e in acc["entries"]
        }

        def counted(t: str, key: DatasetKey) -> int:
            """What trial t counted against dataset ``key`` at this point of the replay."""
            msp, dataset_id = key
            if uses.get((t, msp)) != dataset_id:
                return 0  # re-enrolled on another dataset
            if t in ended or (t, msp) in removed:
                return spent[(t, msp)]
            return planned_micro(
                self.trials[t], self.schedules.get(t) if t in started else None, msp
            )

        for name, p in events:
            t = p.get("trial_id")
            if t not in self.trials:
                continue
            if p.get("trial_halt"):
                # A round's failure or a removal halted the trial with it (one event per
                # transaction: the halt rides on RoundHalted or HospitalRemoved).
                ended.add(t)
            if name in ("TrialCompleted", "TrialHalted"):
                ended.add(t)
            elif name == "TrialResumed":
                ended.discard(t)
            elif name == "TrialStarted":
                started.add(t)
            elif name == "HospitalRemoved":
                removed.add((t, p["msp_id"]))
            elif name in ("UpdateRevealed", "UpdateDisclosed"):
                spent[(t, p["msp_id"])] += charges.get(
                    (t, p["msp_id"], p["round"], p["attempt"]), 0
                )
            elif name == "HospitalEnrolled":
                msp = p["msp_id"]
                dataset_id = p.get("dataset_id") or self.enrolments[t].get(msp, {}).get(
                    "dataset_id"
                )
                key = (msp, dataset_id)
                uses[(t, msp)] = dataset_id
                removed.discard((t, msp))
                if key not in datasets:
                    continue
                lifetime = datasets[key]["lifetime_epsilon_micro"]
                before = sum(counted(x, key) for x in joined[key] if x != t)
                planned = planned_micro(self.trials[t], None, msp)
                if self.trials[t]["dp"]["enabled"] and before + planned > lifetime:
                    problems.append(
                        f"dataset {dataset_id} of {msp}: enrolled in {t} planning {planned} micro-epsilon with "
                        f"{before} already committed, over its lifetime of {lifetime} (remaining "
                        f"{lifetime - before}): the enrolment should have been refused BUDGET_EXCEEDED"
                    )
                if t not in joined[key]:
                    joined[key].append(t)
        for key, d in sorted(datasets.items()):
            if list(d["trials"]) != joined.get(key, []):
                problems.append(
                    f"dataset {key[1]} of {key[0]}: lists trials {d['trials']}, the enrolments with it "
                    f"on the ledger are {joined.get(key, [])}"
                )
        return problems
