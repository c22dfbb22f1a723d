"""The embedded host: runs the contract in-process over SQLite with Fabric's read/write semantics."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from chaincode.state import (
    Creator,
    HistoryEntry,
    HostState,
)

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


class SqliteState(HostState):
    """``ChaincodeState`` over a SQLite connection: reads committed state, buffers writes."""

    def __init__(self, conn: sqlite3.Connection, creator: Creator, tx_id: str, timestamp: int):
        self._conn = conn
        super().__init__(creator, tx_id, timestamp)
        # key -> new value, or None for a delete; applied by apply_writes() only on success.
        self.writes: dict[str, bytes | None] = {}

    # -- reads: committed state only (a transaction never sees its own writes, as on Fabric) --
    def get_state(self, key: str) -> bytes | None:
        self.check_key(key)
        row = self._conn.execute(
            "SELECT value FROM world_state WHERE key = ?", (_k(key),)
        ).fetchone()
        return bytes(row[0]) if row else None

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
        self.check_key(key)
        rows = self._conn.execute(
            "SELECT tx_id, timestamp, value, is_delete FROM key_history WHERE key = ? "
            "ORDER BY block_number DESC, tx_index DESC",
            (_k(key),),
        ).fetchall()
        return iter(
            [
                HistoryEntry(
                    tx_id=t, timestamp=ts, value=None if v is None else bytes(v), is_delete=bool(d)
                )
                for t, ts, v, d in rows
            ]
        )

    # -- writes: buffered --
    def put_state(self, key: str, value: bytes) -> None:
        self.check_key(key)
        self.check_value(key, value)
        self.writes[key] = bytes(value)

    def del_state(self, key: str) -> None:
        self.check_key(key)
        self.writes[key] = None

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
