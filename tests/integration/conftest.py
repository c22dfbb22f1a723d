"""Integration fixtures: a consortium on loopback with a real coordinator server and silo agent processes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devnet.local_network import LocalNetwork, bcfl_command
from devnet.supervisor import wait_for
from silo_agent.datasets import load_demo_dataset, write_demo_dataset

# Phase windows: a phase closes as soon as every expected party acted, so a silo that is down or
# late makes the round wait this long. Round 1's submit window must hold cold silo starts and the
# DP schedule check on a loaded machine (20 s once closed it before anyone committed).
FAST_PHASES = {"submit": 120, "reveal": 30, "vote_commit": 30, "vote_reveal": 30}


class Trial:
    """A running trial on a LocalNetwork, with the helpers the tests share."""

    def __init__(self, net: LocalNetwork, trial_id: str, files: list[dict[str, Path]]):
        self.net = net
        self.trial_id = trial_id
        self.files = files
        self.auditor = net.client("auditor")

    def state(self) -> dict[str, Any]:
        return self.auditor.trial(self.trial_id)

    def round(self, number: int, attempt: int | None = None) -> dict[str, Any]:
        return self.auditor.round(self.trial_id, number, attempt)

    def wait_phase(
        self, number: int, phases: tuple[str, ...], timeout: float = 120
    ) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            current = self.state().get("current")
            if not current or current["round"] < number:
                return None
            if current["round"] > number:
                return self.round(number)
            rnd = self.round(number)
            return rnd if rnd["phase"] in phases else None

        return wait_for(reached, timeout=timeout, what=f"round {number} to reach {phases}")

    def wait_end(self, timeout: float = 600) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            for name, proc in self.net.processes.items():
                if name == "coordinator" and not proc.running:
                    raise AssertionError(f"coordinator died:\n{proc.log_tail()}")
            trial = self.state()
            return trial if trial["state"] in ("COMPLETED", "HALTED") else None

        return wait_for(ended, timeout=timeout, interval=0.5, what=f"trial {self.trial_id} to end")

    def submissions(self, number: int, attempt: int | None = None) -> dict[str, dict[str, Any]]:
        return {s["msp_id"]: s for s in self.auditor.submissions(self.trial_id, number, attempt)}

    def progress(self) -> dict[str, Any]:
        return self.auditor.progress(self.trial_id)

    def admin_cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        """`bcfl coordinator trial ARGS...` as the consortium admin, against the live server;
        ``ok``: the exit status must be 0 (else non-zero)."""
        command = bcfl_command(
            "coordinator",
            "trial",
            *args,
            "--url",
            self.net.base_url,
            "--consortium",
            str(self.net.consortium.directory),
            "--as",
            "admin",
        )
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert (done.returncode == 0) == ok, (args, done.returncode, done.stdout, done.stderr)
        return done

    def close(self) -> None:
        self.auditor.close()


@pytest.fixture
def local_network(tmp_path: Path) -> Iterator[Callable[..., tuple[LocalNetwork, Trial]]]:
    """Build a network, start its coordinator and open a trial; silos are started by the test."""
    made: list[tuple[LocalNetwork, Trial]] = []

    def build(
        *,
        rounds: int = 2,
        hospitals: int = 4,
        epsilon: float = 3.0,
        budgets: dict[str, float] | None = None,
        attackers: tuple[str, ...] = (),
        phases: dict[str, int] | None = None,
        data_override: dict[str, dict[str, Any]] | None = None,
        min_silos: int = 2,
        max_retries: int = 2,
    ) -> tuple[LocalNetwork, Trial]:
        net = LocalNetwork.create(tmp_path / f"net{len(made)}", hospitals)
        dataset = load_demo_dataset("breast-cancer", hospitals=hospitals)
        files = write_demo_dataset(dataset, net.root / "data")
        net.write_coordinator_config()
        for hospital, paths in zip(net.hospital_names(), files, strict=True):
            data = {"path": paths["train"], "test_path": paths["test"]}
            data.update((data_override or {}).get(hospital, {}))
            net.write_silo_config(
                hospital,
                data,
                attack="sign_flip" if hospital in attackers else "none",
                epsilon_budget=(budgets or {}).get(hospital),
            )
        net.start_coordinator()
        trial_id = "it-trial"
        dp = dict(dataset.dp, target_epsilon_micro=int(epsilon * 1_000_000))
        with net.client("admin") as admin:
            admin.create_trial(
                {
                    "trial_id": trial_id,
                    "task": "binary_classification",
                    "data_schema": dataset.schema,
                    "model": dataset.model,
                    "rounds": rounds,
                    "min_silos": min_silos,
                    "max_retries": max_retries,
                    "dp": dp,
                    "he": {"enabled": True},
                    "evaluation": dataset.evaluation,
                    "phase_seconds": phases or FAST_PHASES,
                }
            )
            for hospital in net.hospital_names():
                net.request_enrolment(hospital, trial_id)
                admin.enrol(trial_id, net.msp_id(hospital))
            admin.start_trial(trial_id)
        trial = Trial(net, trial_id, files)
        made.append((net, trial))
        return net, trial

    yield build
    for net, trial in made:
        trial.close()
        net.stop_all()
