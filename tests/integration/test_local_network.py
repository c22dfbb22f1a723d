"""The local network's own wiring: the TOML it writes, and how it starts honest and malicious hospitals."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from devnet.local_network import LocalNetwork, red_team_command, write_toml


def test_write_toml_round_trips_and_leaves_out_what_toml_cannot_say(tmp_path: Path) -> None:
    tricky = 'C:\\data\\"quoted" \u00e9\n'
    path = write_toml(
        tmp_path / "x.toml",
        {
            "": {"identity": tricky, "unset": None},
            "privacy": {"epsilon_budget": None},
            "run": {"poll_seconds": 0.3, "flags": [1, 2], "on": True},
        },
    )
    assert tomllib.loads(path.read_text()) == {
        "identity": tricky,
        "run": {"poll_seconds": 0.3, "flags": [1, 2], "on": True},
    }


def test_silo_config_holds_no_attack_and_malicious_hospitals_run_the_red_team(
    tmp_path: Path,
) -> None:
    net = LocalNetwork.create(tmp_path / "net", 2)
    data = {"path": tmp_path / "train.csv", "test_path": tmp_path / "test.csv"}
    net.write_silo_config("hospital1", data, epsilon_budget=2.5)
    net.write_silo_config("hospital2", data, attack="sign_flip", attack_scale=10.0)

    honest = tomllib.loads(net.silo_config_path("hospital1").read_text())
    malicious = tomllib.loads(net.silo_config_path("hospital2").read_text())
    assert "attack" not in honest and "attack" not in malicious
    assert honest["privacy"] == {"epsilon_budget": 2.5}
    assert "privacy" not in malicious  # no budget of its own: the trial's applies
    assert malicious["data"] == {"path": str(data["path"]), "test_path": str(data["test_path"])}
    assert malicious["ledger"]["url"] == net.ledger_url

    try:
        started = {h: net.start_silo(h, trial_id="t1") for h in ("hospital1", "hospital2")}
    finally:
        net.stop_all()

    def silo_args(hospital: str) -> list[str]:
        return [
            "--config",
            str(net.silo_config_path(hospital)),
            "--until-complete",
            "--trial",
            "t1",
        ]

    assert list(started["hospital1"].argv) == [
        sys.executable,
        "-m",
        "bcfl_cli",
        "silo",
        "run",
        *silo_args("hospital1"),
    ]
    assert list(started["hospital2"].argv) == [
        sys.executable,
        "-m",
        "devnet.red_team",
        "--attack",
        "sign_flip",
        "--scale",
        "10",
        *silo_args("hospital2"),
    ]
    assert red_team_command("sign_flip", 2.5, "--config", "c") == [
        sys.executable,
        "-m",
        "devnet.red_team",
        "--attack",
        "sign_flip",
        "--scale",
        "2.5",
        "--config",
        "c",
    ]

    net.write_silo_config("hospital2", data)  # honest again
    assert "hospital2" not in net.attacks
