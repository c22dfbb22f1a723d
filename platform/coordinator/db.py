"""The coordinator's own database: only what the ledger cannot hold (enrolment requests, request nonces, scheduler bookkeeping, API audit log, per-trial settlement switch).

SQLite by default, PostgreSQL through ``postgresql://`` (driven by psycopg 3). The schema is
owned by the Alembic migrations in ``coordinator/migrations``; :meth:`Database.upgrade` brings a
database to the newest revision and runs at every start.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from bcfl_common.errors import BcflError, ConfigError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class DatabaseError(BcflError):
    """The coordinator's database cannot be reached or refused a write."""

    code = "DATABASE"
    exit_code = 16
    http_status = 503


class Base(DeclarativeBase):
    metadata = metadata


class RequestNonce(Base):
    """A nonce of a signed request, kept while a request with it could still be fresh."""

    __tablename__ = "request_nonces"

    msp_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(128), primary_key=True)
    timestamp: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    seen_at: Mapped[int] = mapped_column(BigInteger, nullable=False)


class EnrolmentRequest(Base):
    """A hospital's request to join a trial, with the X25519 key its trial key envelope is sealed to."""

    __tablename__ = "enrolment_requests"
    __table_args__ = (
        UniqueConstraint("trial_id", "msp_id", name="uq_enrolment_requests_trial_msp"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial_id: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    msp_id: Mapped[str] = mapped_column(String(64), nullable=False)
    # base64 of the raw 32-byte X25519 public key (what the contract records).
    encryption_public_key: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(
        String(16), nullable=False
    )  # pending | approved | rejected | removed
    requested_at: Mapped[int] = mapped_column(BigInteger, nullable=False)
    requested_by: Mapped[str] = mapped_column(String(256), nullable=False)
    decided_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    tx_id: Mapped[str | None] = mapped_column(String(128), nullable=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "msp_id": self.msp_id,
            "encryption_public_key": self.encryption_public_key,
            "status": self.status,
            "requested_at": self.requested_at,
            "requested_by": self.requested_by,
            "decided_at": self.decided_at,
            "decided_by": self.decided_by,
            "reason": self.reason,
            "tx_id": self.tx_id,
        }


class SchedulerStep(Base):
    """One step the scheduler took (or tried): bookkeeping for status and audit, never state."""

    __tablename__ = "scheduler_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial_id: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    round: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    step: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(
        String(16), nullable=False
    )  # started | done | failed | raced
    tx_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    block_number: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    started_at: Mapped[float] = mapped_column(Float, nullable=False)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "trial_id": self.trial_id,
            "round": self.round,
            "attempt": self.attempt,
            "step": self.step,
            "status": self.status,
            "tx_id": self.tx_id,
            "block_number": self.block_number,
            "detail": json.loads(self.detail) if self.detail else None,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class SchedulerState(Base):
    """Small named values the scheduler keeps across restarts (e.g. the last ledger block it read)."""

    __tablename__ = "scheduler_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


class TrialSettlement(Base):
    """Whether a trial's finalized rounds are settled on Ethereum, and why settling stopped if it did.

    The contract's trial record has no field for it (create_trial refuses unknown fields), so the
    per-trial switch lives here; the ledger shows each settled round (``round_rewards.settlement``).
    """

    __tablename__ = "trial_settlements"

    trial_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False)
    changed_at: Mapped[float] = mapped_column(Float, nullable=False)
    changed_by: Mapped[str] = mapped_column(String(256), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Set when settling stopped for this trial (SETTLEMENT_CHAIN_CHANGED, SETTLEMENT_CONFLICT, ...);
    # cleared when the admin switches settlement on again.
    halted_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    halted_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    halted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    halted_round: Mapped[int | None] = mapped_column(Integer, nullable=True)
    halted_attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)

    def to_dict(self) -> dict[str, Any]:
        halted = None
        if self.halted_code is not None:
            halted = {
                "code": self.halted_code,
                "message": self.halted_message,
                "at": self.halted_at,
                "round": self.halted_round,
                "attempt": self.halted_attempt,
            }
        return {
            "trial_id": self.trial_id,
            "enabled": self.enabled,
            "changed_at": self.changed_at,
            "changed_by": self.changed_by,
            "reason": self.reason,
            "halted": halted,
        }


class AuditEntry(Base):
    """One API request: who, what, and the answer."""

    __tablename__ = "api_audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, nullable=False, index=True)
    msp_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    role: Mapped[str | None] = mapped_column(String(32), nullable=True)
    method: Mapped[str] = mapped_column(String(16), nullable=False)
    path: Mapped[str] = mapped_column(String(2048), nullable=False)
    status: Mapped[int] = mapped_column(Integer, nullable=False)
    code: Mapped[str | None] = mapped_column(String(64), nullable=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "msp_id": self.msp_id,
            "name": self.name,
            "role": self.role,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "code": self.code,
        }


def normalise_database_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3; SQLite stays as it is."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("postgresql+psycopg2://"):
        raise ConfigError(
            f"database URL {_redact(url)!r}: psycopg2 is not installed; expected postgresql:// or postgresql+psycopg://"
        )
    return url


def _redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def create_db_engine(url: str) -> Engine:
    url = normalise_database_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"database URL {url!r} cannot be parsed; expected sqlite:///path/coordinator.db or "
            "postgresql://user:password@host:port/database"
        ) from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            raise ConfigError(
                f"database URL {_redact(url)!r}: driver {parsed.get_driver_name()!r}; expected psycopg (postgresql://)"
            )
        return create_engine(url, pool_pre_ping=True)
    raise ConfigError(
        f"database URL {_redact(url)!r} is for {backend!r}; expected sqlite:/// or postgresql://"
    )


def alembic_config(url: str | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation: a literal % in a password must be doubled.
        config.set_main_option("sqlalchemy.url", normalise_database_url(url).replace("%", "%%"))
    return config


class Database:
    """The coordinator database: engine, sessions and the few operations the service needs."""

    def __init__(self, url: str):
        self.url = normalise_database_url(url)
        self.engine = create_db_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._last_purge = 0.0

    @property
    def redacted_url(self) -> str:
        return _redact(self.url)

    def upgrade(self, revision: str = "head") -> None:
        """Apply the migrations up to ``revision`` (idempotent)."""
        from alembic import command

        config = alembic_config()
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
        except SQLAlchemyError as exc:
            raise DatabaseError(
                f"database {self.redacted_url}: migration to {revision} failed ({exc})"
            ) from exc

    def downgrade(self, revision: str) -> None:
        """Undo migrations down to ``revision`` (``base`` drops every table the migrations made)."""
        from alembic import command

        config = alembic_config()
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.downgrade(config, revision)
        except SQLAlchemyError as exc:
            raise DatabaseError(
                f"database {self.redacted_url}: migration down to {revision} failed ({exc})"
            ) from exc

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    @contextmanager
    def session(self) -> Iterator[Session]:
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            if isinstance(exc, IntegrityError):
                raise
            raise DatabaseError(
                f"database {self.redacted_url}: {exc.__class__.__name__}: {exc}"
            ) from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def close(self) -> None:
        self.engine.dispose()

    # -- nonces ------------------------------------------------------------------------------
    def remember_nonce(
        self, msp_id: str, nonce: str, timestamp: int, *, now: int, keep_seconds: int
    ) -> bool:
        """Record a request nonce; False if this MSP already used it (a replay)."""
        if now - self._last_purge > 60:
            self._last_purge = now
            with self.session() as session:
                session.execute(
                    delete(RequestNonce).where(RequestNonce.timestamp < now - keep_seconds)
                )
        try:
            with self.session() as session:
                session.add(
                    RequestNonce(msp_id=msp_id, nonce=nonce, timestamp=timestamp, seen_at=now)
                )
        except IntegrityError:
            return False
        return True

    # -- audit log ---------------------------------------------------------------------------
    def audit(self, **fields: Any) -> None:
        with self.session() as session:
            session.add(AuditEntry(at=time.time(), **fields))

    def audit_log(self, *, limit: int = 100, msp_id: str | None = None) -> list[dict[str, Any]]:
        with self.session() as session:
            query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
            if msp_id is not None:
                query = query.where(AuditEntry.msp_id == msp_id)
            return [row.to_dict() for row in session.scalars(query)]

    # -- scheduler bookkeeping ----------------------------------------------------------------
    def step_started(
        self,
        trial_id: str,
        step: str,
        round: int | None,
        attempt: int | None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        with self.session() as session:
            row = SchedulerStep(
                trial_id=trial_id,
                step=step,
                round=round,
                attempt=attempt,
                status="started",
                detail=None if detail is None else json.dumps(detail, sort_keys=True, default=str),
                started_at=time.time(),
            )
            session.add(row)
            session.flush()
            return int(row.id)

    def step_finished(
        self,
        step_id: int,
        status: str,
        *,
        tx_id: str | None = None,
        block_number: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        with self.session() as session:
            row = session.get(SchedulerStep, step_id)
            if row is None:
                return
            row.status = status
            row.tx_id = tx_id
            row.block_number = block_number
            if detail is not None:
                merged = (json.loads(row.detail) if row.detail else {}) | detail
                row.detail = json.dumps(merged, sort_keys=True, default=str)
            row.finished_at = time.time()

    def steps(self, *, trial_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        with self.session() as session:
            query = select(SchedulerStep).order_by(SchedulerStep.id.desc()).limit(limit)
            if trial_id is not None:
                query = query.where(SchedulerStep.trial_id == trial_id)
            return [row.to_dict() for row in session.scalars(query)]

    def get_state(self, key: str) -> str | None:
        with self.session() as session:
            row = session.get(SchedulerState, key)
            return None if row is None else row.value

    def set_state(self, key: str, value: str) -> None:
        with self.session() as session:
            row = session.get(SchedulerState, key)
            if row is None:
                session.add(SchedulerState(key=key, value=value))
            else:
                row.value = value

    # -- per-trial settlement ------------------------------------------------------------------
    def trial_settlement(self, trial_id: str) -> dict[str, Any] | None:
        with self.session() as session:
            row = session.get(TrialSettlement, trial_id)
            return None if row is None else row.to_dict()

    def trial_settlements(self, *, enabled: bool | None = None) -> list[dict[str, Any]]:
        with self.session() as session:
            query = select(TrialSettlement).order_by(TrialSettlement.trial_id)
            if enabled is not None:
                query = query.where(TrialSettlement.enabled == enabled)
            return [row.to_dict() for row in session.scalars(query)]

    def set_trial_settlement(
        self, trial_id: str, enabled: bool, *, by: str, reason: str | None = None
    ) -> dict[str, Any]:
        """Switch settlement on or off for a trial; switching it on also clears a halt (resume)."""
        with self.session() as session:
            row = session.get(TrialSettlement, trial_id)
            if row is None:
                row = TrialSettlement(trial_id=trial_id)
                session.add(row)
            row.enabled = enabled
            row.changed_at = time.time()
            row.changed_by = by
            row.reason = reason
            if enabled:
                row.halted_code = row.halted_message = None
                row.halted_at = None
                row.halted_round = row.halted_attempt = None
            session.flush()
            return row.to_dict()

    def halt_trial_settlement(
        self,
        trial_id: str,
        code: str,
        message: str,
        *,
        round: int | None = None,
        attempt: int | None = None,
    ) -> None:
        with self.session() as session:
            row = session.get(TrialSettlement, trial_id)
            if row is None:
                return
            row.halted_code = code
            row.halted_message = message
            row.halted_at = time.time()
            row.halted_round = round
            row.halted_attempt = attempt
