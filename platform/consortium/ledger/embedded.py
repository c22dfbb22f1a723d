"""The embedded ledger (``embedded:///path/ledger.db``): the contract in-process over SQLite.

Each transaction is a proposal signed by its submitter (like a Fabric proposal: channel, tx id
derived from a nonce and the creator, timestamp, function, arguments), executed by the contract
through ``chaincode.host_embedded`` and committed in its own block together with its result, its
event and its write set. Each block holds the previous block's hash and is signed by the member
that committed it. Block 0 is the configuration block: the consortium's organisations and CA
certificates, which decide whose signatures count (as a Fabric channel configuration does).

Several processes may share one ledger file: a commit runs inside one SQLite ``BEGIN IMMEDIATE``
transaction (WAL journal), so blocks are appended one at a time and a failed transaction leaves
nothing behind. The tables other than ``blocks`` are indexes rebuilt from the blocks; ``verify``
checks them against the chain.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from bcfl_common.canonical import canonical_json, sha256_hex
from bcfl_common.errors import (
    BcflError,
    ConfigError,
    ContractError,
    IdentityError,
    LedgerError,
    LedgerIntegrityError,
)
from chaincode.host_embedded import SCHEMA as STATE_SCHEMA
from chaincode.host_embedded import SqliteState, apply_write_set
from chaincode.state import Creator
from consortium.identity import (
    Consortium,
    Identity,
    organisation_kinds,
    verify_signature,
)
from consortium.ledger.base import (
    MAX_PROPOSAL_BYTES,
    Block,
    LedgerEvent,
    TxResult,
    VerifyReport,
)

CHANNEL = "bcfl"
GENESIS_PREVIOUS_HASH = "0" * 64
# A proposal stamped further than this from the committing host's clock is refused.
MAX_CLOCK_SKEW_SECONDS = 300
BUSY_TIMEOUT_MS = 60_000

LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    number INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    tx_id TEXT PRIMARY KEY,
    block_number INTEGER NOT NULL,
    tx_index INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    block_number INTEGER NOT NULL,
    tx_index INTEGER NOT NULL,
    tx_id TEXT NOT NULL,
    name TEXT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (block_number, tx_index)
);
"""


def _path_from_url(url: str) -> Path:
    parsed = urlparse(url)
    if parsed.scheme != "embedded":
        raise ConfigError(f"ledger URL {url!r}: expected scheme embedded://")
    if parsed.netloc not in ("", "localhost"):
        raise ConfigError(
            f"ledger URL {url!r}: expected embedded:///absolute/path/ledger.db (empty host), got host {parsed.netloc!r}"
        )
    path = unquote(parsed.path)
    if not path:
        raise ConfigError(
            f"ledger URL {url!r}: expected a path, e.g. embedded:///var/bcfl/ledger.db"
        )
    return Path(path)


def block_hash(header: dict[str, Any]) -> str:
    return sha256_hex(canonical_json(header))


def transaction_id(nonce: bytes, msp_id: str, cert_pem: bytes) -> str:
    """As on Fabric: the hash of the nonce and the creator, so a tx id cannot be chosen freely."""
    return hashlib.sha256(nonce + msp_id.encode() + b"\x00" + cert_pem).hexdigest()


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


class EmbeddedLedger:
    """``Ledger`` over a SQLite file, acting as ``identity``."""

    supports_replay = True  # verify(replay=True) re-executes every transaction

    def __init__(self, path: Path, identity: Identity, clock: Callable[[], float] = time.time):
        self.path = path
        self.identity = identity
        self._clock = clock
        if not path.exists():
            raise LedgerError(
                f"no ledger at {path}; create it first with `bcfl ledger init embedded://{path} --consortium DIR`",
                code="LEDGER_NOT_FOUND",
            )
        self._conn = _connect(path)
        genesis = self._block_body(0)
        if genesis is None:
            raise LedgerError(
                f"{path} has no configuration block; it is not a bcfl ledger",
                code="LEDGER_NOT_FOUND",
            )
        self.consortium = Consortium.from_dict(genesis["config"]["consortium"])
        # Fail fast for identities from outside the consortium (the same check runs per transaction).
        self.consortium.verify_member_certificate(identity.msp_id, identity.cert_pem)

    # -- creation ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: Path,
        consortium: Consortium,
        admin: Identity,
        clock: Callable[[], float] = time.time,
    ) -> EmbeddedLedger:
        """Write the configuration block, then bootstrap the contract (``init_consortium``)."""
        if admin.role != "admin":
            raise IdentityError(
                f"a ledger is created by the consortium admin, not {admin.name!r} ({admin.role})"
            )
        consortium.verify_member_certificate(admin.msp_id, admin.cert_pem)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            raise LedgerError(
                f"{path} already exists; refusing to overwrite a ledger", code="LEDGER_EXISTS"
            )
        tmp = path.with_name(path.name + f".creating-{os.getpid()}")
        conn = _connect(tmp)
        try:
            conn.executescript(LEDGER_SCHEMA + STATE_SCHEMA)
            timestamp = int(clock())
            config = {"channel": CHANNEL, "consortium": consortium.to_dict()}
            header = {
                "number": 0,
                "previous_hash": GENESIS_PREVIOUS_HASH,
                "data_hash": sha256_hex(canonical_json(config)),
                "timestamp": timestamp,
            }
            digest = block_hash(header)
            body = {
                "header": header,
                "config": config,
                "transactions": [],
                "signer": {"msp_id": admin.msp_id, "cert": admin.cert_pem.decode()},
                "signature": admin.sign(bytes.fromhex(digest)).hex(),
            }
            conn.execute(
                "INSERT INTO blocks (number, hash, body) VALUES (0, ?, ?)",
                (digest, canonical_json(body)),
            )
            conn.close()
            os.replace(tmp, path)
        except BaseException:
            conn.close()
            for suffix in ("", "-wal", "-shm"):
                Path(str(tmp) + suffix).unlink(missing_ok=True)
            raise
        for suffix in ("-wal", "-shm"):
            Path(str(tmp) + suffix).unlink(missing_ok=True)
        ledger = cls(path, admin, clock=clock)
        ledger.submit("init_consortium", {"organisations": organisation_kinds(consortium)})
        return ledger

    # -- the Ledger interface ---------------------------------------------------------------
    def submit(self, function: str, args: dict[str, Any]) -> TxResult:
        return self.submit_envelope(self.sign_proposal(function, args))

    def sign_proposal(self, function: str, args: dict[str, Any]) -> dict[str, Any]:
        """A signed transaction proposal, as the submitter sends it (see ``submit_envelope``)."""
        if not isinstance(args, dict):
            raise ContractError(
                f"args: expected a JSON object, got {type(args).__name__}", code="MALFORMED_ARGS"
            )
        nonce = os.urandom(24)
        proposal = {
            "channel": CHANNEL,
            "tx_id": transaction_id(nonce, self.identity.msp_id, self.identity.cert_pem),
            "nonce": nonce.hex(),
            "timestamp": self._now(),
            "creator": {"msp_id": self.identity.msp_id, "cert": self.identity.cert_pem.decode()},
            "function": function,
            "args": canonical_json(args).decode(),
        }
        encoded = canonical_json(proposal)
        if len(encoded) > MAX_PROPOSAL_BYTES:
            raise LedgerError(
                f"transaction proposal for {function!r} is {len(encoded)} bytes; the limit is {MAX_PROPOSAL_BYTES}",
                code="PROPOSAL_TOO_LARGE",
            )
        return {"proposal": proposal, "signature": self.identity.sign(encoded).hex()}

    def submit_envelope(self, envelope: dict[str, Any]) -> TxResult:
        """Validate a signed proposal, execute it and commit it in a new block, atomically."""
        proposal, creator = self._check_envelope(envelope, for_commit=True)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute(
                "SELECT 1 FROM transactions WHERE tx_id = ?", (proposal["tx_id"],)
            ).fetchone():
                raise LedgerError(
                    f"transaction {proposal['tx_id']} is already on the ledger; a replayed transaction is refused",
                    code="DUPLICATE_TXID",
                )
            last_number, last_hash, last_timestamp = self._last_block()
            if proposal["timestamp"] < last_timestamp - MAX_CLOCK_SKEW_SECONDS:
                raise LedgerError(
                    f"transaction timestamp {proposal['timestamp']} is older than the last block "
                    f"({last_timestamp}) by more than {MAX_CLOCK_SKEW_SECONDS} s",
                    code="STALE_TIMESTAMP",
                )
            number = last_number + 1
            state = SqliteState(conn, creator, proposal["tx_id"], proposal["timestamp"])
            result = _invoke(state, proposal["function"], proposal["args"].encode())
            event = (
                None
                if state.event is None
                else {"name": state.event[0], "payload": state.event[1].decode()}
            )
            tx = {
                "proposal": proposal,
                "signature": envelope["signature"],
                "result": result.decode(),
                "event": event,
                "write_set": state.write_set(),
            }
            transactions = [tx]
            header = {
                "number": number,
                "previous_hash": last_hash,
                "data_hash": sha256_hex(canonical_json(transactions)),
                "timestamp": max(proposal["timestamp"], last_timestamp),
            }
            digest = block_hash(header)
            body = {
                "header": header,
                "transactions": transactions,
                "signer": {"msp_id": self.identity.msp_id, "cert": self.identity.cert_pem.decode()},
                "signature": self.identity.sign(bytes.fromhex(digest)).hex(),
            }
            conn.execute(
                "INSERT INTO blocks (number, hash, body) VALUES (?, ?, ?)",
                (number, digest, canonical_json(body)),
            )
            self._index_transaction(conn, number, 0, tx)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return TxResult(
            tx_id=proposal["tx_id"],
            block_number=number,
            result=json.loads(result),
            event_name=None if event is None else event["name"],
        )

    def evaluate(self, function: str, args: dict[str, Any]) -> Any:
        envelope = self.sign_proposal(function, args)
        proposal, creator = self._check_envelope(envelope, for_commit=False)
        conn = self._conn
        conn.execute("BEGIN")
        try:
            state = SqliteState(conn, creator, proposal["tx_id"], proposal["timestamp"])
            result = _invoke(state, proposal["function"], proposal["args"].encode())
        finally:
            conn.execute("ROLLBACK")
        return json.loads(result)

    def events(self, start_block: int = 0) -> Iterator[LedgerEvent]:
        rows = self._conn.execute(
            "SELECT block_number, tx_id, name, payload FROM events WHERE block_number >= ? "
            "ORDER BY block_number, tx_index",
            (start_block,),
        ).fetchall()
        for number, tx_id, name, payload in rows:
            yield LedgerEvent(
                block_number=number, tx_id=tx_id, name=name, payload=json.loads(payload)
            )

    def blocks(self, start: int = 0, end: int | None = None) -> Iterator[Block]:
        query = "SELECT number, hash, body FROM blocks WHERE number >= ?"
        params: list[int] = [start]
        if end is not None:
            query += " AND number < ?"
            params.append(end)
        for number, digest, body in self._conn.execute(
            query + " ORDER BY number", params
        ).fetchall():
            try:
                data = json.loads(body)
            except ValueError as exc:
                raise LedgerIntegrityError(
                    f"block {number}: body is not valid JSON ({exc})"
                ) from exc
            yield Block(
                number=number,
                hash=digest,
                previous_hash=data["header"]["previous_hash"],
                timestamp=data["header"]["timestamp"],
                signer_msp_id=data["signer"]["msp_id"],
                transactions=data["transactions"],
            )

    def height(self) -> int:
        row = self._conn.execute("SELECT MAX(number) FROM blocks").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def verify(self, replay: bool = False) -> VerifyReport:
        """Re-check every hash, signature and certificate, and that the state is the chain's.

        With ``replay`` every transaction is also executed again from the start on a scratch
        database and must give the same result, event and write set (the contract is deterministic).
        """
        return _verify(self._conn, replay=replay)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> EmbeddedLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------
    def _now(self) -> int:
        return int(self._clock())

    def _block_body(self, number: int) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT body FROM blocks WHERE number = ?", (number,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except ValueError as exc:
            raise LedgerIntegrityError(f"block {number}: body is not valid JSON ({exc})") from exc

    def _last_block(self) -> tuple[int, str, int]:
        number, digest, body = self._conn.execute(
            "SELECT number, hash, body FROM blocks ORDER BY number DESC LIMIT 1"
        ).fetchone()
        return int(number), str(digest), int(json.loads(body)["header"]["timestamp"])

    def _check_envelope(
        self, envelope: dict[str, Any], *, for_commit: bool
    ) -> tuple[dict[str, Any], Creator]:
        try:
            proposal = envelope["proposal"]
            signature = bytes.fromhex(envelope["signature"])
            creator = proposal["creator"]
            for name, kind in (
                ("tx_id", str),
                ("nonce", str),
                ("timestamp", int),
                ("function", str),
                ("args", str),
            ):
                if not isinstance(proposal[name], kind):
                    raise TypeError(f"proposal.{name} must be {kind.__name__}")
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerError(
                f"malformed transaction envelope: {exc}", code="MALFORMED_ENVELOPE"
            ) from exc
        if proposal.get("channel") != CHANNEL:
            raise LedgerError(
                f"proposal for channel {proposal.get('channel')!r}; expected {CHANNEL!r}",
                code="WRONG_CHANNEL",
            )
        cert_pem = str(creator["cert"]).encode()
        msp_id = str(creator["msp_id"])
        self.consortium.verify_member_certificate(msp_id, cert_pem, at=proposal["timestamp"])
        verify_signature(cert_pem, canonical_json(proposal), signature)
        if proposal["tx_id"] != transaction_id(bytes.fromhex(proposal["nonce"]), msp_id, cert_pem):
            raise LedgerError(
                "transaction id does not derive from its nonce and creator", code="BAD_TXID"
            )
        if for_commit and abs(proposal["timestamp"] - self._now()) > MAX_CLOCK_SKEW_SECONDS:
            raise LedgerError(
                f"proposal timestamp {proposal['timestamp']} is more than {MAX_CLOCK_SKEW_SECONDS} s from the ledger clock",
                code="STALE_TIMESTAMP",
            )
        return proposal, Creator(msp_id=msp_id, cert_pem=cert_pem)

    @staticmethod
    def _index_transaction(
        conn: sqlite3.Connection, number: int, index: int, tx: dict[str, Any]
    ) -> None:
        proposal = tx["proposal"]
        conn.execute(
            "INSERT INTO transactions (tx_id, block_number, tx_index) VALUES (?, ?, ?)",
            (proposal["tx_id"], number, index),
        )
        apply_write_set(
            conn,
            tx["write_set"],
            block_number=number,
            tx_index=index,
            tx_id=proposal["tx_id"],
            timestamp=proposal["timestamp"],
        )
        if tx["event"] is not None:
            conn.execute(
                "INSERT INTO events (block_number, tx_index, tx_id, name, payload) VALUES (?, ?, ?, ?, ?)",
                (
                    number,
                    index,
                    proposal["tx_id"],
                    tx["event"]["name"],
                    tx["event"]["payload"].encode(),
                ),
            )


def _invoke(state: SqliteState, function: str, args: bytes) -> bytes:
    # Imported here so that opening a ledger for `verify` does not need the contract module loaded
    # at import time of this module (and so a broken contract cannot break `ledger show`).
    from chaincode.contract import invoke

    return invoke(state, function, args)


def _verify(conn: sqlite3.Connection, *, replay: bool) -> VerifyReport:
    report = VerifyReport()
    rows = conn.execute("SELECT number, hash, body FROM blocks ORDER BY number").fetchall()
    if not rows:
        report.problems.append("the ledger has no blocks")
        return report
    consortium: Consortium | None = None
    previous_hash = GENESIS_PREVIOUS_HASH
    expected_number = 0
    seen_tx: dict[str, int] = {}
    world: dict[bytes, bytes] = {}
    events: list[tuple[int, int, str, str, bytes]] = []
    scratch = None
    if replay:
        scratch = sqlite3.connect(":memory:", isolation_level=None)
        scratch.executescript(STATE_SCHEMA)

    def problem(text: str) -> None:
        report.problems.append(text)

    for number, stored_hash, raw in rows:
        report.blocks += 1
        where = f"block {number}"
        if number != expected_number:
            problem(
                f"{where}: expected block {expected_number} here (blocks missing or renumbered)"
            )
        expected_number = number + 1
        try:
            body = json.loads(raw)
            header = body["header"]
            transactions = body["transactions"]
        except (ValueError, KeyError, TypeError) as exc:
            problem(f"{where}: body is not a valid block ({exc})")
            previous_hash = stored_hash
            continue
        computed = block_hash(header)
        if header.get("number") != number:
            problem(f"{where}: header says block {header.get('number')}")
        if computed != stored_hash:
            problem(
                f"{where}: stored hash {stored_hash[:16]}… does not match the header's hash {computed[:16]}…"
            )
        if header.get("previous_hash") != previous_hash:
            problem(f"{where}: previous_hash does not match the hash of block {number - 1}")
        previous_hash = computed
        data = body.get("config") if number == 0 else transactions
        if sha256_hex(canonical_json(data)) != header.get("data_hash"):
            problem(
                f"{where}: data hash does not match its {'configuration' if number == 0 else 'transactions'}"
            )
        if number == 0:
            try:
                consortium = Consortium.from_dict(body["config"]["consortium"])
            except (KeyError, TypeError) as exc:
                problem(f"{where}: configuration block has no valid consortium ({exc})")
                return report
        assert consortium is not None
        try:
            signer = body["signer"]
            consortium.verify_member_certificate(signer["msp_id"], signer["cert"].encode())
            verify_signature(
                signer["cert"].encode(), bytes.fromhex(computed), bytes.fromhex(body["signature"])
            )
        except (BcflError, KeyError, ValueError) as exc:
            problem(f"{where}: block signature does not verify ({exc})")
        for index, tx in enumerate(transactions):
            report.transactions += 1
            try:
                proposal = tx["proposal"]
                tx_id = proposal["tx_id"]
                cert = proposal["creator"]["cert"].encode()
                msp_id = proposal["creator"]["msp_id"]
            except (KeyError, TypeError, AttributeError) as exc:
                problem(f"{where} transaction {index}: malformed ({exc})")
                continue
            where_tx = f"{where} transaction {tx_id[:16]}…"
            try:
                consortium.verify_member_certificate(msp_id, cert, at=proposal["timestamp"])
                verify_signature(cert, canonical_json(proposal), bytes.fromhex(tx["signature"]))
                if tx_id != transaction_id(bytes.fromhex(proposal["nonce"]), msp_id, cert):
                    raise LedgerError("tx id does not derive from its nonce and creator")
            except (BcflError, KeyError, ValueError) as exc:
                problem(f"{where_tx}: signature or creator does not verify ({exc})")
            if tx_id in seen_tx:
                problem(f"{where_tx}: duplicate of the transaction in block {seen_tx[tx_id]}")
            seen_tx[tx_id] = number
            try:
                for key, value_hex in tx["write_set"]:
                    if value_hex is None:
                        world.pop(key.encode(), None)
                    else:
                        world[key.encode()] = bytes.fromhex(value_hex)
                if tx["event"] is not None:
                    events.append(
                        (number, index, tx_id, tx["event"]["name"], tx["event"]["payload"].encode())
                    )
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                problem(f"{where_tx}: malformed write set or event ({exc})")
                continue
            if scratch is not None:
                _replay_one(scratch, number, index, tx, problem, where_tx)
    state_rows = {
        bytes(k): bytes(v) for k, v in conn.execute("SELECT key, value FROM world_state").fetchall()
    }
    for key in sorted(set(state_rows) | set(world)):
        if state_rows.get(key) != world.get(key):
            problem(
                f"world state key {key.decode(errors='replace')!r} does not match the chain's write sets"
            )
            break
    stored_events = [
        (n, i, t, name, bytes(p))
        for n, i, t, name, p in conn.execute(
            "SELECT block_number, tx_index, tx_id, name, payload FROM events ORDER BY block_number, tx_index"
        ).fetchall()
    ]
    if stored_events != events:
        problem("the events index does not match the events recorded in the blocks")
    index_rows = dict(conn.execute("SELECT tx_id, block_number FROM transactions").fetchall())
    if index_rows != seen_tx:
        problem("the transaction index does not match the transactions in the blocks")
    report.checks = [
        "block numbering and hash chain",
        "block data hashes",
        "block signatures by consortium members",
        "transaction signatures and creators against the configuration block's CAs",
        "unique transaction ids",
        "world state, event and transaction indexes rebuilt from the blocks",
    ] + (["every transaction re-executed by the contract"] if replay else [])
    return report


def _replay_one(
    scratch: sqlite3.Connection,
    number: int,
    index: int,
    tx: dict[str, Any],
    problem: Callable[[str], None],
    where: str,
) -> None:
    proposal = tx["proposal"]
    creator = Creator(
        msp_id=proposal["creator"]["msp_id"], cert_pem=proposal["creator"]["cert"].encode()
    )
    scratch.execute("BEGIN")
    try:
        state = SqliteState(scratch, creator, proposal["tx_id"], proposal["timestamp"])
        try:
            result = _invoke(state, proposal["function"], proposal["args"].encode()).decode()
        except ContractError as exc:
            problem(f"{where}: re-execution fails with {exc.code}: {exc.message}")
            scratch.execute("ROLLBACK")
            return
        event = (
            None
            if state.event is None
            else {"name": state.event[0], "payload": state.event[1].decode()}
        )
        if result != tx["result"] or event != tx["event"] or state.write_set() != tx["write_set"]:
            problem(f"{where}: re-execution gives a different result, event or write set")
        apply_write_set(
            scratch,
            tx["write_set"],
            block_number=number,
            tx_index=index,
            tx_id=proposal["tx_id"],
            timestamp=proposal["timestamp"],
        )
        scratch.execute("COMMIT")
    except BaseException:
        if scratch.in_transaction:
            scratch.execute("ROLLBACK")
        raise


def open_embedded_ledger(
    url: str, identity: Identity, clock: Callable[[], float] = time.time
) -> EmbeddedLedger:
    return EmbeddedLedger(_path_from_url(url), identity, clock=clock)


def create_embedded_ledger(
    url: str, consortium: Consortium, admin: Identity, clock: Callable[[], float] = time.time
) -> EmbeddedLedger:
    return EmbeddedLedger.create(_path_from_url(url), consortium, admin, clock=clock)
