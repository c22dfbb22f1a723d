"""The integer rules behind acceptance, weights, rewards and quorum, and the commitment hashes silos build."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from bcfl_common.vocabulary import PROBLEMS, SALT_HEX
from chaincode import rules
from chaincode.commitments import new_salt, update_commitment, votes_commitment


@pytest.mark.parametrize(
    ("committed_at", "tolerance", "owner"),
    [
        ({"A": 100}, 900, "A"),  # revealed once: its author's
        ({"A": 100, "B": 100}, 0, None),  # the same second
        ({"A": 100, "B": 101}, 0, "A"),
        ({"B": 101, "A": 100}, 1, None),  # one second apart is within a 1 s tolerance
        ({"A": 100, "B": 1001, "C": 1002}, 900, "A"),  # earlier than every other by > 900
        ({"A": 100, "B": 1001, "C": 1000}, 900, None),  # C is within 900 s of A
        ({}, 0, None),
    ],
)
def test_content_owner_is_the_earliest_commitment_beyond_the_tolerance(
    committed_at, tolerance, owner
):
    assert rules.content_owner(committed_at, tolerance) == owner


@pytest.mark.parametrize(
    ("values", "median"),
    [
        ([5], 5),
        ([3, 1, 2], 2),
        ([4, 1, 3, 2], 2),
        ([-7, 10], -7),
        ([0, 0, 9, 9], 0),
        ([-3, -1, -2, -5, -4], -3),
    ],
)
def test_lower_median(values, median):
    assert rules.lower_median(values) == median


@pytest.mark.parametrize(
    ("values", "median"),
    [([5], 5), ([3, 1, 2], 2), ([4, 1, 3, 2], 3), ([-7, 10], 10), ([0, 0, 9, 9], 9)],
)
def test_upper_median(values, median):
    assert rules.upper_median(values) == median


def test_median_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        rules.lower_median([])
    with pytest.raises(ValueError):
        rules.upper_median([])


@pytest.mark.parametrize(
    ("counts", "yet_to_attest", "quorum", "reachable"),
    [
        ([1, 1], 1, 2, True),
        ([1, 1, 1], 0, 2, False),
        ([1, 1, 1], 1, 3, False),
        ([2, 1], 1, 3, True),
        ([], 3, 2, True),
    ],
)
def test_quorum_reachable(counts, yet_to_attest, quorum, reachable):
    assert rules.quorum_reachable(counts, yet_to_attest, quorum) is reachable


@pytest.mark.parametrize(
    ("participants", "quorum"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (0, 1)]
)
def test_attestation_quorum_is_a_strict_majority(participants, quorum):
    assert rules.attestation_quorum(participants) == quorum


@pytest.mark.parametrize(
    ("min_voters", "peers", "required"), [(2, 3, 2), (5, 3, 3), (3, 0, 1), (1, 10, 1)]
)
def test_required_votes(min_voters, peers, required):
    assert rules.required_votes(min_voters, peers) == required


def test_split_rewards_is_exact_proportional_and_deterministic():
    assert rules.split_rewards(10, {"a": 1, "b": 1, "c": 1}) == {
        "a": 4,
        "b": 3,
        "c": 3,
    }  # tie: smaller id
    assert rules.split_rewards(100, {"b": 1, "a": 3}) == {"a": 75, "b": 25}
    assert rules.split_rewards(7, {"a": 0, "b": 2}) == {"a": 0, "b": 7}
    assert rules.split_rewards(0, {"a": 1}) == {"a": 0}
    assert rules.split_rewards(5, {"a": 0}) == {"a": 0}
    shares = {f"m{i}": i * 7919 % 101 + 1 for i in range(40)}
    for pool in (1, 13, 1000, 10**15 + 7):
        rewards = rules.split_rewards(pool, shares)
        assert sum(rewards.values()) == pool
        total = sum(shares.values())
        # Nobody is more than one token away from the exact proportional share.
        assert all(abs(rewards[k] * total - pool * s) < total for k, s in shares.items())


def test_update_commitment_is_sha256_of_the_canonical_opening():
    opening = {
        "trial_id": "trial-1",
        "round": 3,
        "msp_id": "Hospital1MSP",
        "sha256": "ab" * 32,
        "sample_weight": 1200,
        "salt": "cd" * 32,
    }
    canonical = json.dumps(opening, sort_keys=True, separators=(",", ":")).encode()
    assert update_commitment(**opening) == hashlib.sha256(canonical).hexdigest()
    assert update_commitment(**{**opening, "msp_id": "Hospital2MSP"}) != update_commitment(
        **opening
    )


def test_votes_commitment_is_sha256_of_the_canonical_opening():
    finding = {"score_micro": -5, "norm_milli": 1200, "similarity_micro": 10, "problem": None}
    opening = {
        "trial_id": "t",
        "round": 1,
        "msp_id": "Hospital1MSP",
        "findings": {
            "Hospital2MSP": finding,
            "Hospital3MSP": {
                "score_micro": 0,
                "norm_milli": None,
                "similarity_micro": None,
                "problem": "wrong_kind",
            },
        },
        "salt": "ee" * 16,
    }
    canonical = json.dumps(opening, sort_keys=True, separators=(",", ":")).encode()
    assert votes_commitment(**opening) == hashlib.sha256(canonical).hexdigest()
    # A null field left out hashes the same; any changed value does not.
    short = {"Hospital2MSP": finding, "Hospital3MSP": {"score_micro": 0, "problem": "wrong_kind"}}
    assert votes_commitment(**{**opening, "findings": short}) == votes_commitment(**opening)
    moved = {**opening["findings"], "Hospital2MSP": {**finding, "norm_milli": 1201}}
    assert votes_commitment(**{**opening, "findings": moved}) != votes_commitment(**opening)


def test_new_salt_is_accepted_by_the_contract_and_fresh():
    salts = {new_salt() for _ in range(8)}
    assert len(salts) == 8 and all(SALT_HEX.fullmatch(s) for s in salts)


# ---------------------------------------------------------------------------------------------
# capped_weights
# ---------------------------------------------------------------------------------------------


def test_capped_weights_examples():
    # 50% cap: 1000 of 1300 is capped to 300 (300 / 600 = 50%).
    assert rules.capped_weights([1000, 200, 100], 500_000) == [300, 200, 100]
    assert rules.capped_weights([100, 100, 100], 500_000) == [100, 100, 100]  # already fits
    assert rules.capped_weights([5, 1], 500_000) == [1, 1]  # 2 * 50% = 100%: equal shares
    assert rules.capped_weights([7], 500_000) == [7]  # one weight: nothing to cap against
    assert rules.capped_weights([9, 3, 1], 1_000_000) == [9, 3, 1]  # no cap
    assert rules.capped_weights([], 500_000) == []
    with pytest.raises(ValueError):
        rules.capped_weights([3, 0], 500_000)


def test_capped_weights_properties_over_random_inputs():
    rng = random.Random(20140)
    for _ in range(2000):
        n = rng.randint(1, 12)
        weights = [rng.choice([1, rng.randint(1, 50), rng.randint(1, 10**9)]) for _ in range(n)]
        share = rng.choice([1, rng.randint(1, 1_000_000), 500_000, 1_000_000])
        capped = rules.capped_weights(weights, share)
        assert capped == rules.capped_weights(list(weights), share)  # deterministic
        assert all(type(c) is int and 1 <= c <= w for c, w in zip(capped, weights, strict=True))
        total = sum(capped)
        if n * share > 1_000_000:
            # the cap holds for every weight ...
            assert all(c * 1_000_000 <= share * total for c in capped)
            # ... and the cap is the largest one that holds (one more would break it)
            cap = max(capped)
            if cap < max(weights):
                bigger = [min(w, cap + 1) for w in weights]
                assert max(bigger) * 1_000_000 > share * sum(bigger)
            # weights under the cap are untouched, order and ranking are kept
            assert all(c == w for c, w in zip(capped, weights, strict=True) if w <= cap)
        else:
            assert capped == [min(weights)] * n


# ---------------------------------------------------------------------------------------------
# judge_round
# ---------------------------------------------------------------------------------------------

POLICY = {
    "acceptance_threshold_micro": 10_000,
    "min_voters": 2,
    "reward_per_round": 1000,
    "max_weight_share_micro": 500_000,
    "duplicate_similarity_micro": 999_000,
    "max_norm_ratio_milli": 3000,
    "max_update_norm_milli": None,
    "voter_reward_share_micro": 200_000,
    "harm_se_milli": 1500,
}


def finding(score=20_000, norm=1000, similarity=0, problem=None, se=None):
    if problem is not None:
        norm = similarity = se = None
    return {
        "score_micro": score,
        "score_se_micro": se,
        "norm_milli": norm,
        "similarity_micro": similarity,
        "problem": problem,
    }


def candidates_of(weights):
    return {m: {"sha256": m[0] * 64, "sample_weight": w} for m, w in weights.items()}


def judge(weights, findings, *, enrolled=None, bounds=None, pool=1000, **policy):
    return rules.judge_round(
        candidates=candidates_of(weights),
        findings=findings,
        enrolled=set(weights) | set(findings) if enrolled is None else enrolled,
        policy={**POLICY, **policy},
        norm_bounds=bounds or {},
        reward_pool=pool,
    )


def all_judge(voters, candidates, make=finding):
    return {v: {c: make() for c in candidates if c != v} for v in voters}


def test_judge_round_ignores_self_findings_and_removed_voters_and_rejects_removed_candidates():
    findings = all_judge("abx", "abc")
    findings["a"]["a"] = finding(-(10**9), problem="wrong_kind")  # a self-finding never counts
    findings["x"] = {m: finding(-(10**9), problem="unavailable") for m in "abc"}  # removed voter
    verdict = judge({"a": 10, "b": 30, "c": 5}, findings, enrolled={"a", "b"}, min_voters=2)
    c = verdict["candidates"]
    assert sorted(c["a"]["findings"]) == ["b"] and c["a"]["required_votes"] == 1
    assert c["a"]["accepted"] and c["b"]["accepted"] and c["a"]["counts"]["problem"] == 0
    assert c["c"]["reason"] == "not_enrolled" and c["c"]["weight"] == 0
    assert sorted(verdict["voters"]) == ["a", "b"]  # x is not enrolled: no voter record, no reward
    assert set(verdict["rewards"]) == {"a", "b", "c"}


def test_each_rejection_reason_needs_a_strict_majority():
    # 5 candidates judged by 4 voters each; two of the four report a fault: no majority.
    names = "abcde"
    two_of_four = all_judge(names, names)
    two_of_four["a"]["b"] = finding(problem="wrong_kind")
    two_of_four["c"]["b"] = finding(problem="wrong_kind")
    two_of_four["a"]["c"] = finding(norm=10**6)
    two_of_four["b"]["c"] = finding(norm=10**6)
    two_of_four["a"]["d"] = finding(similarity=999_000)
    two_of_four["b"]["d"] = finding(similarity=1_000_000)
    two_of_four["a"]["e"] = finding(-10_001)
    two_of_four["b"]["e"] = finding(-(10**9))
    verdict = judge(dict.fromkeys(names, 100), two_of_four, bounds=dict.fromkeys(names, 5000))
    assert verdict["accepted"] == list(names)
    counts = {m: verdict["candidates"][m]["counts"] for m in names}
    assert counts["b"]["problem"] == 2 and counts["c"]["norm_exceeded"] == 2
    assert counts["d"]["duplicate"] == 2 and counts["e"]["harmful"] == 2
    # A third voter reporting the same fault is a majority of four.
    three = {v: dict(f) for v, f in two_of_four.items()}
    three["d"]["b"] = finding(problem="undecryptable")
    three["d"]["c"] = finding(norm=5001)
    three["c"]["d"] = finding(similarity=999_500)
    three["c"]["e"] = finding(-20_000)
    verdict = judge(dict.fromkeys(names, 100), three, bounds=dict.fromkeys(names, 5000))
    c = verdict["candidates"]
    assert [c[m]["reason"] for m in names] == [
        "accepted",
        "invalid",
        "norm_exceeded",
        "duplicate",
        "harmful",
    ]
    # the most reported problem, ties to the alphabetically first
    assert c["b"]["problem"] == "wrong_kind" and c["b"]["counts"]["problem"] == 3
    assert c["c"]["norm_bound_milli"] == 5000 and c["c"]["problem"] is None
    assert verdict["accepted"] == ["a"] and verdict["rejected"] == list("bcde")


def test_problem_ties_go_to_the_alphabetically_first():
    findings = all_judge("abcde", "a")
    findings["b"]["a"] = finding(problem="wrong_shape")
    findings["c"]["a"] = finding(problem="unavailable")
    findings["d"]["a"] = finding(problem="wrong_shape")
    findings["e"]["a"] = finding(problem="unavailable")
    verdict = judge({"a": 1}, findings)
    assert verdict["candidates"]["a"]["reason"] == "invalid"
    assert verdict["candidates"]["a"]["problem"] == "unavailable"


def test_a_score_given_with_a_problem_is_not_a_harmful_report():
    findings = all_judge("abcde", "a")
    for v in "bc":
        findings[v]["a"] = finding(-(10**9), problem="unavailable")
    verdict = judge({"a": 1}, findings)
    d = verdict["candidates"]["a"]
    assert d["counts"] == {
        "problem": 2,
        "norm_exceeded": 0,
        "norm_outlier": 0,
        "duplicate": 0,
        "harmful": 0,
    }
    assert d["accepted"] and d["improvement_micro"] == 20_000  # only the voters that accepted


def test_norm_outlier_against_the_lower_median_reference():
    names = "abcd"
    findings = all_judge(names, names)
    for v in "abc":
        findings[v]["d"] = finding(norm=3001)  # just over 3 x the reference of 1000
    verdict = judge(dict.fromkeys(names, 10), findings)
    c = verdict["candidates"]
    assert verdict["reference_norm_milli"] == 1000 and c["d"]["norm_milli"] == 3001
    assert c["d"]["reason"] == "norm_outlier" and c["d"]["counts"]["norm_outlier"] == 3
    # exactly the ratio is not an outlier
    for v in "abc":
        findings[v]["d"] = finding(norm=3000)
    assert judge(dict.fromkeys(names, 10), findings)["candidates"]["d"]["accepted"]
    # fewer than three candidates with a norm: no reference, no outlier
    two = {v: {c: finding(norm=10**6 if c == "b" else 1) for c in "ab" if c != v} for v in "abc"}
    verdict = judge({"a": 1, "b": 1}, two)
    assert verdict["reference_norm_milli"] is None and verdict["accepted"] == ["a", "b"]


# Round 5 of the DP-off breast cancer demo (bench/robustness.py, honest, seed 0): rows of
# training data and update norms (milli); Hospital5, with about twice the median's rows, drifts
# furthest from the model the others pull towards (215 here, over 3 x 73 in another run).
DEMO_ROUND_5 = {"h1": (52, 66), "h2": (76, 85), "h3": (43, 72), "h4": (55, 73), "h5": (114, 225)}


def demo_round(norm_of_h5=None, **policy):
    weights = {m: w for m, (w, _) in DEMO_ROUND_5.items()}
    norms = {m: n for m, (_, n) in DEMO_ROUND_5.items()}
    if norm_of_h5 is not None:
        norms["h5"] = norm_of_h5
    findings = {v: {c: finding(norm=norms[c]) for c in norms if c != v} for v in norms}
    return judge(weights, findings, **policy)


def test_norms_per_square_root_of_weight_keep_a_large_honest_hospital_in():
    raw = demo_round(norm_outlier_scaling="none")
    assert raw["reference_norm_milli"] == 73 and raw["reference_sample_weight"] is None
    assert raw["candidates"]["h5"]["reason"] == "norm_outlier"  # 225 > 3 x 73
    scaled = demo_round(norm_outlier_scaling="sqrt_sample_weight")
    # norm^2 / weight: h2 95.1, h4 96.9, h1 83.8, h3 120.6, h5 444: the lower median is h4's
    assert scaled["reference_norm_milli"] == 73 and scaled["reference_sample_weight"] == 55
    assert scaled["accepted"] == ["h1", "h2", "h3", "h4", "h5"]
    # h5 may reach 3 x 73 x sqrt(114 / 55) = 315.3 per report; a x5 boost of it is far over
    assert demo_round(315, norm_outlier_scaling="sqrt_sample_weight")["accepted"] == [
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
    ]
    for boosted in (316, 5 * 225):
        verdict = demo_round(boosted, norm_outlier_scaling="sqrt_sample_weight")
        assert verdict["candidates"]["h5"]["reason"] == "norm_outlier", boosted
    # a small hospital's bar is lower by the square root of its rows only: h3 (43 rows) may
    # reach 3 x 73 x sqrt(43 / 55) = 193.6 (raw: 219; scaled by rows it would be 171)
    findings = {
        v: {
            c: finding(norm=193 if c == "h3" else DEMO_ROUND_5[c][1])
            for c in DEMO_ROUND_5
            if c != v
        }
        for v in DEMO_ROUND_5
    }
    weights = {m: w for m, (w, _) in DEMO_ROUND_5.items()}
    assert "h3" in judge(weights, findings, norm_outlier_scaling="sqrt_sample_weight")["accepted"]


def test_representative_norm_is_the_upper_median_and_reference_the_lower():
    names = "abcd"
    findings = all_judge(names, names)
    findings["a"]["b"], findings["c"]["b"], findings["d"]["b"] = (
        finding(norm=100),
        finding(norm=900),
        finding(norm=500),
    )
    findings["a"]["c"]["norm_milli"] = 700  # c: 700, 1000, 1000 -> 1000
    verdict = judge(dict.fromkeys(names, 10), findings)
    c = verdict["candidates"]
    assert c["b"]["norm_milli"] == 500 and c["c"]["norm_milli"] == 1000
    assert verdict["reference_norm_milli"] == sorted([1000, 500, 1000, 1000])[1] == 1000


def test_improvement_is_the_upper_median_of_the_voters_that_did_not_reject():
    findings = all_judge("abcde", "a")
    findings["b"]["a"] = finding(5_000)
    findings["c"]["a"] = finding(-9_000)  # within the threshold: accepts, low score
    findings["d"]["a"] = finding(1_000)
    findings["e"]["a"] = finding(-(10**6))  # rejects: not among the agreeing scores
    verdict = judge({"a": 1}, findings)
    d = verdict["candidates"]["a"]
    assert d["accepted"] and d["improvement_micro"] == 1_000 and d["improves"]
    zero = judge({"a": 1}, {v: {"a": finding(0)} for v in "bcd"})["candidates"]["a"]
    assert zero["accepted"] and zero["improvement_micro"] == 0 and not zero["improves"]


def test_the_harm_floor_follows_the_rounds_dp_noise_and_never_rises_above_the_fixed_bar():
    # DP noise: every honest update scores about -40,000 applied alone (threshold 10,000). A
    # fixed -threshold bar would reject all of them; each voter's floor is its own upper
    # median score minus the threshold, so only the update far below its noisy peers is harmful.
    names = "abcde"
    noisy = {"a": -42_000, "b": -38_000, "c": -45_000, "d": -40_000, "e": -400_000}
    findings = {v: {c: finding(noisy[c] + 100 * ord(v)) for c in names if c != v} for v in names}
    verdict = judge(dict.fromkeys(names, 10), findings)
    c = verdict["candidates"]
    assert verdict["accepted"] == list("abcd") and c["e"]["reason"] == "harmful"
    # a scores b, c, d, e: -38k, -45k, -40k, -400k (+9,700) -> upper median -30,300
    assert verdict["voters"]["a"]["harm_floor_micro"] == -40_000 + 9_700 - 10_000
    assert c["e"]["counts"]["harmful"] == 4
    assert not any(c[m]["improves"] for m in "abcd")  # nothing improves alone: no update reward
    # Scores at or above 0 never raise the floor above -threshold: the rule is the fixed one.
    better = {v: {c: finding(50_000) for c in names if c != v} for v in names}
    better["a"]["b"] = finding(-10_001)
    verdict = judge(dict.fromkeys(names, 10), better)
    assert {r["harm_floor_micro"] for r in verdict["voters"].values()} == {-10_000}
    assert verdict["candidates"]["b"]["counts"]["harmful"] == 1
    # fewer than two problem-free scores: the floor is the fixed one
    one = judge({"a": 1}, {v: {"a": finding(-10_001)} for v in "bcd"})
    assert one["candidates"]["a"]["reason"] == "harmful"
    assert {r["harm_floor_micro"] for r in one["voters"].values()} == {-10_000}
    with_problem = {v: {"a": finding(-5_000), "b": finding(problem="wrong_kind")} for v in "cde"}
    assert judge({"a": 1, "b": 1}, with_problem)["voters"]["c"]["harm_floor_micro"] == -10_000


def test_harm_must_exceed_the_threshold_and_the_rounds_standard_error():
    # threshold 10,000; each voter's error scale is the lower median of the errors it reported
    # in the round, times 1.5. Three voters: "c" has six validation rows (errors 10,000).
    def round_of(errors_c, score_a=-12_000):
        findings = {
            v: {m: finding(score_a if m == "a" else 0, se=2_000) for m in "ab" + "x"} for v in "cde"
        }
        findings["c"] = {m: finding(score_a if m == "a" else 0, se=e) for m, e in errors_c.items()}
        return judge({"a": 1, "b": 1, "x": 1}, findings)

    verdict = round_of({"a": 10_000, "b": 10_000, "x": 10_000})
    assert verdict["voters"]["c"]["harm_floor_micro"] == -15_000  # 1.5 * 10,000 > threshold
    assert verdict["voters"]["d"]["harm_floor_micro"] == -10_000  # 3,000 < threshold
    assert verdict["candidates"]["a"]["reason"] == "harmful"  # d and e: two of three
    assert verdict["candidates"]["a"]["counts"]["harmful"] == 2
    # The candidate cannot widen the bar with its own error (an intercept shift spreads the
    # rows' losses both ways): the round's lower median is the honest candidates' level.
    shifted = round_of({"a": 10**9, "b": 2_000, "x": 2_000})
    assert shifted["voters"]["c"]["harm_floor_micro"] == -10_000
    assert shifted["candidates"]["a"]["counts"]["harmful"] == 3
    # A policy without harm_se_milli (a trial recorded before it) or findings without errors:
    # the threshold alone.
    findings = {v: {m: finding(-12_000 if m == "a" else 0) for m in "abx"} for v in "cde"}
    plain = judge({"a": 1, "b": 1, "x": 1}, findings)
    assert {r["harm_floor_micro"] for r in plain["voters"].values()} == {-10_000}
    old = {k: v for k, v in POLICY.items() if k != "harm_se_milli"}
    assert rules.harm_floor("c", {m: finding(0, se=10**6) for m in "abx"}, "abx", old) == -10_000
    # fewer than two errors: none
    assert rules.error_scale("c", {"a": finding(0, se=10**6), "b": finding(0)}, "ab") == 0


def test_colluders_cannot_lower_an_honest_voters_floor_below_its_worst_honest_score():
    # 2 of 5 submit updates far worse than the DP noise and praise each other: the upper
    # median of an honest voter's four scores (two honest, two malicious) is an honest one.
    names = "abcde"
    scores = {"a": -40_000, "b": -41_000, "c": -39_000, "d": -900_000, "e": -950_000}
    findings = {v: {c: finding(scores[c]) for c in names if c != v} for v in "abc"}
    for v in "de":
        findings[v] = {c: finding(10**9 if c in "de" else -(10**9)) for c in names if c != v}
    verdict = judge(dict.fromkeys(names, 10), findings)
    c = verdict["candidates"]
    assert verdict["accepted"] == list("abc")
    assert c["d"]["reason"] == c["e"]["reason"] == "harmful"
    assert verdict["voters"]["a"]["harm_floor_micro"] == -41_000 - 10_000
    # What they can do at f = (n - 1) / 2: updates that beat the base model (scores >= 0) lift
    # the floor back to the fixed -threshold, and honest DP-noised updates under it are harmful
    # again. The floor never goes above that bar (documented in chaincode.rules).
    for v in "abc":
        findings[v]["d"] = finding(5_000)
        findings[v]["e"] = finding(6_000)
    # (a colluder's own floor is the upper median of what it reports: of its four scores at most
    # two can be under it, so the two split the honest ones between them)
    low, high = finding(-(10**9)), finding(10**9)
    findings["d"] = {"a": low, "b": low, "c": high, "e": high}
    findings["e"] = {"a": high, "b": low, "c": low, "d": high}
    verdict = judge(dict.fromkeys(names, 10), findings)
    assert verdict["voters"]["a"]["harm_floor_micro"] == -10_000
    assert verdict["accepted"] == ["d", "e"]
    assert all(verdict["candidates"][m]["reason"] == "harmful" for m in "abc")


def test_rewards_update_pool_by_capped_weight_voter_pool_by_agreement():
    names = "abcd"
    findings = all_judge(names, names)
    findings["b"]["d"] = finding(0)  # d improves nothing by b's score ...
    for v in "abc":
        findings[v]["d"] = finding(0)  # ... nor anyone's: accepted, no update reward
    findings["d"]["a"] = finding(problem="wrong_kind")  # d disagrees on a
    weights = {"a": 1000, "b": 100, "c": 100, "d": 100}
    verdict = judge(weights, findings, pool=1000)
    c = verdict["candidates"]
    # capped: a's 1000 of 1300 is over 50%: M = 300 (300 of 600)
    assert [c[m]["weight"] for m in names] == [300, 100, 100, 100]
    assert verdict["total_weight"] == 600
    # update pool 800 among the improving a, b, c by 300:100:100; d improves nothing
    assert [c[m]["reward"] for m in names] == [480, 160, 160, 0]
    # voter pool 200 by agreement: a, b, c agree on all 3 peers, d on 2 of 3 -> 3:3:3:2
    assert {v: (r["judged"], r["agreed"]) for v, r in verdict["voters"].items()} == {
        "a": (3, 3),
        "b": (3, 3),
        "c": (3, 3),
        "d": (3, 2),
    }
    assert [verdict["voters"][v]["reward"] for v in names] == [55, 55, 54, 36]
    assert verdict["rewards"] == {"a": 535, "b": 215, "c": 214, "d": 36}
    assert verdict["paid"] == sum(verdict["rewards"].values()) == 1000
    assert verdict["reward_pool"] == 1000


def test_what_nobody_earns_is_not_paid():
    # Nothing improves and every voter agrees: only the voter pool is paid.
    findings = all_judge("abc", "abc", lambda: finding(0))
    verdict = judge(dict.fromkeys("abc", 5), findings, pool=1000)
    assert verdict["paid"] == 200 and sum(verdict["rewards"].values()) == 200
    assert verdict["reward_pool"] == 1000
    none = judge(dict.fromkeys("abc", 5), findings, pool=1000, voter_reward_share_micro=0)
    assert none["paid"] == 0 and set(none["rewards"].values()) == {0}


# ---------------------------------------------------------------------------------------------
# The f < n/2 guarantee, over random mixes of honest and colluding hospitals
# ---------------------------------------------------------------------------------------------

BAD_KINDS = {
    "problem": "invalid",
    "boosted": "norm_exceeded",
    "duplicate": "duplicate",
    "harmful": "harmful",
}


def honest_finding(kind, truth):
    """What an honest voter reports about a candidate of this kind (the same for every honest
    voter: they decrypt the same bytes)."""
    if kind == "problem":
        return finding(0, problem="wrong_kind")
    if kind == "boosted":
        return finding(truth["score"], norm=truth["norm"] * 10)
    if kind == "duplicate":
        return finding(truth["score"], norm=truth["norm"], similarity=1_000_000)
    if kind == "harmful":
        return finding(-(10**6), norm=truth["norm"])
    if kind == "zero":
        return finding(0, norm=0)
    return finding(truth["score"], norm=truth["norm"], similarity=truth["similarity"])


def hostile_finding(rng):
    """Anything a colluder may say about an honest update to get it rejected."""
    return rng.choice(
        [
            finding(rng.randint(-(10**12), 10**12), problem=rng.choice(PROBLEMS)),
            finding(-(10**9), norm=10**15, similarity=1_000_000),
            finding(-10_001, norm=0, similarity=999_000),
            finding(-(10**12), norm=rng.randint(0, 10**15), similarity=rng.randint(0, 10**6)),
            finding(-10_000, norm=0, similarity=0),  # "accepts" with the lowest score it can
            finding(-10_000, norm=10**15, similarity=0),  # inflates the norm to make an outlier
            finding(-(10**12), norm=1000, similarity=0, se=0),  # certain it is harmful
            finding(-(10**12), norm=1000, similarity=0, se=10**12),
        ]
    )


def round_findings(names, bad, rng, honest):
    """Every voter's findings on its peers: an honest voter reports ``honest(voter, candidate)``;
    colluders praise each other and say anything hostile about everyone else."""
    findings: dict[str, dict[str, dict]] = {}
    for v in names:
        findings[v] = {}
        for c in names:
            if c == v:
                continue
            if v not in bad:
                findings[v][c] = honest(v, c)
            elif c in bad:
                findings[v][c] = finding(10**12, norm=0, similarity=0)
            else:
                findings[v][c] = hostile_finding(rng)
    return findings


@pytest.mark.parametrize("scaling", ["none", "sqrt_sample_weight"])
def test_a_colluding_minority_cannot_reject_honest_updates_nor_pass_bad_ones(scaling):
    """Without scaling every hospital has the same weight; with it, weights s^2 (s from 1 to 40)
    and honest norms t * s: per square root of weight within the 3x ratio of one another."""
    rng = random.Random(14)
    for case in range(400):
        n = rng.randint(3, 9)
        f = rng.randint(1, (n - 1) // 2)
        names = [f"h{i:02d}" for i in range(n)]
        bad = set(rng.sample(names, f))
        kinds = {m: rng.choice([*BAD_KINDS, "fine", "zero"]) for m in bad}
        root = {m: 10 if scaling == "none" else rng.randint(1, 40) for m in names}
        truths = {
            m: {
                "score": rng.randint(1, 10**6),  # every fine update improves
                "norm": rng.randint(1000, 3000) * root[m],  # within the 3x ratio
                "similarity": rng.randint(0, 998_999),
            }
            for m in names
        }
        bounds = {m: 3000 * root[m] for m in names}
        findings = round_findings(
            names,
            bad,
            rng,
            lambda v, c, kinds=kinds, truths=truths: honest_finding(
                kinds.get(c, "honest"), truths[c]
            ),
        )
        weights = {m: root[m] ** 2 for m in names}
        verdict = judge(weights, findings, bounds=bounds, pool=10**6, norm_outlier_scaling=scaling)
        c = verdict["candidates"]
        where = f"case {case}: n={n} f={f} kinds={kinds} weights={weights}"
        for m in names:
            if m not in bad:
                assert c[m]["accepted"], f"{where}: honest {m} rejected as {c[m]['reason']}"
                # bounded below by an honest score (all honest voters report the truth)
                assert c[m]["improvement_micro"] >= truths[m]["score"], where
            elif kinds[m] in BAD_KINDS:
                assert c[m]["reason"] == BAD_KINDS[kinds[m]], f"{where}: {m} {c[m]['reason']}"
            elif kinds[m] == "zero":
                # boosting by colluders cannot make a zero update improve
                assert c[m]["accepted"] and c[m]["improvement_micro"] == 0, where
                assert not c[m]["improves"] and c[m]["reward"] == 0, where
            else:
                # praise from colluders does not move the upper median off the honest score
                assert c[m]["accepted"], where
                assert c[m]["improvement_micro"] == truths[m]["score"], where
        honest_agreed = min(verdict["voters"][h]["agreed"] for h in names if h not in bad)
        assert all(verdict["voters"][m]["agreed"] <= honest_agreed for m in bad), where
        if scaling == "none":
            # same sample weights: a colluder earns at most what an honest hospital earns (up
            # to the one largest-remainder token of each of the two splits)
            honest_reward = min(verdict["rewards"][h] for h in names if h not in bad)
            assert all(verdict["rewards"][m] <= honest_reward + 2 for m in bad), where
        assert verdict["paid"] == sum(verdict["rewards"].values()) <= 10**6


def test_under_dp_noise_a_colluding_minority_still_cannot_reject_honest_updates_nor_pass_bad_ones():
    """The same guarantee when DP noise makes every honest update score below -threshold: each
    honest voter sees its honest peers within the threshold of one another (level L_v, the
    voter's own validation data), the bad updates at least the threshold under the worst. From
    4 hospitals up: with 3, an honest voter whose other peer is invalid has one score to compare
    and falls back to the fixed bar (chaincode.rules)."""
    rng = random.Random(1414)
    threshold = POLICY["acceptance_threshold_micro"]
    for case in range(300):
        n = rng.randint(4, 9)
        f = rng.randint(1, (n - 1) // 2)
        names = [f"h{i:02d}" for i in range(n)]
        bad = set(rng.sample(names, f))
        kinds = {m: rng.choice([*BAD_KINDS, "fine"]) for m in bad}
        level = {v: rng.randint(-200_000, 0) for v in names}
        error = {v: rng.choice([0, rng.randint(0, 4 * threshold)]) for v in names}
        norms = {m: rng.randint(1000, 3000) for m in names}

        def honest(
            v: str, c: str, kinds=kinds, level=level, norms=norms, error=error, bad=bad
        ) -> dict:
            kind = kinds.get(c, "honest")
            # the errors an honest voter measures: within its own level for honest updates
            # (small or large validation sets), anything for a malicious candidate's update
            se = (
                rng.randint(0, error[v])
                if c not in bad
                else rng.choice([None, 0, rng.randint(0, 10**12)])
            )
            if kind == "harmful":
                bar = max(threshold, -(-POLICY["harm_se_milli"] * error[v] // 1000))
                return finding(level[v] - bar - rng.randint(1, 10**6), se=se)
            noisy = level[v] + rng.randint(0, threshold // 2)
            honest_report = honest_finding(
                kind, {"score": noisy, "norm": norms[c], "similarity": 0}
            )
            return {**honest_report, "score_se_micro": None if honest_report["problem"] else se}

        findings = round_findings(names, bad, rng, honest)
        verdict = judge(
            dict.fromkeys(names, 100), findings, bounds=dict.fromkeys(names, 3000), pool=10**6
        )
        c = verdict["candidates"]
        where = f"case {case}: n={n} f={f} kinds={kinds}"
        for m in names:
            if m not in bad or kinds[m] == "fine":
                assert c[m]["accepted"], f"{where}: {m} rejected as {c[m]['reason']}"
            else:
                assert c[m]["reason"] == BAD_KINDS[kinds[m]], f"{where}: {m} {c[m]['reason']}"
        for v in names:
            if v not in bad:
                widest = max(threshold, -(-POLICY["harm_se_milli"] * error[v] // 1000))
                assert verdict["voters"][v]["harm_floor_micro"] >= level[v] - widest, where
