"""The small state interface the contract is written against; both hosts implement it.

It mirrors the subset of Fabric's chaincode stub the contract needs, with Fabric's semantics:
reads see the state committed before the transaction (a transaction does not read its own
writes), writes are applied only if the transaction succeeds, one event per transaction (a later
``set_event`` replaces an earlier one), composite keys are ``\\x00type\\x00attr1\\x00attr2\\x00``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

COMPOSITE_KEY_NAMESPACE = "\x00"
MIN_UNICODE_RUNE = "\x00"
MAX_UNICODE_RUNE = "\U0010ffff"


@dataclass(frozen=True)
class Creator:
    """Who submitted the transaction, as the host verified it."""

    msp_id: str
    cert_pem: bytes


@dataclass(frozen=True)
class HistoryEntry:
    tx_id: str
    timestamp: int  # seconds since the epoch, from the transaction header
    value: bytes | None  # None when the key was deleted
    is_delete: bool


class ChaincodeState(Protocol):
    def get_state(self, key: str) -> bytes | None: ...

    def put_state(self, key: str, value: bytes) -> None: ...

    def del_state(self, key: str) -> None: ...

    def get_state_by_range(self, start_key: str, end_key: str) -> Iterator[tuple[str, bytes]]:
        """Simple (non-composite) keys in [start_key, end_key) in byte order; '' means unbounded."""
        ...

    def get_state_by_partial_composite_key(
        self, object_type: str, attributes: list[str]
    ) -> Iterator[tuple[str, bytes]]: ...

    def get_history_for_key(self, key: str) -> Iterator[HistoryEntry]:
        """Every committed value of ``key``, newest first (Fabric 2.x order)."""
        ...

    def get_creator(self) -> Creator: ...

    def get_tx_id(self) -> str: ...

    def get_tx_timestamp(self) -> int:
        """Seconds since the epoch, chosen by the submitter and the same for every endorser."""
        ...

    def set_event(self, name: str, payload: bytes) -> None: ...


# Fabric's shim replaces an empty range start with this, so range queries skip composite keys.
EMPTY_KEY_SUBSTITUTE = "\x01"


class HostState:
    """What both hosts share: the transaction context, its one event, the key rules and Fabric's
    range-query semantics. A host adds get/put/del, history, and ``_range(start, end)``."""

    def __init__(self, creator: Creator, tx_id: str, timestamp: int):
        self._creator = creator
        self._tx_id = tx_id
        self._timestamp = timestamp
        self.event: tuple[str, bytes] | None = None

    def _range(self, start: str, end: str) -> Iterator[tuple[str, bytes]]:
        raise NotImplementedError

    def get_state_by_range(self, start_key: str, end_key: str) -> Iterator[tuple[str, bytes]]:
        start = start_key or EMPTY_KEY_SUBSTITUTE
        for key in (start, end_key):
            if key.startswith(COMPOSITE_KEY_NAMESPACE):
                raise ValueError(
                    f"range query key {key!r} is a composite key; use a partial composite key query"
                )
        return self._range(start, end_key)

    def get_state_by_partial_composite_key(
        self, object_type: str, attributes: list[str]
    ) -> Iterator[tuple[str, bytes]]:
        prefix = create_composite_key(object_type, attributes)
        return self._range(prefix, prefix + MAX_UNICODE_RUNE)

    def get_creator(self) -> Creator:
        return self._creator

    def get_tx_id(self) -> str:
        return self._tx_id

    def get_tx_timestamp(self) -> int:
        return self._timestamp

    def set_event(self, name: str, payload: bytes) -> None:
        if not name:
            raise ValueError("event name must not be empty")
        self.event = (name, bytes(payload))  # one event per transaction: a later one replaces it

    @staticmethod
    def check_key(key: str) -> None:
        if not isinstance(key, str) or key == "":
            raise ValueError(f"state key must be a non-empty string, got {key!r}")

    @staticmethod
    def check_value(key: str, value: bytes) -> None:
        if not isinstance(value, bytes | bytearray) or len(value) == 0:
            raise ValueError(f"value for key {key!r} must be non-empty bytes")


def create_composite_key(object_type: str, attributes: list[str]) -> str:
    """Fabric's composite key encoding, so the same keys work on both hosts."""
    for part in [object_type, *attributes]:
        if MIN_UNICODE_RUNE in part or MAX_UNICODE_RUNE in part:
            raise ValueError(f"composite key part {part!r} contains a reserved character")
    return COMPOSITE_KEY_NAMESPACE + object_type + "\x00" + "".join(a + "\x00" for a in attributes)


def split_composite_key(key: str) -> tuple[str, list[str]]:
    if not key.startswith(COMPOSITE_KEY_NAMESPACE):
        raise ValueError(f"not a composite key: {key!r}")
    parts = key[1:].split("\x00")
    return parts[0], parts[1:-1]
