"""A whole trial with a real coordinator server and one silo agent process per hospital, with faults."""

from __future__ import annotations

import subprocess
import time

import pytest

from bcfl_common.errors import ContractError
from consortium.ledger import open_ledger
from devnet.local_network import bcfl_command
from devnet.supervisor import wait_for

pytestmark = pytest.mark.slow


def test_trial_survives_crashes_rejects_poison_and_respects_budgets(local_network) -> None:
    """3 rounds, 4 hospitals, DP (epsilon 3) and HE on. Hospital4 poisons its updates; Hospital3's
    own budget (epsilon 2.2) covers one round only; Hospital1 is killed (SIGKILL) and restarted in
    round 2; the coordinator is killed and restarted in round 3. The trial must complete, reject
    every poisoned update, keep Hospital3 within its budget while the others go on, never take two
    submissions from one hospital, and leave a ledger that verifies."""
    # Round 1's submit window must hold four cold silo starts and the DP schedule check on a
    # loaded machine: with 20 s it once closed before anyone committed (NO_COMMITMENTS, and a
    # halted round waits for an admin). Rounds 2 and 3 wait this long for Hospital3, whose own
    # budget keeps it out; every other phase closes as soon as all have acted.
    phases = {"submit": 120, "reveal": 60, "vote_commit": 60, "vote_reveal": 60}
    net, trial = local_network(
        rounds=3, budgets={"hospital3": 2.2}, attackers=("hospital4",), phases=phases
    )
    for hospital in net.hospital_names():
        net.start_silo(hospital, trial_id=trial.trial_id)

    trial.wait_phase(2, ("VOTE_COMMIT", "VOTE_REVEAL"), timeout=600)
    net.processes["hospital1"].kill()
    time.sleep(1.0)
    net.start_silo("hospital1", trial_id=trial.trial_id)

    trial.wait_phase(3, ("SUBMIT", "REVEAL"), timeout=600)
    net.processes["coordinator"].kill()
    time.sleep(1.0)
    net.start_coordinator()

    final = trial.wait_end(timeout=600)
    assert final["state"] == "COMPLETED", final
    assert final["head"]["round"] == 3

    for number in (1, 2, 3):
        rnd = trial.round(number)
        assert rnd["phase"] == "FINALIZED"
        acceptance = trial.auditor.acceptance(trial.trial_id, number)
        poisoned = acceptance["candidates"].get("Hospital4MSP")
        assert poisoned is not None and not poisoned["accepted"], (
            number,
            rnd,
            trial.submissions(number),
            net.processes["hospital4"].log_tail(),
        )
        # x10 goes over the norm bound of the public DP schedule (or, under it, is an outlier
        # or harmful): a strict majority of the peers says so.
        assert poisoned["reason"] in ("norm_exceeded", "norm_outlier", "harmful"), poisoned
        # Its update earns nothing; it votes like an honest hospital and may earn, for that
        # work, at most what the best honest voter earns.
        assert poisoned["reward"] == 0
        voters = acceptance["voters"]
        best_honest = max(r["reward"] for m, r in voters.items() if m != "Hospital4MSP")
        assert voters.get("Hospital4MSP", {"reward": 0})["reward"] <= best_honest
        assert {"Hospital1MSP", "Hospital2MSP"} <= set(rnd["accepted"])

    # Hospital3 contributed in round 1, then its own budget stopped it; the trial went on.
    assert "Hospital3MSP" in trial.submissions(1)
    assert "Hospital3MSP" not in trial.submissions(2)
    assert "Hospital3MSP" not in trial.submissions(3)
    privacy = {p["msp_id"]: p for p in trial.auditor.privacy_ledger(trial.trial_id)}
    assert 0 < privacy["Hospital3MSP"]["epsilon_spent_micro"] <= 2_200_000
    schedule = trial.auditor.dp_schedule(trial.trial_id)
    for msp in ("Hospital1MSP", "Hospital2MSP"):
        # The budget is the schedule's last cumulative epsilon (at most the trial's target), and
        # what was charged is exactly the schedule: three reveals, three entries.
        planned = schedule["entries"][msp]["epsilon_micro"]
        assert privacy[msp]["budget_micro"] == planned[-1] <= 3_000_000
        assert privacy[msp]["epsilon_spent_micro"] == planned[2]
        assert len(privacy[msp]["entries"]) == 3  # one charge per round, none twice after the crash

    # The killed hospital resumed: it submitted, voted and attested in every round, once each.
    for number in (1, 2, 3):
        attested = [a["msp_id"] for a in trial.auditor.attestations(trial.trial_id, number)]
        assert attested.count("Hospital1MSP") == 1, (number, attested)
        assert "Hospital1MSP" in trial.submissions(number)
        voters = [v["msp_id"] for v in trial.auditor.votes(trial.trial_id, number) if v["revealed"]]
        assert voters.count("Hospital1MSP") == 1, (number, voters)

    verify = subprocess.run(
        bcfl_command(
            "ledger",
            "verify",
            net.ledger_url,
            "--consortium",
            str(net.consortium.directory),
            "--as",
            "auditor",
            "--replay",
        ),
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_late_silo_skips_cleanly_and_stale_submission_is_refused(local_network) -> None:
    """Hospital4 starts only after round 1's commit phase closed at its deadline: it must not
    submit to round 1 (late) and must join later rounds. An update built on another base model
    than the round's is refused as stale."""
    # The submit window must hold three cold silo starts and round 1's noise-multiplier search
    # on a loaded machine (a fresh clone has no bytecode cache): a short one halts the round
    # NO_COMMITMENTS before anyone committed. Round 1 closes at this deadline (hospital4 is
    # expected but absent); later rounds close as soon as all four acted.
    phases = {"submit": 120, "reveal": 60, "vote_commit": 60, "vote_reveal": 60}
    net, trial = local_network(rounds=3, phases=phases)
    for hospital in ("hospital1", "hospital2", "hospital3"):
        net.start_silo(hospital, trial_id=trial.trial_id)
    trial.wait_phase(
        1, ("REVEAL", "VOTE_COMMIT", "VOTE_REVEAL", "AGGREGATE", "ATTEST", "FINALIZED"), timeout=600
    )

    # A stale commitment: Hospital4 names the initial model as its base in round 2 or later.
    round_two = trial.wait_phase(2, ("SUBMIT",), timeout=600)
    hospital4 = open_ledger(net.ledger_url, net.consortium.identity("hospital4"))
    try:
        with pytest.raises(ContractError) as err:
            hospital4.submit(
                "commit_update",
                {
                    "trial_id": trial.trial_id,
                    "round": 2,
                    "base_model_sha256": trial.state()["initial_model"]["sha256"],
                    "commitment": "0" * 64,
                },
            )
        assert err.value.code == "STALE"
        assert round_two["base"]["model"]["sha256"] != trial.state()["initial_model"]["sha256"]
    finally:
        hospital4.close()

    net.start_silo("hospital4", trial_id=trial.trial_id)
    final = trial.wait_end(timeout=600)
    assert final["state"] == "COMPLETED", final
    assert "Hospital4MSP" not in trial.submissions(1)
    assert "Hospital4MSP" in trial.submissions(3)
    late = net.processes["hospital4"]
    wait_for(lambda: not late.running, timeout=60, what="hospital4 to exit after the trial")
    assert late.returncode == 0, late.log_tail()
