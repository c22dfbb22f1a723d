"""The auditor's reports, computed from the ledger directly (and the artifact store and Ethereum when given): nothing here trusts the coordinator.

Every report is a plain JSON-able dict with ``problems`` (a list of sentences, empty when every
check passed) and ``checks`` (what was checked). ``bcfl audit`` (:mod:`coordinator.audit_cli`)
renders them and exits non-zero when any report has a problem.

What is recomputed rather than read:

* acceptance, weights, contributions and rewards of every round that closed its voting, from the
  revealed votes and updates with :func:`chaincode.rules.judge_round`, with the hospitals that were
  enrolled when the voting closed (replayed from the ledger's enrolment events);
* the commit-reveal hashes of every revealed update and vote (:mod:`chaincode.commitments`);
* privacy: each hospital's cumulative epsilon from its entries, against its budget and its
  revealed updates;
* reward accounts from the credited rounds; lineage from the finalized round records;
* with a store: the aggregate of each round, by summing the accepted encrypted updates with the
  trial's public context in sha256 order (:func:`privacy.he.aggregate`) and comparing sha256s;
* with a settlement URL: each round's payment and anchor on Ethereum against the ledger's rewards
  and :func:`coordinator.settlement_step.ledger_round_digest` (:mod:`coordinator.audit_settlement`).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from bcfl_common.errors import BcflError, ContractError
from chaincode import rules
from chaincode.commitments import update_commitment, votes_commitment

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
        candidates = []
        if acceptance is not None:
            for msp, v in sorted(acceptance["candidates"].items()):
                candidates.append(
                    {
                        "msp_id": msp,
                        "accepted": v["accepted"],
                        "reason": v["reason"],
                        "median_micro": v["median_micro"],
                        "votes": v["votes"],
                        "required_votes": v["required_votes"],
                        "sample_weight": v["sample_weight"],
                        "weight": v["weight"],
                        "contribution": v["contribution"],
                        "reward": v["reward"],
                        "sha256": v["sha256"],
                    }
                )
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
            "finalized": trial["head"]["round"],
            "min_silos": trial["min_silos"],
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
# privacy
# ---------------------------------------------------------------------------------------------


def privacy_report(ledger: Any, trial_id: str) -> dict[str, Any]:
    """Per hospital, epsilon spent in each round and cumulatively, against the trial's budget."""
    trial = ledger.evaluate("get_trial", {"trial_id": trial_id})
    revealed: dict[tuple[str, int, int], int] = {}
    for rnd in _rounds(ledger, trial_id):
        where = {"trial_id": trial_id, "round": rnd["round"], "attempt": rnd["attempt"]}
        for u in ledger.evaluate("get_submissions", where):
            if u["revealed"]:
                revealed[(u["msp_id"], rnd["round"], rnd["attempt"])] = u["epsilon_spent_micro"]
    problems: list[str] = []
    hospitals = []
    for account in ledger.evaluate("get_privacy_ledger", {"trial_id": trial_id}):
        msp, budget = account["msp_id"], account["budget_micro"]
        cumulative = 0
        entries = []
        for e in account["entries"]:
            cumulative += e["epsilon_micro"]
            entries.append(
                {
                    "round": e["round"],
                    "attempt": e["attempt"],
                    "epsilon_micro": e["epsilon_micro"],
                    "cumulative_micro": cumulative,
                    "at": e["at"],
                }
            )
            update = revealed.get((msp, e["round"], e["attempt"]))
            if update != e["epsilon_micro"]:
                problems.append(
                    f"{msp} {_label(e['round'], e['attempt'])}: privacy entry of {e['epsilon_micro']} micro-epsilon "
                    f"but its revealed update declares {update}"
                )
        if cumulative != account["epsilon_spent_micro"]:
            problems.append(
                f"{msp}: entries sum to {cumulative} micro-epsilon, the account says {account['epsilon_spent_micro']}"
            )
        if budget is not None and cumulative > budget:
            problems.append(f"{msp}: spent {cumulative} micro-epsilon, over its budget of {budget}")
        listed = {(e["round"], e["attempt"]) for e in account["entries"]}
        for (m, r, a), value in sorted(revealed.items()):
            if m == msp and (r, a) not in listed:
                problems.append(
                    f"{msp} {_label(r, a)}: revealed an update spending {value} micro-epsilon with no privacy entry"
                )
        hospitals.append(
            {
                "msp_id": msp,
                "budget_micro": budget,
                "spent_micro": account["epsilon_spent_micro"],
                "remaining_micro": None if budget is None else budget - cumulative,
                "entries": entries,
            }
        )
    dp = trial["dp"]
    return _report(
        trial_id=trial_id,
        dp_enabled=dp["enabled"],
        dp_reason=None if dp["enabled"] else dp.get("reason"),
        budget_micro=dp.get("target_epsilon_micro"),
        hospitals=hospitals,
        checks=[
            "entries sum to each hospital's cumulative epsilon",
            "cumulative epsilon within the budget",
            "every entry matches a revealed update and every revealed update has an entry",
        ],
        problems=problems,
    )


# ---------------------------------------------------------------------------------------------
# rewards
# ---------------------------------------------------------------------------------------------

_EXPECTED_STATUS = {"FINALIZED": "credited", "HALTED": "void"}


def rewards_report(ledger: Any, trial_id: str) -> dict[str, Any]:
    """Per-round rewards (status, pool, split, settlement) and the accounts, cross-checked."""
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
        if rr["status"] == "credited":
            if sum(rr["rewards"].values()) != rr["pool"]:
                problems.append(
                    f"{_label(r, a)}: rewards sum to {sum(rr['rewards'].values())}, not the pool {rr['pool']}"
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
                "rewards": rr["rewards"],
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
            "credited rewards sum to the pool",
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


# ---------------------------------------------------------------------------------------------
# verify: the ledger itself, commitments, acceptance recomputed, aggregates recomputed
# ---------------------------------------------------------------------------------------------


def enrolled_at_close(events: Iterable[Any]) -> dict[tuple[str, int, int], list[str]]:
    """(trial, round, attempt) -> hospitals enrolled when its voting closed, replayed from the ledger's events."""
    enrolled: dict[str, set[str]] = defaultdict(set)
    at_close: dict[tuple[str, int, int], list[str]] = {}
    for ev in events:
        p = ev.payload
        if ev.name == "HospitalEnrolled":
            enrolled[p["trial_id"]].add(p["msp_id"])
        elif ev.name == "HospitalRemoved":
            enrolled[p["trial_id"]].discard(p["msp_id"])
        elif ev.name == "VotingClosed" or (
            ev.name == "RoundHalted" and p.get("code") == "NONE_ACCEPTED"
        ):
            at_close[(p["trial_id"], p["round"], p["attempt"])] = sorted(enrolled[p["trial_id"]])
    return at_close


_VERDICT_FIELDS = (
    "candidates",
    "voters",
    "reference_norm_milli",
    "norm_bounds",
    "accepted",
    "rejected",
    "accepted_sha256s",
    "total_weight",
    "reward_pool",
    "paid",
    "rewards",
)


def _norm_bounds(ledger: Any, trial: dict[str, Any], candidates: list[str]) -> dict[str, Any]:
    """Each candidate's norm bound, as close_voting takes it: the policy's explicit
    max_update_norm_milli, else (DP on) the DP schedule entry's, else none."""
    explicit = trial["evaluation"].get("max_update_norm_milli")
    if explicit is not None:
        return {c: explicit for c in candidates}
    schedule = None
    if trial["dp"]["enabled"]:
        try:
            schedule = ledger.evaluate("get_dp_schedule", {"trial_id": trial["trial_id"]})
        except ContractError as exc:
            if exc.code not in ("NOT_FOUND", "UNKNOWN_FUNCTION"):
                raise
    entries = {} if schedule is None else schedule["entries"]
    return {c: entries[c]["max_update_norm_milli"] if c in entries else None for c in candidates}


def verify_round(
    ledger: Any,
    trial: dict[str, Any],
    rnd: dict[str, Any],
    enrolled: list[str] | None,
    store: Any | None = None,
) -> dict[str, Any]:
    """Recompute one round attempt from its revealed records (and its aggregate from the store)."""
    trial_id, r, a = trial["trial_id"], rnd["round"], rnd["attempt"]
    where = {"trial_id": trial_id, "round": r, "attempt": a}
    problems: list[str] = []
    checks: list[str] = []
    updates = {u["msp_id"]: u for u in ledger.evaluate("get_submissions", where)}
    votes = {v["msp_id"]: v for v in ledger.evaluate("get_votes", where)}
    for u in updates.values():
        if u["revealed"]:
            again = update_commitment(
                trial_id=trial_id,
                round=r,
                msp_id=u["msp_id"],
                content_id=u["content_id"],
                sha256=u["sha256"],
                sample_weight=u["sample_weight"],
                epsilon_spent_micro=u["epsilon_spent_micro"],
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
            revealed = {
                m: v["findings"] for m, v in votes.items() if v["revealed"] and m in enrolled
            }
            verdict = rules.judge_round(
                candidates={m: updates[m] for m in rnd["candidates"]},
                findings=revealed,
                enrolled=enrolled,
                policy=policy,
                norm_bounds=_norm_bounds(ledger, trial, rnd["candidates"]),
                reward_pool=policy["reward_per_round"],
            )
            for name in _VERDICT_FIELDS:
                if verdict[name] != acceptance[name]:
                    problems.append(
                        f"acceptance.{name}: the ledger records {acceptance[name]}, "
                        f"recomputed from the revealed votes: {verdict[name]}"
                    )
            if sorted(revealed) != acceptance["voters_revealed"]:
                problems.append(
                    f"acceptance.voters_revealed: {acceptance['voters_revealed']}, revealed votes: {sorted(revealed)}"
                )
            if (acceptance["threshold_micro"], acceptance["min_voters"]) != (
                policy["acceptance_threshold_micro"],
                policy["min_voters"],
            ):
                problems.append(
                    "acceptance used another threshold or min_voters than the trial's evaluation policy"
                )
            checks.append(
                "acceptance, weights, contributions and rewards recomputed from the revealed votes"
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
    """Sum the accepted encrypted updates with the public context, in sha256 order; compare with the recorded aggregate."""
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
        blobs = []
        for sha in sorted(aggregate["update_sha256s"]):
            if sha not in by_sha:
                return [f"accepted update {sha} has no revealed submission"]
            u = by_sha[sha]
            blobs.append(
                fetch(
                    {"content_id": u["content_id"], "sha256": sha},
                    f"the update of {u['msp_id']}",
                    he.MAX_CONTAINER_BYTES,
                )
            )
        recomputed = hashlib.sha256(he.aggregate(context, blobs)).hexdigest()
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


def verify_report(
    ledger: Any,
    *,
    trial_id: str | None = None,
    store: Any | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Ledger verification plus every round recomputed; ``progress(what, done, total)`` is called per round."""
    ledger_report = ledger.verify().to_dict()
    problems = [f"ledger: {p}" for p in ledger_report["problems"]]
    at_close = enrolled_at_close(ledger.events(0))
    trials = (
        [ledger.evaluate("get_trial", {"trial_id": trial_id})]
        if trial_id
        else ledger.evaluate("list_trials", {})
    )
    work = [
        (t, rnd)
        for t in sorted(trials, key=lambda t: t["trial_id"])
        for rnd in _rounds(ledger, t["trial_id"])
    ]
    results: dict[str, list[dict[str, Any]]] = {t["trial_id"]: [] for t in trials}
    for i, (trial, rnd) in enumerate(work):
        if progress is not None:
            progress(f"{trial['trial_id']} {_label(rnd['round'], rnd['attempt'])}", i, len(work))
        result = verify_round(
            ledger,
            trial,
            rnd,
            at_close.get((trial["trial_id"], rnd["round"], rnd["attempt"])),
            store,
        )
        results[trial["trial_id"]].append(result)
        problems.extend(
            f"{trial['trial_id']} {_label(rnd['round'], rnd['attempt'])}: {p}"
            for p in result["problems"]
        )
    if progress is not None:
        progress("done", len(work), len(work))
    return _report(
        ledger=ledger_report,
        trials=results,
        store_checked=store is not None,
        checks=["ledger blocks, signatures and state"]
        + ledger_report["checks"]
        + ["commitments", "acceptance recomputed"]
        + (["aggregates recomputed"] if store is not None else []),
        problems=problems,
    )
