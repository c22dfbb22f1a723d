"""Ledger clients behind one interface: the embedded ledger (SQLite) and Hyperledger Fabric."""

from consortium.ledger.base import (
    Block,
    Ledger,
    LedgerEvent,
    ReplayingLedger,
    TxResult,
    VerifyReport,
    open_ledger,
    register_ledger_scheme,
)

__all__ = [
    "Block",
    "Ledger",
    "LedgerEvent",
    "ReplayingLedger",
    "TxResult",
    "VerifyReport",
    "open_ledger",
    "register_ledger_scheme",
]
