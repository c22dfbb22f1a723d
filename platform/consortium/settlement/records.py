"""What a settlement is made of and what it reports: payouts, a round's rewards, the on-chain record, the auditor's reconciliation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from consortium.settlement.digest import checked_address


@dataclass(frozen=True)
class Payout:
    """One payment of a round: ``amount`` token base units to ``payee`` (hospital ``msp_id``)."""

    payee: str
    amount: int
    msp_id: str | None = None


@dataclass(frozen=True)
class RoundRewards:
    """A finalized round's rewards as the ledger recorded them: MSP id -> token base units."""

    trial: str
    round: int
    ledger_digest: str  # hex digest of the finalized round record on the ledger
    rewards: Mapping[str, int]


@dataclass(frozen=True)
class SettlementRecord:
    """A round's settlement as it stands on chain (decoded from the contract and its event)."""

    trial: str
    round: int
    trial_key: str
    round_digest: str
    ledger_digest: str
    payees: tuple[str, ...]
    amounts: tuple[int, ...]
    total: int
    tx_hash: str
    block_number: int
    block_hash: str
    timestamp: int
    chain_id: int
    contract: str
    settler: str
    gas_used: int | None = None
    already_settled: bool = False  # True when settle_round found it settled by an earlier call

    def amount_for(self, payee: str) -> int:
        payee = checked_address(payee, "payee")
        return dict(zip(self.payees, self.amounts, strict=True)).get(payee, 0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["payees"] = list(self.payees)
        data["amounts"] = [str(a) for a in self.amounts]  # JSON numbers lose precision past 2^53
        data["total"] = str(self.total)
        return data


@dataclass(frozen=True)
class PayeeRow:
    msp_id: str
    payee: str
    ledger_amount: int | None
    chain_amount: int | None

    @property
    def matches(self) -> bool:
        return self.ledger_amount == self.chain_amount


@dataclass(frozen=True)
class RoundReconciliation:
    """The auditor's view of one round: ledger rewards next to the Ethereum settlement."""

    trial: str
    round: int
    status: str  # "settled" (matches), "unsettled", or "mismatch"
    expected_digest: str
    record: SettlementRecord | None
    rows: tuple[PayeeRow, ...]
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "round": self.round,
            "status": self.status,
            "expected_digest": self.expected_digest,
            "record": self.record.to_dict() if self.record else None,
            "rows": [
                {
                    "msp_id": r.msp_id,
                    "payee": r.payee,
                    "ledger_amount": None if r.ledger_amount is None else str(r.ledger_amount),
                    "chain_amount": None if r.chain_amount is None else str(r.chain_amount),
                }
                for r in self.rows
            ],
            "problems": list(self.problems),
        }
