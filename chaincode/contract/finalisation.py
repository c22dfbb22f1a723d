"""The end of a round: close voting, aggregate, attest, rewards, settlement.

Acceptance, weights, rewards, quorum: see ``chaincode.rules`` (each candidate is rejected only
by a strict majority of its peers' findings: a problem, a norm over its bound, a norm outlier,
a duplicate, a harmful score; accepted weights are sample weights capped at a share of the
total; the update pool goes to accepted updates that improve, by capped weight, the voter pool
to voters by agreement with the outcome; quorum = majority of participants). Rewards computed
at ``close_voting`` are credited to the hospitals' accounts when the round finalizes, and
voided if it halts. An attestation of another hash than a quorum's is a dispute, not a halt.

A round that cannot finalize (NONE_ACCEPTED, fewer accepted than min_silos: TOO_FEW_HOSPITALS,
ATTESTATION_MISMATCH) fails through ``liveness.round_failed``: retried, or the trial halts.
Abort, rollback and resume: ``chaincode.contract.recovery``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bcfl_common.records import (
    Acceptance,
    Aggregate,
    Attestation,
    Dispute,
    Head,
    LineageEntry,
    ModelRef,
    RewardAccount,
    RewardEntry,
    Round,
    RoundRewards,
    Trial,
)
from bcfl_common.vocabulary import ETH_TX_HASH
from chaincode import rules
from chaincode.args import Args
from chaincode.contract.ballots import closing
from chaincode.contract.context import Caller, Tx, fail
from chaincode.contract.dispatch import function
from chaincode.contract.liveness import round_failed, shortfall
from chaincode.contract.rounds import UPDATES, VOTES
from chaincode.contract.store import (
    MAX_ATTEMPTS,
    MAX_SILOS,
    current_round,
    current_round_in,
    enrolled,
    find_round,
    next_phase,
    own_organisation,
    per_org_key,
    per_round_key,
    require_enrolled_in_running,
    require_phase,
    round_args,
    round_event,
    round_label,
    round_records,
    save_round,
    schedule_entry,
    trial_key,
)


def norm_bounds(tx: Tx, trial: Trial, candidates: list[str]) -> dict[str, int | None]:
    """Each candidate's bound on ``norm_milli``: the policy's ``max_update_norm_milli`` if set,
    else (DP on) its DP schedule entry's ``max_update_norm_milli``, else null (no bound)."""
    explicit = trial["evaluation"]["max_update_norm_milli"]
    if explicit is not None:
        return {c: explicit for c in candidates}
    bounds: dict[str, int | None] = {}
    for c in candidates:
        entry = schedule_entry(tx, trial, c)
        bounds[c] = None if entry is None else entry["max_update_norm_milli"]
    return bounds


@function("close_voting", "admin", "coordinator")
def close_voting(tx: Tx, caller: Caller, a: Args) -> Acceptance:
    """admin|coordinator; {trial_id, round}; VOTE_REVEAL -> AGGREGATE: acceptance, capped
    weights and rewards computed (``rules.judge_round``) from the enrolled voters' revealed
    findings, the trial's evaluation policy and each candidate's norm bound (``norm_bounds``),
    or HALTED (NONE_ACCEPTED, the rewards void); returns the acceptance; event VotingClosed |
    RoundHalted. The round rewards' ``pool`` is what is paid (``acceptance.paid``)."""
    trial, rnd = closing(tx, a, "VOTE_REVEAL")
    trial_id, r, attempt = trial["trial_id"], rnd["round"], rnd["attempt"]
    members = enrolled(tx, trial_id)
    votes, missing = VOTES.revealed(tx, rnd, members)
    revealed = {v["msp_id"]: v["findings"] or {} for v in votes}
    updates = {u["msp_id"]: u for u in UPDATES.records(tx, rnd)}
    policy = trial["evaluation"]
    bounds = norm_bounds(tx, trial, rnd["candidates"])
    verdict = rules.judge_round(
        candidates={m: updates[m] for m in rnd["candidates"]},
        findings=revealed,
        enrolled=members,
        policy=policy,
        norm_bounds=bounds,
        reward_pool=policy["reward_per_round"],
    )
    participants = sorted((set(rnd["candidates"]) | set(revealed)) & set(members))
    quorum = rules.attestation_quorum(len(participants))
    acceptance: Acceptance = {
        "trial_id": trial_id,
        "round": r,
        "attempt": attempt,
        "threshold_micro": policy["acceptance_threshold_micro"],
        "min_voters": policy["min_voters"],
        "computed_at": tx.now,
        "voters_revealed": sorted(revealed),
        "voters_missing": missing,
        "policy": policy,
        "norm_bounds": verdict["norm_bounds"],
        "reference_norm_milli": verdict["reference_norm_milli"],
        "reference_sample_weight": verdict["reference_sample_weight"],
        "candidates": verdict["candidates"],
        "voters": verdict["voters"],
        "accepted": verdict["accepted"],
        "rejected": verdict["rejected"],
        "accepted_sha256s": verdict["accepted_sha256s"],
        "total_weight": verdict["total_weight"],
        "reward_pool": verdict["reward_pool"],
        "paid": verdict["paid"],
        "rewards": verdict["rewards"],
    }
    tx.put(per_round_key("acceptance", trial_id, r, attempt), acceptance)
    accepted = acceptance["accepted"]
    rewards: RoundRewards = {
        "trial_id": trial_id,
        "round": r,
        "attempt": attempt,
        "pool": acceptance["paid"],
        "rewards": acceptance["rewards"],
        # Void unless the round can go on (enough accepted: see below).
        "status": "pending" if len(accepted) >= trial["min_silos"] else "void",
        "settlement": None,
    }
    tx.put(per_round_key("round_rewards", trial_id, r, attempt), rewards)
    rnd = {
        **rnd,
        "accepted": accepted,
        "accepted_sha256s": acceptance["accepted_sha256s"],
        "total_weight": acceptance["total_weight"],
        "participants": participants,
        "attestation_quorum": quorum,
    }
    if len(accepted) < trial["min_silos"]:
        # The aggregate every hospital decrypts is the sum of the accepted updates: fewer than
        # min_silos would expose too few hospitals' updates inside it.
        code, reason = (
            shortfall(
                trial, "updates accepted", accepted, ": an aggregate of fewer would expose them"
            )
            if accepted
            else ("NONE_ACCEPTED", "no update was accepted by the peer votes")
        )
        round_failed(tx, caller, trial, rnd, code, reason)
        return acceptance
    rnd = next_phase(tx, trial, rnd, "AGGREGATE")
    save_round(tx, rnd)
    tx.emit(
        "VotingClosed",
        round_event(
            rnd,
            accepted=accepted,
            rejected=acceptance["rejected"],
            reasons={m: d["reason"] for m, d in acceptance["candidates"].items()},
            accepted_sha256s=acceptance["accepted_sha256s"],
            total_weight=acceptance["total_weight"],
            weights={m: acceptance["candidates"][m]["weight"] for m in accepted},
            rewards=acceptance["rewards"],
            paid=acceptance["paid"],
            attestation_quorum=quorum,
        ),
    )
    return acceptance


@function("record_aggregate", "coordinator")
def record_aggregate(tx: Tx, caller: Caller, a: Args) -> Round:
    """coordinator; {trial_id, round, content_id, sha256, update_sha256s}: the sum of exactly the
    accepted updates (AGGREGATE_MISMATCH otherwise); AGGREGATE -> ATTEST; returns the round;
    event AggregateRecorded."""
    trial, r = round_args(tx, a)
    content_id = a.content_id("content_id")
    sha256 = a.sha256("sha256")
    summed = a.list("update_sha256s", min_items=1, max_items=MAX_SILOS)
    for i, value in enumerate(summed):
        if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
            a.fail(f"update_sha256s[{i}]", value, "a sha256 digest: 64 lowercase hex digits")
    a.done()
    if len(set(summed)) != len(summed):
        a.fail("update_sha256s", summed, "each accepted update once")
    rnd = current_round_in(tx, trial, r, "AGGREGATE")
    if sorted(summed) != rnd["accepted_sha256s"]:
        fail(
            "AGGREGATE_MISMATCH",
            f"update_sha256s: the aggregate must sum exactly the accepted updates of {round_label(rnd)} "
            f"(missing {sorted(set(rnd['accepted_sha256s']) - set(summed))}, "
            f"not accepted {sorted(set(summed) - set(rnd['accepted_sha256s']))})",
            field="update_sha256s",
            expected=rnd["accepted_sha256s"],
        )
    aggregate: Aggregate = {
        "content_id": content_id,
        "sha256": sha256,
        "update_sha256s": sorted(summed),
        "total_weight": rnd["total_weight"],
        "recorded_at": tx.now,
        "recorded_by": caller.who(),
    }
    rnd = {**next_phase(tx, trial, rnd, "ATTEST"), "aggregate": aggregate}
    save_round(tx, rnd)
    tx.emit(
        "AggregateRecorded",
        round_event(rnd, content_id=content_id, sha256=sha256, total_weight=rnd["total_weight"]),
    )
    return rnd


def credit_rewards(tx: Tx, rnd: Round) -> dict[str, int]:
    """A finalized round's pending rewards are credited to the hospitals' reward accounts."""
    key = per_round_key("round_rewards", rnd["trial_id"], rnd["round"], rnd["attempt"])
    record: RoundRewards = tx.get(key)
    tx.put(key, {**record, "status": "credited"})
    for msp_id, amount in sorted(record["rewards"].items()):
        account_key = per_org_key("reward_account", rnd["trial_id"], msp_id)
        account: RewardAccount | None = tx.get(account_key)
        if account is None:
            account = {"trial_id": rnd["trial_id"], "msp_id": msp_id, "total": 0, "entries": []}
        entry: RewardEntry = {"round": rnd["round"], "attempt": rnd["attempt"], "amount": amount}
        credited: RewardAccount = {
            **account,
            "total": account["total"] + amount,
            "entries": account["entries"] + [entry],
        }
        tx.put(account_key, credited)
    return record["rewards"]


@function("attest_model", "silo")
def attest_model(tx: Tx, caller: Caller, a: Args) -> dict[str, Any]:
    """silo (enrolled); {trial_id, round, sha256, [content_id]}: the hash of the model it got by
    applying the aggregate; in ATTEST (or FINALIZED: a later attestation); returns {attestation,
    round}; event ModelAttested | RoundFinalized | AttestationMismatch.

    Attestations accumulate; only the round's participants count. When one hash has
    ``rules.attestation_quorum`` of them the round FINALIZES with it (the head moves to it, its
    rewards are credited), and every attestation of another hash, earlier or later, is a
    dispute ``{msp_id, sha256, at, against: the finalized sha256}`` in ``round.disputes``. A
    dissent before that is recorded and the round goes on (event AttestationMismatch, phase
    ATTEST); it halts ATTESTATION_MISMATCH (not raised) only once no hash can reach the quorum
    (``rules.quorum_reachable``: the most equal attestations plus the enrolled participants yet
    to attest fall short).
    """
    trial, r = round_args(tx, a)
    msp_id = own_organisation(a, caller)
    sha256 = a.sha256("sha256")
    content_id = a.content_id("content_id", default=None)
    a.done()
    trial_id = trial["trial_id"]
    require_enrolled_in_running(tx, trial, msp_id)
    rnd = current_round(tx, trial, r)
    if rnd["phase"] != "FINALIZED":
        require_phase(rnd, "ATTEST")
    attempt = rnd["attempt"]
    key = per_round_key("attestation", trial_id, r, attempt, msp_id)
    if tx.get(key) is not None:
        fail(
            "DUPLICATE",
            f"{msp_id} already attested the model of {round_label(rnd)}",
            msp_id=msp_id,
        )
    earlier: list[Attestation] = round_records(tx, "attestation", trial_id, r, attempt)
    record: Attestation = {
        "trial_id": trial_id,
        "round": r,
        "attempt": attempt,
        "msp_id": msp_id,
        "sha256": sha256,
        "content_id": content_id,
        "attested_at": tx.now,
    }
    tx.put(key, record)
    ordered = sorted([*earlier, record], key=lambda e: (e["attested_at"], e["msp_id"]))
    attestations = {e["msp_id"]: e["sha256"] for e in ordered}

    if rnd["phase"] == "FINALIZED":
        # A quorum already agreed; a later dissent is recorded for the admin to judge (rollback)
        # rather than letting one hospital undo a finalized round.
        model = rnd["model"]
        assert model is not None  # set when the round finalized
        if sha256 == model["sha256"]:
            tx.emit("ModelAttested", round_event(rnd, msp_id=msp_id, sha256=sha256, finalized=True))
        else:
            dispute: Dispute = {
                "msp_id": msp_id,
                "sha256": sha256,
                "at": tx.now,
                "against": model["sha256"],
            }
            rnd = {**rnd, "disputes": rnd["disputes"] + [dispute]}
            save_round(tx, rnd)
            tx.emit(
                "AttestationMismatch",
                round_event(
                    rnd,
                    code="ATTESTATION_MISMATCH",
                    msp_id=msp_id,
                    phase="FINALIZED",
                    against=model["sha256"],
                    attestations=attestations,
                ),
            )
        return {"attestation": record, "round": rnd}

    quorum = rnd["attestation_quorum"]
    assert quorum is not None  # set by close_voting
    participants = set(rnd["participants"])
    tally = Counter(h for m, h in attestations.items() if m in participants)
    winner = next((h for h, count in tally.items() if count >= quorum), None)
    if winner is None:
        yet_to_attest = (participants & set(enrolled(tx, trial_id))) - set(attestations)
        if not rules.quorum_reachable(tally.values(), len(yet_to_attest), quorum):
            reason = f"no attested model hash can reach the quorum of {quorum}: {attestations}"
            rnd = round_failed(
                tx,
                caller,
                trial,
                rnd,
                "ATTESTATION_MISMATCH",
                reason,
                attestations=attestations,
                emit=False,
            )
            phase = "HALTED"
        else:
            phase = "ATTEST"
        if phase == "HALTED" or len(set(attestations.values())) > 1:
            tx.emit(
                "AttestationMismatch",
                round_event(
                    rnd,
                    code="ATTESTATION_MISMATCH",
                    msp_id=msp_id,
                    phase=phase,
                    attestations=attestations,
                    quorum=quorum,
                    retry=None if rnd["halt"] is None else rnd["halt"].get("retry"),
                    # The trial may halt with the round: one event per transaction.
                    trial_halt=None
                    if rnd["halt"] is None or "trial_halted" not in rnd["halt"]
                    else {"code": rnd["halt"]["trial_halted"]},
                ),
            )
        else:
            tx.emit(
                "ModelAttested",
                round_event(
                    rnd,
                    msp_id=msp_id,
                    sha256=sha256,
                    attestations=len(attestations),
                    quorum=quorum,
                ),
            )
        return {"attestation": record, "round": rnd}

    # Quorum: the first content id given for the winning hash (earliest, then by MSP id) names
    # the stored model; every attestation of another hash becomes a dispute against it.
    finalized: ModelRef = {
        "content_id": next(
            (e["content_id"] for e in ordered if e["sha256"] == winner and e["content_id"]), None
        ),
        "sha256": winner,
    }
    disputes: list[Dispute] = [
        {"msp_id": e["msp_id"], "sha256": e["sha256"], "at": e["attested_at"], "against": winner}
        for e in ordered
        if e["sha256"] != winner
    ]
    rnd = {
        **rnd,
        "phase": "FINALIZED",
        "phase_changed_at": tx.now,
        "model": finalized,
        "finalized_at": tx.now,
        "disputes": rnd["disputes"] + disputes,
    }
    save_round(tx, rnd)
    head: Head = {"round": r, "attempt": attempt, "model": finalized}
    entry: LineageEntry = {
        "round": r,
        "attempt": attempt,
        "model": finalized,
        "finalized_at": tx.now,
    }
    advanced: Trial = {
        **trial,
        "head": head,
        "lineage": trial["lineage"] + [entry],
        "failed_attempts": 0,
    }
    tx.put(trial_key(trial_id), advanced)
    rewards = credit_rewards(tx, rnd)
    tx.emit(
        "RoundFinalized",
        round_event(
            rnd,
            model=finalized,
            attesters=sorted(m for m, h in attestations.items() if h == winner),
            disputes=disputes,
            rewards=rewards,
            last_round=r == trial["final_round"],
        ),
    )
    return {"attestation": record, "round": rnd}


@function("record_settlement", "coordinator")
def record_settlement(tx: Tx, caller: Caller, a: Args) -> RoundRewards:
    """coordinator; {trial_id, round, [attempt], chain_id, tx_hash (0x + 64 hex)}; once per
    finalized round attempt (ALREADY_EXISTS after); returns the round rewards; event
    SettlementRecorded."""
    trial, r = round_args(tx, a)
    attempt = a.integer("attempt", minimum=1, maximum=MAX_ATTEMPTS, default=None)
    chain_id = a.integer("chain_id", minimum=1, maximum=2**63 - 1)
    tx_hash = a.string(
        "tx_hash",
        pattern=ETH_TX_HASH,
        expected="a transaction hash: 0x and 64 lowercase hex digits",
    )
    a.done()
    rnd = find_round(tx, trial, r, attempt)
    if rnd["phase"] != "FINALIZED":
        fail(
            "WRONG_STATE",
            f"{round_label(rnd)} is {rnd['phase']}; only finalized rounds are settled",
            phase=rnd["phase"],
        )
    key = per_round_key("round_rewards", trial["trial_id"], r, rnd["attempt"])
    record: RoundRewards = tx.get(key)
    if record["settlement"] is not None:
        fail(
            "ALREADY_EXISTS",
            f"{round_label(rnd)} is already settled by {record['settlement']['tx_hash']}",
        )
    record = {
        **record,
        "settlement": {
            "chain_id": chain_id,
            "tx_hash": tx_hash,
            "recorded_at": tx.now,
            "recorded_by": caller.who(),
        },
    }
    tx.put(key, record)
    tx.emit("SettlementRecorded", round_event(rnd, chain_id=chain_id, tx_hash=tx_hash))
    return record
