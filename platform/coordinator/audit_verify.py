"""``bcfl audit verify``: the ledger itself, then every decision of the protocol recomputed.

Per trial (:mod:`coordinator.audit_protocol`): the DP schedule (Opacus), the epsilon charged
for every reveal, the sample weights against the registered training records, duplicates
(``Round.excluded`` and content revealed twice across attempts), the attestation disputes and
liveness (min_silos accepted in every finalized round, the count of failed attempts in a row).
Per round attempt: the commit-reveal hashes, the acceptance (:func:`chaincode.rules.judge_round`
with the hospitals enrolled when the voting closed, replayed from the ledger's events) and, with
a store, the aggregate re-summed from the accepted encrypted updates. Per registered dataset
(:mod:`coordinator.audit_datasets`): its lifetime budget at every enrolment and now.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from bcfl_common.errors import BcflError
from chaincode import rules
from chaincode.commitments import update_commitment, votes_commitment
from coordinator import audit_protocol as protocol
from coordinator.audit import AuditFailed, _label, _maybe, _report, _rounds, trial_protocol_records
from coordinator.audit_datasets import DatasetAudit

# The per-trial checks, by the name each has in the report.
SCHEDULE = "DP schedule recomputed with Opacus"
CHARGES = "epsilon charged from the schedule"
WEIGHTS = "sample weights within the registered training records"
DUPLICATES = "duplicates recomputed (round.excluded, content revealed again)"
DISCLOSURES = "disclosures only once their attempt's reveals were over"
DISPUTES = "attestation disputes recomputed"
LIVENESS = "min_silos, failed attempts and retries recomputed"
DATASETS = "dataset budgets within their lifetimes"
TRIAL_CHECKS = (SCHEDULE, CHARGES, WEIGHTS, DUPLICATES, DISCLOSURES, DISPUTES, LIVENESS)

_VERDICT_FIELDS = (
    "candidates",
    "voters",
    "reference_norm_milli",
    "reference_sample_weight",
    "norm_bounds",
    "accepted",
    "rejected",
    "accepted_sha256s",
    "total_weight",
    "reward_pool",
    "paid",
    "rewards",
)


def norm_bounds(
    trial: Mapping[str, Any], schedule: Mapping[str, Any] | None, candidates: list[str]
) -> dict[str, int | None]:
    """Each candidate's update-norm bound: the trial's explicit ``max_update_norm_milli``, else
    (DP on) its schedule entry's, else none."""
    explicit = trial["evaluation"].get("max_update_norm_milli")
    entries = (schedule or {}).get("entries", {})
    return {
        m: explicit
        if explicit is not None
        else (entries.get(m) or {}).get("max_update_norm_milli")
        if trial["dp"]["enabled"]
        else None
        for m in sorted(candidates)
    }


def verify_round(
    ledger: Any,
    trial: dict[str, Any],
    rnd: dict[str, Any],
    enrolled: list[str] | None,
    store: Any | None = None,
    *,
    schedule: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Recompute one round attempt from its revealed records (and its aggregate from the store)."""
    trial_id, r, a = trial["trial_id"], rnd["round"], rnd["attempt"]
    where = {"trial_id": trial_id, "round": r, "attempt": a}
    problems: list[str] = []
    checks: list[str] = []
    updates = {u["msp_id"]: u for u in ledger.evaluate("get_submissions", where)}
    votes = {v["msp_id"]: v for v in ledger.evaluate("get_votes", where)}
    for u in updates.values():
        if u["revealed"] or u.get("disclosed_at") is not None:  # a disclosure opens it too
            again = update_commitment(
                trial_id=trial_id,
                round=r,
                msp_id=u["msp_id"],
                sha256=u["sha256"],
                sample_weight=u["sample_weight"],
                salt=u["salt"],
            )
            if again != u["commitment"]:
                problems.append(
                    f"update of {u['msp_id']}: revealed values hash to {again}, not its commitment {u['commitment']}"
                )
    for v in votes.values():
        if v["revealed"]:
            again = votes_commitment(
                trial_id=trial_id,
                round=r,
                msp_id=v["msp_id"],
                findings=v["findings"],
                salt=v["salt"],
            )
            if again != v["commitment"]:
                problems.append(
                    f"votes of {v['msp_id']}: revealed findings hash to {again}, not their commitment {v['commitment']}"
                )
    checks.append("commitments of revealed updates and votes")

    acceptance = _maybe(ledger, "get_acceptance", where)
    if acceptance is not None:
        if enrolled is None:
            problems.append(
                "no VotingClosed event for this round on the ledger: cannot tell who was enrolled at the close"
            )
        else:
            policy = trial["evaluation"]
            bounds = norm_bounds(trial, schedule, rnd["candidates"])
            revealed = {
                m: v["findings"] for m, v in votes.items() if v["revealed"] and m in enrolled
            }
            verdict = rules.judge_round(
                candidates={m: updates[m] for m in rnd["candidates"]},
                findings=revealed,
                enrolled=enrolled,
                policy=policy,
                norm_bounds=bounds,
                reward_pool=policy["reward_per_round"],
            )
            for name in _VERDICT_FIELDS:
                if verdict.get(name) != acceptance.get(name):
                    problems.append(
                        f"acceptance.{name}: the ledger records {acceptance.get(name)}, "
                        f"recomputed from the revealed findings: {verdict.get(name)}"
                    )
            if acceptance.get("policy") != policy:
                problems.append(
                    f"acceptance.policy {acceptance.get('policy')} is not the trial's evaluation policy {policy}"
                )
            if acceptance.get("norm_bounds") != bounds:
                problems.append(
                    f"acceptance.norm_bounds {acceptance.get('norm_bounds')}, expected {bounds} "
                    "(the trial's max_update_norm_milli, else each hospital's schedule entry)"
                )
            checks.append(
                "acceptance, weights, voter agreement and rewards recomputed from the revealed findings"
            )
        for name in ("accepted", "accepted_sha256s", "total_weight"):
            if rnd[name] != acceptance[name]:
                problems.append(
                    f"round.{name} {rnd[name]} differs from the acceptance's {acceptance[name]}"
                )
        if rnd["attestation_quorum"] is not None and rnd[
            "attestation_quorum"
        ] != rules.attestation_quorum(len(rnd["participants"])):
            problems.append(
                f"attestation quorum {rnd['attestation_quorum']} is not a majority of {len(rnd['participants'])} participants"
            )
    aggregate = rnd["aggregate"]
    if aggregate is not None:
        if aggregate["update_sha256s"] != rnd["accepted_sha256s"]:
            problems.append(
                f"the aggregate sums {aggregate['update_sha256s']}, the accepted updates are {rnd['accepted_sha256s']}"
            )
        checks.append("the aggregate sums exactly the accepted updates")
        if store is not None:
            problems.extend(recompute_aggregate(ledger, trial, rnd, updates, store))
            checks.append("aggregate recomputed from the store (verifiable aggregation)")
    return {
        "round": r,
        "attempt": a,
        "phase": rnd["phase"],
        "checks": checks,
        "problems": problems,
        "aggregate_sha256": None if aggregate is None else aggregate["sha256"],
    }


def recompute_aggregate(
    ledger: Any,
    trial: dict[str, Any],
    rnd: dict[str, Any],
    updates: dict[str, dict[str, Any]],
    store: Any,
) -> list[str]:
    """Sum the accepted encrypted updates, each times its capped weight from the acceptance, with
    the public context in sha256 order; compare with the recorded aggregate."""
    from privacy import he

    aggregate = rnd["aggregate"]
    if not trial["he"]["enabled"]:
        return [
            "the trial has homomorphic encryption off: there is no encrypted aggregate to recompute"
        ]
    by_sha = {u["sha256"]: u for u in updates.values() if u["revealed"]}

    def fetch(ref: dict[str, Any], what: str, max_bytes: int) -> bytes:
        data = store.get(ref["content_id"], max_bytes=max_bytes)
        digest = hashlib.sha256(data).hexdigest()
        if digest != ref["sha256"]:
            raise AuditFailed(
                f"{what} ({ref['content_id']}) hashes to {digest}, the ledger records {ref['sha256']}"
            )
        return data

    try:
        keys = ledger.evaluate("get_trial_keys", {"trial_id": trial["trial_id"]})
        context = he.load_public_context(
            fetch(keys["public_context"], "the public context", 16 << 20), trial["he"]["preset"]
        )
        acceptance = _maybe(
            ledger,
            "get_acceptance",
            {"trial_id": trial["trial_id"], "round": rnd["round"], "attempt": rnd["attempt"]},
        )
        if acceptance is None:
            return ["the round has an aggregate but no acceptance: nothing says its weights"]
        blobs, weights = [], []
        for sha in sorted(aggregate["update_sha256s"]):
            if sha not in by_sha:
                return [f"accepted update {sha} has no revealed submission"]
            u = by_sha[sha]
            decision = acceptance["candidates"].get(u["msp_id"])
            if decision is None or not decision["accepted"]:
                return [f"the aggregate sums the update of {u['msp_id']}, which was not accepted"]
            weights.append(decision["weight"])
            blobs.append(
                fetch(
                    {"content_id": u["content_id"], "sha256": sha},
                    f"the update of {u['msp_id']}",
                    he.MAX_CONTAINER_BYTES,
                )
            )
        recomputed = hashlib.sha256(he.aggregate(context, blobs, weights=weights)).hexdigest()
    except BcflError as exc:
        return [f"cannot recompute the aggregate: {exc.message}"]
    problems = []
    if recomputed != aggregate["sha256"]:
        problems.append(
            f"aggregate: the ledger records sha256 {aggregate['sha256']}, re-aggregating the accepted updates "
            f"gives {recomputed}"
        )
    try:
        fetch(aggregate, "the recorded aggregate", he.MAX_CONTAINER_BYTES)
    except BcflError as exc:
        problems.append(f"the recorded aggregate cannot be read back: {exc.message}")
    return problems


def verify_trial(
    ledger: Any,
    trial: dict[str, Any],
    rounds: list[dict[str, Any]],
    timeline: protocol.Timeline,
) -> list[dict[str, Any]]:
    """The trial-level checks of the protocol, one ``{check, problems}`` per name in TRIAL_CHECKS."""
    trial_id = trial["trial_id"]
    enrolments, schedule, accounts, updates = trial_protocol_records(ledger, trial_id, rounds)
    revealed = protocol.revealed_in_order(trial_id, updates, timeline)
    disputes: list[str] = []
    for x in rounds:
        attestations = ledger.evaluate(
            "get_attestations", {"trial_id": trial_id, "round": x["round"], "attempt": x["attempt"]}
        )
        disputes.extend(
            f"{_label(x['round'], x['attempt'])}: {p}"
            for p in protocol.attestation_problems(
                x, attestations, [m for m, e in enrolments.items() if e["status"] == "enrolled"]
            )
        )
    results = {
        SCHEDULE: protocol.schedule_problems(trial, enrolments, schedule),
        CHARGES: protocol.charge_problems(trial, schedule, accounts, revealed),
        WEIGHTS: protocol.weight_problems(enrolments, revealed),
        DUPLICATES: protocol.duplicate_problems(trial, rounds, updates, timeline),
        DISCLOSURES: protocol.disclosure_problems(trial, updates, timeline),
        DISPUTES: disputes,
        LIVENESS: protocol.liveness_problems(trial, rounds),
    }
    return [{"check": name, "problems": results[name]} for name in TRIAL_CHECKS]


def verify_report(
    ledger: Any,
    *,
    trial_id: str | None = None,
    store: Any | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Ledger verification plus every decision recomputed; ``progress(what, done, total)`` is
    called per trial and per round."""
    ledger_report = ledger.verify().to_dict()
    problems = [f"ledger: {p}" for p in ledger_report["problems"]]
    timeline = protocol.replay(ledger.events(0))
    trials = (
        [ledger.evaluate("get_trial", {"trial_id": trial_id})]
        if trial_id
        else ledger.evaluate("list_trials", {})
    )
    trials = sorted(trials, key=lambda t: t["trial_id"])
    rounds_of = {t["trial_id"]: _rounds(ledger, t["trial_id"]) for t in trials}
    total = len(trials) + sum(len(x) for x in rounds_of.values()) + 1
    done = 0

    def step(what: str) -> None:
        nonlocal done
        if progress is not None:
            progress(what, done, total)
        done += 1

    results: dict[str, list[dict[str, Any]]] = {t["trial_id"]: [] for t in trials}
    trial_checks: dict[str, list[dict[str, Any]]] = {}
    for trial in trials:
        tid = trial["trial_id"]
        step(f"{tid}: DP schedule, charges, weights, duplicates, disputes")
        trial_checks[tid] = verify_trial(ledger, trial, rounds_of[tid], timeline)
        for check in trial_checks[tid]:
            problems.extend(f"{tid} {check['check']}: {p}" for p in check["problems"])
        schedule = _maybe(ledger, "get_dp_schedule", {"trial_id": tid})
        for rnd in rounds_of[tid]:
            step(f"{tid} {_label(rnd['round'], rnd['attempt'])}")
            result = verify_round(
                ledger,
                trial,
                rnd,
                timeline.enrolled_at_vote_close.get((tid, rnd["round"], rnd["attempt"])),
                store,
                schedule=schedule,
            )
            results[tid].append(result)
            problems.extend(
                f"{tid} {_label(rnd['round'], rnd['attempt'])}: {p}" for p in result["problems"]
            )
    step("dataset budgets")
    datasets, dataset_problems = DatasetAudit(ledger).run(timeline.events, trial_id)
    problems.extend(f"{DATASETS}: {p}" for p in dataset_problems)
    if progress is not None:
        progress("done", total, total)
    return _report(
        ledger=ledger_report,
        trials=results,
        trial_checks=trial_checks,
        datasets={"rows": datasets, "problems": dataset_problems},
        store_checked=store is not None,
        checks=["ledger blocks, signatures and state"]
        + ledger_report["checks"]
        + list(TRIAL_CHECKS)
        + [DATASETS, "commitments", "acceptance recomputed"]
        + (["aggregates recomputed"] if store is not None else []),
        problems=problems,
    )


__all__ = ["AuditFailed", "norm_bounds", "recompute_aggregate", "verify_report", "verify_round"]
