"""The silo TOML config (env overrides, checks) and the `bcfl silo` commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from silo_harness import HOSPITALS, drive

from bcfl_common.errors import ConfigError
from silo_agent.cli import silo_group
from silo_agent.config import load_config, write_config


def test_config_reads_toml_resolves_paths_and_env_overrides(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "silo.toml",
        {
            "identity": "members/hospital1",
            "state_dir": "state",
            "ledger": {"url": "embedded:///x/ledger.db"},
            "store": {"url": "file:///x/store"},
            "data": {
                "path": "train.csv",
                "validation_fraction": 0.25,
                "columns": {"Patient Age": "age"},
            },
            "privacy": {"epsilon_budget": None},
            "run": {"poll_seconds": 5},
        },
    )
    config = load_config(
        path,
        environ={
            "BCFL_SILO_STORE_URL": "file:///y/store",
            "BCFL_SILO_RUN_TRIALS": "a,b",
            "BCFL_SILO_DATA_TEST_PATH": "held-out.csv",
            "BCFL_SILO_LEDGER_URL": "",
        },
    )
    assert config.identity == tmp_path / "members" / "hospital1"
    assert config.data_path == tmp_path / "train.csv"
    assert config.store_url == "file:///y/store"
    assert config.trials == ["a", "b"]
    assert config.columns == {"Patient Age": "age"}
    assert config.test_path == tmp_path / "held-out.csv"
    assert config.ledger_url == "embedded:///x/ledger.db"  # an empty variable is ignored
    assert config.validation_fraction == 0.25 and config.poll_seconds == 5.0
    assert config.epsilon_budget is None and config.state_dir == tmp_path / "state"


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('identity = "x"\n[ledger]\nurl = "embedded:///l"\n')
    with pytest.raises(ConfigError, match=r"\[store\] url"):
        load_config(tmp_path / "a.toml", environ={})
    (tmp_path / "b.toml").write_text(
        'identity = "x"\n[ledger]\nurl = "e"\nulr = "typo"\n[store]\nurl = "f"\n'
    )
    with pytest.raises(ConfigError, match="ulr"):
        load_config(tmp_path / "b.toml", environ={})
    good = 'identity = "x"\n[ledger]\nurl = "e"\n[store]\nurl = "f"\n'
    (tmp_path / "c.toml").write_text(good + '[data]\nvalidation_fraction = "most"\n')
    with pytest.raises(ConfigError, match=r"data.validation_fraction: got 'most', expected float"):
        load_config(tmp_path / "c.toml", environ={})
    (tmp_path / "a.toml").write_text(good)
    with pytest.raises(
        ConfigError, match=r"BCFL_SILO_RUN_POLL_SECONDS: got 'soon', expected float"
    ):
        load_config(tmp_path / "a.toml", environ={"BCFL_SILO_RUN_POLL_SECONDS": "soon"})
    (tmp_path / "d.toml").write_text(good + "[run]\npoll_seconds = true\n")
    with pytest.raises(ConfigError, match="run.poll_seconds: got True"):
        load_config(tmp_path / "d.toml", environ={})
    (tmp_path / "e.toml").write_text(good + "[data]\nvalidation_fraction = 1.5\n")
    with pytest.raises(ConfigError, match=r"\[data\] validation_fraction: got 1.5"):
        load_config(tmp_path / "e.toml", environ={})
    (tmp_path / "f.toml").write_text(good + "[run]\ntrials = [1]\n")
    with pytest.raises(ConfigError, match="run.trials: got 1, expected a list of strings"):
        load_config(tmp_path / "f.toml", environ={})


def test_attack_switches_are_not_silo_config(tmp_path: Path) -> None:
    """A production silo has no attack section: malicious silos are devnet.red_team's."""
    (tmp_path / "c.toml").write_text(
        'identity = "x"\n[ledger]\nurl = "e"\n[store]\nurl = "f"\n[attack]\nkind = "sign_flip"\n'
    )
    with pytest.raises(ConfigError, match=r"\[attack\] is not supported.*devnet.red_team"):
        load_config(tmp_path / "c.toml", environ={})
    (tmp_path / "d.toml").write_text('identity = "x"\n[ledger]\nurl = "e"\n[store]\nurl = "f"\n')
    with pytest.raises(ConfigError, match="not a silo config key"):
        load_config(tmp_path / "d.toml", environ={}, attack_kind="sign_flip")


def _toml(
    tmp_path: Path,
    consortium: Any,
    ledger_url: str,
    store_url: str,
    paths: dict[str, Path],
    name: str,
) -> Path:
    return write_config(
        tmp_path / f"{name}.toml",
        {
            "identity": str(consortium.member_dir(name)),
            "state_dir": str(tmp_path / "silos" / name),
            "ledger": {"url": ledger_url},
            "store": {"url": store_url},
            "data": {"path": str(paths["train"]), "test_path": str(paths["test"])},
        },
    )


def test_run_once_and_status_json(
    driver: Any,
    make_agent: Any,
    demo_files: dict[str, Any],
    tmp_path: Path,
    consortium: Any,
    ledger_url: str,
    store_url: str,
) -> None:
    driver.create_trial(demo_files["dataset"], rounds=1, dp={"enabled": False})
    agents = [make_agent(name) for name in HOSPITALS]
    drive(driver, agents)
    config = _toml(tmp_path, consortium, ledger_url, store_url, demo_files["paths"][0], "hospital1")
    runner = CliRunner()
    result = runner.invoke(silo_group, ["run", "--config", str(config), "--once"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        silo_group, ["run", "--config", str(config), "--until-complete", "--poll", "0.01"]
    )
    assert result.exit_code == 0 and "COMPLETED" in result.output
    result = runner.invoke(silo_group, ["status", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    (trial,) = status["trials"]
    assert trial["state"] == "COMPLETED" and trial["rewards_total"] > 0
    assert trial["round_details"][0]["test"]["accuracy"] > 0.6
    table = runner.invoke(silo_group, ["status", "--config", str(config)])
    assert table.exit_code == 0 and "trial-1" in table.output


def _bcfl(capsys: Any, *argv: str) -> tuple[int, str]:
    """`bcfl ARGV` as a program: its exit code and what it printed."""
    from bcfl_cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(list(argv))
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exited.value.code or 0), out.out + out.err


def test_run_for_a_trial_that_does_not_exist_or_closed_without_it_exits_non_zero(
    driver: Any,
    demo_files: dict[str, Any],
    tmp_path: Path,
    consortium: Any,
    ledger_url: str,
    store_url: str,
    capsys: Any,
) -> None:
    # hospital4 is left out of a trial that has started: it can no longer be enrolled
    driver.create_trial(demo_files["dataset"], rounds=1, hospitals=HOSPITALS[:3])
    config = str(
        _toml(tmp_path, consortium, ledger_url, store_url, demo_files["paths"][3], "hospital4")
    )
    for flags in (["--once"], ["--until-complete", "--poll", "0.01"]):
        code, out = _bcfl(capsys, "silo", "run", "--config", config, "--trial", "heart-99", *flags)
        assert code == ConfigError.exit_code, out
        assert "'heart-99': no such trial" in out and "trial-1" in out, out
        code, out = _bcfl(capsys, "silo", "run", "--config", config, "--trial", "trial-1", *flags)
        assert code == ConfigError.exit_code, out
        assert "Hospital4MSP is not enrolled" in out, out
    # an enrolled hospital runs as before
    enrolled = _toml(
        tmp_path, consortium, ledger_url, store_url, demo_files["paths"][0], "hospital1"
    )
    code, out = _bcfl(
        capsys, "silo", "run", "--config", str(enrolled), "--trial", "trial-1", "--once"
    )
    assert code == 0, out
