"""Rounds: opening one, then the update and vote exchanges (ARCHITECTURE.md "A round").

Rounds are numbered by depth in the model lineage: round r starts from the model of the last
finalized round r - 1 (round 0 is the trial's initial model). A round that halts, or a rollback,
makes the next ``open_round`` open the same number again as a new *attempt* (1, 2, ...); every
attempt keeps its own records, nothing is deleted. Arguments name only ``round``; the contract
resolves it to the current attempt. Phases and who moves them::

  open_round            admin|coordinator   -> SUBMIT       deadline = now + phase_seconds.submit
  commit_update         each silo           (commitment to its update, before the deadline)
  close_update_commits  admin|coordinator   -> REVEAL       when every enrolled silo with budget
                                                             committed, or after the deadline
  reveal_update         each committed silo (must match its commitment; privacy ledger updated)
  close_update_reveals  admin|coordinator   -> VOTE_COMMIT  revealed updates become the candidates
  commit_votes          each enrolled silo
  close_vote_commits    admin|coordinator   -> VOTE_REVEAL
  reveal_votes          each committed voter (a finding for every candidate but itself)
  close_voting          admin|coordinator   -> AGGREGATE    acceptance, weights, rewards computed
  record_aggregate      coordinator         -> ATTEST       must sum exactly the accepted updates
  attest_model          each enrolled silo  -> FINALIZED at quorum; any mismatch -> HALTED

(the last three are in ``chaincode.contract.finalisation``). A close step halts the round
instead when there is nothing to continue with (no commitments, no reveals, no vote
commitments, nothing accepted); ``abort_round`` (admin) halts it by hand. A close step is
``TOO_EARLY`` while someone is still expected and the deadline has not passed (submissions are
on time up to and including the deadline second; closing is allowed after it). The commit,
close-commits and reveal steps of both exchanges are one mechanism: ``chaincode.contract.ballots``.

Update commitment = ``sha256_hex(canonical_json({"trial_id", "round", "msp_id", "content_id",
"sha256", "sample_weight", "epsilon_spent_micro", "salt"}))``; votes commitment =
``sha256_hex(canonical_json({"trial_id", "round", "msp_id", "findings", "salt"}))``: see
``chaincode.commitments``. ``epsilon_spent_micro`` is what this round adds to the hospital's
cumulative epsilon (its accountant's cumulative epsilon after the round minus the cumulative on
the ledger), so the ledger's cumulative equals the accountant's. Epsilon is spent at reveal and
never refunded (a halted round or a rollback does not un-disclose an update).
"""

from __future__ import annotations

from typing import Any

from bcfl_common.records import ContentOwner, Finding, PrivacyEntry, Round, Trial, Update, Vote
from bcfl_common.vocabulary import MICRO, PROBLEMS
from chaincode.args import Args, check_identifier_key
from chaincode.commitments import update_commitment, votes_commitment
from chaincode.contract.ballots import Accepted, Ballot, closing
from chaincode.contract.context import Caller, Tx, fail
from chaincode.contract.dispatch import function
from chaincode.contract.store import (
    MAX_EPSILON_MICRO,
    MAX_ROUNDS,
    MAX_SAMPLE_WEIGHT,
    MAX_SCORE_MICRO,
    MAX_SILOS,
    content_key,
    emit_halted,
    enrolled,
    halt_round,
    has_budget_left,
    load_trial,
    next_phase,
    per_org_key,
    privacy_account,
    require_no_round_in_progress,
    require_trial_state,
    round_event,
    round_key,
    round_label,
    save_round,
    trial_key,
    trial_keys_key,
)
from chaincode.rules import MAX_NORM_MILLI


@function("open_round", "admin", "coordinator")
def open_round(tx: Tx, caller: Caller, a: Args) -> Round:
    """admin|coordinator; {trial_id, [round]} (the next round: one past the head); needs the
    trial keys and no round in progress; returns the round in SUBMIT; event RoundOpened."""
    trial = load_trial(tx, a.identifier("trial_id"))
    expected_round = a.integer("round", minimum=1, maximum=MAX_ROUNDS, default=None)
    a.done()
    trial_id = trial["trial_id"]
    require_trial_state(trial, "RUNNING")
    if tx.get(trial_keys_key(trial_id)) is None:
        fail(
            "WRONG_STATE",
            f"trial {trial_id!r} has no keys yet: an enrolled silo must record_trial_keys first",
        )
    require_no_round_in_progress(tx, trial)
    head = trial["head"]
    r = head["round"] + 1
    if r > trial["rounds"]:
        fail(
            "WRONG_STATE",
            f"trial {trial_id!r} has finalized all {trial['rounds']} rounds; complete it (or roll back)",
        )
    if expected_round is not None and expected_round != r:
        fail(
            "WRONG_STATE",
            f"round: got {expected_round}, the next round of trial {trial_id!r} is {r}",
            round=r,
        )
    attempt = trial["attempts"].get(str(r), 0) + 1
    deadline = tx.now + trial["phase_seconds"]["submit"]
    rnd: Round = {
        "trial_id": trial_id,
        "round": r,
        "attempt": attempt,
        "phase": "SUBMIT",
        "base": head,
        "enrolled": enrolled(tx, trial_id),
        "opened_at": tx.now,
        "opened_by": caller.who(),
        "phase_changed_at": tx.now,
        "deadline": deadline,
        "deadlines": {"submit": deadline},
        "committed": [],
        "candidates": [],
        "vote_committed": [],
        "accepted": [],
        "accepted_sha256s": [],
        "total_weight": 0,
        "participants": [],
        "attestation_quorum": None,
        "aggregate": None,
        "model": None,
        "finalized_at": None,
        "halt": None,
        "disputes": [],
    }
    tx.put(round_key(trial_id, r, attempt), rnd)
    opened: Trial = {
        **trial,
        "current": {"round": r, "attempt": attempt},
        "attempts": {**trial["attempts"], str(r): attempt},
    }
    tx.put(trial_key(trial_id), opened)
    tx.emit(
        "RoundOpened",
        round_event(rnd, base_model=head["model"], base_round=head["round"], deadline=deadline),
    )
    return rnd


# ---------------------------------------------------------------------------------------------
# Updates: commit (SUBMIT), reveal (REVEAL)
# ---------------------------------------------------------------------------------------------


class UpdateBallot(Ballot[Update]):
    """Update commitments carry the base model's sha256 (STALE otherwise) and need budget left
    (BUDGET_EXCEEDED); a reveal spends epsilon within the budget and claims its sha256 for the
    trial (DUPLICATE_CONTENT if another hospital revealed the same bytes first)."""

    kind = "update"
    commit_phase = "SUBMIT"
    reveal_phase = "REVEAL"
    noun = "update"
    committed_what = "an update"
    hash_verb = "hashes"
    reveal_fields = ("content_id", "sha256", "sample_weight", "epsilon_spent_micro")
    committed_field = "committed"
    committed_event = "UpdateCommitted"
    commits_closed_event = "UpdateCommitsClosed"
    revealed_event = "UpdateRevealed"
    committers_event_field = "committed"
    no_commitments = ("NO_COMMITMENTS", "no hospital committed an update before the deadline")
    only_enrolled_committers = False

    def parse_commit(self, a: Args) -> dict[str, Any]:
        return {"base_model_sha256": a.sha256("base_model_sha256")}

    def check_commit(
        self, tx: Tx, trial: Trial, rnd: Round, msp_id: str, fields: dict[str, Any]
    ) -> None:
        base_sha256 = fields["base_model_sha256"]
        expected = rnd["base"]["model"]["sha256"]
        if base_sha256 != expected:
            fail(
                "STALE",
                f"base_model_sha256: got {base_sha256}, expected the base model of {round_label(rnd)} "
                f"({expected}, the model of round {rnd['base']['round']})",
                field="base_model_sha256",
                value=base_sha256,
                expected=expected,
            )
        account = privacy_account(tx, trial, msp_id)
        if not has_budget_left(account):
            fail(
                "BUDGET_EXCEEDED",
                f"{msp_id} has spent its whole privacy budget in trial {trial['trial_id']!r} "
                f"({account['epsilon_spent_micro']} of {account['budget_micro']} micro-epsilon)",
                spent_micro=account["epsilon_spent_micro"],
                budget_micro=account["budget_micro"],
            )

    def expected_committers(self, tx: Tx, trial: Trial, members: list[str]) -> list[str]:
        # A hospital whose budget is spent cannot commit, so nobody waits for it.
        return [m for m in members if has_budget_left(privacy_account(tx, trial, m))]

    def parse_reveal(self, a: Args) -> dict[str, Any]:
        return {
            "content_id": a.content_id("content_id"),
            "sha256": a.sha256("sha256"),
            "sample_weight": a.integer("sample_weight", minimum=1, maximum=MAX_SAMPLE_WEIGHT),
            "epsilon_spent_micro": a.integer(
                "epsilon_spent_micro", minimum=0, maximum=MAX_EPSILON_MICRO
            ),
            "salt": a.salt("salt"),
        }

    def commitment_of(self, rnd: Round, msp_id: str, values: dict[str, Any]) -> str:
        return update_commitment(
            trial_id=rnd["trial_id"],
            round=rnd["round"],
            msp_id=msp_id,
            content_id=values["content_id"],
            sha256=values["sha256"],
            sample_weight=values["sample_weight"],
            epsilon_spent_micro=values["epsilon_spent_micro"],
            salt=values["salt"],
        )

    def accept_reveal(self, tx: Tx, trial: Trial, rnd: Round, record: Update) -> Accepted:
        trial_id, msp_id = trial["trial_id"], record["msp_id"]
        sha256, epsilon = record["sha256"], record["epsilon_spent_micro"]
        assert sha256 is not None and epsilon is not None  # parse_reveal set them
        first: ContentOwner | None = tx.get(content_key(trial_id, sha256))
        if first is not None and first["msp_id"] != msp_id:
            fail(
                "DUPLICATE_CONTENT",
                f"sha256: {sha256} was already revealed by {first['msp_id']} in round {first['round']} of trial {trial_id!r}",
                field="sha256",
                value=sha256,
                first_revealed_by=first["msp_id"],
            )
        account = privacy_account(tx, trial, msp_id)
        total = account["epsilon_spent_micro"] + epsilon
        budget = account["budget_micro"]
        if budget is not None and total > budget:
            fail(
                "BUDGET_EXCEEDED",
                f"epsilon_spent_micro: {epsilon} would bring {msp_id} to {total} micro-epsilon, over the trial's "
                f"budget of {budget} (already spent {account['epsilon_spent_micro']})",
                field="epsilon_spent_micro",
                value=epsilon,
                spent_micro=account["epsilon_spent_micro"],
                budget_micro=budget,
            )
        entry: PrivacyEntry = {
            "round": rnd["round"],
            "attempt": rnd["attempt"],
            "epsilon_micro": epsilon,
            "at": tx.now,
        }
        writes: list[tuple[str, Any]] = [
            (
                per_org_key("privacy", trial_id, msp_id),
                {**account, "epsilon_spent_micro": total, "entries": account["entries"] + [entry]},
            )
        ]
        if first is None:
            owner: ContentOwner = {
                "trial_id": trial_id,
                "sha256": sha256,
                "msp_id": msp_id,
                "round": rnd["round"],
                "attempt": rnd["attempt"],
            }
            writes.append((content_key(trial_id, sha256), owner))
        event = {
            "content_id": record["content_id"],
            "sha256": sha256,
            "sample_weight": record["sample_weight"],
            "epsilon_spent_micro": epsilon,
            "epsilon_cumulative_micro": total,
        }
        return writes, event


UPDATES = UpdateBallot()


@function("commit_update", "silo")
def commit_update(tx: Tx, caller: Caller, a: Args) -> Update:
    """silo; {trial_id, round, base_model_sha256, commitment}; in SUBMIT, on time; returns the
    update record (unrevealed); event UpdateCommitted."""
    return UPDATES.commit(tx, caller, a)


@function("close_update_commits", "admin", "coordinator")
def close_update_commits(tx: Tx, caller: Caller, a: Args) -> Round:
    """admin|coordinator; {trial_id, round}; SUBMIT -> REVEAL (or HALTED: NO_COMMITMENTS);
    returns the round; event UpdateCommitsClosed | RoundHalted."""
    return UPDATES.close_commits(tx, caller, a)


@function("reveal_update", "silo")
def reveal_update(tx: Tx, caller: Caller, a: Args) -> Update:
    """silo; {trial_id, round, content_id, sha256, sample_weight, epsilon_spent_micro, salt}; in
    REVEAL, on time; returns the update record; event UpdateRevealed."""
    return UPDATES.reveal(tx, caller, a)


@function("close_update_reveals", "admin", "coordinator")
def close_update_reveals(tx: Tx, caller: Caller, a: Args) -> Round:
    """admin|coordinator; {trial_id, round}; REVEAL -> VOTE_COMMIT with the enrolled hospitals'
    revealed updates as the candidates (or HALTED: NO_REVEALS); returns the round; event
    UpdateRevealsClosed | RoundHalted."""
    trial, rnd = closing(tx, a, "REVEAL")
    members = enrolled(tx, trial["trial_id"])
    revealed, _ = UPDATES.revealed(tx, rnd, members)
    candidates = sorted(u["msp_id"] for u in revealed)
    if not candidates:
        rnd = halt_round(
            tx, caller, rnd, "NO_REVEALS", "no committed update was revealed before the deadline"
        )
        emit_halted(tx, rnd)
        return rnd
    rnd = {**next_phase(tx, trial, rnd, "VOTE_COMMIT"), "candidates": candidates}
    save_round(tx, rnd)
    tx.emit(
        "UpdateRevealsClosed", round_event(rnd, candidates=candidates, deadline=rnd["deadline"])
    )
    return rnd


# ---------------------------------------------------------------------------------------------
# Votes: commit (VOTE_COMMIT), reveal (VOTE_REVEAL); closing the reveals is close_voting
# ---------------------------------------------------------------------------------------------


class VoteBallot(Ballot[Vote]):
    """A voter reveals exactly one finding for each candidate but itself (SELF_VOTE for its
    own): ``{score_micro, norm_milli, similarity_micro, problem}`` (``bcfl_common.records.
    Finding``). With a ``problem`` (one of PROBLEMS) the norm and similarity are null; without
    one both are required. Removed hospitals' commitments do not count when closing."""

    kind = "vote"
    commit_phase = "VOTE_COMMIT"
    reveal_phase = "VOTE_REVEAL"
    noun = "votes"
    committed_what = "its votes"
    hash_verb = "hash"
    reveal_fields = ("findings",)
    committed_field = "vote_committed"
    committed_event = "VotesCommitted"
    commits_closed_event = "VoteCommitsClosed"
    revealed_event = "VotesRevealed"
    committers_event_field = "voters"
    no_commitments = ("NO_VOTES", "no hospital committed votes before the deadline")
    only_enrolled_committers = True

    def parse_reveal(self, a: Args) -> dict[str, Any]:
        raw = a.mapping("findings", key=check_identifier_key, max_items=MAX_SILOS)
        salt = a.salt("salt")
        by_peer = Args(raw, prefix=a.field("findings") + ".")
        findings = {peer: parse_finding(by_peer.object(peer)) for peer in raw}
        by_peer.done()
        return {"findings": findings, "salt": salt}

    def check_reveal_args(self, a: Args, rnd: Round, msp_id: str, values: dict[str, Any]) -> None:
        findings = values["findings"]
        if msp_id in findings:
            fail(
                "SELF_VOTE",
                f"findings: {msp_id} judged its own update; a voter judges only its peers",
                field=f"findings.{msp_id}",
            )
        expected = sorted(set(rnd["candidates"]) - {msp_id})
        if sorted(findings) != expected:
            a.fail(
                "findings",
                sorted(findings),
                f"exactly one finding for each peer candidate {expected} "
                f"(missing {sorted(set(expected) - set(findings))}, not candidates {sorted(set(findings) - set(expected))})",
            )

    def commitment_of(self, rnd: Round, msp_id: str, values: dict[str, Any]) -> str:
        return votes_commitment(
            trial_id=rnd["trial_id"],
            round=rnd["round"],
            msp_id=msp_id,
            findings=values["findings"],
            salt=values["salt"],
        )

    def accept_reveal(self, tx: Tx, trial: Trial, rnd: Round, record: Vote) -> Accepted:
        return [], {"findings": record["findings"]}


def parse_finding(f: Args) -> Finding:
    """One finding, every field checked; stored with all four fields (null spelled out)."""
    finding: Finding = {
        "score_micro": f.integer("score_micro", minimum=-MAX_SCORE_MICRO, maximum=MAX_SCORE_MICRO),
        "norm_milli": f.integer("norm_milli", minimum=0, maximum=MAX_NORM_MILLI, default=None),
        "similarity_micro": f.integer("similarity_micro", minimum=0, maximum=MICRO, default=None),
        "problem": f.choice("problem", PROBLEMS, default=None),
    }
    f.done()
    problem = finding["problem"]
    for name, value in (
        ("norm_milli", finding["norm_milli"]),
        ("similarity_micro", finding["similarity_micro"]),
    ):
        if problem is not None and value is not None:
            f.fail(name, value, f"null: the finding reports the problem {problem!r}")
        if problem is None and value is None:
            f.fail(
                name,
                None,
                f"an integer (required unless a problem is reported: {', '.join(PROBLEMS)})",
            )
    return finding


VOTES = VoteBallot()


@function("commit_votes", "silo")
def commit_votes(tx: Tx, caller: Caller, a: Args) -> Vote:
    """silo; {trial_id, round, commitment}; in VOTE_COMMIT, on time; returns the vote record
    (unrevealed); event VotesCommitted."""
    return VOTES.commit(tx, caller, a)


@function("close_vote_commits", "admin", "coordinator")
def close_vote_commits(tx: Tx, caller: Caller, a: Args) -> Round:
    """admin|coordinator; {trial_id, round}; VOTE_COMMIT -> VOTE_REVEAL (or HALTED: NO_VOTES);
    returns the round; event VoteCommitsClosed | RoundHalted."""
    return VOTES.close_commits(tx, caller, a)


@function("reveal_votes", "silo")
def reveal_votes(tx: Tx, caller: Caller, a: Args) -> Vote:
    """silo; {trial_id, round, findings: {peer msp_id: {score_micro, norm_milli,
    similarity_micro, problem}}, salt}: one finding per peer candidate (``VoteBallot``); in
    VOTE_REVEAL, on time; returns the vote record; event VotesRevealed.

    score_micro: how much the candidate's update alone, applied to the base model, lowers the
    voter's validation log-loss (micro-units, +-MAX_SCORE_MICRO); norm_milli: ceil(1000 * L2
    norm of the decrypted update / its sample weight); similarity_micro: round(1e6 * the largest
    cosine similarity of that delta with every update revealed in an earlier round or attempt
    of the trial and every earlier aggregate delta), 0 when there is none; problem: null or one
    of PROBLEMS (then norm and similarity are null)."""
    return VOTES.reveal(tx, caller, a)
