"""Commit-reveal of peer findings and the acceptance, capped weights and rewards the contract
computes from them (``chaincode.rules.judge_round``): every rejection reason, on a real host."""

from __future__ import annotations

import pytest
from contract_flow import HOSPITALS, TRAINING_RECORDS, digest, finding, refused


@pytest.fixture
def voting(flow):
    """Round 1 of a 4-hospital trial in VOTE_COMMIT with every hospital's update a candidate."""
    flow.running(hospitals=HOSPITALS)
    return to_vote(flow)


def to_vote(flow, weights=None, **evaluation):
    flow.open_round()
    weights = weights or {"hospital1": 100, "hospital2": 200, "hospital3": 300, "hospital4": 400}
    flow.updates = {
        n: flow.commit_update(n, flow.make_update(n, weight=w)) for n, w in weights.items()
    }
    flow.close("close_update_commits")
    for n in weights:
        flow.reveal_update(n, flow.updates[n])
    rnd = flow.close("close_update_reveals")
    assert rnd["phase"] == "VOTE_COMMIT" and rnd["candidates"] == sorted(
        flow.msp[n] for n in weights
    )
    return flow


def peers_of(name, value=1000):
    return {p: value for p in HOSPITALS if p != name}


def test_vote_commit_and_reveal_refusals(voting):
    flow = voting
    peers = peers_of("hospital1")
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
    self_findings, self_salt = flow.commit_votes("hospital2", own)  # commits to a self-finding
    flow.commit_votes("hospital3", peers_of("hospital3"))
    error = refused("TOO_EARLY", flow.close, "close_vote_commits")
    assert error.detail["waiting_for"] == [flow.msp["hospital4"]]
    flow.net.advance_time(1801)
    refused("LATE", flow.commit_votes, "hospital4", peers_of("hospital4"))
    rnd = flow.close("close_vote_commits")
    assert rnd["phase"] == "VOTE_REVEAL" and len(rnd["vote_committed"]) == 3

    error = refused("SELF_VOTE", flow.reveal_votes, "hospital2", self_findings, self_salt)
    assert error.detail["field"] == f"findings.{flow.msp['hospital2']}"
    refused(
        "NOT_COMMITTED",
        flow.reveal_votes,
        "hospital4",
        {flow.msp[p]: finding(1) for p in HOSPITALS if p != "hospital4"},
        digest("s"),
    )
    h2 = flow.msp["hospital2"]
    changed = dict(by_msp, **{h2: finding(999_999)})
    refused("COMMITMENT_MISMATCH", flow.reveal_votes, "hospital1", changed, salt)
    moved_norm = dict(by_msp, **{h2: finding(1000, norm_milli=1001)})
    refused("COMMITMENT_MISMATCH", flow.reveal_votes, "hospital1", moved_norm, salt)
    refused("COMMITMENT_MISMATCH", flow.reveal_votes, "hospital1", by_msp, digest("another salt"))
    missing = {k: v for k, v in by_msp.items() if k != flow.msp["hospital4"]}
    error = refused("INVALID_ARGUMENT", flow.reveal_votes, "hospital1", missing, salt)
    assert error.detail["field"] == "findings" and "hospital4".capitalize() in error.message
    refused(
        "INVALID_ARGUMENT", flow.reveal_votes, "hospital1", dict(by_msp, AuditorMSP=finding()), salt
    )

    def bad(value, field):
        error = refused(
            "INVALID_ARGUMENT", flow.reveal_votes, "hospital1", dict(by_msp, **{h2: value}), salt
        )
        assert error.detail["field"] == f"findings.{h2}{field}", error.message
        return error

    bad(1000, "")  # a bare score is not a finding
    bad({**finding(), "score_micro": 0.5}, ".score_micro")
    bad({**finding(), "score_micro": 10**12 + 1}, ".score_micro")
    bad({**finding(), "norm_milli": -1}, ".norm_milli")
    bad({**finding(), "similarity_micro": 1_000_001}, ".similarity_micro")
    bad({**finding(), "problem": "boring"}, ".problem")
    bad({**finding(), "extra": 1}, ".extra")
    error = bad({**finding(problem="wrong_kind"), "norm_milli": 5}, ".norm_milli")
    assert "wrong_kind" in error.message
    bad({**finding(problem="wrong_kind"), "similarity_micro": 0}, ".similarity_micro")
    error = bad({**finding(), "norm_milli": None}, ".norm_milli")
    assert "unless a problem" in error.message
    bad({**finding(), "similarity_micro": None}, ".similarity_micro")
    bad({**finding(), "score_se_micro": -1}, ".score_se_micro")
    error = bad({**finding(problem="wrong_kind"), "score_se_micro": 5}, ".score_se_micro")
    assert "wrong_kind" in error.message

    revealed = flow.reveal_votes("hospital1", by_msp, salt)
    assert revealed["revealed"] is True and revealed["findings"] == by_msp
    refused("DUPLICATE", flow.reveal_votes, "hospital1", by_msp, salt)
    flow.net.advance_time(901)
    refused(
        "LATE",
        flow.reveal_votes,
        "hospital3",
        {flow.msp[p]: finding(1000) for p in HOSPITALS if p != "hospital3"},
        digest("x"),
    )


def test_a_finding_with_its_null_fields_left_out_is_stored_with_every_field(voting):
    flow = voting
    short = {"score_micro": 0, "problem": "wrong_kind"}  # norm and similarity left out: null
    by_msp, salt = flow.commit_votes("hospital1", {**peers_of("hospital1"), "hospital2": short})
    flow.net.advance_time(1801)
    flow.close("close_vote_commits")
    record = flow.reveal_votes("hospital1", by_msp, salt)
    assert record["findings"][flow.msp["hospital2"]] == finding(0, problem="wrong_kind")


def test_findings_are_hidden_until_revealed(voting):
    flow = voting
    flow.commit_votes("hospital1", peers_of("hospital1"))
    votes = flow.client("hospital2").evaluate("get_votes", flow.at())
    assert [(v["msp_id"], v["findings"], v["salt"]) for v in votes] == [
        (flow.msp["hospital1"], None, None)
    ]


def test_acceptance_record_harmful_capped_weights_and_rewards(voting):
    flow = voting
    h1, h2, h3, h4 = (flow.msp[n] for n in HOSPITALS)
    findings = {
        # hospital4's update is poisoned: every honest peer sees its metric drop a lot.
        "hospital1": {"hospital2": 30_000, "hospital3": 10_000, "hospital4": -400_000},
        "hospital2": {"hospital1": 20_000, "hospital3": 0, "hospital4": -300_000},
        # hospital3 lies in favour of hospital4; one voter of three is no majority.
        "hospital3": {"hospital1": 40_000, "hospital2": 10_000, "hospital4": 900_000},
        "hospital4": {"hospital1": -5_000, "hospital2": 50_000, "hospital3": -20_000},
    }
    acceptance = flow.vote(findings)
    c = acceptance["candidates"]
    assert [c[m]["reason"] for m in (h1, h2, h3, h4)] == [
        "accepted",
        "accepted",
        "accepted",
        "harmful",
    ]
    assert c[h4]["counts"] == {
        "problem": 0,
        "norm_exceeded": 0,
        "norm_outlier": 0,
        "duplicate": 0,
        "harmful": 2,
    }
    assert c[h4]["weight"] == 0 and c[h4]["reward"] == 0 and c[h4]["improvement_micro"] is None
    # improvement: upper median of the scores of the voters that did not reject
    assert c[h1]["improvement_micro"] == 20_000  # of -5_000, 20_000, 40_000
    assert c[h2]["improvement_micro"] == 30_000  # of 10_000, 30_000, 50_000
    assert c[h3]["improvement_micro"] == 10_000  # of 0, 10_000 (hospital4's -20_000 rejects)
    assert c[h1]["findings"][h4] == finding(-5_000) and c[h1]["votes"] == 3
    assert acceptance["accepted"] == [h1, h2, h3] and acceptance["rejected"] == [h4]
    # 100 : 200 : 300 -> hospital3's 300 of 600 is not over 50%: no cap
    assert [c[m]["weight"] for m in (h1, h2, h3)] == [100, 200, 300]
    assert acceptance["total_weight"] == 600
    # update pool 800 by weight (133.3, 266.7, 400 -> 133, 267, 400); voter pool 200 by
    # agreement: hospital3 disagreed on hospital4, hospital4 on hospital3: 3:3:2:2
    assert [c[m]["reward"] for m in (h1, h2, h3, h4)] == [133, 267, 400, 0]
    assert {v: (r["judged"], r["agreed"]) for v, r in acceptance["voters"].items()} == {
        h1: (3, 3),
        h2: (3, 3),
        h3: (3, 2),
        h4: (3, 2),
    }
    assert [acceptance["voters"][v]["reward"] for v in (h1, h2, h3, h4)] == [60, 60, 40, 40]
    assert acceptance["rewards"] == {h1: 193, h2: 327, h3: 440, h4: 40}
    assert acceptance["paid"] == acceptance["reward_pool"] == 1000
    assert acceptance["policy"] == flow.trial()["evaluation"]
    assert acceptance["norm_bounds"] == {m: 5000 for m in (h1, h2, h3, h4)}  # the schedule's
    assert acceptance["reference_norm_milli"] == 1000
    assert acceptance["accepted_sha256s"] == sorted(
        flow.updates[n].sha256 for n in ("hospital1", "hospital2", "hospital3")
    )
    rnd = flow.get_round()
    assert rnd["phase"] == "AGGREGATE" and rnd["total_weight"] == 600
    assert rnd["participants"] == sorted([h1, h2, h3, h4]) and rnd["attestation_quorum"] == 3
    assert flow.client("auditor").evaluate("get_acceptance", flow.at()) == acceptance
    # Rewards wait for the round to finalize; the round's pool is what is paid.
    rewards = flow.client("auditor").evaluate("get_rewards", {"trial_id": flow.trial_id})
    assert rewards["accounts"] == [] and rewards["rounds"][0]["status"] == "pending"
    assert rewards["rounds"][0]["pool"] == 1000 == sum(rewards["rounds"][0]["rewards"].values())


def test_an_invalid_update_is_rejected_naming_the_problem(voting):
    """The aggregate-copy attack: hospital4 reveals a container that is not an update."""
    flow = voting
    by_voter = flow.scores(list(HOSPITALS), list(HOSPITALS))
    by_voter["hospital1"]["hospital4"] = finding(problem="wrong_kind")
    by_voter["hospital2"]["hospital4"] = finding(problem="wrong_kind")
    by_voter["hospital3"]["hospital4"] = finding(problem="unavailable")
    c = flow.vote(by_voter)["candidates"][flow.msp["hospital4"]]
    assert c["reason"] == "invalid" and c["problem"] == "wrong_kind"
    assert c["counts"]["problem"] == 3 and c["norm_milli"] is None and not c["accepted"]


def test_a_boosted_update_is_rejected_as_norm_exceeded(flow):
    flow.running(hospitals=HOSPITALS, evaluation={"max_update_norm_milli": 2000})
    to_vote(flow)
    by_voter = flow.scores(list(HOSPITALS), list(HOSPITALS))
    for v in HOSPITALS[:3]:
        by_voter[v]["hospital4"] = finding(900_000, norm_milli=2001)  # scaled up: "helps" a lot
    for v in ("hospital1", "hospital2", "hospital4"):
        by_voter[v]["hospital3"] = finding(20_000, norm_milli=2000)  # at the bound: within it
    acceptance = flow.vote(by_voter)
    assert acceptance["candidates"][flow.msp["hospital3"]]["accepted"]
    c = acceptance["candidates"][flow.msp["hospital4"]]
    assert c["reason"] == "norm_exceeded" and c["norm_bound_milli"] == 2000
    assert c["counts"]["norm_exceeded"] == 3 and c["norm_milli"] == 2001
    assert acceptance["norm_bounds"] == {flow.msp[n]: 2000 for n in HOSPITALS}


@pytest.mark.parametrize(
    ("scaling", "norm", "outlier"),
    [
        # every other norm 1000 at weights 100, 200, 300: the reference is hospital2's (the
        # lower median of norm^2 / weight), so hospital4 (weight 400) may reach 3 * 1000 * sqrt(2)
        ("sqrt_sample_weight", 4242, False),
        ("sqrt_sample_weight", 4243, True),
        # raw norms (trials recorded before the scaling): 3 times the median norm
        ("none", 3000, False),
        ("none", 3001, True),
    ],
)
def test_a_boosted_update_under_its_bound_is_rejected_as_a_norm_outlier(
    flow, scaling, norm, outlier
):
    flow.running(hospitals=HOSPITALS, evaluation={"norm_outlier_scaling": scaling})
    to_vote(flow)
    by_voter = flow.scores(list(HOSPITALS), list(HOSPITALS))
    for v in HOSPITALS[:3]:
        by_voter[v]["hospital4"] = finding(900_000, norm_milli=norm)
    acceptance = flow.vote(by_voter)
    c = acceptance["candidates"][flow.msp["hospital4"]]
    assert acceptance["reference_norm_milli"] == 1000
    assert acceptance["reference_sample_weight"] == (200 if scaling != "none" else None)
    assert c["norm_bound_milli"] == 5000  # the schedule's: the boost is under it
    assert c["counts"]["norm_outlier"] == (3 if outlier else 0)
    if not outlier:
        assert c["accepted"]
        return
    assert c["reason"] == "norm_outlier" and c["weight"] == 0
    # an outlier is a round-level judgement: nobody's agreement counts it
    assert all(
        r["judged"] == 2 for m, r in acceptance["voters"].items() if m != flow.msp["hospital4"]
    )


def test_a_duplicate_is_rejected(voting):
    """hospital4 re-reveals a copy (slightly changed) of an earlier update or aggregate."""
    flow = voting
    by_voter = flow.scores(list(HOSPITALS), list(HOSPITALS))
    for v, similarity in zip(HOSPITALS[:3], (999_990, 999_999, 1_000_000), strict=True):
        by_voter[v]["hospital4"] = finding(30_000, similarity_micro=similarity)
    c = flow.vote(by_voter)["candidates"][flow.msp["hospital4"]]
    assert c["reason"] == "duplicate" and c["counts"]["duplicate"] == 3


def test_similarity_just_under_the_threshold_is_no_duplicate(flow):
    flow.running(hospitals=HOSPITALS, evaluation={"duplicate_similarity_micro": 900_000})
    to_vote(flow)
    by_voter = flow.scores(list(HOSPITALS), list(HOSPITALS))
    for v in HOSPITALS[:3]:
        by_voter[v]["hospital4"] = finding(30_000, similarity_micro=899_999)
    acceptance = flow.vote(by_voter)
    assert acceptance["candidates"][flow.msp["hospital4"]]["accepted"]
    assert acceptance["policy"]["duplicate_similarity_micro"] == 900_000


def test_a_zero_update_is_accepted_but_earns_no_update_reward(voting):
    flow = voting
    by_voter = flow.scores(list(HOSPITALS), list(HOSPITALS))
    for v in HOSPITALS[:3]:
        by_voter[v]["hospital4"] = finding(0, norm_milli=0)
    acceptance = flow.vote(by_voter)
    h4 = flow.msp["hospital4"]
    c = acceptance["candidates"][h4]
    assert c["accepted"] and c["improvement_micro"] == 0 and not c["improves"]
    assert c["weight"] == 400 and c["reward"] == 0  # aggregated, not paid for the update
    # it still earns its voter reward
    assert acceptance["rewards"][h4] == acceptance["voters"][h4]["reward"] > 0


def test_an_inflated_sample_weight_is_capped(flow):
    flow.running(hospitals=HOSPITALS, evaluation={"max_weight_share_micro": 400_000})
    weights = {"hospital1": 100, "hospital2": 100, "hospital3": 100, "hospital4": TRAINING_RECORDS}
    to_vote(flow, weights)
    acceptance = flow.vote(flow.scores(list(HOSPITALS), list(HOSPITALS)))
    c = acceptance["candidates"]
    h4 = flow.msp["hospital4"]
    # cap M: M / (300 + M) <= 40% -> M = 200
    assert c[h4]["sample_weight"] == TRAINING_RECORDS and c[h4]["weight"] == 200
    assert acceptance["total_weight"] == 500 == flow.get_round()["total_weight"]
    assert all(c[flow.msp[n]]["weight"] == 100 for n in HOSPITALS[:3])
    # update pool 800 by 100:100:100:200
    assert [c[flow.msp[n]]["reward"] for n in HOSPITALS] == [160, 160, 160, 320]


def test_voter_rewards_follow_agreement_and_everything_sums_to_paid(voting):
    flow = voting
    by_voter = flow.scores(list(HOSPITALS), list(HOSPITALS))
    # hospital4 claims every peer update is broken; the others see fine updates.
    by_voter["hospital4"] = {p: finding(problem="undecryptable") for p in HOSPITALS[:3]}
    acceptance = flow.vote(by_voter)
    voters = acceptance["voters"]
    h = [flow.msp[n] for n in HOSPITALS]
    assert acceptance["accepted"] == h
    assert [(voters[m]["judged"], voters[m]["agreed"]) for m in h] == [(3, 3)] * 3 + [(3, 0)]
    assert [voters[m]["reward"] for m in h] == [67, 67, 66, 0]
    assert sum(acceptance["rewards"].values()) == acceptance["paid"] == 1000
    # hospital4 keeps its update reward, nothing for its votes
    assert acceptance["rewards"][h[3]] == acceptance["candidates"][h[3]]["reward"] == 320


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
    # nothing decided by the votes: no agreement to reward either
    # (scores 10 and 10: the upper median 10 > 0, so its floor is the fixed -threshold)
    assert acceptance["voters"] == {
        flow.msp["hospital1"]: {
            "judged": 0,
            "agreed": 0,
            "reward": 0,
            "harm_floor_micro": -acceptance["policy"]["acceptance_threshold_micro"],
        }
    }
    assert acceptance["paid"] == 0 and acceptance["reward_pool"] == 10
    rnd = flow.get_round()
    assert rnd["phase"] == "HALTED" and rnd["halt"]["code"] == "NONE_ACCEPTED"
    rewards = flow.admin.evaluate("get_rewards", {"trial_id": flow.trial_id})["rounds"][0]
    assert rewards["status"] == "void" and set(rewards["rewards"].values()) == {0}


def test_a_removed_candidate_is_not_enrolled_and_its_votes_do_not_count(voting):
    flow = voting
    committed = {v: flow.commit_votes(v, peers_of(v, 20_000)) for v in HOSPITALS}
    flow.close("close_vote_commits")
    for v in HOSPITALS:
        flow.reveal_votes(v, *committed[v])
    flow.admin.submit(
        "remove_hospital", {"trial_id": flow.trial_id, "msp_id": flow.msp["hospital4"]}
    )
    acceptance = flow.close("close_voting")
    h4 = flow.msp["hospital4"]
    c = acceptance["candidates"][h4]
    assert c["reason"] == "not_enrolled" and c["weight"] == 0 and c["reward"] == 0
    assert h4 not in acceptance["voters"] and h4 not in acceptance["voters_revealed"]
    assert all(h4 not in d["findings"] for d in acceptance["candidates"].values())


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
    committed = {v: flow.commit_votes(v, peers_of(v, 0)) for v in HOSPITALS}
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


# ---------------------------------------------------------------------------------------------
# The evaluation policy's new fields
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_weight_share_micro", 0, "an integer from 1 to 1000000"),
        ("max_weight_share_micro", 1_000_001, "an integer from 1 to 1000000"),
        ("duplicate_similarity_micro", -1, "an integer from 0 to 1000000"),
        ("duplicate_similarity_micro", 1_000_001, "an integer from 0 to 1000000"),
        ("max_norm_ratio_milli", 999, "an integer from 1000 to 1000000"),
        ("max_norm_ratio_milli", 10**6 + 1, "an integer from 1000 to 1000000"),
        ("max_update_norm_milli", 0, "an integer from 1 to 1000000000000000"),
        ("max_update_norm_milli", "5", "an integer from 1 to 1000000000000000"),
        ("voter_reward_share_micro", -1, "an integer from 0 to 1000000"),
        ("voter_reward_share_micro", 1_000_001, "an integer from 0 to 1000000"),
        ("harm_se_milli", -1, "an integer from 0 to 10000"),
        ("harm_se_milli", 10_001, "an integer from 0 to 10000"),
        ("norm_outlier_scaling", "linear", "one of 'none', 'sqrt_sample_weight'"),
    ],
)
def test_evaluation_policy_bounds(flow, field, value, expected):
    error = refused("INVALID_ARGUMENT", flow.create, evaluation={field: value})
    assert error.detail == {"field": f"evaluation.{field}", "value": value, "expected": expected}


def test_evaluation_policy_takes_the_given_values(flow):
    given = {
        "max_weight_share_micro": 1_000_000,
        "duplicate_similarity_micro": 0,
        "max_norm_ratio_milli": 1000,
        "max_update_norm_milli": 10**15,
        "voter_reward_share_micro": 1_000_000,
        "harm_se_milli": 0,
        "norm_outlier_scaling": "none",
    }
    trial = flow.create(evaluation=given)
    assert trial["evaluation"] == {
        "acceptance_threshold_micro": 10_000,
        "min_voters": 2,
        "reward_per_round": 1000,
        **given,
    }
