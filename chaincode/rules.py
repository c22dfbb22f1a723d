"""Integer arithmetic that decides acceptance, aggregation weights, contribution scores, rewards and quorums.

Everything here is a pure function of ints and strings (no floats, no clocks, no randomness) so
every endorsing peer computes the same bytes. Scores and thresholds are in micro-units (1e-6 of
the validation metric); a positive score means the update improved the voter's metric.

The rules, exactly:

* median: the *lower* median of the peer scores, ``sorted(s)[(len(s) - 1) // 2]`` (for an even
  count the smaller of the two middle values, so a tie never rounds in the submitter's favour).
* votes counted for candidate c: scores for c from voters that revealed, are still enrolled and
  are not c itself.
* required votes for c: ``max(1, min(min_voters, number of enrolled silos other than c))``
  (the policy's minimum, or every available peer when there are fewer; never zero).
* accepted iff c is still enrolled, has at least the required votes, and
  ``median >= -acceptance_threshold_micro``.
* aggregation weight of an accepted update: its sample weight (silos pre-multiply their deltas,
  so the aggregate is divided by ``total_weight``, the sum over accepted updates); 0 otherwise.
* contribution score of an accepted update: ``median + acceptance_threshold_micro + 1`` (>= 1:
  the acceptance boundary maps to 1, each micro-unit of median improvement adds 1); 0 otherwise.
* rewards: the pool is split in proportion to ``weight * contribution`` by the largest-remainder
  method: everyone gets ``floor(pool * share / total_share)``; the tokens left over go one each
  to the largest remainders ``pool * share mod total_share``, ties to the smaller MSP id. The
  rewards always sum to the pool when anything is accepted.
* attestation quorum for n participating silos: a strict majority ``n // 2 + 1`` (which is at
  least 2 whenever n >= 2, and 1 only when a single silo took part).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any


def lower_median(values: Sequence[int]) -> int:
    if not values:
        raise ValueError("median of no values")
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def required_votes(min_voters: int, available_peers: int) -> int:
    return max(1, min(min_voters, available_peers))


def contribution_score(median_micro: int, threshold_micro: int) -> int:
    return median_micro + threshold_micro + 1


def split_rewards(pool: int, shares: Mapping[str, int]) -> dict[str, int]:
    """Largest-remainder split of ``pool`` integer tokens in proportion to ``shares``."""
    total = sum(shares.values())
    if pool <= 0 or total <= 0:
        return {key: 0 for key in shares}
    rewards = {key: pool * share // total for key, share in shares.items()}
    left = pool - sum(rewards.values())
    by_remainder = sorted(shares, key=lambda key: (-(pool * shares[key] % total), key))
    # left < number of keys with a non-zero remainder, so only those receive the extra tokens.
    for key in by_remainder[:left]:
        rewards[key] += 1
    return rewards


def attestation_quorum(participants: int) -> int:
    return participants // 2 + 1 if participants > 0 else 1


def judge_round(
    *,
    candidates: Mapping[str, Mapping[str, Any]],
    votes: Mapping[str, Mapping[str, int]],
    enrolled: Collection[str],
    threshold_micro: int,
    min_voters: int,
    reward_pool: int,
) -> dict[str, Any]:
    """Decide a round from its revealed updates and votes.

    ``candidates``: msp_id -> {"sha256": str, "sample_weight": int, ...};
    ``votes``: voter msp_id -> {candidate msp_id: score_micro}. Returns the acceptance fields
    of ``bcfl_common.records.Acceptance`` (per-candidate verdicts, accepted set, weights, rewards).
    """
    enrolled_set = set(enrolled)
    verdicts: dict[str, dict[str, Any]] = {}
    for msp_id in sorted(candidates):
        scores = {
            voter: votes[voter][msp_id]
            for voter in sorted(votes)
            if voter != msp_id and voter in enrolled_set and msp_id in votes[voter]
        }
        required = required_votes(min_voters, len(enrolled_set - {msp_id}))
        median = lower_median(list(scores.values())) if scores else None
        if msp_id not in enrolled_set:
            reason = "not_enrolled"
        elif len(scores) < required:
            reason = "too_few_votes"
        elif median is None or median < -threshold_micro:
            reason = "below_threshold"
        else:
            reason = "accepted"
        accepted = reason == "accepted"
        verdicts[msp_id] = {
            "sha256": candidates[msp_id]["sha256"],
            "sample_weight": candidates[msp_id]["sample_weight"],
            "scores": scores,
            "votes": len(scores),
            "required_votes": required,
            "median_micro": median,
            "accepted": accepted,
            "reason": reason,
            "weight": candidates[msp_id]["sample_weight"] if accepted else 0,
            "contribution": contribution_score(median, threshold_micro)
            if accepted and median is not None
            else 0,
        }
    accepted_ids = [m for m, v in verdicts.items() if v["accepted"]]
    shares = {m: verdicts[m]["weight"] * verdicts[m]["contribution"] for m in accepted_ids}
    rewards = {m: 0 for m in verdicts} | split_rewards(reward_pool, shares)
    for msp_id, verdict in verdicts.items():
        verdict["reward"] = rewards[msp_id]
    return {
        "candidates": verdicts,
        "accepted": accepted_ids,
        "rejected": [m for m in verdicts if m not in accepted_ids],
        "accepted_sha256s": sorted(verdicts[m]["sha256"] for m in accepted_ids),
        "total_weight": sum(verdicts[m]["weight"] for m in accepted_ids),
        "reward_pool": reward_pool if accepted_ids else 0,
        "rewards": rewards,
    }
