"""Liveness: failed attempts are retried a bounded number of times, every trial that cannot go on
halts with a code, and rollback and resume refuse up front a plan the budgets cannot carry."""

from __future__ import annotations

from typing import Any

from contract_flow import HOSPITALS, finding, refused


def rejected_round(flow: Any) -> dict[str, Any]:
    """A round every member submits to and votes in, flagging every peer's update as
    undecryptable: nothing is accepted; returns the (halted) round."""
    flow.open_round()
    flow.submit_updates(flow.members)
    names = flow.members
    flow.vote({v: {c: finding(problem="undecryptable") for c in names if c != v} for v in names})
    return flow.get_round()


def short_round(flow: Any) -> dict[str, Any]:
    """An attempt in which only hospital1 commits before the deadline (its submit phase lasts
    2 ** failed attempts times the trial's: past it, well inside Fabric's 48 h time window)."""
    rnd = flow.open_round()
    flow.commit_update("hospital1")
    flow.net.advance_time(rnd["deadline"] - rnd["opened_at"] + 1)
    return flow.close("close_update_commits")


def test_a_round_short_of_min_silos_is_retried_then_the_trial_halts_too_few_hospitals(flow):
    flow.running(min_silos=2, max_retries=1)
    first = short_round(flow)
    assert first["halt"]["code"] == "TOO_FEW_HOSPITALS" and first["halt"]["retry"] is True
    assert first["committed"] == [flow.msp["hospital1"]]
    assert flow.trial()["state"] == "RUNNING"
    second = short_round(flow)
    assert second["attempt"] == 2 and second["halt"]["retry"] is False
    assert second["halt"]["failed_attempts"] == 2
    trial = flow.trial()
    assert trial["state"] == "HALTED" and trial["halt"]["code"] == "TOO_FEW_HOSPITALS"
    assert "failed 2 times in a row (max_retries=1)" in trial["halt"]["reason"]
    refused("WRONG_STATE", flow.coordinator.submit, "open_round", {"trial_id": flow.trial_id})


def test_a_finalized_round_starts_the_count_again(flow):
    flow.running(max_retries=1, dp={"enabled": False, "reason": "attempts re-run"})
    short_round(flow)
    assert flow.trial()["failed_attempts"] == 1
    flow.full_round()
    assert flow.trial()["failed_attempts"] == 0
    short_round(flow)  # round 2 fails once: not twice in a row
    assert flow.trial()["state"] == "RUNNING"


def test_other_failures_exhaust_the_retries_too(flow):
    flow.running(max_retries=0, dp={"enabled": False, "reason": "attempts re-run"})
    rnd = rejected_round(flow)
    assert rnd["halt"]["code"] == "NONE_ACCEPTED" and rnd["halt"]["retry"] is False
    trial = flow.trial()
    assert trial["state"] == "HALTED" and trial["halt"]["code"] == "RETRIES_EXHAUSTED"
    assert "NONE_ACCEPTED" in trial["halt"]["reason"]


def test_fewer_accepted_updates_than_min_silos_are_not_aggregated(flow):
    flow.running(hospitals=HOSPITALS[:3], min_silos=3)
    flow.open_round()
    flow.submit_updates(flow.members)
    bad = finding(problem="not_finite")
    # Everyone flags hospital3's update: two accepted, under min_silos=3.
    votes = {
        v: {c: (bad if c == "hospital3" else 20_000) for c in flow.members if c != v}
        for v in flow.members
    }
    acceptance = flow.vote(votes)
    assert len(acceptance["accepted"]) == 2
    rnd = flow.get_round()
    assert rnd["phase"] == "HALTED" and rnd["halt"]["code"] == "TOO_FEW_HOSPITALS"
    assert "2 updates accepted" in rnd["halt"]["reason"] and rnd["halt"]["retry"] is True
    rewards = flow.admin.evaluate("get_rewards", {"trial_id": flow.trial_id})
    assert [r["status"] for r in rewards["rounds"]] == ["void"]


def test_budgets_spent_by_failed_attempts_halt_the_trial(flow):
    # DP on, one round planned: a fully revealed attempt that fails spends every schedule.
    flow.running(rounds=1)
    rnd = rejected_round(flow)
    assert rnd["halt"]["code"] == "NONE_ACCEPTED" and rnd["halt"]["retry"] is False
    trial = flow.trial()
    assert trial["state"] == "HALTED" and trial["halt"]["code"] == "BUDGETS_SPENT"
    for name in flow.members:
        assert f"{flow.msp[name]} 0" in trial["halt"]["reason"]
    # Resuming would need a reveal nobody has: refused up front, the trial stays HALTED.
    error = refused(
        "INFEASIBLE",
        flow.admin.submit,
        "resume_trial",
        {"trial_id": flow.trial_id, "reason": "try again"},
    )
    assert error.detail["feasible"] == 0 and flow.trial()["state"] == "HALTED"


def test_removing_a_hospital_below_min_silos_halts_the_trial_at_once(flow):
    flow.running(hospitals=HOSPITALS[:3], min_silos=3)
    flow.open_round()
    flow.commit_update("hospital1")
    flow.admin.submit(
        "remove_hospital", {"trial_id": flow.trial_id, "msp_id": flow.msp["hospital3"]}
    )
    trial = flow.trial()
    assert trial["state"] == "HALTED" and trial["halt"]["code"] == "TOO_FEW_HOSPITALS"
    assert "2 hospitals are enrolled" in trial["halt"]["reason"]
    assert flow.get_round()["halt"]["code"] == "TRIAL_HALTED"
    refused(
        "INSUFFICIENT_SILOS",
        flow.admin.submit,
        "resume_trial",
        {"trial_id": flow.trial_id, "reason": "hospital3 is back"},
    )


def test_halt_then_resume_and_roll_back_in_one_step(flow):
    flow.running(rounds=3, dp={"enabled": False, "reason": "re-run rounds"})
    flow.full_round()
    model_1 = flow.trial()["head"]["model"]
    flow.full_round()
    tid = flow.trial_id
    refused(
        "WRONG_STATE", flow.admin.submit, "resume_trial", {"trial_id": tid, "reason": "running"}
    )
    flow.open_round()
    halted = flow.admin.submit("halt_trial", {"trial_id": tid, "reason": "ethics review"})
    assert halted["halt"]["code"] == "HALTED_BY_ADMIN"
    refused(
        "FORBIDDEN_ROLE", flow.coordinator.submit, "resume_trial", {"trial_id": tid, "reason": "x"}
    )
    refused(
        "INVALID_ARGUMENT",
        flow.admin.submit,
        "resume_trial",
        {"trial_id": tid, "reason": "x", "to_round": 3},
    )
    resumed = flow.admin.submit(
        "resume_trial",
        {"trial_id": tid, "reason": "approved", "to_round": 1, "final_round": 2},
    )
    assert resumed["state"] == "RUNNING" and resumed["halt"] is None
    assert resumed["head"] == {"round": 1, "attempt": 1, "model": model_1}
    assert resumed["final_round"] == 2 and resumed["rounds"] == 3
    (resume,) = resumed["resumes"]
    assert resume["halt"]["code"] == "HALTED_BY_ADMIN" and resume["reason"] == "approved"
    assert (resume["rounds_before"], resume["rounds_after"]) == (3, 2)
    assert resumed["rollbacks"][-1]["to_round"] == 1
    flow.full_round()
    done = flow.admin.submit("complete_trial", {"trial_id": tid})
    assert done["state"] == "COMPLETED" and done["head"]["round"] == 2


def test_a_trial_halted_before_it_started_cannot_be_resumed(flow):
    flow.enrolling()
    flow.admin.submit("halt_trial", {"trial_id": flow.trial_id, "reason": "never mind"})
    error = refused(
        "WRONG_STATE",
        flow.admin.submit,
        "resume_trial",
        {"trial_id": flow.trial_id, "reason": "changed my mind"},
    )
    assert "before it started" in error.message


def test_rollback_can_abort_the_current_round_in_the_same_transaction(flow):
    flow.running(rounds=2, dp={"enabled": False, "reason": "re-run rounds"})
    flow.full_round()
    flow.open_round()
    tid = {"trial_id": flow.trial_id, "to_round": 0}
    refused("WRONG_STATE", flow.admin.submit, "rollback", tid)
    trial = flow.admin.submit("rollback", {**tid, "abort_current": True, "reason": "bad data"})
    assert trial["head"]["round"] == 0
    rnd = flow.admin.evaluate("get_round", {"trial_id": flow.trial_id, "round": 2, "attempt": 1})
    assert (
        rnd["halt"]["code"] == "ABORTED"
        and "rolled back to round 0: bad data" in rnd["halt"]["reason"]
    )
    assert flow.open_round()["round"] == 1


def test_resume_refuses_to_take_back_epsilon_a_dataset_gave_to_another_trial(
    make_flow, contract_net
):
    """An attack on the lifetime budget: halt a trial (it then counts only what it spent), enrol
    the same dataset in a second trial with the released epsilon, then resume the first."""
    first = make_flow(contract_net, "trial-a")
    first.create(dp={"target_epsilon_micro": 3_000_000})
    first.admin.submit("open_enrolment", {"trial_id": first.trial_id})
    for name in HOSPITALS[:2]:
        first.register_dataset(name, "shared-data", lifetime_epsilon_micro=4_000_000)
        first.enrol(name, dataset_id="shared-data")
    first.members = list(HOSPITALS[:2])
    first.start()
    first.record_keys("hospital1")
    first.admin.submit("halt_trial", {"trial_id": first.trial_id, "reason": "pause"})
    second = make_flow(contract_net, "trial-b")
    second.create(dp={"target_epsilon_micro": 3_000_000})
    second.admin.submit("open_enrolment", {"trial_id": second.trial_id})
    second.registered = {(n, "shared-data") for n in HOSPITALS[:2]}
    second.enrol("hospital1", dataset_id="shared-data")  # fits: trial-a released its 3.0
    error = refused(
        "BUDGET_EXCEEDED",
        first.admin.submit,
        "resume_trial",
        {"trial_id": first.trial_id, "reason": "resume"},
    )
    assert error.detail["msp_id"] == first.msp["hospital1"]
    assert error.detail["needed_micro"] == 3_000_000
    assert first.trial()["state"] == "HALTED"


def test_a_hospital_that_commits_and_withholds_its_reveal_cannot_burn_the_others_budgets(flow):
    """The attack: hospital3 commits, never reveals, so the round fails short of candidates
    after the honest hospitals revealed (and were charged); it commits again in the retry. Its
    commitment no longer counts towards min_silos: the retry fails at the commit close, before
    anyone reveals, and the honest hospitals are charged once, not once per attempt."""
    flow.running(hospitals=HOSPITALS[:3], min_silos=3, rounds=3, max_retries=2)
    rnd = flow.open_round()
    honest = {n: flow.commit_update(n) for n in ("hospital1", "hospital2")}
    flow.commit_update("hospital3")
    flow.close("close_update_commits")
    for name, u in honest.items():
        flow.reveal_update(name, u)
    flow.net.advance_time(rnd["deadline"] - rnd["opened_at"] + 10**4)
    failed = flow.close("close_update_reveals")
    assert failed["halt"]["code"] == "TOO_FEW_HOSPITALS" and failed["halt"]["phase"] == "REVEAL"
    retry = flow.open_round()
    for name in ("hospital1", "hospital2"):
        flow.commit_update(name, flow.make_update(name, tag="retry"))
    flow.commit_update("hospital3", flow.make_update("hospital3", tag="retry"))
    second = flow.close("close_update_commits")  # everyone committed: closes at once
    assert second["attempt"] == retry["attempt"] == 2
    assert second["halt"]["code"] == "TOO_FEW_HOSPITALS" and second["halt"]["phase"] == "SUBMIT"
    assert "not counting Hospital3MSP (withheld a reveal)" in second["halt"]["reason"]
    spent = {
        p["msp_id"]: len(p["entries"])
        for p in flow.admin.evaluate("get_privacy_ledger", {"trial_id": flow.trial_id})
    }
    assert spent == {flow.msp["hospital1"]: 1, flow.msp["hospital2"]: 1, flow.msp["hospital3"]: 0}


def test_a_trial_halted_by_a_failed_attestation_says_so_in_the_event(flow, contract_net):
    flow.running(hospitals=HOSPITALS[:3], max_retries=0, dp={"enabled": False, "reason": "x"})
    flow.to_attest()
    flow.attest("hospital1")
    flow.attest("hospital2", "0" * 64)
    flow.attest("hospital3", "1" * 64)
    trial = flow.trial()
    assert trial["state"] == "HALTED" and trial["halt"]["code"] == "RETRIES_EXHAUSTED"
    assert flow.get_round()["halt"]["trial_halted"] == "RETRIES_EXHAUSTED"
    events = [
        e
        for e in flow.client("auditor").ledger.events(0)
        if e.name == "AttestationMismatch" and e.payload["trial_id"] == flow.trial_id
    ]
    assert events[-1].payload["trial_halt"] == {"code": "RETRIES_EXHAUSTED"}


def test_a_hospital_can_be_removed_from_a_halted_trial_before_it_resumes(flow):
    flow.running(hospitals=HOSPITALS[:3], min_silos=2)
    flow.admin.submit("halt_trial", {"trial_id": flow.trial_id, "reason": "audit"})
    flow.admin.submit(
        "remove_hospital", {"trial_id": flow.trial_id, "msp_id": flow.msp["hospital3"]}
    )
    trial = flow.admin.submit("resume_trial", {"trial_id": flow.trial_id, "reason": "go on"})
    assert trial["state"] == "RUNNING"
