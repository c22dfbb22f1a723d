"""Soak: 20 trials of 3 rounds at once on a loaded machine all reach a terminal state.

One coordinator server and three silo agent processes (each following every trial it is enrolled
in) run beside a process that burns a CPU core. Phase windows are short for such a load, so some
attempts fail and are retried with longer windows, or trials halt with their code: what must not
happen is a trial left RUNNING with nobody to move it, or a halt without its reason. DP is off
(explicitly: this soak is about liveness, and the DP rounds are the subject of other tests); HE
is on, as the coordinator aggregates nothing else.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devnet.local_network import LocalNetwork
from devnet.supervisor import wait_for
from silo_agent.datasets import load_demo_dataset, write_demo_dataset

pytestmark = pytest.mark.slow

TRIALS = 20
TERMINAL_CODES = {"TOO_FEW_HOSPITALS", "RETRIES_EXHAUSTED", "BUDGETS_SPENT"}


def test_twenty_trials_on_a_loaded_machine_all_end(tmp_path: Path) -> None:
    net = LocalNetwork.create(tmp_path / "net", 3)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        dataset = load_demo_dataset("breast-cancer", hospitals=3)
        files = write_demo_dataset(dataset, net.root / "data")
        net.write_coordinator_config()
        for hospital, paths in zip(net.hospital_names(), files, strict=True):
            net.write_silo_config(hospital, {"path": paths["train"], "test_path": paths["test"]})
        net.start_coordinator()
        trial_ids = [f"soak-{n:02d}" for n in range(TRIALS)]
        with net.client("admin") as admin:
            for trial_id in trial_ids:
                admin.create_trial(
                    {
                        "trial_id": trial_id,
                        "task": "binary_classification",
                        "data_schema": dataset.schema,
                        "model": dataset.model,
                        "rounds": 3,
                        "min_silos": 2,
                        "max_retries": 2,
                        "dp": {"enabled": False, "reason": "soak test of liveness"},
                        "he": {"enabled": True},
                        "evaluation": dataset.evaluation,
                        "phase_seconds": {
                            "submit": 30,
                            "reveal": 20,
                            "vote_commit": 20,
                            "vote_reveal": 20,
                        },
                    }
                )
                for hospital in net.hospital_names():
                    net.request_enrolment(hospital, trial_id)
                    admin.enrol(trial_id, net.msp_id(hospital))
                admin.start_trial(trial_id)
        for hospital in net.hospital_names():
            net.start_silo(hospital)  # follows every trial it is enrolled in

        with net.client("auditor") as auditor:

            def all_ended() -> list[dict] | None:
                if not net.processes["coordinator"].running:
                    raise AssertionError(net.processes["coordinator"].log_tail())
                trials = [auditor.trial(t) for t in trial_ids]
                return trials if all(t["state"] != "RUNNING" for t in trials) else None

            # Waiting for 3 silo agents and the scheduler to take 20 trials to their ends.
            trials = wait_for(all_ended, timeout=3600, interval=2.0, what="every soak trial to end")
            states = {t["trial_id"]: t["state"] for t in trials}
            assert set(states.values()) <= {"COMPLETED", "HALTED"}, states
            for trial in trials:
                if trial["state"] == "COMPLETED":
                    assert trial["head"]["round"] == 3
                else:
                    assert trial["halt"]["code"] in TERMINAL_CODES, trial["halt"]
                    assert trial["halt"]["reason"]
                progress = auditor.progress(trial["trial_id"])
                assert progress["waiting_for"] == [] and progress["code"], progress
            completed = sum(s == "COMPLETED" for s in states.values())
            print(f"soak: {completed} of {TRIALS} trials completed, the rest halted with a code")
            assert auditor.verify_ledger()["ok"] is True
    finally:
        burner.kill()
        burner.wait()
        net.stop_all()
