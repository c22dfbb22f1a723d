"""`bcfl demo` as a user runs it: a subprocess that must finish with a completed trial and a verifying ledger."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from devnet.local_network import bcfl_command

pytestmark = pytest.mark.slow
HEART = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "heart_disease"


def run_demo(tmp_path: Path, *args: str, timeout: float = 900) -> dict:
    workdir = tmp_path / "demo"
    env = {**os.environ, "COLUMNS": "160"}
    proc = subprocess.run(
        bcfl_command("demo", "--workdir", str(workdir), *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "bcfl ledger verify: OK" in proc.stdout
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["state"] == "COMPLETED"
    assert summary["ledger_verify"]["ok"], summary["ledger_verify"]
    summary["stdout"] = proc.stdout
    return summary


def test_default_demo(tmp_path: Path) -> None:
    summary = run_demo(tmp_path, "--rounds", "2")
    assert summary["dp"] is True
    assert len(summary["round_results"]) == 2
    assert all(
        r["phase"] == "FINALIZED" and len(r["accepted"]) == 4 for r in summary["round_results"]
    )
    for msp, entry in summary["privacy"].items():
        # The budget is the public schedule's last cumulative epsilon (at most the trial's 3.0);
        # two of the two planned rounds charged it exactly.
        assert 0 < entry["spent"] == entry["budget"] <= 3.0, msp
    # Only updates that improve the model and voters that agree with the outcome are paid.
    assert 0 < sum(summary["rewards"].values()) <= 2 * 1000
    assert "accuracy on each hospital's held-out data" in summary["stdout"]


@pytest.mark.skipif(
    not HEART.is_dir(), reason="the UCI heart disease files are not beside the repository"
)
def test_heart_disease_demo_with_a_malicious_hospital(tmp_path: Path) -> None:
    summary = run_demo(
        tmp_path,
        "--dataset",
        "heart-disease",
        "--data-dir",
        str(HEART),
        "--rounds",
        "2",
        "--malicious",
        "1",
    )
    assert summary["malicious"] == ["Hospital4MSP"]
    for rnd in summary["round_results"]:
        assert "Hospital4MSP" not in rnd["accepted"]
        assert rnd["hospitals"]["Hospital4MSP"]["reason"] in (
            "norm_exceeded",
            "norm_outlier",
            "harmful",
        )
    assert_attacker_earns_only_for_voting(summary, "Hospital4MSP")


def assert_attacker_earns_only_for_voting(summary: dict, attacker: str) -> None:
    """The attacker's rejected updates earn nothing. It may earn a voter reward for judging its
    peers as the majority did (honest judging is work), never more in a round than the best
    honest voter, and in all less than the honest hospitals on average."""
    for rnd in summary["round_results"]:
        hospitals = rnd["hospitals"]
        assert hospitals[attacker]["update_reward"] == 0, rnd
        best_honest_voter = max(h["voter_reward"] for m, h in hospitals.items() if m != attacker)
        assert hospitals[attacker]["voter_reward"] <= best_honest_voter, rnd
    rewards = summary["rewards"]
    honest = [r for m, r in rewards.items() if m != attacker]
    assert rewards.get(attacker, 0) < sum(honest) / len(honest), rewards


@pytest.mark.ethereum
def test_demo_with_ethereum_settlement(tmp_path: Path) -> None:
    summary = run_demo(tmp_path, "--rounds", "2", "--malicious", "1", "--settlement", "ethereum")
    balances = summary["settlement_balances"]
    assert_attacker_earns_only_for_voting(summary, "Hospital4MSP")
    for msp, reward in summary["rewards"].items():
        assert balances[msp]["balance"] == str(reward), (msp, balances[msp], reward)
    assert "Rewards settled on Ethereum" in summary["stdout"]


@pytest.mark.fabric
def test_demo_on_fabric(tmp_path: Path) -> None:
    summary = run_demo(tmp_path, "--rounds", "2", "--ledger", "fabric")
    assert summary["ledger"] == "fabric"
    assert all(r["phase"] == "FINALIZED" for r in summary["round_results"])
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path / "demo" / "fabric")], capture_output=True, text=True
    )
    assert leftovers.stdout.strip() == "", "Fabric processes left running"
