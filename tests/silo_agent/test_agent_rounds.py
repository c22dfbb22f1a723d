"""Silo agents against a real embedded ledger and file store: full rounds, restarts, attackers."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from silo_harness import HOSPITALS, drive, sha256

from coordinator.audit_protocol import disclosure_problems, replay
from devnet import red_team
from privacy.dp import PrivacyAccountant
from silo_agent.cli import collect_status


class Killed(BaseException):
    """A kill -9 stand-in: not an Exception, so nothing in the agent catches it."""


def _msp(contract_net: Any, name: str) -> str:
    return contract_net.consortium.identity(name).msp_id


def test_full_round_finalizes_with_equal_attestations(
    driver: Any, make_agent: Any, demo_files: dict[str, Any], contract_net: Any
) -> None:
    driver.create_trial(demo_files["dataset"], rounds=2)
    agents = [make_agent(name) for name in HOSPITALS]
    drive(driver, agents)

    trial = driver.trial()
    assert trial["state"] == "COMPLETED"
    assert [e["round"] for e in trial["lineage"]] == [1, 2]
    for entry in trial["lineage"]:
        attestations = contract_net.client("admin").evaluate(
            "get_attestations", {"trial_id": "trial-1", "round": entry["round"]}
        )
        assert len(attestations) == 4
        assert {a["sha256"] for a in attestations} == {entry["model"]["sha256"]}
    # Every silo keeps every finalized model, byte-identical to the attested hash.
    for agent in agents:
        for entry in trial["lineage"]:
            assert agent.state.load_model("trial-1", entry["model"]["sha256"]) is not None
    # Privacy: the contract charged the public schedule, which equals each silo's accountant.
    schedule = contract_net.client("admin").evaluate("get_dp_schedule", {"trial_id": "trial-1"})
    for agent in agents:
        account = contract_net.client("admin").evaluate(
            "get_privacy_ledger", {"trial_id": "trial-1", "msp_id": agent.msp_id}
        )[0]
        local = PrivacyAccountant.open(agent.state.accountant_path("trial-1"))
        entry = schedule["entries"][agent.msp_id]
        assert account["epsilon_spent_micro"] == entry["epsilon_micro"][1] == local.spent_micro()
        assert account["budget_micro"] == entry["epsilon_micro"][-1]
    # Every honest update was accepted on findings without a problem, of similarity < threshold.
    for entry in trial["lineage"]:
        acceptance = contract_net.client("admin").evaluate(
            "get_acceptance", {"trial_id": "trial-1", "round": entry["round"]}
        )
        assert sorted(acceptance["accepted"]) == sorted(a.msp_id for a in agents)
        for decision in acceptance["candidates"].values():
            assert decision["reason"] == "accepted"
            for finding in decision["findings"].values():
                assert finding["problem"] is None and finding["norm_milli"] > 0
                assert finding["similarity_micro"] < 999_990
    # Status shows rounds, epsilon, rewards and the per-round local accuracy.
    status = collect_status(agents[0])
    (t,) = status["trials"]
    assert t["state"] == "COMPLETED" and t["finalized_rounds"] == 2
    assert t["epsilon_remaining"] is not None and t["epsilon_remaining"] >= 0
    assert t["rewards_total"] > 0
    finalized = [r for r in t["round_details"] if r["phase"] == "FINALIZED"]
    assert len(finalized) == 2 and all(r["test"]["accuracy"] > 0.6 for r in finalized)
    for r in finalized:
        assert set(r["findings"]) == {a.msp_id for a in agents[1:]}
        assert r["decision"]["reason"] == "accepted" and r["epsilon_micro"] > 0
    assert t["dataset"]["dataset_id"] == "train.csv" and t["dataset"]["lifetime_epsilon"] == 10.0
    assert t["dataset"]["remaining_epsilon"] < 10.0


def test_lost_models_are_rebuilt_from_the_lineage(
    driver: Any, make_agent: Any, demo_files: dict[str, Any]
) -> None:
    driver.create_trial(demo_files["dataset"], rounds=2, dp={"enabled": False, "reason": "test"})
    agents = [make_agent(name) for name in HOSPITALS]
    drive(driver, agents)
    trial = driver.trial()
    shutil.rmtree(agents[1].state.trial_dir("trial-1") / "models")
    fresh = make_agent("hospital2")
    for entry in trial["lineage"]:
        assert sha256(fresh.final_model("trial-1", entry["round"])) == entry["model"]["sha256"]
    assert sha256(fresh.final_model("trial-1")) == trial["head"]["model"]["sha256"]


def test_restart_mid_round_resumes_without_double_submission(
    driver: Any, make_agent: Any, demo_files: dict[str, Any], contract_net: Any
) -> None:
    driver.create_trial(demo_files["dataset"], rounds=1)
    agents = [make_agent(name) for name in HOSPITALS]
    victim = agents[0]
    real_submit = victim._submit

    def killed_on(function: str) -> Any:
        def submit(name: str, **args: Any) -> Any:
            if name == function:
                raise Killed(name)
            return real_submit(name, **args)

        return submit

    # Killed after training and journaling, just before commit_update reaches the ledger.
    victim._submit = killed_on("commit_update")  # type: ignore[method-assign]
    with pytest.raises(Killed):
        drive(driver, agents)
    journal = victim.state.journal_entry("trial-1", 1, 1)
    prepared = journal["update"]
    accountant = PrivacyAccountant.open(victim.state.accountant_path("trial-1"))
    assert len(accountant.rounds) == 1

    # A new agent over the same state directory commits the journal's update, not a new one.
    restarted = make_agent("hospital1")
    restarted_submit = restarted._submit
    calls: list[str] = []

    def counting(name: str, **args: Any) -> Any:
        calls.append(name)
        if name == "reveal_votes" and calls.count("reveal_votes") == 1:
            raise Killed(name)  # killed again, later in the round
        return restarted_submit(name, **args)

    restarted._submit = counting  # type: ignore[method-assign]
    agents[0] = restarted
    with pytest.raises(Killed):
        drive(driver, agents)
    again = make_agent("hospital1")
    agents[0] = again
    drive(driver, agents)

    assert driver.trial()["state"] == "COMPLETED"
    msp = _msp(contract_net, "hospital1")
    submissions = {
        s["msp_id"]: s
        for s in contract_net.client("admin").evaluate(
            "get_submissions", {"trial_id": "trial-1", "round": 1}
        )
    }
    assert submissions[msp]["commitment"] == prepared["commitment"]
    assert submissions[msp]["sha256"] == prepared["sha256"]
    votes = {
        v["msp_id"]: v
        for v in contract_net.client("admin").evaluate(
            "get_votes", {"trial_id": "trial-1", "round": 1}
        )
    }
    assert votes[msp]["revealed"]
    # Trained and charged once, committed once: the accountant still holds a single round.
    assert len(PrivacyAccountant.open(again.state.accountant_path("trial-1")).rounds) == 1
    assert calls.count("commit_update") == 1
    assert driver.trial()["lineage"][0]["round"] == 1


def test_sign_flip_attacker_is_rejected_by_votes(
    driver: Any, make_agent: Any, demo_files: dict[str, Any], contract_net: Any
) -> None:
    driver.create_trial(demo_files["dataset"], rounds=1)
    agents = [make_agent(name) for name in HOSPITALS[:3]] + [
        make_agent("hospital4", agent_class=red_team.attacker("sign_flip", scale=10.0))
    ]
    assert isinstance(agents[-1], red_team.SignFlipSilo) and agents[-1].scale == 10.0
    drive(driver, agents)
    assert driver.trial()["state"] == "COMPLETED"
    acceptance = contract_net.client("admin").evaluate(
        "get_acceptance", {"trial_id": "trial-1", "round": 1}
    )
    attacker = _msp(contract_net, "hospital4")
    assert attacker in acceptance["rejected"]
    # 10x the honest norm: over the bound its DP schedule entry derives (about 3x).
    assert acceptance["candidates"][attacker]["reason"] == "norm_exceeded"
    assert sorted(acceptance["accepted"]) == sorted(_msp(contract_net, n) for n in HOSPITALS[:3])


def test_he_off_trial_is_refused_with_the_field_named(
    driver: Any, make_agent: Any, demo_files: dict[str, Any]
) -> None:
    driver.create_trial(demo_files["dataset"], rounds=1, he={"enabled": False, "reason": "test"})
    agent = make_agent("hospital1")
    steps = agent.tick()
    assert any(
        s.level == "error" and "he.enabled" in s.detail and "trial-1" in s.detail for s in steps
    )
    assert agent.state.journal("trial-1")["problem"].startswith("HE_REQUIRED")


def test_bad_local_data_is_reported_and_nothing_is_sent(
    driver: Any, make_agent: Any, demo_files: dict[str, Any], tmp_path: Any, contract_net: Any
) -> None:
    driver.create_trial(demo_files["dataset"], rounds=1)
    frame = demo_files["dataset"].hospitals[1].train.copy()
    frame.loc[3, "mean_radius"] = -5.0
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    agents = [make_agent(name) for name in HOSPITALS]
    agents[1].config.data_path = bad
    for _ in range(4):
        for agent in agents:
            agent.tick()
        driver.advance()
    problem = agents[1].state.journal("trial-1")["problem"]
    assert "mean_radius" in problem and "[4]" in problem
    submissions = contract_net.client("admin").evaluate(
        "get_submissions", {"trial_id": "trial-1", "round": 1}
    )
    assert agents[1].msp_id not in {s["msp_id"] for s in submissions}
    assert {s["msp_id"] for s in submissions} == {a.msp_id for a in agents if a is not agents[1]}


def test_own_budget_refusal_skips_the_round_cleanly(
    driver: Any, make_agent: Any, demo_files: dict[str, Any], contract_net: Any
) -> None:
    driver.create_trial(demo_files["dataset"], rounds=1)
    agents = [make_agent(name) for name in HOSPITALS[:3]] + [
        make_agent("hospital4", epsilon_budget=0.01)
    ]
    for _ in range(3):
        for agent in agents:
            agent.tick()
        driver.advance()
    entry = agents[3].state.journal_entry("trial-1", 1, 1)
    assert "privacy budget" in entry["skipped"]
    assert not PrivacyAccountant.open(agents[3].state.accountant_path("trial-1")).rounds
    # The contract still waits for it (its ledger budget is not spent) until the deadline.
    contract_net.advance_time(3601)
    drive(driver, agents)
    submissions = contract_net.client("admin").evaluate(
        "get_submissions", {"trial_id": "trial-1", "round": 1}
    )
    assert agents[3].msp_id not in {s["msp_id"] for s in submissions}
    assert driver.trial()["state"] == "COMPLETED"


def test_a_retried_attempt_recommits_the_unrevealed_update_without_new_epsilon(
    driver: Any, make_agent: Any, demo_files: dict[str, Any], contract_net: Any
) -> None:
    # One round planned, so one reveal in each schedule: training again for attempt 2 would
    # take each local accountant past its budget, and every hospital would skip the retry.
    driver.create_trial(demo_files["dataset"], rounds=1)
    agents = [make_agent(name) for name in HOSPITALS]
    while driver.trial()["current"] is None:
        for agent in agents:
            agent.tick()
        driver.advance()
    for agent in agents:
        agent.tick()  # each trains, charges its accountant once and commits
    committed = contract_net.client("admin").evaluate(
        "get_submissions", {"trial_id": "trial-1", "round": 1, "attempt": 1}
    )
    assert len(committed) == 4
    driver.admin.submit(
        "abort_round", {"trial_id": "trial-1", "round": 1, "reason": "store outage"}
    )
    drive(driver, agents)
    trial = driver.trial()
    assert trial["state"] == "COMPLETED" and trial["head"]["attempt"] == 2
    again = contract_net.client("admin").evaluate(
        "get_submissions", {"trial_id": "trial-1", "round": 1, "attempt": 2}
    )
    schedule = contract_net.client("admin").evaluate("get_dp_schedule", {"trial_id": "trial-1"})
    for agent in agents:
        first = agent.state.journal_entry("trial-1", 1, 1)["update"]
        second = agent.state.journal_entry("trial-1", 1, 2)["update"]
        assert second["sha256"] == first["sha256"] and second["salt"] != first["salt"]
        assert second["reused_from_attempt"] == 1
        mine = next(s for s in again if s["msp_id"] == agent.msp_id)
        assert mine["revealed"] and mine["sha256"] == first["sha256"]
        local = PrivacyAccountant.open(agent.state.accountant_path("trial-1"))
        assert len(local.rounds) == 1  # trained once
        account = contract_net.client("admin").evaluate(
            "get_privacy_ledger", {"trial_id": "trial-1", "msp_id": agent.msp_id}
        )[0]
        assert (
            account["epsilon_spent_micro"] == schedule["entries"][agent.msp_id]["epsilon_micro"][0]
        )


def committed_in_round_two(driver: Any, make_agent: Any, demo_files: dict[str, Any]) -> list:
    """A two-round trial whose round 1 finalized and whose hospitals all trained for round 2
    and committed; returns the agents."""
    driver.create_trial(demo_files["dataset"], rounds=2)
    agents = [make_agent(name) for name in HOSPITALS]
    drive(driver, agents, until=lambda: driver.trial()["head"]["round"] == 1)
    while driver.trial()["current"]["round"] != 2:
        driver.advance()
    for agent in agents:
        agent.tick()  # train for round 2 and commit
    return agents


def test_an_aborted_attempt_rolled_back_over_costs_no_local_epsilon(
    driver: Any, make_agent: Any, demo_files: dict[str, Any], contract_net: Any
) -> None:
    # Two rounds planned. Round 2's first attempt is committed and aborted, then the trial is
    # rolled back to round 0 with the plan cut to one round: each hospital's third training
    # fits its two-round budget only because the aborted, never revealed update is destroyed
    # and its local charge taken back.
    agents = committed_in_round_two(driver, make_agent, demo_files)
    admin = driver.admin
    admin.submit("abort_round", {"trial_id": "trial-1", "round": 2, "reason": "bad batch"})
    admin.submit("rollback", {"trial_id": "trial-1", "to_round": 0, "final_round": 1})
    drive(driver, agents)
    trial = driver.trial()
    assert trial["state"] == "COMPLETED" and trial["head"] == {**trial["head"], "round": 1}
    assert trial["head"]["attempt"] == 2
    for agent in agents:
        aborted = agent.state.journal_entry("trial-1", 2, 1)
        assert aborted["withdrawn"] is True
        assert agent.state.load_update("trial-1", aborted["update"]["sha256"]) is None
        local = PrivacyAccountant.open(agent.state.accountant_path("trial-1"))
        assert len(local.rounds) == 2  # rounds 1.1 and 1.2; 2.1 withdrawn
        account = contract_net.client("admin").evaluate(
            "get_privacy_ledger", {"trial_id": "trial-1", "msp_id": agent.msp_id}
        )[0]
        assert (
            len(account["entries"]) == 2
            and account["epsilon_spent_micro"] <= local.spent_micro() + 1
        )


def test_an_update_uploaded_before_a_refused_reveal_keeps_its_local_charge(
    driver: Any, make_agent: Any, demo_files: dict[str, Any], contract_net: Any
) -> None:
    """The operator's laundering attempt: let a hospital upload its update, make its reveal
    late (or abort right after), roll back, and have it train again as if the first update had
    never left. The bytes are in the shared store, so the charge stays: the third training does
    not fit the two-round budget and the hospital skips the round rather than overspend. The
    hospital also discloses the late update on the ledger (``disclose_update``), which charges
    it there too and records the bytes as its own: nobody can reveal them later."""
    agents = committed_in_round_two(driver, make_agent, demo_files)
    driver.advance()  # everyone committed: REVEAL
    assert driver.round()["phase"] == "REVEAL"
    contract_net.advance_time(10**5)  # past the reveal deadline
    victim = agents[0]
    victim.tick()  # uploads its update, then the reveal is refused LATE
    entry = victim.state.journal_entry("trial-1", 2, 1)
    assert entry["uploading"] is True and "LATE" in entry["skipped"]
    assert entry["disclosed"] is True
    ledger = contract_net.client("admin")
    record = next(
        s
        for s in ledger.evaluate("get_submissions", {"trial_id": "trial-1", "round": 2})
        if s["msp_id"] == victim.msp_id
    )
    assert not record["revealed"] and record["disclosed_at"] is not None
    assert record["sha256"] == entry["update"]["sha256"]
    account = ledger.evaluate(
        "get_privacy_ledger", {"trial_id": "trial-1", "msp_id": victim.msp_id}
    )[0]
    assert [(e["round"], e["attempt"]) for e in account["entries"]] == [(1, 1), (2, 1)]
    # The auditor finds the disclosure in order: after the reveal deadline, from the events.
    submissions = ledger.evaluate("get_submissions", {"trial_id": "trial-1", "round": 2})
    timeline = replay(contract_net.client("auditor").ledger.events(0))
    assert timeline.claims == {("trial-1", 2, 1, victim.msp_id): []}  # its UpdateDisclosed
    assert (
        disclosure_problems(
            {"trial_id": "trial-1"}, {(2, 1): {s["msp_id"]: s for s in submissions}}, timeline
        )
        == []
    )
    driver.advance()  # NO_REVEALS
    admin = driver.admin
    admin.submit("rollback", {"trial_id": "trial-1", "to_round": 0, "final_round": 1})
    driver.advance()  # round 1, attempt 2
    victim.tick()
    late = victim.state.journal_entry("trial-1", 2, 1)
    assert not late.get("withdrawn") and late.get("disclosed") is True
    assert "privacy budget" in victim.state.journal_entry("trial-1", 1, 2)["skipped"]
    local = PrivacyAccountant.open(victim.state.accountant_path("trial-1"))
    assert [r["round"] for r in local.rounds] == [1_000_001, 2_000_001]


def test_an_author_back_after_its_last_round_began_still_discloses_its_stale_upload(
    driver: Any, make_agent: Any, demo_files: dict[str, Any], contract_net: Any
) -> None:
    """hospital1 uploads its round-1 update and is killed before its reveal lands; the trial
    goes on without it. It comes back once round 2, the plan's last, is past its commit phase:
    it will never train again, yet its first tick discloses the stale bytes (charged on the
    ledger, owned: a copier's later reveal of them is refused, an earlier one claimed)."""
    driver.create_trial(demo_files["dataset"], rounds=2, dp={"enabled": False})
    agents = [make_agent(name) for name in HOSPITALS]
    victim, others = agents[0], agents[1:]
    real_submit = victim._submit

    def killed_at_reveal(name: str, **args: Any) -> Any:
        if name == "reveal_update":
            raise Killed(name)
        return real_submit(name, **args)

    victim._submit = killed_at_reveal  # type: ignore[method-assign]
    with pytest.raises(Killed):
        drive(driver, agents)
    assert victim.state.journal_entry("trial-1", 1, 1)["update"]["content_id"]  # it uploaded
    for _ in range(200):  # the others go on; each phase waits out its deadline for hospital1
        for agent in others:
            agent.tick()
        if driver.trial()["current"]["round"] == 2 and driver.round()["phase"] == "VOTE_COMMIT":
            break
        if not driver.advance():
            contract_net.advance_time(10**4)
    else:
        raise AssertionError(f"round 2 never reached VOTE_COMMIT: {driver.log[-10:]}")
    back = make_agent("hospital1")
    back.tick()
    assert back.state.journal_entry("trial-1", 1, 1).get("disclosed") is True
    record = next(
        s
        for s in contract_net.client("admin").evaluate(
            "get_submissions", {"trial_id": "trial-1", "round": 1}
        )
        if s["msp_id"] == back.msp_id
    )
    assert not record["revealed"] and record["disclosed_at"] is not None
    drive(driver, [back, *others])
    assert driver.trial()["state"] == "COMPLETED"
