"""Opening rounds and the commit-reveal of updates: late, duplicate, stale, unenrolled, over-budget, mismatched, over-weight, copied.

Epsilon is charged from the DP schedule recorded at start_trial (the Flow's schedule spreads the
target evenly over the rounds: 1_500_000 then 3_000_000 cumulative for the default trial).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from contract_flow import TRAINING_RECORDS, digest, refused

from chaincode.contract.store import DEFAULT_CLOCK_TOLERANCE_SECONDS


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
    assert revealed["content_id"] == u.content_id and revealed["sample_weight"] == u.sample_weight
    # The contract charges the schedule's first cumulative epsilon (3_000_000 over 2 rounds).
    assert revealed["epsilon_spent_micro"] == 1_500_000
    ledger = flow.client("auditor").evaluate(
        "get_privacy_ledger", {"trial_id": flow.trial_id, "msp_id": flow.msp["hospital1"]}
    )
    assert ledger == [
        {
            "trial_id": flow.trial_id,
            "msp_id": flow.msp["hospital1"],
            "budget_micro": 3_000_000,
            "epsilon_spent_micro": 1_500_000,
            "entries": [
                {
                    "round": 1,
                    "attempt": 1,
                    "epsilon_micro": 1_500_000,
                    "at": revealed["revealed_at"],
                }
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
    flow.commit_update("hospital2")
    flow.net.advance_time(3601)
    refused("LATE", flow.commit_update, "hospital3")
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
    flow.commit_update("hospital2")
    refused("FORBIDDEN_ROLE", flow.close, "close_update_commits", "hospital1")
    flow.net.advance_time(3601)
    rnd = flow.close("close_update_commits", by="admin")
    assert rnd["committed"] == sorted(flow.msp[n] for n in ("hospital1", "hospital2"))
    refused("LATE", flow.close, "close_update_commits")


def test_commitments_short_of_min_silos_fail_the_attempt_and_the_next_gets_longer_phases(running):
    flow = running
    first = flow.open_round()
    flow.commit_update("hospital1")
    flow.net.advance_time(3601)
    rnd = flow.close("close_update_commits")
    assert rnd["phase"] == "HALTED" and rnd["halt"]["code"] == "TOO_FEW_HOSPITALS"
    assert rnd["halt"]["retry"] is True and rnd["halt"]["failed_attempts"] == 1
    assert (
        "1 enrolled hospitals committed" in rnd["halt"]["reason"]
        and "min_silos=2" in rnd["halt"]["reason"]
    )
    assert flow.trial()["state"] == "RUNNING" and flow.trial()["failed_attempts"] == 1
    second = flow.open_round()
    assert second["attempt"] == 2
    seconds = flow.trial()["phase_seconds"]["submit"]
    assert first["deadline"] - first["opened_at"] == seconds
    assert second["deadline"] - second["opened_at"] == 2 * seconds


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
        replace(u, sample_weight=u.sample_weight + 1),  # over-reporting the weight
        replace(u, sha256=digest("other")),
        replace(u, salt=digest("other salt")),
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
    # One candidate left, under min_silos=2: the attempt fails and will be retried.
    rnd = flow.close("close_update_reveals")
    assert rnd["phase"] == "HALTED" and rnd["halt"]["code"] == "TOO_FEW_HOSPITALS"
    assert rnd["halt"]["retry"] is True
    refused("WRONG_STATE", flow.reveal_update, "hospital2", updates["hospital2"])


def test_a_round_without_reveals_halts(running):
    flow = running
    flow.open_round()
    flow.commit_update("hospital1")
    flow.commit_update("hospital2")
    flow.net.advance_time(3601)
    flow.close("close_update_commits")
    flow.net.advance_time(901)
    rnd = flow.close("close_update_reveals")
    assert rnd["phase"] == "HALTED" and rnd["halt"]["code"] == "NO_REVEALS"


def ledger_of(flow, name):
    return flow.admin.evaluate(
        "get_privacy_ledger", {"trial_id": flow.trial_id, "msp_id": flow.msp[name]}
    )[0]


# ---------------------------------------------------------------------------------------------
# Copied updates: a hospital that got another's bytes cannot take them over
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("thief_reveals_first", [True, False])
def test_a_copy_committed_after_the_victim_loses_whatever_the_reveal_order(
    running, thief_reveals_first
):
    flow = running
    flow.open_round()
    victim = flow.commit_update("hospital1")
    # the copier commits later (it could not commit to unseen bytes), past the clock tolerance
    flow.net.advance_time(DEFAULT_CLOCK_TOLERANCE_SECONDS + 1)
    copied = replace(victim, content_id="cid-copy", sample_weight=900, salt=digest("copier salt"))
    flow.commit_update("hospital2", copied)
    own = flow.commit_update("hospital3")
    flow.close("close_update_commits")
    order = [("hospital2", copied), ("hospital1", victim)]
    for name, u in order if thief_reveals_first else order[::-1]:
        # Both reveals are recorded: who reveals first decides nothing.
        assert flow.reveal_update(name, u)["revealed"] is True
    flow.reveal_update("hospital3", own)
    rnd = flow.close("close_update_reveals")
    h1, h2, h3 = (flow.msp[n] for n in ("hospital1", "hospital2", "hospital3"))
    assert rnd["phase"] == "VOTE_COMMIT"
    assert rnd["candidates"] == sorted([h1, h3])  # the victim keeps its update
    assert rnd["excluded"] == {
        h2: {"reason": "duplicate_content", "sha256": victim.sha256, "owner": h1}
    }
    # The copier disclosed an update all the same: its reveal was charged.
    assert ledger_of(flow, "hospital2")["epsilon_spent_micro"] == 1_500_000
    # ... and it cannot vote itself into the candidates: it is not one.
    scores = flow.scores(flow.members, ["hospital1", "hospital3"])
    acceptance = flow.vote(scores)
    assert sorted(acceptance["candidates"]) == sorted([h1, h3])


def test_a_backdated_copy_ties_with_its_victim_and_nobody_gets_the_bytes(running):
    """A proposal's time is its client's, refused only beyond the host's window (Fabric peers:
    CORE_PEER_AUTHENTICATION_TIMEWINDOW; the embedded ledger: 300 s): the copier commits after
    its victim but dates its commitment 4 minutes earlier. Within the trial's clock tolerance the
    two commitments are a tie: the copier takes nothing, and nor does the victim."""
    flow = running
    trial = flow.admin.evaluate("get_trial", {"trial_id": flow.trial_id})
    assert trial["clock_tolerance_seconds"] == DEFAULT_CLOCK_TOLERANCE_SECONDS
    flow.open_round()
    flow.net.advance_time(300)  # the victim commits 5 minutes into the phase
    victim = flow.commit_update("hospital1")
    flow.net.advance_time(-240)  # the copier's clock, set back (still inside the phase)
    copied = replace(victim, content_id="cid-copy", salt=digest("backdating copier"))
    flow.commit_update("hospital2", copied)
    flow.net.advance_time(240)
    at = {s["msp_id"]: s["committed_at"] for s in flow.admin.evaluate("get_submissions", flow.at())}
    assert at[flow.msp["hospital2"]] < at[flow.msp["hospital1"]]  # it looks earlier
    own = flow.commit_update("hospital3")
    flow.close("close_update_commits")
    for name, u in (("hospital2", copied), ("hospital1", victim), ("hospital3", own)):
        flow.reveal_update(name, u)
    rnd = flow.close("close_update_reveals")
    h1, h2, h3 = (flow.msp[n] for n in ("hospital1", "hospital2", "hospital3"))
    assert rnd["excluded"] == {
        h1: {"reason": "duplicate_content", "sha256": victim.sha256, "owner": None},
        h2: {"reason": "duplicate_content", "sha256": victim.sha256, "owner": None},
    }
    assert rnd["candidates"] == [h3]  # below min_silos: the attempt fails, to be retried
    assert rnd["phase"] == "HALTED" and rnd["halt"]["code"] == "TOO_FEW_HOSPITALS"


def test_a_commitment_dated_before_its_phase_started_counts_from_the_phase_start(running):
    """A copier that got bytes left in the store by an earlier attempt dates its commitment
    before the attempt opened, to be the earliest by more than the tolerance: it is recorded at
    the phase's start, so an owner committing within the tolerance after it still ties."""
    flow = running
    flow.open_round()
    opened = flow.admin.evaluate("get_round", flow.at())["phase_changed_at"]
    flow.net.advance_time(-240)  # before the round opened
    flow.commit_update("hospital2")
    flow.net.advance_time(240)
    at = {s["msp_id"]: s["committed_at"] for s in flow.admin.evaluate("get_submissions", flow.at())}
    assert at[flow.msp["hospital2"]] == opened


def test_content_revealed_in_an_earlier_round_is_refused_for_anyone(running):
    flow = running
    flow.open_round()
    first = flow.submit_updates(flow.members)
    flow.vote(flow.scores(flow.members, flow.members))
    flow.aggregate()
    for name in flow.members[:2]:
        flow.attest(name)
    flow.open_round()
    old = first["hospital1"]
    replayed = replace(old, salt=digest("replay salt"))  # its own update, a round later
    copied = replace(old, salt=digest("copy salt"))
    flow.commit_update("hospital1", replayed)
    flow.commit_update("hospital2", copied)
    fresh = flow.commit_update("hospital3")
    flow.close("close_update_commits")
    for name, u in (("hospital1", replayed), ("hospital2", copied)):
        error = refused("DUPLICATE_CONTENT", flow.reveal_update, name, u)
        assert error.detail["round"] == 1 and error.detail["revealed_by"] == [flow.msp["hospital1"]]
        assert len(ledger_of(flow, name)["entries"]) == 1  # nothing charged for the refusal
    flow.reveal_update("hospital3", fresh)


def test_content_revealed_in_an_earlier_attempt_of_the_round_is_refused(running):
    flow = running
    flow.open_round()
    u = flow.commit_update("hospital1")
    flow.commit_update("hospital2")
    flow.net.advance_time(3601)
    flow.close("close_update_commits")
    flow.reveal_update("hospital1", u)
    flow.admin.submit("abort_round", flow.at(reason="outage"))
    flow.open_round()
    assert flow.attempt == 2
    again = replace(u, salt=digest("second attempt"))
    flow.commit_update("hospital1", again)
    flow.commit_update("hospital2")
    flow.net.advance_time(3601)
    flow.close("close_update_commits")
    error = refused("DUPLICATE_CONTENT", flow.reveal_update, "hospital1", again)
    assert (error.detail["round"], error.detail["attempt"]) == (1, 1)


# ---------------------------------------------------------------------------------------------
# Sample weights are bounded by the registered training records
# ---------------------------------------------------------------------------------------------


def test_a_weight_above_the_registered_training_records_is_refused(running):
    flow = running
    flow.open_round()
    heavy = flow.commit_update(
        "hospital1", flow.make_update("hospital1", weight=TRAINING_RECORDS + 1)
    )
    exact = flow.commit_update("hospital2", flow.make_update("hospital2", weight=TRAINING_RECORDS))
    flow.net.advance_time(3601)
    flow.close("close_update_commits")
    error = refused("INVALID_ARGUMENT", flow.reveal_update, "hospital1", heavy)
    assert (
        error.detail["field"] == "sample_weight" and error.detail["value"] == TRAINING_RECORDS + 1
    )
    assert str(TRAINING_RECORDS) in error.message and "training_records" in error.message
    assert ledger_of(flow, "hospital1")["entries"] == []
    assert flow.reveal_update("hospital2", exact)["sample_weight"] == TRAINING_RECORDS


# ---------------------------------------------------------------------------------------------
# Epsilon is charged from the schedule, never from what a hospital says
# ---------------------------------------------------------------------------------------------


def test_epsilon_is_charged_from_the_schedule_and_a_reveal_past_it_is_refused(flow):
    flow.enrolling(rounds=2)
    schedule = flow.dp_schedule([700_000, 2_500_000])
    schedule[flow.msp["hospital2"]]["epsilon_micro"] = [1, 1]  # a cheaper plan, equally honoured
    flow.start(dp_schedule=schedule)
    flow.record_keys("hospital1")
    # There is no epsilon field to report any more.
    flow.open_round()
    u = flow.commit_update("hospital1")
    for name in ("hospital2", "hospital3"):
        flow.commit_update(name)
    flow.close("close_update_commits")
    error = refused("INVALID_ARGUMENT", flow.reveal_update, "hospital1", u, epsilon_spent_micro=1)
    assert error.detail["field"] == "epsilon_spent_micro"
    assert flow.reveal_update("hospital1", u)["epsilon_spent_micro"] == 700_000
    flow.admin.submit("abort_round", flow.at(reason="start over"))
    flow.full_round()  # attempt 2: hospital1's second reveal, the others' first
    # Round 2 goes on without hospital1: its two reveals are all its schedule allows.
    flow.open_round()
    refused("BUDGET_EXCEEDED", flow.commit_update, "hospital1")
    flow.submit_updates(["hospital2", "hospital3"])  # nobody waits for hospital1's commitment
    flow.vote(flow.scores(flow.members, ["hospital2", "hospital3"]))
    flow.aggregate()
    flow.attest("hospital1")
    flow.attest("hospital2")
    spent = {
        e["msp_id"]: (
            e["epsilon_spent_micro"],
            [x["epsilon_micro"] for x in e["entries"]],
            e["budget_micro"],
        )
        for e in flow.admin.evaluate("get_privacy_ledger", {"trial_id": flow.trial_id})
    }
    h1, h2, h3 = (flow.msp[n] for n in ("hospital1", "hospital2", "hospital3"))
    # hospital1's aborted reveal counted: cumulative epsilons are per reveal, not per round.
    assert spent[h1] == (2_500_000, [700_000, 1_800_000], 2_500_000)
    assert spent[h2] == (1, [1, 0], 1)
    assert spent[h3] == (2_500_000, [700_000, 1_800_000], 2_500_000)
    submissions = {s["msp_id"]: s for s in flow.admin.evaluate("get_submissions", flow.at())}
    assert h1 not in submissions
    assert submissions[h3]["epsilon_spent_micro"] == 1_800_000
    # A rollback to round 1 would need a (rounds + 1)-th disclosure from everyone: refused up
    # front, saying that no further round fits (the reveal itself is refused too: test_invoke).
    error = refused(
        "INFEASIBLE", flow.admin.submit, "rollback", {"trial_id": flow.trial_id, "to_round": 1}
    )
    assert error.detail["reveals_left"] == {h1: 0, h2: 0, h3: 0}
    assert "no further round fits" in error.message
    assert flow.trial()["head"]["round"] == 2  # nothing changed


def test_with_dp_switched_off_reveals_are_charged_nothing(flow):
    flow.enrolling(dp={"enabled": False, "reason": "public data"})
    error = refused(
        "INVALID_ARGUMENT",
        flow.admin.submit,
        "start_trial",
        {"trial_id": flow.trial_id, "dp_schedule": {}},
    )
    assert error.detail["field"] == "dp_schedule" and "DP off" in error.message
    flow.start()
    flow.record_keys("hospital1")
    refused("NOT_FOUND", flow.admin.evaluate, "get_dp_schedule", {"trial_id": flow.trial_id})
    for _ in range(3):  # more reveals than rounds: nothing bounds them with DP off
        flow.open_round()
        u = flow.commit_update("hospital1")
        flow.commit_update("hospital2", flow.make_update("hospital2", tag=str(_)))
        flow.net.advance_time(3601)
        flow.close("close_update_commits")
        assert flow.reveal_update("hospital1", u)["epsilon_spent_micro"] == 0
        flow.admin.submit("abort_round", flow.at(reason="again"))
    ledger = ledger_of(flow, "hospital1")
    assert ledger["budget_micro"] is None and ledger["epsilon_spent_micro"] == 0
    assert [e["epsilon_micro"] for e in ledger["entries"]] == [0, 0, 0]
