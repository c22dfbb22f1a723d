"""The integer rules behind acceptance, weights, rewards and quorum, and the commitment hashes silos build."""

from __future__ import annotations

import hashlib
import json

import pytest

from bcfl_common.vocabulary import SALT_HEX
from chaincode import rules
from chaincode.commitments import new_salt, update_commitment, votes_commitment


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


def test_median_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        rules.lower_median([])


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


def test_judge_round_ignores_self_scores_removed_voters_and_rejects_removed_candidates():
    candidates = {
        m: {"sha256": m * 64, "sample_weight": w} for m, w in (("a", 10), ("b", 30), ("c", 5))
    }
    votes = {
        "a": {"a": 10**9, "b": 100, "c": -10},  # the self-score is never counted
        "b": {"a": 0, "c": 50},
        "x": {"a": -(10**9), "b": -(10**9), "c": -(10**9)},  # removed voter
    }
    verdict = rules.judge_round(
        candidates=candidates,
        votes=votes,
        enrolled={"a", "b"},
        threshold_micro=20,
        min_voters=2,
        reward_pool=9,
    )
    c = verdict["candidates"]
    assert c["a"]["scores"] == {"b": 0} and c["a"]["required_votes"] == 1 and c["a"]["accepted"]
    assert c["b"]["scores"] == {"a": 100} and c["b"]["median_micro"] == 100
    assert c["c"]["reason"] == "not_enrolled" and c["c"]["weight"] == 0
    assert (c["a"]["contribution"], c["b"]["contribution"]) == (21, 121)
    assert verdict["total_weight"] == 40
    # shares 210 : 3630 of 9 tokens -> 0.49 : 8.51 -> floors 0 and 8; the spare token goes to
    # the larger remainder (b's .51), not to whoever is lexically first
    assert verdict["rewards"] == {"a": 0, "b": 9, "c": 0}
    assert verdict["accepted_sha256s"] == sorted(["a" * 64, "b" * 64])


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
    opening = {
        "trial_id": "t",
        "round": 1,
        "msp_id": "Hospital1MSP",
        "scores": {"Hospital2MSP": -5, "Hospital3MSP": 7},
        "salt": "ee" * 16,
    }
    canonical = json.dumps(opening, sort_keys=True, separators=(",", ":")).encode()
    assert votes_commitment(**opening) == hashlib.sha256(canonical).hexdigest()


def test_new_salt_is_accepted_by_the_contract_and_fresh():
    salts = {new_salt() for _ in range(8)}
    assert len(salts) == 8 and all(SALT_HEX.fullmatch(s) for s in salts)
