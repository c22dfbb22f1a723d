"""Liveness through real processes: a coordinator server, silo agent processes and the admin CLI.

Every trial reaches an end with its reason: a round short of min_silos is retried and the trial
ends TOO_FEW_HOSPITALS; the admin halts, resumes, aborts and rolls back from the CLI, and a
rollback the DP budgets cannot carry is refused up front; a hospital whose agent is down is
named in `trial status` while the trial waits for it.
"""

from __future__ import annotations

from typing import Any

import pytest

from devnet.supervisor import wait_for

pytestmark = pytest.mark.slow

H1, H2, H3, H4 = "Hospital1MSP", "Hospital2MSP", "Hospital3MSP", "Hospital4MSP"


def waiting_for(
    trial: Any,
    parties: list[str],
    phase: str | None = None,
    round_number: int | None = None,
    timeout: float = 600,
) -> dict[str, Any]:
    """Wait (for the silo agents and the scheduler) until the trial waits for exactly ``parties``
    (in ``phase`` of round ``round_number``)."""

    def reached() -> dict[str, Any] | None:
        progress = trial.progress()
        if (
            progress["waiting_for"] == parties
            and (phase is None or progress["phase"] == phase)
            and (round_number is None or progress["round"] == round_number)
        ):
            return progress
        return None

    return wait_for(reached, timeout=timeout, interval=0.5, what=f"the trial to wait for {parties}")


def test_a_round_short_of_min_silos_is_retried_then_ends_too_few_hospitals(local_network) -> None:
    phases = {"submit": 45, "reveal": 30, "vote_commit": 30, "vote_reveal": 30}
    net, trial = local_network(rounds=1, hospitals=3, min_silos=3, max_retries=1, phases=phases)
    for hospital in net.hospital_names()[:2]:  # hospital3's agent is down
        net.start_silo(hospital, trial_id=trial.trial_id)
    progress = waiting_for(trial, [H3], phase="SUBMIT")
    assert f"waiting for {H3}" in progress["reason"]
    status = trial.admin_cli("status", trial.trial_id).stdout
    assert f"waiting for: {H3}" in status

    final = trial.wait_end(timeout=1200)
    assert final["state"] == "HALTED" and final["halt"]["code"] == "TOO_FEW_HOSPITALS", final
    assert "failed 2 times in a row (max_retries=1)" in final["halt"]["reason"]
    first, second = trial.round(1, 1), trial.round(1, 2)
    # Attempt 1 may have closed before the two agents committed on a loaded machine; the last
    # one had twice the submit window, and both of them committed in it.
    assert first["halt"]["code"] in ("TOO_FEW_HOSPITALS", "NO_COMMITMENTS")
    assert first["halt"]["retry"] is True
    assert second["halt"]["code"] == "TOO_FEW_HOSPITALS" and second["halt"]["retry"] is False
    assert second["committed"] == [H1, H2]
    assert second["deadlines"]["submit"] - second["opened_at"] == 2 * phases["submit"]
    assert final["head"]["round"] == 0  # nothing was aggregated from two of three
    status = trial.admin_cli("status", trial.trial_id).stdout
    assert "TOO_FEW_HOSPITALS" in status
    assert trial.progress()["code"] == "TOO_FEW_HOSPITALS"


def test_halt_resume_abort_and_rollbacks_the_budgets_allow_or_refuse(local_network) -> None:
    """DP on, 2 rounds, 4 hospitals, min_silos 2; hospital4's agent starts late (a straggler).
    Three take part without it: each update needs two peer voters (min_voters=2)."""
    phases = {"submit": 60, "reveal": 60, "vote_commit": 60, "vote_reveal": 60}
    net, trial = local_network(rounds=2, hospitals=4, phases=phases)
    tid = trial.trial_id
    h1, h2, h3, h4 = net.hospital_names()
    early = (h1, h2, h3)
    for hospital in early:
        net.start_silo(hospital, trial_id=tid)
    waiting_for(trial, [H4], phase="SUBMIT")

    # Halt, then resume: the trial says why it stopped, and goes on from where it was.
    trial.admin_cli("halt", tid, "--reason", "ethics review")
    halted = trial.state()
    assert halted["state"] == "HALTED" and halted["halt"]["code"] == "HALTED_BY_ADMIN"
    assert "HALTED_BY_ADMIN" in trial.admin_cli("status", tid).stdout
    assert trial.round(1, 1)["halt"]["code"] == "TRIAL_HALTED"
    for hospital in early:  # --until-complete: the agents left when the trial halted
        wait_for(
            lambda h=hospital: not net.processes[h].running,
            timeout=300,
            what=f"{hospital}'s agent to exit",
        )
    trial.admin_cli("resume", tid, "--reason", "ethics approved")
    assert trial.state()["resumes"][0]["halt"]["code"] == "HALTED_BY_ADMIN"
    for hospital in early:
        net.start_silo(hospital, trial_id=tid)

    # Round 1 finalizes without the straggler once its deadline passed; round 2 waits for it.
    waiting_for(trial, [H4], phase="SUBMIT", round_number=2, timeout=900)
    first = trial.round(1)
    assert first["phase"] == "FINALIZED" and first["attempt"] == 2
    assert first["accepted"] == [H1, H2, H3]

    # Abort round 2: the scheduler does not retry what the admin aborted; it says so.
    trial.admin_cli("abort", tid, "--round", "2", "--reason", "hospital4 is on its way")
    progress = waiting_for(trial, ["admin"])
    assert "trial next" in progress["reason"]
    assert "trial next" in trial.admin_cli("status", tid).stdout

    # Rolling back to round 0 would need 2 more reveals of three hospitals which have 1 left
    # each: refused up front, saying what fits; nothing changed.
    refused = trial.admin_cli("rollback", tid, "--to-round", "0", ok=False)
    message = refused.stdout + refused.stderr
    assert "INFEASIBLE" in message and "final_round=1 would fit" in message, message
    assert trial.state()["head"]["round"] == 1
    # With the plan shortened to what the budgets carry, it goes through.
    trial.admin_cli(
        "rollback", tid, "--to-round", "0", "--final-round", "1", "--reason", "retrain with all"
    )
    net.start_silo(h4, trial_id=tid)  # the straggler joins
    final = trial.wait_end(timeout=900)
    assert final["state"] == "COMPLETED", final
    assert final["final_round"] == 1 and final["head"] == {
        **final["head"],
        "round": 1,
        "attempt": 3,
    }
    assert final["rollbacks"][0]["rounds_after"] == 1
    retrained = trial.round(1, 3)
    assert H4 in retrained["candidates"], retrained
    spent = {p["msp_id"]: len(p["entries"]) for p in trial.auditor.privacy_ledger(tid)}
    # Halted and aborted attempts before any reveal cost nothing; each reveal one schedule step.
    assert spent == {H1: 2, H2: 2, H3: 2, H4: 1}
