"""The auditor's reports, computed from the ledger directly (and the artifact store and Ethereum when given): nothing here trusts the coordinator.

Every report is a plain JSON-able dict with ``problems`` (a list of sentences, empty when every
check passed) and ``checks`` (what was checked). ``bcfl audit`` (:mod:`coordinator.audit_cli`)
and the auditor API render them; a report with a problem exits non-zero (or answers ok false).

* trials / trial: the trials, and per round attempt each candidate's verdict and reason
  (accepted, invalid:<problem>, norm_exceeded, norm_outlier, duplicate, harmful, ...), its
  improvement, capped weight and reward, each voter's agreement and voter reward, and the
  updates excluded as duplicate content;
* privacy: per hospital its public DP schedule, what each reveal was charged (checked against
  the schedule, :func:`coordinator.audit_protocol.charge_problems`) and its dataset's lifetime
  budget (:mod:`coordinator.audit_datasets`);
* rewards: update and voter rewards per round, cross-checked with the accounts;
* lineage: the chain of finalized models;
* verify (:mod:`coordinator.audit_verify`): every decision recomputed;
* settlement (:mod:`coordinator.audit_settlement`): Ethereum against the ledger.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from bcfl_common.errors import BcflError, ContractError
from chaincode import rules

MICRO = 1_000_000


class AuditFailed(BcflError):
    """An audit check failed: the ledger, the store or the chain disagrees with what was recomputed."""

    code = "AUDIT_FAILED"
    exit_code = 17
    http_status = 409


def epsilon(micro: int | None) -> float | None:
    return None if micro is None else micro / MICRO


def _report(**fields: Any) -> dict[str, Any]:
    fields.setdefault("checks", [])
    fields.setdefault("problems", [])
    fields["ok"] = not fields["problems"]
    return fields


def _label(r: int, a: int) -> str:
    return f"round {r}" + (f" attempt {a}" if a != 1 else "")


def _rounds(ledger: Any, trial_id: str) -> list[dict[str, Any]]:
    return sorted(
        ledger.evaluate("list_rounds", {"trial_id": trial_id}),
        key=lambda x: (x["round"], x["attempt"]),
    )


def _maybe(ledger: Any, function: str, args: dict[str, Any]) -> Any:
    """A query whose record may legitimately not exist yet (NOT_FOUND -> None)."""
    try:
        return ledger.evaluate(function, args)
    except ContractError as exc:
        if exc.code == "NOT_FOUND":
            return None
        raise


def trial_protocol_records(
    ledger: Any, trial_id: str, rounds: list[dict[str, Any]]
) -> tuple[dict[str, Any], Any, dict[str, Any], dict[tuple[int, int], dict[str, Any]]]:
    """What the privacy report and the protocol checks both read: the enrolments, the DP
    schedule (None without one), the privacy accounts by MSP id, and every round attempt's
    submissions by (round, attempt) and MSP id."""
    at = {"trial_id": trial_id}
    enrolments = {e["msp_id"]: e for e in ledger.evaluate("get_enrolments", at)}
    schedule = _maybe(ledger, "get_dp_schedule", at)
    accounts = {acc["msp_id"]: acc for acc in ledger.evaluate("get_privacy_ledger", at)}
    updates = {
        (x["round"], x["attempt"]): {
            u["msp_id"]: u
            for u in ledger.evaluate(
                "get_submissions", {**at, "round": x["round"], "attempt": x["attempt"]}
            )
        }
        for x in rounds
    }
    return enrolments, schedule, accounts, updates


def _switch(policy: dict[str, Any], on: str) -> dict[str, Any]:
    if policy["enabled"]:
        return {"enabled": True, "summary": on, "reason": None}
    return {
        "enabled": False,
        "summary": "off",
        "reason": policy.get("reason") or "(no reason recorded)",
    }


# ---------------------------------------------------------------------------------------------
# trials, trial
# ---------------------------------------------------------------------------------------------


def trials_report(ledger: Any) -> dict[str, Any]:
    rows = []
    for t in sorted(ledger.evaluate("list_trials", {}), key=lambda t: t["trial_id"]):
        rows.append(
            {
                "trial_id": t["trial_id"],
                "state": t["state"],
                "task": t["task"],
                "model": t["model"]["name"],
                "finalized": t["head"]["round"],
                "rounds": t["rounds"],
                "current": t["current"],
                "dp": _switch(t["dp"], "on")["summary"],
                "he": _switch(t["he"], "on")["summary"],
                "rollbacks": len(t["rollbacks"]),
                "created_at": t["created_at"],
            }
        )
    return _report(trials=rows)


def shown_reason(decision: dict[str, Any]) -> str:
    """A candidate's reason as the reports show it: ``invalid:<problem>`` names the problem."""
    if decision["reason"] == "invalid" and decision.get("problem"):
        return f"invalid:{decision['problem']}"
    return str(decision["reason"])


def candidate_rows(acceptance: dict[str, Any] | None, rnd: dict[str, Any]) -> list[dict[str, Any]]:
    """Per candidate: verdict and reason, improvement, representative norm against its bound,
    capped weight and update reward; then the updates excluded as duplicate content."""
    rows = []
    for msp, v in sorted(((acceptance or {}).get("candidates") or {}).items()):
        rows.append(
            {
                "msp_id": msp,
                "accepted": v["accepted"],
                "reason": shown_reason(v),
                "problem": v.get("problem"),
                "counts": v.get("counts"),
                "improvement_micro": v.get("improvement_micro"),
                "improves": v.get("improves"),
                "norm_milli": v.get("norm_milli"),
                "norm_bound_milli": v.get("norm_bound_milli"),
                "votes": v["votes"],
                "required_votes": v["required_votes"],
                "sample_weight": v["sample_weight"],
                "weight": v["weight"],
                "reward": v["reward"],
                "sha256": v["sha256"],
            }
        )
    for msp, x in sorted((rnd.get("excluded") or {}).items()):
        owner = x.get("owner")
        rows.append(
            {
                "msp_id": msp,
                "accepted": False,
                "reason": f"{x['reason']} (owner {owner or 'nobody: commitments tied'})",
                "problem": None,
                "counts": None,
                "improvement_micro": None,
                "improves": False,
                "norm_milli": None,
                "norm_bound_milli": None,
                "votes": 0,
                "required_votes": None,
                "sample_weight": None,
                "weight": 0,
                "reward": 0,
                "sha256": x["sha256"],
            }
        )
    return rows


def voter_rows(acceptance: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per voter: how many candidates it judged, on how many its verdict agreed with the
    outcome, and the voter reward that earned it."""
    return [
        {"msp_id": msp, "judged": v["judged"], "agreed": v["agreed"], "reward": v["reward"]}
        for msp, v in sorted(((acceptance or {}).get("voters") or {}).items())
    ]


def trial_report(ledger: Any, trial_id: str) -> dict[str, Any]:
    """State, privacy switches (with reasons), enrolments, and every round attempt with its verdicts and rewards."""
    trial = ledger.evaluate("get_trial", {"trial_id": trial_id})
    dp, he = trial["dp"], trial["he"]
    dp_switch = _switch(
        dp,
        f"on: target epsilon {epsilon(dp.get('target_epsilon_micro'))}, "
        f"delta {dp.get('delta', ['?', '?'])[0]}/{dp.get('delta', ['?', '?'])[1]}, "
        f"accountant {dp.get('accountant')}, max grad norm {(dp.get('max_grad_norm_milli') or 0) / 1000}",
    )
    he_switch = _switch(he, f"on: CKKS preset {he.get('preset')}")
    warnings = []  # explicit, recorded decisions: shown prominently, not failures
    if not he["enabled"]:
        warnings.append(
            f"homomorphic encryption is OFF ({he_switch['reason']}): updates are not encrypted"
        )
    if not dp["enabled"]:
        warnings.append(
            f"differential privacy is OFF ({dp_switch['reason']}): no privacy budget protects the patients"
        )
    rewards = {
        (r["round"], r["attempt"]): r
        for r in ledger.evaluate("get_rewards", {"trial_id": trial_id})["rounds"]
    }
    rounds = []
    for rnd in _rounds(ledger, trial_id):
        r, a = rnd["round"], rnd["attempt"]
        acceptance = _maybe(
            ledger, "get_acceptance", {"trial_id": trial_id, "round": r, "attempt": a}
        )
        candidates, voters = candidate_rows(acceptance, rnd), voter_rows(acceptance)
        rr = rewards.get((r, a))
        rounds.append(
            {
                "round": r,
                "attempt": a,
                "phase": rnd["phase"],
                "opened_at": rnd["opened_at"],
                "base_round": rnd["base"]["round"],
                "enrolled": rnd["enrolled"],
                "committed": rnd["committed"],
                "candidates": candidates,
                "voters": voters,
                "excluded": rnd.get("excluded", {}),
                "reference_norm_milli": None
                if acceptance is None
                else acceptance.get("reference_norm_milli"),
                "reference_sample_weight": None
                if acceptance is None
                else acceptance.get("reference_sample_weight"),
                "accepted": rnd["accepted"],
                "total_weight": rnd["total_weight"],
                "aggregate_sha256": (rnd["aggregate"] or {}).get("sha256"),
                "model_sha256": (rnd["model"] or {}).get("sha256"),
                "finalized_at": rnd["finalized_at"],
                "halt": None
                if rnd["halt"] is None
                else {"code": rnd["halt"]["code"], "reason": rnd["halt"]["reason"]},
                "disputes": rnd["disputes"],
                "rewards_status": None if rr is None else rr["status"],
                "settlement": None if rr is None else rr["settlement"],
            }
        )
    enrolments = [
        {
            "msp_id": e["msp_id"],
            "status": e["status"],
            "dataset_id": e.get("dataset_id"),
            "training_records": e.get("training_records"),
            "enrolled_at": e["enrolled_at"],
            "removed_at": e["removed_at"],
            "removal_reason": e["removal_reason"],
        }
        for e in ledger.evaluate("get_enrolments", {"trial_id": trial_id})
    ]
    return _report(
        trial={
            "trial_id": trial_id,
            "state": trial["state"],
            "task": trial["task"],
            "model": trial["model"],
            "rounds": trial["rounds"],
            "final_round": trial.get("final_round", trial["rounds"]),
            "finalized": trial["head"]["round"],
            "min_silos": trial["min_silos"],
            "max_retries": trial.get("max_retries", 0),
            "failed_attempts": trial.get("failed_attempts", 0),
            "resumes": trial.get("resumes", []),
            "created_at": trial["created_at"],
            "created_by": trial["created_by"],
            "halt": trial["halt"],
            "evaluation": trial["evaluation"],
            "phase_seconds": trial["phase_seconds"],
            "initial_model": trial["initial_model"],
            "head": trial["head"],
        },
        dp=dict(dp_switch, policy=dp),
        he=dict(he_switch, policy=he),
        enrolments=enrolments,
        rounds=rounds,
        warnings=warnings,
    )


# ---------------------------------------------------------------------------------------------
# rewards
# ---------------------------------------------------------------------------------------------

_EXPECTED_STATUS = {"FINALIZED": "credited", "HALTED": "void"}


def reward_split(acceptance: dict[str, Any] | None) -> dict[str, dict[str, int]]:
    """msp -> {update, voter}: what its accepted, improving update and its votes earned."""
    if acceptance is None:
        return {}
    split: dict[str, dict[str, int]] = defaultdict(lambda: {"update": 0, "voter": 0})
    for msp, c in acceptance["candidates"].items():
        split[msp]["update"] += c["reward"]
    for msp, v in (acceptance.get("voters") or {}).items():
        split[msp]["voter"] += v["reward"]
    return {m: dict(x) for m, x in sorted(split.items())}


def rewards_report(ledger: Any, trial_id: str) -> dict[str, Any]:
    """Per-round rewards (status, pool, paid, update vs voter split, settlement) and the
    accounts, cross-checked."""
    data = ledger.evaluate("get_rewards", {"trial_id": trial_id})
    rounds = {(r["round"], r["attempt"]): r for r in _rounds(ledger, trial_id)}
    problems: list[str] = []
    expected_totals: dict[str, int] = defaultdict(int)
    expected_entries: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    rows = []
    for rr in sorted(data["rounds"], key=lambda x: (x["round"], x["attempt"])):
        r, a = rr["round"], rr["attempt"]
        rnd = rounds.get((r, a))
        phase = rnd["phase"] if rnd else None
        want = _EXPECTED_STATUS.get(phase or "", "pending")
        if rr["status"] != want:
            problems.append(
                f"{_label(r, a)}: rewards are {rr['status']} but the round is {phase} (expected {want})"
            )
        acceptance = _maybe(
            ledger, "get_acceptance", {"trial_id": trial_id, "round": r, "attempt": a}
        )
        if acceptance is not None and (
            acceptance["rewards"] != rr["rewards"] or acceptance["reward_pool"] != rr["pool"]
        ):
            problems.append(
                f"{_label(r, a)}: round_rewards {rr['rewards']} (pool {rr['pool']}) differ from the acceptance's "
                f"{acceptance['rewards']} (pool {acceptance['reward_pool']})"
            )
        split = reward_split(acceptance)
        paid = rr["pool"] if acceptance is None else acceptance["paid"]
        for msp, parts in sorted(split.items()):
            if parts["update"] + parts["voter"] != rr["rewards"].get(msp, 0):
                problems.append(
                    f"{_label(r, a)}: {msp} is paid {rr['rewards'].get(msp, 0)}, its update reward "
                    f"{parts['update']} plus its voter reward {parts['voter']} make {parts['update'] + parts['voter']}"
                )
        if rr["status"] == "credited":
            if sum(rr["rewards"].values()) != paid or paid > rr["pool"]:
                problems.append(
                    f"{_label(r, a)}: rewards sum to {sum(rr['rewards'].values())}, the acceptance pays {paid} "
                    f"of the pool {rr['pool']}"
                )
            for msp, amount in rr["rewards"].items():
                expected_totals[msp] += amount
                expected_entries[msp].append((r, a, amount))
        if rr["settlement"] is not None and rr["status"] != "credited":
            problems.append(
                f"{_label(r, a)}: a settlement is recorded but the rewards are {rr['status']}"
            )
        rows.append(
            {
                "round": r,
                "attempt": a,
                "phase": phase,
                "status": rr["status"],
                "pool": rr["pool"],
                "paid": paid,
                "rewards": rr["rewards"],
                "split": split,
                "settlement": rr["settlement"],
            }
        )
    accounts = []
    seen = set()
    for acc in sorted(data["accounts"], key=lambda x: x["msp_id"]):
        msp = acc["msp_id"]
        seen.add(msp)
        entries = [(e["round"], e["attempt"], e["amount"]) for e in acc["entries"]]
        if sum(e[2] for e in entries) != acc["total"]:
            problems.append(
                f"{msp}: account entries sum to {sum(e[2] for e in entries)}, the account total is {acc['total']}"
            )
        if sorted(entries) != sorted(expected_entries.get(msp, [])):
            problems.append(
                f"{msp}: account entries {sorted(entries)} differ from the credited rounds' "
                f"{sorted(expected_entries.get(msp, []))}"
            )
        accounts.append(
            {
                "msp_id": msp,
                "total": acc["total"],
                "expected_total": expected_totals.get(msp, 0),
                "entries": acc["entries"],
            }
        )
    for msp in sorted(set(expected_totals) - seen):
        problems.append(
            f"{msp}: credited {expected_totals[msp]} in finalized rounds but has no reward account"
        )
    return _report(
        trial_id=trial_id,
        rounds=rows,
        accounts=accounts,
        checks=[
            "rewards status follows the round (credited/void/pending)",
            "round_rewards equal the acceptance's",
            "each hospital's reward is its update reward plus its voter reward",
            "credited rewards sum to what the acceptance pays (at most the pool)",
            "accounts equal the sum of credited rounds",
        ],
        problems=problems,
    )


# ---------------------------------------------------------------------------------------------
# lineage
# ---------------------------------------------------------------------------------------------


def lineage_report(ledger: Any, trial_id: str) -> dict[str, Any]:
    """The model hash of each finalized round of the current lineage, every attempt, and the rollbacks."""
    lineage = ledger.evaluate("get_model_lineage", {"trial_id": trial_id})
    rounds = {(r["round"], r["attempt"]): r for r in _rounds(ledger, trial_id)}
    problems: list[str] = []
    previous = lineage["initial_model"]
    chain = []
    for i, entry in enumerate(lineage["rounds"], start=1):
        r, a = entry["round"], entry["attempt"]
        rnd = rounds.get((r, a))
        if r != i:
            problems.append(f"lineage position {i} holds round {r}; expected round {i}")
        if rnd is None or rnd["phase"] != "FINALIZED":
            problems.append(
                f"lineage {_label(r, a)} is not a finalized round ({None if rnd is None else rnd['phase']})"
            )
        else:
            if rnd["model"] != entry["model"]:
                problems.append(
                    f"lineage {_label(r, a)}: model {entry['model']} differs from the round's {rnd['model']}"
                )
            if rnd["base"]["model"]["sha256"] != previous["sha256"]:
                problems.append(
                    f"{_label(r, a)} was trained from {rnd['base']['model']['sha256']}, "
                    f"not from the previous model in the lineage {previous['sha256']}"
                )
            attested = ledger.evaluate(
                "get_attestations", {"trial_id": trial_id, "round": r, "attempt": a}
            )
            agreeing = [x["msp_id"] for x in attested if x["sha256"] == entry["model"]["sha256"]]
            quorum = rules.attestation_quorum(len(rnd["participants"]))
            if len(agreeing) < quorum:
                problems.append(
                    f"{_label(r, a)}: {len(agreeing)} attestations of the model, quorum is {quorum}"
                )
        chain.append(
            {
                "round": r,
                "attempt": a,
                "model_sha256": entry["model"]["sha256"],
                "content_id": entry["model"]["content_id"],
                "finalized_at": entry["finalized_at"],
                "disputes": [] if rnd is None else rnd["disputes"],
            }
        )
        previous = entry["model"]
    if lineage["head"]["round"] != len(lineage["rounds"]):
        problems.append(
            f"head is round {lineage['head']['round']} but the lineage holds {len(lineage['rounds'])} rounds"
        )
    in_lineage = {(e["round"], e["attempt"]) for e in lineage["rounds"]}
    attempts = [
        {
            "round": r["round"],
            "attempt": r["attempt"],
            "phase": r["phase"],
            "model_sha256": (r["model"] or {}).get("sha256"),
            "in_lineage": (r["round"], r["attempt"]) in in_lineage,
            "halt": None
            if r["halt"] is None
            else {"code": r["halt"]["code"], "reason": r["halt"]["reason"]},
        }
        for r in rounds.values()
    ]
    return _report(
        trial_id=trial_id,
        initial_model=lineage["initial_model"],
        head=lineage["head"],
        lineage=chain,
        attempts=attempts,
        rollbacks=lineage["rollbacks"],
        checks=[
            "lineage rounds are consecutive finalized rounds",
            "each round trained from the previous model",
            "each finalized model attested by a quorum",
        ],
        problems=problems,
    )
