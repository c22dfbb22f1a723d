"""Opening rounds and the commit-reveal of updates: late, duplicate, stale, unenrolled, over-budget, mismatched, copied."""

from __future__ import annotations

import pytest
from contract_flow import digest, refused


@pytest.fixture
def running(flow):
    flow.running()
    return flow


def test_open_round_takes_the_initial_model_and_deadline_from_the_trial(running):
    flow = running
    refused(
        "FORBIDDEN_ROLE", flow.client("hospital1").submit, "open_round", {"trial_id": flow.trial_id}
    )
    refused(
        "FORBIDDEN_ROLE", flow.client("auditor").submit, "open_round", {"trial_id": flow.trial_id}
    )
    rnd = flow.open_round(by="admin")
    assert (rnd["round"], rnd["attempt"], rnd["phase"]) == (1, 1, "SUBMIT")
    assert rnd["base"] == {"round": 0, "attempt": 0, "model": flow.trial_args()["initial_model"]}
    assert rnd["deadline"] == rnd["opened_at"] + 3600
    assert rnd["enrolled"] == sorted(flow.msp[n] for n in flow.members)
    # One round at a time, and the number is the contract's to choose.
    refused("WRONG_STATE", flow.coordinator.submit, "open_round", {"trial_id": flow.trial_id})
    assert flow.trial()["current"] == {"round": 1, "attempt": 1}


def test_open_round_refuses_a_round_number_other_than_the_next(running):
    error = refused(
        "WRONG_STATE",
        running.coordinator.submit,
        "open_round",
        {"trial_id": running.trial_id, "round": 2},
    )
    assert "next round" in error.message


def test_commit_and_reveal_record_the_update_and_the_privacy_ledger(running):
    flow = running
    flow.open_round()
    u = flow.commit_update("hospital1")
    record = flow.admin.evaluate("get_submissions", flow.at())[0]
    assert record["msp_id"] == flow.msp["hospital1"] and record["revealed"] is False
    assert record["sha256"] is None  # nothing but the commitment until the reveal
    refused(
        "WRONG_STATE", flow.reveal_update, "hospital1", u
    )  # reveals wait for the commit phase to close
    for name in ("hospital2", "hospital3"):
        flow.commit_update(name)
    rnd = flow.close("close_update_commits")
    assert rnd["phase"] == "REVEAL" and rnd["committed"] == sorted(
        flow.msp[n] for n in flow.members
    )
    revealed = flow.reveal_update("hospital1", u)
    assert revealed["revealed"] is True and revealed["sha256"] == u.sha256
    ledger = flow.client("auditor").evaluate(
        "get_privacy_ledger", {"trial_id": flow.trial_id, "msp_id": flow.msp["hospital1"]}
    )
    assert ledger == [
        {
            "trial_id": flow.trial_id,
            "msp_id": flow.msp["hospital1"],
            "budget_micro": 3_000_000,
            "epsilon_spent_micro": 500_000,
            "entries": [
                {"round": 1, "attempt": 1, "epsilon_micro": 500_000, "at": revealed["revealed_at"]}
            ],
        }
    ]


def test_commit_refusals_wrong_role_organisation_unenrolled_stale_duplicate(running):
    flow = running
    flow.open_round()
    refused("FORBIDDEN_ROLE", flow.commit_update, "coordinator")
    refused("FORBIDDEN_ROLE", flow.commit_update, "auditor")
    refused("WRONG_ORGANISATION", flow.commit_update, "hospital1", msp_id=flow.msp["hospital2"])
    refused("NOT_ENROLLED", flow.commit_update, "hospital4")
    error = refused("STALE", flow.commit_update, "hospital1", base=digest("some other model"))
    assert error.detail["expected"] == flow.base
    flow.commit_update("hospital1", msp_id=flow.msp["hospital1"])  # naming one's own org is fine
    refused(
        "DUPLICATE", flow.commit_update, "hospital1", flow.make_update("hospital1", tag="again")
    )
    refused(
        "NO_SUCH_ROUND",
        flow.client("hospital2").submit,
        "commit_update",
        {**flow.at(round=7), "base_model_sha256": flow.base, "commitment": digest("c")},
    )
    bad = flow.at(base_model_sha256=flow.base, commitment="not-a-hash")
    assert (
        refused("INVALID_ARGUMENT", flow.client("hospital2").submit, "commit_update", bad).detail[
            "field"
        ]
        == "commitment"
    )


def test_late_commit_after_the_deadline_or_after_the_phase_moved_on(running):
    flow = running
    flow.open_round()
    flow.commit_update("hospital1")
    flow.net.advance_time(3601)
    refused("LATE", flow.commit_update, "hospital2")
    flow.close("close_update_commits")
    refused("LATE", flow.commit_update, "hospital3")


def test_closing_commits_waits_for_everyone_until_the_deadline(running):
    flow = running
    flow.open_round()
    flow.commit_update("hospital1")
    error = refused("TOO_EARLY", flow.close, "close_update_commits")
    assert sorted(error.detail["waiting_for"]) == sorted(
        flow.msp[n] for n in ("hospital2", "hospital3")
    )
    refused("FORBIDDEN_ROLE", flow.close, "close_update_commits", "hospital1")
    flow.net.advance_time(3601)
    rnd = flow.close("close_update_commits", by="admin")
    assert rnd["committed"] == [flow.msp["hospital1"]]
    refused("LATE", flow.close, "close_update_commits")


def test_a_round_without_commitments_halts_and_the_next_attempt_reopens_it(running):
    flow = running
    flow.open_round()
    flow.net.advance_time(3601)
    rnd = flow.close("close_update_commits")
    assert rnd["phase"] == "HALTED" and rnd["halt"]["code"] == "NO_COMMITMENTS"
    again = flow.open_round()
    assert (again["round"], again["attempt"]) == (1, 2)
    assert [
        (r["round"], r["attempt"])
        for r in flow.admin.evaluate("list_rounds", {"trial_id": flow.trial_id})
    ] == [(1, 1), (1, 2)]
    old = flow.admin.evaluate("get_round", {"trial_id": flow.trial_id, "round": 1, "attempt": 1})
    assert old["phase"] == "HALTED"


def test_reveal_must_match_the_commitment(running):
    flow = running
    flow.open_round()
    u = flow.commit_update("hospital1")
    flow.commit_update("hospital2")
    flow.commit_update("hospital3")
    flow.close("close_update_commits")
    for changed in (
        u.__class__(u.content_id, u.sha256, u.sample_weight + 1, u.epsilon_spent_micro, u.salt),
        u.__class__(u.content_id, u.sha256, u.sample_weight, 1, u.salt),  # under-reporting epsilon
        u.__class__(u.content_id, digest("other"), u.sample_weight, u.epsilon_spent_micro, u.salt),
        u.__class__(
            u.content_id, u.sha256, u.sample_weight, u.epsilon_spent_micro, digest("other salt")
        ),
    ):
        refused("COMMITMENT_MISMATCH", flow.reveal_update, "hospital1", changed)
    assert (
        flow.admin.evaluate(
            "get_privacy_ledger", {"trial_id": flow.trial_id, "msp_id": flow.msp["hospital1"]}
        )[0]["epsilon_spent_micro"]
        == 0
    )
    flow.reveal_update("hospital1", u)
    refused("DUPLICATE", flow.reveal_update, "hospital1", u)


def test_a_reveal_by_an_org_other_than_the_committer_is_refused(running):
    flow = running
    flow.open_round()
    u1 = flow.commit_update("hospital1")
    flow.commit_update("hospital2")
    flow.net.advance_time(3601)
    flow.close("close_update_commits")
    # hospital3 saw nothing to copy, but even replaying hospital1's exact values fails:
    refused("NOT_COMMITTED", flow.reveal_update, "hospital3", u1)
    # hospital2 committed, yet hospital1's opening does not hash to hospital2's commitment
    # (the commitment binds the MSP id).
    refused("COMMITMENT_MISMATCH", flow.reveal_update, "hospital2", u1)
    refused("WRONG_ORGANISATION", flow.reveal_update, "hospital2", u1, msp_id=flow.msp["hospital1"])


def test_the_same_content_revealed_by_two_hospitals_is_refused(running):
    flow = running
    flow.open_round()
    u1 = flow.commit_update("hospital1")
    # hospital2 learns hospital1's update after the fact and commits to the same bytes.
    copied = u1.__class__(u1.content_id, u1.sha256, 100, 500_000, digest("hospital2 salt"))
    flow.commit_update("hospital2", copied)
    flow.commit_update("hospital3")
    flow.close("close_update_commits")
    flow.reveal_update("hospital1", u1)
    error = refused("DUPLICATE_CONTENT", flow.reveal_update, "hospital2", copied)
    assert error.detail["first_revealed_by"] == flow.msp["hospital1"]
    assert (
        flow.admin.evaluate(
            "get_privacy_ledger", {"trial_id": flow.trial_id, "msp_id": flow.msp["hospital2"]}
        )[0]["epsilon_spent_micro"]
        == 0
    )


def test_over_budget_reveal_is_refused_and_records_nothing(running):
    flow = running
    flow.open_round()
    big = flow.make_update("hospital1", epsilon=3_000_001)  # the trial budget is 3_000_000
    flow.commit_update("hospital1", big)
    ok = flow.commit_update("hospital2", flow.make_update("hospital2", epsilon=3_000_000))
    flow.commit_update("hospital3")
    flow.close("close_update_commits")
    error = refused("BUDGET_EXCEEDED", flow.reveal_update, "hospital1", big)
    assert error.detail["budget_micro"] == 3_000_000
    submission = next(
        s
        for s in flow.admin.evaluate("get_submissions", flow.at())
        if s["msp_id"] == flow.msp["hospital1"]
    )
    assert submission["revealed"] is False and submission["sha256"] is None
    ledgers = {
        entry["msp_id"]: entry
        for entry in flow.admin.evaluate("get_privacy_ledger", {"trial_id": flow.trial_id})
    }
    assert (
        ledgers[flow.msp["hospital1"]]["epsilon_spent_micro"] == 0
        and ledgers[flow.msp["hospital1"]]["entries"] == []
    )
    # Exactly the budget is allowed; after that the hospital cannot even commit.
    flow.reveal_update("hospital2", ok)
    flow.reveal_update("hospital3", flow.make_update("hospital3"))
    flow.net.advance_time(901)  # hospital1's commitment stays unopened, so wait for the deadline
    flow.close("close_update_reveals")
    flow.vote(flow.scores(flow.members, ["hospital2", "hospital3"]))
    flow.aggregate()
    flow.attest("hospital1")
    flow.attest("hospital2")
    flow.open_round()
    refused("BUDGET_EXCEEDED", flow.commit_update, "hospital2")
    # ... and nobody waits for it when closing the commit phase.
    flow.commit_update("hospital1")
    flow.commit_update("hospital3")
    assert flow.close("close_update_commits")["phase"] == "REVEAL"


def test_late_reveal_and_reveal_of_an_unenrolled_hospital(running):
    flow = running
    flow.open_round()
    updates = {n: flow.commit_update(n) for n in flow.members}
    flow.close("close_update_commits")
    flow.reveal_update("hospital1", updates["hospital1"])
    flow.admin.submit(
        "remove_hospital", {"trial_id": flow.trial_id, "msp_id": flow.msp["hospital3"]}
    )
    refused("NOT_ENROLLED", flow.reveal_update, "hospital3", updates["hospital3"])
    error = refused("TOO_EARLY", flow.close, "close_update_reveals")
    assert error.detail["waiting_for"] == [
        flow.msp["hospital2"]
    ]  # the removed hospital is not awaited
    flow.net.advance_time(901)
    refused("LATE", flow.reveal_update, "hospital2", updates["hospital2"])
    rnd = flow.close("close_update_reveals")
    assert rnd["phase"] == "VOTE_COMMIT" and rnd["candidates"] == [flow.msp["hospital1"]]
    refused("LATE", flow.reveal_update, "hospital2", updates["hospital2"])


def test_a_round_without_reveals_halts(running):
    flow = running
    flow.open_round()
    flow.commit_update("hospital1")
    flow.net.advance_time(3601)
    flow.close("close_update_commits")
    flow.net.advance_time(901)
    rnd = flow.close("close_update_reveals")
    assert rnd["phase"] == "HALTED" and rnd["halt"]["code"] == "NO_REVEALS"


def test_with_dp_switched_off_reveals_are_not_budget_checked(flow):
    flow.running(dp={"enabled": False, "reason": "public data"})
    flow.open_round()
    u = flow.commit_update("hospital1", flow.make_update("hospital1", epsilon=10**9))
    flow.net.advance_time(3601)
    flow.close("close_update_commits")
    flow.reveal_update("hospital1", u)
    ledger = flow.admin.evaluate(
        "get_privacy_ledger", {"trial_id": flow.trial_id, "msp_id": flow.msp["hospital1"]}
    )[0]
    assert ledger["budget_micro"] is None and ledger["epsilon_spent_micro"] == 10**9
