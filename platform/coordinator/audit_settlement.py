"""The auditor's settlement report: each round's rewards on the ledger next to its payment and
anchor on Ethereum (item 5 of the audit). Computed from the ledger and the chain directly."""

from __future__ import annotations

from typing import Any

from bcfl_common.errors import SettlementError
from coordinator.audit import _label, _report
from coordinator.settlement_step import (
    TOKEN_UNITS_PER_REWARD,
    chain_rewards,
    round_payouts,
    settlement_round,
)


def settlement_report(ledger: Any, trial_id: str, settlement: Any, payees: Any) -> dict[str, Any]:
    """Each round's ledger rewards next to its Ethereum payment and anchor; every disagreement is a problem."""
    problems: list[str] = []
    chain_error: SettlementError | None = None
    try:
        settlement.verify_chain()
    except SettlementError as exc:
        chain_error = exc
        problems.append(f"the settlement chain cannot be verified ({exc.code}): {exc.message}")
    deployment = getattr(settlement, "deployment", None)
    chain_id = getattr(deployment, "chain_id", None)
    rows = []
    rewards = sorted(
        ledger.evaluate("get_rewards", {"trial_id": trial_id})["rounds"],
        key=lambda x: (x["round"], x["attempt"]),
    )
    for rr in rewards:
        r, a = rr["round"], rr["attempt"]
        label = _label(r, a)
        row: dict[str, Any] = {
            "round": r,
            "attempt": a,
            "chain_round": settlement_round(r, a),
            "ledger_status": rr["status"],
            "ledger_rewards": rr["rewards"],
            "ledger_settlement": rr["settlement"],
            "ledger_digest": None,
            "status": None,
            "expected_anchor": None,
            "chain": None,
            "payees": [],
            "problems": [],
        }
        recorded = rr["settlement"]
        if rr["status"] != "credited":
            row["status"] = "not credited"
            if chain_error is None:
                try:
                    found = settlement.read_settlement(trial_id, row["chain_round"])
                except SettlementError as exc:
                    found, row["problems"] = (
                        None,
                        [f"cannot read the chain ({exc.code}): {exc.message}"],
                    )
                if found is not None:
                    row["chain"] = found.to_dict()
                    row["problems"].append(
                        f"{label} is {rr['status']} on the ledger but was paid on chain by {found.tx_hash}"
                    )
            rows.append(row)
            problems.extend(f"{label}: {p}" for p in row["problems"])
            continue
        rnd = ledger.evaluate("get_round", {"trial_id": trial_id, "round": r, "attempt": a})
        acceptance = ledger.evaluate(
            "get_acceptance", {"trial_id": trial_id, "round": r, "attempt": a}
        )
        request = chain_rewards(trial_id, rnd, acceptance, rr)
        row["ledger_digest"] = request.ledger_digest
        row["payouts"] = {m: str(v) for m, v in round_payouts(rr).items()}
        if chain_error is not None:
            row["status"] = "unverifiable"
            if recorded is not None:
                row["problems"].append(
                    f"the ledger records settlement {recorded['tx_hash']} on chain {recorded['chain_id']}, "
                    f"which this node cannot show ({chain_error.code})"
                )
            rows.append(row)
            problems.extend(f"{label}: {p}" for p in row["problems"])
            continue
        try:
            rec = settlement.reconcile(request, payees)
        except SettlementError as exc:
            row["status"] = "error"
            row["problems"].append(f"cannot reconcile ({exc.code}): {exc.message}")
            rows.append(row)
            problems.extend(f"{label}: {p}" for p in row["problems"])
            continue
        row["status"] = rec.status
        row["expected_anchor"] = rec.expected_digest
        row["chain"] = None if rec.record is None else rec.record.to_dict()
        row["payees"] = [
            {
                "msp_id": p.msp_id,
                "payee": p.payee,
                "ledger_amount": None if p.ledger_amount is None else str(p.ledger_amount),
                "chain_amount": None if p.chain_amount is None else str(p.chain_amount),
            }
            for p in rec.rows
        ]
        row["problems"] = list(rec.problems) if rec.status == "mismatch" else []
        if rec.record is not None:
            if recorded is None:
                row["status"] = "unrecorded" if rec.status == "settled" else rec.status
                row["problems"].append(
                    f"paid on chain by {rec.record.tx_hash} but no settlement is recorded on the ledger"
                )
            else:
                if recorded["tx_hash"] != rec.record.tx_hash:
                    row["problems"].append(
                        f"the ledger records transaction {recorded['tx_hash']}, the chain's settlement "
                        f"is {rec.record.tx_hash}"
                    )
                if recorded["chain_id"] != rec.record.chain_id:
                    row["problems"].append(
                        f"the ledger records chain {recorded['chain_id']}, the settlement is on chain "
                        f"{rec.record.chain_id}"
                    )
        elif recorded is not None:
            row["status"] = "missing"
            row["problems"].append(
                f"the ledger records settlement {recorded['tx_hash']} on chain {recorded['chain_id']}, "
                f"but chain {chain_id} has no settlement of this round"
            )
        if row["problems"] and row["status"] == "settled":
            row["status"] = "mismatch"
        rows.append(row)
        problems.extend(f"{label}: {p}" for p in row["problems"] if p != "not settled on chain")
    return _report(
        trial_id=trial_id,
        chain_id=chain_id,
        contract=getattr(deployment, "settlement", None),
        endpoint=getattr(settlement, "endpoint", None),
        token_units_per_reward=str(TOKEN_UNITS_PER_REWARD),
        rounds=rows,
        checks=[
            "the chain is the deployed one",
            "each credited round paid as the ledger's rewards say (1 point = 1 token)",
            "each anchor commits to the ledger digest of the round",
            "the ledger records the chain's transaction",
            "rounds not credited are not paid",
        ],
        problems=problems,
    )
