"""``bcfl audit privacy``: per hospital its public DP schedule, what it was charged, and its dataset's lifetime budget.

Epsilon is charged by the contract from the schedule recorded when the trial started, never
taken from a hospital's word: the k-th reveal costs ``epsilon_micro[k] - epsilon_micro[k-1]``.
The report checks every charge and the accounts against the recorded schedule
(:func:`coordinator.audit_protocol.charge_problems`) and each hospital's dataset budget against
its trials (:mod:`coordinator.audit_datasets`). Recomputing the schedule itself with Opacus is
``bcfl audit verify``'s job (it takes about a second per distinct dataset size).
"""

from __future__ import annotations

from typing import Any

from coordinator import audit_protocol as protocol
from coordinator.audit import _report, _rounds, trial_protocol_records
from coordinator.audit_datasets import DatasetAudit


def privacy_report(ledger: Any, trial_id: str) -> dict[str, Any]:
    trial = ledger.evaluate("get_trial", {"trial_id": trial_id})
    rounds = _rounds(ledger, trial_id)
    enrolments, schedule, accounts, updates = trial_protocol_records(ledger, trial_id, rounds)
    entries = (schedule or {}).get("entries", {})
    timeline = protocol.replay(ledger.events(0))
    revealed = protocol.revealed_in_order(trial_id, updates, timeline)
    problems = protocol.charge_problems(trial, schedule, accounts, revealed)
    problems.extend(protocol.weight_problems(enrolments, revealed))
    datasets, dataset_problems = DatasetAudit(ledger).run(timeline.events, trial_id)
    problems.extend(dataset_problems)
    budgets = {(d["msp_id"], d["dataset_id"]): d for d in datasets}

    hospitals = []
    for msp in sorted(set(enrolments) | set(accounts)):
        account = accounts.get(msp)
        enrolment = enrolments.get(msp) or {}
        entry = entries.get(msp)
        cumulative = 0
        charged = []
        for e in (account or {}).get("entries", []):
            cumulative += e["epsilon_micro"]
            charged.append(
                {
                    "round": e["round"],
                    "attempt": e["attempt"],
                    "epsilon_micro": e["epsilon_micro"],
                    "cumulative_micro": cumulative,
                    "at": e["at"],
                }
            )
        budget = None if account is None else account["budget_micro"]
        dataset = budgets.get((msp, enrolment.get("dataset_id")))
        hospitals.append(
            {
                "msp_id": msp,
                "status": enrolment.get("status"),
                "training_records": enrolment.get("training_records"),
                "schedule": None
                if entry is None
                else {
                    "noise_multiplier_micro": entry["noise_multiplier_micro"],
                    "steps_per_round": entry["steps_per_round"],
                    "batches_per_epoch": entry["batches_per_epoch"],
                    "epsilon_micro": entry["epsilon_micro"],
                    "epsilon_per_round_micro": protocol.expected_charges(
                        entry, len(entry["epsilon_micro"])
                    ),
                    "max_update_norm_milli": entry["max_update_norm_milli"],
                },
                "budget_micro": budget,
                "spent_micro": 0 if account is None else account["epsilon_spent_micro"],
                "remaining_micro": None if budget is None else budget - cumulative,
                "entries": charged,
                "dataset": None
                if dataset is None
                else {
                    "dataset_id": dataset["dataset_id"],
                    "records": dataset["records"],
                    "lifetime_epsilon_micro": dataset["lifetime_epsilon_micro"],
                    "committed_micro": dataset["committed_micro"],
                    "remaining_micro": dataset["remaining_micro"],
                    "trials": dataset["trials"],
                },
            }
        )
    dp = trial["dp"]
    return _report(
        trial_id=trial_id,
        dp_enabled=dp["enabled"],
        dp_reason=None if dp["enabled"] else dp.get("reason"),
        budget_micro=dp.get("target_epsilon_micro"),
        schedule_recorded_at=None if schedule is None else schedule["recorded_at"],
        hospitals=hospitals,
        checks=[
            "every reveal charged the schedule's epsilon for its position",
            "privacy accounts list exactly those charges and sum to their cumulative",
            "sample weights within the registered training records",
            "dataset budgets within their lifetimes at every enrolment",
        ],
        problems=problems,
    )
