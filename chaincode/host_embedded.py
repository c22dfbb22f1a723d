"""The embedded host: runs the contract in-process over SQLite with Fabric's read/write semantics."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from chaincode.state import (
    COMPOSITE_KEY_NAMESPACE,
    MAX_UNICODE_RUNE,
    Creator,
    HistoryEntry,
    TransactionContext,
    create_composite_key,
)

# Fabric's shim replaces an empty range start with this, so range queries skip composite keys.
_EMPTY_KEY_SUBSTITUTE = "\x01"

SCHEMA = """
CREATE TABLE IF NOT EXISTS world_state (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    block_number INTEGER NOT NULL,
    tx_index INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS key_history (
    key BLOB NOT NULL,
    block_number INTEGER NOT NULL,
    tx_index INTEGER NOT NULL,
    tx_id TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    value BLOB,
    is_delete INTEGER NOT NULL,
    PRIMARY KEY (key, block_number, tx_index)
);
"""


def _k(key: str) -> bytes:
    return key.encode("utf-8")


class SqliteState(TransactionContext):
    """``ChaincodeState`` over a SQLite connection: reads committed state, buffers writes."""

    def __init__(self, conn: sqlite3.Connection, creator: Creator, tx_id: str, timestamp: int):
        self._conn = conn
        super().__init__(creator, tx_id, timestamp)
        # key -> new value, or None for a delete; applied by apply_writes() only on success.
        self.writes: dict[str, bytes | None] = {}

    # -- reads: committed state only (a transaction never sees its own writes, as on Fabric) --
    def get_state(self, key: str) -> bytes | None:
        self._check_key(key)
        row = self._conn.execute("SELECT value FROM world_state WHERE key = ?", (_k(key),)).fetchone()
        return bytes(row[0]) if row else None

    def get_state_by_range(self, start_key: str, end_key: str) -> Iterator[tuple[str, bytes]]:
        start = start_key or _EMPTY_KEY_SUBSTITUTE
        for key in (start, end_key):
            if key.startswith(COMPOSITE_KEY_NAMESPACE):
                raise ValueError(f"range query key {key!r} is a composite key; use a partial composite key query")
        return self._range(start, end_key)

    def get_state_by_partial_composite_key(self, object_type: str, attributes: list[str]) -> Iterator[tuple[str, bytes]]:
        prefix = create_composite_key(object_type, attributes)
        return self._range(prefix, prefix + MAX_UNICODE_RUNE)

    def _range(self, start: str, end: str) -> Iterator[tuple[str, bytes]]:
        if end:
            rows = self._conn.execute(
                "SELECT key, value FROM world_state WHERE key >= ? AND key < ? ORDER BY key",
                (_k(start), _k(end)),
            ).fetchall()
        else:
            rows = self._conn.execute(
                "SELECT key, value FROM world_state WHERE key >= ? ORDER BY key", (_k(start),)
            ).fetchall()
        return iter([(bytes(k).decode("utf-8"), bytes(v)) for k, v in rows])

    def get_history_for_key(self, key: str) -> Iterator[HistoryEntry]:
        self._check_key(key)
        rows = self._conn.execute(
            "SELECT tx_id, timestamp, value, is_delete FROM key_history WHERE key = ? "
            "ORDER BY block_number DESC, tx_index DESC",
            (_k(key),),
        ).fetchall()
        return iter([
            HistoryEntry(tx_id=t, timestamp=ts, value=None if v is None else bytes(v), is_delete=bool(d))
            for t, ts, v, d in rows
        ])

    # -- writes: buffered --
    def put_state(self, key: str, value: bytes) -> None:
        self._check_key(key)
        if not isinstance(value, bytes | bytearray) or len(value) == 0:
            raise ValueError(f"value for key {key!r} must be non-empty bytes")
        self.writes[key] = bytes(value)

    def del_state(self, key: str) -> None:
        self._check_key(key)
        self.writes[key] = None


    @staticmethod
    def _check_key(key: str) -> None:
        if not isinstance(key, str) or key == "":
            raise ValueError(f"state key must be a non-empty string, got {key!r}")

    def write_set(self) -> list[list[str | None]]:
        """The write set in key order as JSON-friendly [key, value-as-latin-1-hex or None]."""
        return [[k, None if v is None else v.hex()] for k, v in sorted(self.writes.items())]


def apply_write_set(
    conn: sqlite3.Connection,
    write_set: list[list[str | None]],
    *,
    block_number: int,
    tx_index: int,
    tx_id: str,
    timestamp: int,
) -> None:
    """Commit a transaction's write set to the world state and the key history."""
    for key, value_hex in write_set:
        assert key is not None
        value = None if value_hex is None else bytes.fromhex(value_hex)
        if value is None:
            conn.execute("DELETE FROM world_state WHERE key = ?", (_k(key),))
        else:
            conn.execute(
                "INSERT INTO world_state (key, value, block_number, tx_index) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                "block_number = excluded.block_number, tx_index = excluded.tx_index",
                (_k(key), value, block_number, tx_index),
            )
        conn.execute(
            "INSERT INTO key_history (key, block_number, tx_index, tx_id, timestamp, value, is_delete) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (_k(key), block_number, tx_index, tx_id, timestamp, value, int(value is None)),
        )
