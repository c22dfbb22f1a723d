"""Settlement configuration ([settlement] in coordinator.toml) and the per-trial switch in the coordinator database (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from bcfl_common.errors import ConfigError
from coordinator.config import load_config
from coordinator.db import Database, metadata
from coordinator.settlement_step import (
    TOKEN_UNITS_PER_REWARD,
    ledger_round_digest,
    round_payouts,
    settlement_round,
)


def test_the_settlement_table_reads_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text(
        '[coordinator]\nconsortium = "c"\n\n[settlement]\nurl = "eth://127.0.0.1:8545?deployment=d.json"\n'
        'payees = "payees.toml"\n'
    )
    config = load_config(path, env={})
    assert config.settlement_url == "eth://127.0.0.1:8545?deployment=d.json"
    assert config.settlement_payees == tmp_path.resolve() / "payees.toml"
    config = load_config(
        path, env={"BCFL_COORDINATOR_SETTLEMENT_URL": "eth://h:1?deployment=e.json"}
    )
    assert config.settlement_url == "eth://h:1?deployment=e.json"
    # Settlement is off unless configured.
    assert load_config(env={"BCFL_COORDINATOR_CONSORTIUM": "c"}).settlement_url is None
    # The root-table form works too.
    path.write_text('consortium = "c"\n[settlement]\nurl = "eth://h:1"\npayees = "/p.toml"\n')
    assert load_config(path, env={}).settlement_payees == Path("/p.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[settlement]\nurl = "eth://h:1"\n', "payees is missing"),
        ('[settlement]\npayees = "p.toml"\n', "url is missing"),
        (
            '[settlement]\nurl = "eth://h:1"\npayees = "p.toml"\nkey = "k"\n',
            "unknown [settlement] keys ['key']",
        ),
        ('settlement = "eth://h:1"\n', "[settlement] must be a table"),
    ],
)
def test_a_half_or_wrong_settlement_configuration_is_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text(
        '[coordinator]\nconsortium = "c"\n' + text
        if text.startswith("[")
        else 'consortium = "c"\n' + text
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert message in err.value.message


def test_migration_0002_and_the_per_trial_switch(database_url: str) -> None:
    database = Database(database_url)
    try:
        database.upgrade()
        assert database.current_revision() == "0002"
        assert "trial_settlements" in inspect(database.engine).get_table_names()
        with database.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), metadata) == []

        assert database.trial_settlement("t") is None
        on = database.set_trial_settlement("t", True, by="admin@OperatorMSP", reason="agreed")
        assert on["enabled"] and on["halted"] is None and on["reason"] == "agreed"
        database.halt_trial_settlement(
            "t", "SETTLEMENT_CHAIN_CHANGED", "fresh chain", round=2, attempt=1
        )
        halted = database.trial_settlement("t")["halted"]
        assert (halted["code"], halted["round"], halted["attempt"]) == (
            "SETTLEMENT_CHAIN_CHANGED",
            2,
            1,
        )
        assert [r["trial_id"] for r in database.trial_settlements(enabled=True)] == ["t"]
        # Switching on again resumes (clears the halt); switching off keeps the record.
        assert database.set_trial_settlement("t", True, by="admin@OperatorMSP")["halted"] is None
        assert database.set_trial_settlement("t", False, by="admin@OperatorMSP")["enabled"] is False
        assert database.trial_settlements(enabled=True) == []

        database.downgrade("0001")
        assert "trial_settlements" not in inspect(database.engine).get_table_names()
        database.upgrade()
    finally:
        database.close()


def test_the_definitions_an_auditor_recomputes() -> None:
    assert settlement_round(3, 1) == 3
    assert settlement_round(3, 2) == (2 << 32) | 3 and settlement_round(3, 2) != settlement_round(
        3, 1
    )
    with pytest.raises(ValueError):
        settlement_round(0, 1)
    rr = {
        "trial_id": "t",
        "round": 1,
        "attempt": 1,
        "pool": 10,
        "rewards": {"B": 0, "A": 10},
        "status": "credited",
        "settlement": None,
    }
    assert round_payouts(rr) == {"A": 10 * TOKEN_UNITS_PER_REWARD}
    rnd = {"trial_id": "t", "round": 1, "attempt": 1, "phase": "FINALIZED", "disputes": []}
    digest = ledger_round_digest(rnd, {"accepted": ["A"]}, rr)
    # What may still change after finalisation does not move the digest; anything else does.
    settled = dict(
        rr,
        settlement={"chain_id": 1, "tx_hash": "0x" + "1" * 64, "recorded_at": 5, "recorded_by": {}},
    )
    disputed = dict(rnd, disputes=[{"msp_id": "B", "sha256": "0" * 64, "at": 9}])
    assert ledger_round_digest(disputed, {"accepted": ["A"]}, settled) == digest
    assert ledger_round_digest(rnd, {"accepted": ["B"]}, rr) != digest
    assert (
        ledger_round_digest(rnd, {"accepted": ["A"]}, dict(rr, rewards={"A": 9, "B": 1})) != digest
    )
