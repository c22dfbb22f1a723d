"""One transaction of the contract: its records in and out, its one event, and who sent it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NoReturn

from bcfl_common.canonical import canonical_json
from bcfl_common.errors import ContractError
from bcfl_common.records import Who
from bcfl_common.vocabulary import OrganisationKind, Role
from chaincode.state import ChaincodeState


def fail(code: str, message: str, **detail: Any) -> NoReturn:
    """Refuse the transaction: ``code`` is a key of ``CODES``, ``message`` names field, value and expectation."""
    raise ContractError(message, code=code, detail=detail)


class Tx:
    """One transaction: JSON records in, canonical JSON records out, at most one event.

    Reads see the state committed before the transaction (the hosts' semantics, see
    ``chaincode.state``); ``now`` is the transaction timestamp in whole seconds, the contract's
    only clock.
    """

    def __init__(self, state: ChaincodeState):
        self.state = state
        self.now = int(state.get_tx_timestamp())
        self.event: tuple[str, dict[str, Any]] | None = None
        self.writes = 0

    def get(self, key: str) -> Any:
        raw = self.state.get_state(key)
        return None if raw is None else json.loads(raw)

    def put(self, key: str, record: Any) -> None:
        self.state.put_state(key, canonical_json(record))
        self.writes += 1

    def scan(self, object_type: str, attributes: list[str]) -> list[Any]:
        return [
            json.loads(v)
            for _, v in self.state.get_state_by_partial_composite_key(object_type, attributes)
        ]

    def emit(self, name: str, payload: dict[str, Any]) -> None:
        if self.event is not None:  # a contract bug: Fabric would silently keep only the last one
            raise RuntimeError(f"second event {name!r} after {self.event[0]!r} in one transaction")
        self.event = (name, payload)


@dataclass(frozen=True)
class Caller:
    """The creator of the transaction: MSP id, certificate CN, bcfl role, and its organisation's
    kind (None before ``init_consortium`` or for a non-member)."""

    msp_id: str
    name: str
    role: Role
    kind: OrganisationKind | None

    def who(self) -> Who:
        return {"msp_id": self.msp_id, "name": self.name, "role": self.role}
