"""Integer arithmetic that decides acceptance, aggregation weights, rewards and quorums.

Everything here is a pure function of ints and strings (no floats, no clocks, no randomness) so
every endorsing peer, and every auditor, computes the same bytes. Scores, similarities and
shares are in micro-units (1e-6), norms and ratios in milli-units (1e-3).

Inputs of ``judge_round``: the candidates (msp_id -> {sha256, sample_weight}), the revealed
findings (voter -> {candidate: Finding}, see ``bcfl_common.records.Finding``), who is enrolled,
the trial's evaluation policy, the norm bound of each candidate (or null) and the reward pool.

The rules, exactly. For candidate c, V_c = the revealed voters that are still enrolled and are
not c; m = |V_c|; "a majority" = strictly more than m/2 of V_c.

1. ``not_enrolled`` if c was removed;
2. ``too_few_votes`` if m < ``max(1, min(min_voters, enrolled silos other than c))``;
3. ``invalid`` if a majority report a ``problem`` (the decision names the most reported one,
   ties to the alphabetically first);
4. ``norm_exceeded`` if a majority report ``norm_milli`` > c's norm bound (when it has one);
5. ``norm_outlier`` if a majority report ``norm_milli / sqrt(w_c) * 1000 > max_norm_ratio_milli
   * reference / sqrt(w_ref)``, where w is a candidate's sample weight when the policy's
   ``norm_outlier_scaling`` is ``sqrt_sample_weight`` (else 1: trials recorded before it) and
   reference = the representative norm of the candidate ref whose ``norm^2 / w`` is the LOWER
   median (``sorted(s)[(len(s) - 1) // 2]``) over the candidates' representative norms (each
   the UPPER median, ``sorted(s)[len(s) // 2]``, of the non-null norms reported for it),
   applied only when at least 3 candidates have one (``norm_outlier``: exact integers).
   An honest update's norm grows with its local steps, which grow with its data: a hospital
   with twice the median's rows reached 2.95x the median norm in round 5 of the DP-off breast
   cancer demo (over 3x in one seed, so rejected) while its per-sqrt-weight norm stayed within
   1.5x. The square root is the growth of the DP noise's random walk over the steps (exact for
   the noise, which dominates DP updates), and a compromise for DP-off drift (between
   sqrt and linear): a small hospital is not made an outlier by a linear scale, and a large one
   gains only sqrt(w) of headroom for a boost;
6. ``duplicate`` if a majority report ``similarity_micro >= duplicate_similarity_micro``;
7. ``harmful`` if a majority report no problem and ``score_micro`` under their harm floor;
otherwise ``accepted``.

* A voter's harm floor: ``min(0, reference) - max(acceptance_threshold_micro, ceil(harm_se_milli
  * error / 1000))``, where reference =
  the UPPER median of the scores it gave, without a problem, to the round's candidates (itself
  excluded), when it gave at least 2 such scores (else 0). Differential privacy noise makes
  every honest update score below 0 on a peer's validation data (one DP update applied alone
  carries all its noise, the aggregate a fraction of it): the floor measures that level in the
  round itself, so an honest noisy update is compared with its noisy peers, not with an
  unreachable "no loss" bar; a voter with a single problem-free score to compare (3 hospitals,
  one peer invalid; or a lone candidate) keeps the fixed bar. It never rises above the fixed
  ``-threshold`` (updates better than the base model cannot raise the bar), and an honest
  voter's reference is at least its lowest score of an honest candidate (below).
  error = the LOWER median of the ``score_se_micro`` it reported without a problem for the
  round's candidates (itself excluded), when it reported at least 2 (else 0; and 0 when the
  policy has no ``harm_se_milli``, as trials recorded before it): a score's standard error over
  the voter's own validation rows (the spread of the per-row log-loss decreases / sqrt(rows)),
  so a voter with six validation rows does not reject an honest noisy update on chance alone.
  It is the round's level, not the judged candidate's own error, which the candidate shapes
  (an update that moves only the intercept spreads its rows' losses both ways and hides its
  harm in its own error); a LOWER median cannot be raised above an honest candidate's error by
  at most half of the candidates, and colluders who lower it (zero updates, error 0) only
  restore the threshold alone.
* A voter's own verdict on c REJECTS iff its finding has a problem, a norm over c's bound, a
  similarity at/over the threshold, or (without a problem) a score under its harm floor. Outliers
  are a round-level judgement: not part of a verdict, and a candidate decided by step 5 (or 1-2)
  counts for nobody's agreement. On a candidate decided by steps 3, 4, 6, 7 or accepted, a voter
  of V_c has ``judged`` it, and ``agreed`` when its verdict matches (rejects iff not accepted).
* improvement of an accepted c: the UPPER median of the scores of the voters of V_c that did not
  reject it (null if every one did); ``improves`` iff it is > 0.
* weights: the accepted candidates' sample weights capped by ``capped_weights`` at
  ``max_weight_share_micro``: an accepted update's aggregation weight is its capped weight
  (0 otherwise), ``total_weight`` their sum.
* rewards: voter_pool = ``pool * voter_reward_share_micro // 10**6``, update_pool = the rest.
  The update pool is split in proportion to the capped weight of the accepted candidates that
  improve, the voter pool in proportion to each voter's ``agreed``; both with
  ``split_rewards`` (largest remainder: everyone gets ``floor(pool * share / total)``, the tokens
  left go one each to the largest remainders, ties to the smaller MSP id). A hospital's reward
  is the sum of both; what nobody earns is not paid (``paid`` = the sum of the rewards).
* attestation quorum for n participants: a strict majority ``n // 2 + 1``; a round can still
  reach it while ``max(equal attestations) + participants yet to attest >= quorum``.

Why it holds against f < n/2 colluding hospitals (n = enrolled hospitals that all take part):
an honest candidate has n - 1 voters of which at most f <= (n - 1)/2 are malicious, never a
strict majority, so malicious reports alone can reject it by none of steps 3-7 (honest voters
report the truth: no problem, its real norm within its bound, a low similarity, a score not
under their harm floor). The floor cannot be raised by colluders (it is at most -threshold), and
lowering it needs more than half of an honest voter's problem-free scores below its lowest
honest one: of the k <= f malicious candidates it scores and the h >= n - 1 - f >= f honest
ones (c among them), the upper median (index (k + h) // 2 >= k) is an honest score. So a
malicious update is harmful to an honest voter whenever it scores more than max(threshold,
``harm_se_milli / 1000`` times the largest error it reported for an honest candidate) below
min(0, that voter's worst honest score); errors reported by a malicious voter move only its
own verdicts. Step 5 needs a majority too, and the reference cannot
be pushed down by them: an UPPER median of reports with at most half malicious is at least an honest report, and
with the at most f < n/2 malicious candidates below that, the LOWER median over the n
candidates is still an honest candidate's honest norm; so an honest update is never an outlier
while honest norms (per square root of weight, when scaled) are within ``max_norm_ratio_milli``
of one another; a weight is bounded by the hospital's registered dataset, visible to every
member, so a colluder that registers more rows gains sqrt of them in norm headroom. Its improvement is the
upper median of the voters that did not reject it: every honest voter and at most as many
malicious ones, so at least one honest score is at or below it; boosting a colluder's score
moves nothing either (a malicious candidate's agreeing voters hold at most f - 1 malicious of
at least n - f honest ones, so its upper median is at most an honest score). A malicious
candidate is judged by at least n - f > (n - 1)/2 honest voters, a majority, so whatever they
all report decides steps 3, 4, 6 and 7. A voter that contradicts the honest majority agrees
less and earns less of the voter pool; scores never scale an update reward, so inflating them
earns nothing.

Step 5 is weaker than the others in two ways: its reference assumes the honest hospitals are
most of the candidates (colluders who submit near-zero updates while most honest hospitals
submit nothing could pull it down), and when f = (n - 1)/2 exactly, colluders who report huge
norms for every honest update can raise the reference and let an over-large update pass as no
outlier. The absolute bound of step 4 (from the DP schedule or the policy) depends on no report
and still stops it. Step 5 is a majority count of reports rather than a test of the
representative norm alone because an upper median of reports with exactly half malicious can
be pushed up at will, which would let colluders make any honest update an "outlier".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from fractions import Fraction
from typing import Any

MICRO = 1_000_000
MILLI = 1_000
# Upper bound on a reported norm and on an explicit norm bound, in milli-units.
MAX_NORM_MILLI = 10**15

# Rejection reasons decided by a majority of findings, in the order they are checked.
MAJORITY_REASONS = ("invalid", "norm_exceeded", "norm_outlier", "duplicate", "harmful")
COUNT_OF_REASON = {
    "invalid": "problem",
    "norm_exceeded": "norm_exceeded",
    "norm_outlier": "norm_outlier",
    "duplicate": "duplicate",
    "harmful": "harmful",
}


def lower_median(values: Sequence[int]) -> int:
    """``sorted(values)[(len - 1) // 2]``: for an even count the smaller middle value."""
    if not values:
        raise ValueError("median of no values")
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def upper_median(values: Sequence[int]) -> int:
    """``sorted(values)[len // 2]``: for an even count the larger middle value."""
    if not values:
        raise ValueError("median of no values")
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def scales_norms(policy: Mapping[str, Any]) -> bool:
    """Whether step 5 compares norms per square root of sample weight (trials recorded before
    ``norm_outlier_scaling`` compare raw norms)."""
    return policy.get("norm_outlier_scaling", "none") == "sqrt_sample_weight"


def outlier_weights(
    candidates: Mapping[str, Mapping[str, Any]], policy: Mapping[str, Any]
) -> dict[str, int]:
    """The weight each candidate's norm is scaled by in step 5: its sample weight, or 1."""
    scaled = scales_norms(policy)
    return {c: candidates[c]["sample_weight"] if scaled else 1 for c in candidates}


def norm_reference(
    representative: Mapping[str, int | None], weights: Mapping[str, int]
) -> str | None:
    """The candidate whose ``norm^2 / weight`` is the LOWER median over the candidates with a
    representative norm (ties to the smaller MSP id), when at least 3 have one (else None)."""
    ranked = sorted(
        (Fraction(n * n, weights[c]), c) for c, n in representative.items() if n is not None
    )
    return ranked[(len(ranked) - 1) // 2][1] if len(ranked) >= 3 else None


def norm_outlier(
    norm_milli: int | None, weight: int, reference_milli: int, reference_weight: int, ratio: int
) -> bool:
    """A reported norm over ``ratio / 1000`` times the reference norm, both per square root of
    their weights: ``(norm * 1000)^2 * reference_weight > ratio^2 * reference^2 * weight`` (with
    weights 1, ``norm * 1000 > ratio * reference``); exact integers."""
    if norm_milli is None:
        return False
    return (norm_milli * MILLI) ** 2 * reference_weight > (ratio * reference_milli) ** 2 * weight


def required_votes(min_voters: int, available_peers: int) -> int:
    return max(1, min(min_voters, available_peers))


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


def capped_weights(weights: Sequence[int], share_micro: int) -> list[int]:
    """Water-filling cap: ``min(w, M)`` for the largest integer M with
    ``min(w, M) * 10**6 <= share_micro * sum(min(w_j, M))`` for every w, so no weight is more
    than ``share_micro`` of the total. When that is impossible (``len * share_micro <= 10**6``)
    every weight becomes ``min(weights)`` (equal shares). Weights must be >= 1.
    """
    if not weights:
        return []
    if min(weights) < 1:
        raise ValueError(f"weights must be positive integers, got {list(weights)}")
    if len(weights) * share_micro <= MICRO:
        return [min(weights)] * len(weights)

    def fits(cap: int) -> bool:
        return min(max(weights), cap) * MICRO <= share_micro * sum(min(w, cap) for w in weights)

    # The slack share * sum(min(w, M)) - 10**6 * min(max, M) is concave in M and >= 0 at M = 1
    # (len * share > 10**6), so the caps that fit are exactly 1..M*: binary search for M*.
    low, high = 1, max(weights)
    if fits(high):
        return list(weights)
    while low < high - 1:  # invariant: fits(low), not fits(high)
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return [min(w, low) for w in weights]


def content_owner(committed_at: Mapping[str, int], tolerance_seconds: int) -> str | None:
    """Who owns bytes that several hospitals revealed in one attempt (``committed_at``: MSP id ->
    the time of its commitment): the earliest commitment, when it is earlier than every other by
    MORE than ``tolerance_seconds``; nobody otherwise. Never who revealed first.

    The tolerance is how far a transaction's time can be from the truth: 0 only where a trusted
    clock stamps it; the client sets it on both ledgers, refused only further than 300 s from the
    embedded ledger's clock, or than each endorsing peer's window from its own on Fabric. Within it, a copier that backdates its commitment ties with its victim (nobody is paid
    for the bytes) instead of taking them.
    """
    if not committed_at:
        return None
    order = sorted(committed_at.items(), key=lambda item: (item[1], item[0]))
    if len(order) == 1:
        return order[0][0]
    (first, first_at), (_, second_at) = order[0], order[1]
    return first if second_at - first_at > tolerance_seconds else None


def attestation_quorum(participants: int) -> int:
    return participants // 2 + 1 if participants > 0 else 1


def quorum_reachable(counts: Collection[int], yet_to_attest: int, quorum: int) -> bool:
    """Can some hash still reach ``quorum``: its equal attestations (``counts``: one count per
    attested hash) plus every participant yet to attest."""
    return max(counts, default=0) + yet_to_attest >= quorum


def over_bound(norm_milli: int | None, bound_milli: int | None) -> bool:
    return norm_milli is not None and bound_milli is not None and norm_milli > bound_milli


def error_scale(
    voter: str, findings: Mapping[str, Mapping[str, Any]], candidates: Collection[str]
) -> int:
    """The LOWER median of the standard errors ``voter`` reported, without a problem, for the
    round's candidates (itself excluded), when it reported at least 2 (else 0)."""
    errors = [
        f["score_se_micro"]
        for c, f in findings.items()
        if c != voter
        and c in candidates
        and f["problem"] is None
        and f.get("score_se_micro") is not None
    ]
    return lower_median(errors) if len(errors) >= 2 else 0


def harm_floor(
    voter: str,
    findings: Mapping[str, Mapping[str, Any]],
    candidates: Collection[str],
    policy: Mapping[str, Any],
) -> int:
    """The score under which ``voter`` judges a candidate harmful (the module's rules):
    ``min(0, upper median of its problem-free scores of the candidates) - max(threshold,
    ceil(harm_se_milli * error_scale / 1000))``; a policy without ``harm_se_milli`` (trials
    recorded before it existed) or findings without errors give the threshold alone."""
    scores = [
        f["score_micro"]
        for c, f in findings.items()
        if c != voter and c in candidates and f["problem"] is None
    ]
    reference = upper_median(scores) if len(scores) >= 2 else 0
    sigmas = policy.get("harm_se_milli", 0)
    by_error = -(-sigmas * error_scale(voter, findings, candidates) // MILLI)  # ceil division
    return min(0, reference) - max(policy["acceptance_threshold_micro"], by_error)


def harmful(finding: Mapping[str, Any], floor_micro: int) -> bool:
    return finding["problem"] is None and finding["score_micro"] < floor_micro


def rejects(
    finding: Mapping[str, Any],
    bound_milli: int | None,
    policy: Mapping[str, Any],
    floor_micro: int,
) -> bool:
    """A voter's own verdict on a candidate: a problem, a norm over the bound, a duplicate or a
    score under its harm floor (outliers are judged for the round, not by one voter)."""
    similarity = finding["similarity_micro"]
    return (
        finding["problem"] is not None
        or over_bound(finding["norm_milli"], bound_milli)
        or (similarity is not None and similarity >= policy["duplicate_similarity_micro"])
        or harmful(finding, floor_micro)
    )


def judge_round(
    *,
    candidates: Mapping[str, Mapping[str, Any]],
    findings: Mapping[str, Mapping[str, Mapping[str, Any]]],
    enrolled: Collection[str],
    policy: Mapping[str, Any],
    norm_bounds: Mapping[str, int | None],
    reward_pool: int,
) -> dict[str, Any]:
    """Decide a round from its candidates and the revealed findings (the module's rules).

    Returns the decided fields of ``bcfl_common.records.Acceptance``: ``candidates`` (each a
    ``CandidateDecision``), ``voters``, ``reference_norm_milli``, ``reference_sample_weight``,
    ``norm_bounds``, ``accepted``,
    ``rejected``, ``accepted_sha256s``, ``total_weight``, ``reward_pool``, ``paid``, ``rewards``.
    """
    enrolled_set = set(enrolled)
    ratio = policy["max_norm_ratio_milli"]
    voters = sorted(v for v in findings if v in enrolled_set)
    order = sorted(candidates)
    bounds = {c: norm_bounds.get(c) for c in order}
    reports = {
        c: {v: dict(findings[v][c]) for v in voters if v != c and c in findings[v]} for c in order
    }
    floors = {v: harm_floor(v, findings[v], candidates, policy) for v in voters}
    representative: dict[str, int | None] = {}
    for c in order:
        norms = [f["norm_milli"] for f in reports[c].values() if f["norm_milli"] is not None]
        representative[c] = upper_median(norms) if norms else None
    weighted = outlier_weights(candidates, policy)
    reference_of = norm_reference(representative, weighted)
    reference = None if reference_of is None else representative[reference_of]

    decisions: dict[str, dict[str, Any]] = {}
    for c in order:
        found, bound = reports[c], bounds[c]
        problems = Counter(f["problem"] for f in found.values() if f["problem"] is not None)
        counts = {
            "problem": sum(problems.values()),
            "norm_exceeded": sum(over_bound(f["norm_milli"], bound) for f in found.values()),
            "norm_outlier": sum(
                reference_of is not None
                and reference is not None
                and norm_outlier(
                    f["norm_milli"], weighted[c], reference, weighted[reference_of], ratio
                )
                for f in found.values()
            ),
            "duplicate": sum(
                f["similarity_micro"] is not None
                and f["similarity_micro"] >= policy["duplicate_similarity_micro"]
                for f in found.values()
            ),
            "harmful": sum(harmful(f, floors[v]) for v, f in found.items()),
        }
        required = required_votes(policy["min_voters"], len(enrolled_set - {c}))
        if c not in enrolled_set:
            reason = "not_enrolled"
        elif len(found) < required:
            reason = "too_few_votes"
        else:
            reason = next(
                (r for r in MAJORITY_REASONS if 2 * counts[COUNT_OF_REASON[r]] > len(found)),
                "accepted",
            )
        accepted = reason == "accepted"
        improvement = None
        if accepted:
            agreeing = [
                f["score_micro"]
                for v, f in found.items()
                if not rejects(f, bound, policy, floors[v])
            ]
            improvement = upper_median(agreeing) if agreeing else None
        decisions[c] = {
            "sha256": candidates[c]["sha256"],
            "sample_weight": candidates[c]["sample_weight"],
            "findings": found,
            "votes": len(found),
            "required_votes": required,
            "counts": counts,
            "problem": min(problems, key=lambda p: (-problems[p], p))
            if reason == "invalid"
            else None,
            "norm_bound_milli": bound,
            "norm_milli": representative[c],
            "accepted": accepted,
            "reason": reason,
            "improvement_micro": improvement,
            "improves": improvement is not None and improvement > 0,
            "weight": 0,
            "reward": 0,
        }

    accepted_ids = [c for c in order if decisions[c]["accepted"]]
    capped = capped_weights(
        [decisions[c]["sample_weight"] for c in accepted_ids], policy["max_weight_share_micro"]
    )
    for c, weight in zip(accepted_ids, capped, strict=True):
        decisions[c]["weight"] = weight

    judged = dict.fromkeys(voters, 0)
    agreed = dict.fromkeys(voters, 0)
    for c in order:
        if decisions[c]["reason"] in ("not_enrolled", "too_few_votes", "norm_outlier"):
            continue
        for v, f in reports[c].items():
            judged[v] += 1
            agreed[v] += rejects(f, bounds[c], policy, floors[v]) != decisions[c]["accepted"]

    voter_pool = reward_pool * policy["voter_reward_share_micro"] // MICRO
    update_rewards = split_rewards(
        reward_pool - voter_pool,
        {c: decisions[c]["weight"] for c in accepted_ids if decisions[c]["improves"]},
    )
    voter_rewards = split_rewards(voter_pool, agreed)
    for c, amount in update_rewards.items():
        decisions[c]["reward"] = amount
    rewards = {
        m: update_rewards.get(m, 0) + voter_rewards.get(m, 0)
        for m in sorted(set(order) | set(voters))
    }
    return {
        "candidates": decisions,
        "voters": {
            v: {
                "judged": judged[v],
                "agreed": agreed[v],
                "reward": voter_rewards.get(v, 0),
                "harm_floor_micro": floors[v],
            }
            for v in voters
        },
        "reference_norm_milli": reference,
        "reference_sample_weight": weighted[reference_of]
        if reference_of is not None and scales_norms(policy)
        else None,
        "norm_bounds": bounds,
        "accepted": accepted_ids,
        "rejected": [c for c in order if c not in accepted_ids],
        "accepted_sha256s": sorted(decisions[c]["sha256"] for c in accepted_ids),
        "total_weight": sum(capped),
        "reward_pool": reward_pool,
        "paid": sum(rewards.values()),
        "rewards": rewards,
    }
