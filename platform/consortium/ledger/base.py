"""The Ledger seam: submit / evaluate / events / blocks / verify, chosen by URL scheme."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

from bcfl_common.errors import ConfigError
from consortium.identity import Identity

# A transaction proposal larger than this is refused before it is signed or sent (the contract
# itself refuses arguments over chaincode.contract.MAX_ARGS_BYTES).
MAX_PROPOSAL_BYTES = 1 << 20


@dataclass(frozen=True)
class TxResult:
    tx_id: str
    block_number: int
    result: Any
    event_name: str | None = None


@dataclass(frozen=True)
class LedgerEvent:
    block_number: int
    tx_id: str
    name: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Block:
    number: int
    hash: str
    previous_hash: str
    timestamp: int
    signer_msp_id: str
    transactions: list[dict[str, Any]]


@dataclass
class VerifyReport:
    """What `bcfl ledger verify` found; ``problems`` is empty when everything verifies."""

    blocks: int = 0
    transactions: int = 0
    problems: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "blocks": self.blocks,
            "transactions": self.transactions,
            "problems": self.problems,
            "checks": self.checks,
        }


class Ledger(Protocol):
    """What every party uses to reach the consortium's ledger, whatever runs it."""

    identity: Identity

    def submit(self, function: str, args: dict[str, Any]) -> TxResult:
        """Run a contract function as a transaction signed by ``identity``; raises ContractError."""
        ...

    def evaluate(self, function: str, args: dict[str, Any]) -> Any:
        """Run a read-only contract function; nothing is recorded."""
        ...

    def events(self, start_block: int = 0) -> Iterator[LedgerEvent]:
        """Contract events committed in blocks >= ``start_block``, in commit order."""
        ...

    def blocks(self, start: int = 0, end: int | None = None) -> Iterator[Block]: ...

    def height(self) -> int:
        """Number of blocks (the next block's number)."""
        ...

    def verify(self) -> VerifyReport: ...

    def close(self) -> None: ...


@runtime_checkable
class ReplayingLedger(Ledger, Protocol):
    """A ledger whose ``verify`` can also re-execute every transaction with the contract."""

    supports_replay: bool

    def verify(self, replay: bool = False) -> VerifyReport: ...


# scheme -> "module:factory"; a factory takes (url, identity, **options) and returns a Ledger.
_LEDGER_SCHEMES: dict[str, str] = {
    "embedded": "consortium.ledger.embedded:open_embedded_ledger",
    "fabric": "consortium.ledger.fabric:open_fabric_ledger",
}


def register_ledger_scheme(scheme: str, target: str) -> None:
    _LEDGER_SCHEMES[scheme] = target


def _resolve(target: str) -> Callable[..., Ledger]:
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def open_ledger(url: str, identity: Identity, **options: Any) -> Ledger:
    """Open the ledger at ``url`` acting as ``identity`` (``embedded:///path`` or ``fabric://...``)."""
    scheme = urlparse(url).scheme
    if scheme not in _LEDGER_SCHEMES:
        raise ConfigError(
            f"ledger URL {url!r} has scheme {scheme!r}; expected one of "
            + ", ".join(f"{s}://" for s in sorted(_LEDGER_SCHEMES)),
            code="UNKNOWN_SCHEME",
        )
    return _resolve(_LEDGER_SCHEMES[scheme])(url, identity, **options)
