"""devnet.red_team: the attacking silos live outside the production agent, behind its one seam."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from silo_harness import HOSPITALS, drive

from bcfl_common.errors import ConfigError
from devnet.red_team import SignFlipSilo, attacker, parse_args
from silo_agent.agent import SiloAgent
from silo_agent.cli import run_command_for, silo_group


def test_honest_delta_is_trained_minus_base_in_float64(make_agent: Any) -> None:
    agent = make_agent("hospital1")
    base = np.array([1.0, 2.0, -3.0], dtype=np.float32)
    trained = np.array([1.5, 1.0, -3.0], dtype=np.float32)
    delta = agent.compute_delta(base, trained)
    assert delta.dtype == np.float64
    np.testing.assert_array_equal(delta, [0.5, -1.0, 0.0])


def test_sign_flip_sends_minus_scale_times_the_honest_delta(make_agent: Any) -> None:
    honest = make_agent("hospital1")
    bad = make_agent("hospital2", agent_class=attacker("sign_flip", scale=4.0))
    assert isinstance(bad, SignFlipSilo) and isinstance(bad, SiloAgent)
    rng = np.random.default_rng(3)
    base, trained = rng.normal(size=50), rng.normal(size=50)
    np.testing.assert_allclose(
        bad.compute_delta(base, trained), -4.0 * honest.compute_delta(base, trained)
    )


def test_unknown_attack_and_bad_scale_are_refused(make_agent: Any) -> None:
    with pytest.raises(ConfigError, match="--attack: got 'nuke'"):
        attacker("nuke")
    with pytest.raises(ConfigError, match="--scale: got -1.0"):
        make_agent("hospital1", agent_class=attacker("sign_flip", scale=-1.0))


def test_harness_options_are_split_from_the_silo_run_arguments() -> None:
    args, rest = parse_args(
        ["--attack", "sign_flip", "--scale", "10", "--config", "h4.toml", "--until-complete"]
    )
    assert (args.attack, args.scale) == ("sign_flip", 10.0)
    assert rest == ["--config", "h4.toml", "--until-complete"]
    with pytest.raises(SystemExit):
        parse_args(["--scale", "10", "--config", "h4.toml"])  # --attack is required


def test_red_team_run_command_has_exactly_the_silo_run_options() -> None:
    silo_run = silo_group.commands["run"]
    red_run = run_command_for(attacker("sign_flip"))
    assert [p.opts for p in red_run.params] == [p.opts for p in silo_run.params]


def test_module_hands_the_run_arguments_over(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    proc = subprocess.run(
        [sys.executable, "-m", "devnet.red_team", "--attack", "sign_flip", "--scale", "10"]
        + ["--config", str(missing), "--once"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert f"config file {missing} not found" in proc.stderr


def test_red_team_silo_runs_a_round_through_the_run_command(
    driver: Any,
    make_agent: Any,
    demo_files: dict[str, Any],
    tmp_path: Path,
    consortium: Any,
    ledger_url: str,
    store_url: str,
) -> None:
    """The attacker takes its step through the same `run` loop, and the votes reject it."""
    from test_config_cli import _toml

    driver.create_trial(demo_files["dataset"], rounds=1, dp={"enabled": False})
    honest = [make_agent(name) for name in HOSPITALS[:3]]
    config = _toml(tmp_path, consortium, ledger_url, store_url, demo_files["paths"][3], "hospital4")
    red_run = run_command_for(attacker("sign_flip", scale=10.0))

    class RunOnce:
        """hospital4 as a `run --once` process at every step of the driver."""

        msp_id = consortium.identity("hospital4").msp_id

        def tick(self) -> list[Any]:
            result = CliRunner().invoke(red_run, ["--config", str(config), "--once"])
            assert result.exit_code == 0, result.output
            return []

    drive(driver, [*honest, RunOnce()])
    acceptance = driver.net.client("admin").evaluate(
        "get_acceptance", {"trial_id": "trial-1", "round": 1}
    )
    assert RunOnce.msp_id in acceptance["rejected"]
