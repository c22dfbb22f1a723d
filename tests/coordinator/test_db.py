"""The coordinator database on SQLite and on a real PostgreSQL: migrations, nonces, enrolment requests, a live service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from consortium.http_auth import sign_request
from coordinator.cli import coordinator_group
from coordinator.db import Database, EnrolmentRequest, metadata, normalise_database_url

TABLES = {
    "request_nonces",
    "enrolment_requests",
    "scheduler_steps",
    "scheduler_state",
    "api_audit_log",
    "trial_settlements",
    "alembic_version",
}


def test_migrations_create_the_schema_of_the_models(database_url: str) -> None:
    database = Database(database_url)
    try:
        assert database.current_revision() is None
        database.upgrade()
        database.upgrade()  # idempotent
        assert database.current_revision() == "0002"
        assert set(inspect(database.engine).get_table_names()) == TABLES
        with database.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), metadata) == []
        database.downgrade("base")
        assert set(inspect(database.engine).get_table_names()) == {"alembic_version"}
        database.upgrade()
        assert database.current_revision() == "0002"
    finally:
        database.close()


def test_nonces_enrolment_requests_and_bookkeeping(database_url: str) -> None:
    database = Database(database_url)
    database.upgrade()
    try:
        assert database.remember_nonce("Hospital1MSP", "ab" * 16, 1000, now=1000, keep_seconds=660)
        assert not database.remember_nonce(
            "Hospital1MSP", "ab" * 16, 1000, now=1001, keep_seconds=660
        )
        assert database.remember_nonce("Hospital2MSP", "ab" * 16, 1000, now=1001, keep_seconds=660)
        # Old nonces are purged once no request carrying them could still be fresh.
        assert database.remember_nonce("Hospital1MSP", "cd" * 16, 5000, now=5000, keep_seconds=660)
        assert database.remember_nonce("Hospital1MSP", "ab" * 16, 5000, now=5001, keep_seconds=660)

        with database.session() as session:
            session.add(
                EnrolmentRequest(
                    trial_id="t",
                    msp_id="Hospital1MSP",
                    encryption_public_key="k",
                    status="pending",
                    requested_at=1,
                    requested_by="hospital1@Hospital1MSP",
                )
            )
        with pytest.raises(IntegrityError), database.session() as session:
            session.add(
                EnrolmentRequest(
                    trial_id="t",
                    msp_id="Hospital1MSP",
                    encryption_public_key="k2",
                    status="pending",
                    requested_at=2,
                    requested_by="hospital1@Hospital1MSP",
                )
            )
        step = database.step_started("t", "open_round", 1, None, {"why": "test"})
        database.step_finished(
            step, "done", tx_id="f" * 64, block_number=7, detail={"event": "RoundOpened"}
        )
        [row] = database.steps(trial_id="t")
        assert (row["status"], row["block_number"], row["detail"]) == (
            "done",
            7,
            {"why": "test", "event": "RoundOpened"},
        )
        database.set_state("last_block", "7")
        database.set_state("last_block", "8")
        assert database.get_state("last_block") == "8"
        database.audit(
            msp_id="AuditorMSP",
            name="auditor",
            role="auditor",
            method="GET",
            path="/x",
            status=200,
            code=None,
        )
        assert database.audit_log()[0]["path"] == "/x"
    finally:
        database.close()


def test_service_on_the_database_refuses_replays_across_restarts(
    live: Any, make_service: Any, consortium: Any, database_url: str
) -> None:
    first = live(make_service(database_url=database_url))
    headers = sign_request(consortium.identity("auditor"), "GET", "/api/v1/whoami")
    assert httpx.get(first.base_url + "/api/v1/whoami", headers=headers).status_code == 200
    first.stop()
    second = live(make_service(database_url=database_url))
    response = httpx.get(second.base_url + "/api/v1/whoami", headers=headers)
    assert response.status_code == 401 and response.json()["code"] == "REPLAYED"


def test_url_normalisation_and_cli_upgrade(tmp_path: Path) -> None:
    assert normalise_database_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert normalise_database_url("postgres://h/db") == "postgresql+psycopg://h/db"
    assert normalise_database_url("sqlite:////x.db") == "sqlite:////x.db"
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = CliRunner().invoke(coordinator_group, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert "revision 0002" in result.output
    with pytest.raises(Exception) as info:
        Database("mysql://h/db")
    assert info.value.code == "CONFIG"  # type: ignore[attr-defined]
