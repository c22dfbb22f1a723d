"""coordinator.toml, BCFL_COORDINATOR_* overrides and defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcfl_common.errors import ConfigError
from coordinator.config import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PORT,
    CoordinatorConfig,
    load_config,
    write_config,
)


def test_file_env_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "coordinator.toml"
    path.parent.mkdir()
    path.write_text(
        '[coordinator]\nconsortium = "../consortium"\nstate_dir = "state"\nport = 9001\nscheduler = false\n'
    )
    config = load_config(path, env={})
    assert config.consortium == tmp_path / "etc" / ".." / "consortium"
    assert config.admin_identity == config.consortium / "members" / "admin"
    assert config.coordinator_identity == config.consortium / "members" / "coordinator"
    assert config.state_dir == tmp_path / "etc" / "state"
    assert (
        config.database_url == f"sqlite:///{(tmp_path / 'etc' / 'state').resolve()}/coordinator.db"
    )
    assert config.ledger_url == f"embedded://{(tmp_path / 'etc' / 'state').resolve()}/ledger.db"
    assert config.store_url.startswith("file:///") and config.store_url.endswith("/state/store")
    assert (config.host, config.port, config.scheduler, config.max_body_bytes) == (
        "127.0.0.1",
        9001,
        False,
        DEFAULT_MAX_BODY_BYTES,
    )
    overridden = load_config(
        path,
        env={
            "BCFL_COORDINATOR_PORT": "9100",
            "BCFL_COORDINATOR_SCHEDULER": "yes",
            "BCFL_COORDINATOR_DATABASE_URL": "postgresql://db/bcfl",
        },
    )
    assert (overridden.port, overridden.scheduler, overridden.database_url) == (
        9100,
        True,
        "postgresql://db/bcfl",
    )
    assert overridden.base_url == "http://127.0.0.1:9100"
    only_env = load_config(None, env={"BCFL_COORDINATOR_CONSORTIUM": str(tmp_path)})
    assert only_env.port == DEFAULT_PORT and only_env.consortium == tmp_path


def test_bad_configuration_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={})
    assert "consortium" in info.value.message
    path = tmp_path / "c.toml"
    path.write_text('consortium = "x"\nprot = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "prot" in info.value.message
    with pytest.raises(ConfigError) as info:
        load_config(
            None, env={"BCFL_COORDINATOR_CONSORTIUM": "x", "BCFL_COORDINATOR_PORT": "eighty"}
        )
    assert "BCFL_COORDINATOR_PORT" in info.value.message and "'eighty'" in info.value.message
    path.write_text("consortium = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "not valid TOML" in info.value.message


def test_each_value_is_checked_against_its_own_source(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('consortium = "x"\nport = true\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.message == f"{path}: port = True; expected an integer in [0, 65535]"
    assert info.value.detail == {"key": "port", "value": "True"}
    path.write_text('consortium = ""\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "consortium = ''; expected a path" in info.value.message
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"consortium": "c", "poll_interval": 0})
    assert info.value.message.startswith("command line: poll_interval = 0; expected a number")
    with pytest.raises(ConfigError) as info:
        load_config(
            None, env={"BCFL_COORDINATOR_CONSORTIUM": "c", "BCFL_COORDINATOR_SCHEDULER": "maybe"}
        )
    assert (
        "environment BCFL_COORDINATOR_SCHEDULER: scheduler = 'maybe'; expected true or false"
        in info.value.message
    )
    assert (
        load_config(
            None, env={"BCFL_COORDINATOR_CONSORTIUM": "c", "BCFL_COORDINATOR_PORT": ""}
        ).port
        == DEFAULT_PORT
    )


def test_a_written_configuration_reads_back_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BCFL_COORDINATOR_PORT", "1")  # constructing or reading back ignores it
    config = load_config(
        None,
        env={},
        overrides={
            "consortium": tmp_path / 'with "quotes"',
            "state_dir": tmp_path / "state",
            "port": 9009,
            "settlement_url": "eth://127.0.0.1:8545?deployment=d.json&key=k",
            "settlement_payees": tmp_path / "payees.toml",
        },
    )
    path = write_config(config, tmp_path / "etc" / "coordinator.toml")
    assert "[settlement]" in path.read_text()
    assert load_config(path, env={}) == config
    assert CoordinatorConfig(**config.model_dump()).port == 9009
    assert config.with_overrides(port=None, host="::1").base_url == "http://[::1]:9009"
