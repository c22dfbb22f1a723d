"""Commit-reveal of peer votes and the acceptance, weights and rewards the contract computes from them."""

from __future__ import annotations

import pytest
from contract_flow import HOSPITALS, digest, refused


@pytest.fixture
def voting(flow):
    """Round 1 of a 4-hospital trial in VOTE_COMMIT with every hospital's update a candidate."""
    flow.running(hospitals=HOSPITALS)
    flow.open_round()
    weights = {"hospital1": 100, "hospital2": 200, "hospital3": 300, "hospital4": 400}
    flow.updates = {
        n: flow.commit_update(n, flow.make_update(n, weight=w)) for n, w in weights.items()
    }
    flow.close("close_update_commits")
    for n in HOSPITALS:
        flow.reveal_update(n, flow.updates[n])
    rnd = flow.close("close_update_reveals")
    assert rnd["phase"] == "VOTE_COMMIT" and rnd["candidates"] == sorted(
        flow.msp[n] for n in HOSPITALS
    )
    return flow


def test_vote_commit_and_reveal_refusals(voting):
    flow = voting
    peers = {p: 1000 for p in HOSPITALS if p != "hospital1"}
    refused(
        "WRONG_STATE", flow.reveal_votes, "hospital1", {}, digest("salt")
    )  # reveals wait for VOTE_REVEAL
    refused("FORBIDDEN_ROLE", flow.commit_votes, "auditor", peers)
    refused(
        "WRONG_ORGANISATION",
        flow.client("hospital1").submit,
        "commit_votes",
        flow.at(commitment=digest("c"), msp_id=flow.msp["hospital2"]),
    )
    by_msp, salt = flow.commit_votes("hospital1", peers)
    refused("DUPLICATE", flow.commit_votes, "hospital1", peers)
    own = {p: 1000 for p in HOSPITALS}
    self_scores, self_salt = flow.commit_votes("hospital2", own)  # commits to a self-score
    flow.commit_votes("hospital3", {p: 1000 for p in HOSPITALS if p != "hospital3"})
    error = refused("TOO_EARLY", flow.close, "close_vote_commits")
    assert error.detail["waiting_for"] == [flow.msp["hospital4"]]
    flow.net.advance_time(1801)
    refused(
        "LATE", flow.commit_votes, "hospital4", {p: 1000 for p in HOSPITALS if p != "hospital4"}
    )
    rnd = flow.close("close_vote_commits")
    assert rnd["phase"] == "VOTE_REVEAL" and len(rnd["vote_committed"]) == 3

    refused("SELF_VOTE", flow.reveal_votes, "hospital2", self_scores, self_salt)
    refused(
        "NOT_COMMITTED",
        flow.reveal_votes,
        "hospital4",
        {flow.msp[p]: 1 for p in HOSPITALS if p != "hospital4"},
        digest("s"),
    )
    changed = dict(by_msp, **{flow.msp["hospital2"]: 999_999})
    refused("COMMITMENT_MISMATCH", flow.reveal_votes, "hospital1", changed, salt)
    refused("COMMITMENT_MISMATCH", flow.reveal_votes, "hospital1", by_msp, digest("another salt"))
    missing = {k: v for k, v in by_msp.items() if k != flow.msp["hospital4"]}
    assert (
        refused("INVALID_ARGUMENT", flow.reveal_votes, "hospital1", missing, salt).detail["field"]
        == "scores"
    )
    refused("INVALID_ARGUMENT", flow.reveal_votes, "hospital1", dict(by_msp, AuditorMSP=5), salt)
    refused(
        "INVALID_ARGUMENT",
        flow.reveal_votes,
        "hospital1",
        dict(by_msp, **{flow.msp["hospital2"]: 0.5}),
        salt,
    )
    revealed = flow.reveal_votes("hospital1", by_msp, salt)
    assert revealed["revealed"] is True and revealed["scores"] == by_msp
    refused("DUPLICATE", flow.reveal_votes, "hospital1", by_msp, salt)
    flow.net.advance_time(901)
    refused(
        "LATE",
        flow.reveal_votes,
        "hospital3",
        {flow.msp[p]: 1000 for p in HOSPITALS if p != "hospital3"},
        digest("x"),
    )


def test_votes_are_hidden_until_revealed(voting):
    flow = voting
    flow.commit_votes("hospital1", {p: 1000 for p in HOSPITALS if p != "hospital1"})
    votes = flow.client("hospital2").evaluate("get_votes", flow.at())
    assert [(v["msp_id"], v["scores"], v["salt"]) for v in votes] == [
        (flow.msp["hospital1"], None, None)
    ]


def test_acceptance_median_threshold_weights_and_rewards(voting):
    flow = voting
    h1, h2, h3, h4 = (flow.msp[n] for n in HOSPITALS)
    scores = {
        # hospital4's update is poisoned: every peer sees its metric drop a lot.
        "hospital1": {"hospital2": 30_000, "hospital3": 10_000, "hospital4": -400_000},
        "hospital2": {"hospital1": 20_000, "hospital3": 0, "hospital4": -300_000},
        # hospital3 lies in favour of hospital4; one voter cannot move a median of three.
        "hospital3": {"hospital1": 40_000, "hospital2": 10_000, "hospital4": 900_000},
        "hospital4": {"hospital1": -5_000, "hospital2": 50_000, "hospital3": -20_000},
    }
    acceptance = flow.vote(scores)
    c = acceptance["candidates"]
    # Lower median of three: the middle one.
    assert c[h1]["median_micro"] == 20_000 and c[h2]["median_micro"] == 30_000
    assert c[h3]["median_micro"] == 0 and c[h4]["median_micro"] == -300_000
    assert [c[m]["accepted"] for m in (h1, h2, h3, h4)] == [True, True, True, False]
    assert c[h4]["reason"] == "below_threshold" and c[h4]["weight"] == 0 and c[h4]["reward"] == 0
    assert acceptance["accepted"] == [h1, h2, h3] and acceptance["rejected"] == [h4]
    # weights are the sample weights; contribution = median + threshold + 1
    assert [c[m]["weight"] for m in (h1, h2, h3)] == [100, 200, 300]
    assert acceptance["total_weight"] == 600
    assert [c[m]["contribution"] for m in (h1, h2, h3)] == [30_001, 40_001, 10_001]
    # shares 3_000_100 : 8_000_200 : 3_000_300 of 1000 tokens, largest remainder
    # floors 214 + 571 + 214 = 999; the last token goes to the largest remainder (hospital2)
    assert acceptance["rewards"] == {h1: 214, h2: 572, h3: 214, h4: 0}
    assert sum(acceptance["rewards"].values()) == 1000
    assert acceptance["accepted_sha256s"] == sorted(
        flow.updates[n].sha256 for n in ("hospital1", "hospital2", "hospital3")
    )
    rnd = flow.get_round()
    assert rnd["phase"] == "AGGREGATE" and rnd["total_weight"] == 600
    assert rnd["participants"] == sorted([h1, h2, h3, h4]) and rnd["attestation_quorum"] == 3
    assert flow.client("auditor").evaluate("get_acceptance", flow.at()) == acceptance
    # Rewards wait for the round to finalize.
    rewards = flow.client("auditor").evaluate("get_rewards", {"trial_id": flow.trial_id})
    assert rewards["accounts"] == [] and rewards["rounds"][0]["status"] == "pending"


def test_even_number_of_votes_takes_the_lower_median(voting):
    flow = voting
    # hospital4 does not vote: every candidate but hospital4 has two peer scores.
    scores = {
        "hospital1": {"hospital2": -30_000, "hospital3": 50_000, "hospital4": 0},
        "hospital2": {"hospital1": 0, "hospital3": -5_000, "hospital4": 0},
        "hospital3": {"hospital1": 0, "hospital2": 100_000, "hospital4": 0},
    }
    committed = {v: flow.commit_votes(v, s) for v, s in scores.items()}
    flow.net.advance_time(1801)
    flow.close("close_vote_commits")
    for v, (by_msp, salt) in committed.items():
        flow.reveal_votes(v, by_msp, salt)
    c = flow.close("close_voting")["candidates"]
    assert (
        c[flow.msp["hospital2"]]["median_micro"] == -30_000
    )  # lower of (-30_000, 100_000): rejected
    assert c[flow.msp["hospital2"]]["accepted"] is False
    assert (
        c[flow.msp["hospital3"]]["median_micro"] == -5_000
    )  # lower of (-5_000, 50_000): within threshold
    assert c[flow.msp["hospital3"]]["accepted"] is True


def test_too_few_voters_rejects_and_nothing_accepted_halts_the_round(flow):
    flow.running(hospitals=HOSPITALS[:3], evaluation={"min_voters": 2, "reward_per_round": 10})
    flow.open_round()
    flow.submit_updates(list(HOSPITALS[:3]))
    # Only hospital1 votes: every other candidate has 1 vote, hospital1 none.
    by_msp, salt = flow.commit_votes("hospital1", {"hospital2": 10, "hospital3": 10})
    flow.net.advance_time(1801)
    flow.close("close_vote_commits")
    flow.reveal_votes("hospital1", by_msp, salt)
    acceptance = flow.close("close_voting")
    assert {v["reason"] for v in acceptance["candidates"].values()} == {"too_few_votes"}
    assert acceptance["accepted"] == [] and acceptance["voters_missing"] == []
    rnd = flow.get_round()
    assert rnd["phase"] == "HALTED" and rnd["halt"]["code"] == "NONE_ACCEPTED"
    rewards = flow.admin.evaluate("get_rewards", {"trial_id": flow.trial_id})["rounds"][0]
    assert rewards["status"] == "void" and set(rewards["rewards"].values()) == {0}


def test_min_voters_above_the_available_peers_needs_every_peer(flow):
    flow.running(hospitals=HOSPITALS[:2], evaluation={"min_voters": 5})
    flow.open_round()
    flow.submit_updates(list(HOSPITALS[:2]))
    acceptance = flow.vote(flow.scores(list(HOSPITALS[:2]), list(HOSPITALS[:2])))
    assert all(
        v["required_votes"] == 1 and v["accepted"] for v in acceptance["candidates"].values()
    )


def test_closing_votes_waits_for_committed_voters_until_the_deadline(voting):
    flow = voting
    committed = {v: flow.commit_votes(v, {p: 0 for p in HOSPITALS if p != v}) for v in HOSPITALS}
    flow.close("close_vote_commits")
    for v in HOSPITALS[:3]:
        flow.reveal_votes(v, *committed[v])
    error = refused("TOO_EARLY", flow.close, "close_voting")
    assert error.detail["waiting_for"] == [flow.msp["hospital4"]]
    refused("FORBIDDEN_ROLE", flow.close, "close_voting", "hospital1")
    flow.net.advance_time(901)
    acceptance = flow.close("close_voting")
    assert acceptance["voters_revealed"] == sorted(flow.msp[n] for n in HOSPITALS[:3])
    assert acceptance["voters_missing"] == [flow.msp["hospital4"]]
    assert len(acceptance["accepted"]) == 4  # two or three peer votes each: enough for min_voters=2
    refused("LATE", flow.close, "close_voting")


def test_no_vote_commitments_halts_the_round(voting):
    flow = voting
    flow.net.advance_time(1801)
    rnd = flow.close("close_vote_commits")
    assert rnd["phase"] == "HALTED" and rnd["halt"]["code"] == "NO_VOTES"
