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
  reveal_update         each committed silo (must match its commitment; epsilon charged from the
                                             DP schedule)
  close_update_reveals  admin|coordinator   -> VOTE_COMMIT  revealed updates become the candidates,
                                                             duplicate content excluded
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

Update commitment = ``sha256_hex(canonical_json({"trial_id", "round", "msp_id", "sha256",
"sample_weight", "salt"}))``; votes commitment = ``sha256_hex(canonical_json({"trial_id",
"round", "msp_id", "findings", "salt"}))``: see ``chaincode.commitments``. The reveal adds the
``content_id`` (where to fetch the bytes the sha256 fixes). An honest silo stores its update in
the artifact store only once the commitments are fixed (in REVEAL), so nobody can commit to
bytes it has not seen.

Update rules: ``sample_weight`` is at most the enrolment's ``training_records`` (INVALID_ARGUMENT).
Epsilon is charged by the contract, never reported by the hospital: with DP on, its k-th reveal
in the trial (k = 1, 2, ...; halted attempts and rolled-back rounds count) is charged
``epsilon_micro[k-1] - epsilon_micro[k-2]`` of its DP schedule entry (``epsilon_micro[0]`` for
the first), and a reveal past the schedule's ``rounds`` entries is BUDGET_EXCEEDED (as is a
commitment with no reveal left); with DP off each reveal is charged 0. Epsilon is spent at reveal
and never refunded (a halted round or a rollback does not un-disclose an update).

Duplicates: a reveal of a sha256 revealed in an EARLIER round or attempt of the trial (by anyone,
itself included) is DUPLICATE_CONTENT. Reveals of the same sha256 in the SAME attempt are all
recorded; ``close_update_reveals`` gives the content to the earliest commitment (``committed_at``)
when it is more than the trial's ``clock_tolerance_seconds`` earlier than every other, to nobody
otherwise (on Fabric a commitment's time is its client's, within the peers' window), and the
others are not candidates: they are listed in the
round's ``excluded`` (reason ``duplicate_content``, the sha256, the owner). Who reveals first
never matters; removed hospitals' reveals count when deciding the owner (a copier gains nothing
from its victim's removal).
"""

from __future__ import annotations

from typing import Any, NoReturn

from bcfl_common.records import (
    ContentOwner,
    Enrolment,
    Exclusion,
    Finding,
    PrivacyAccount,
    PrivacyEntry,
    Round,
    Trial,
    Update,
    Vote,
)
from bcfl_common.vocabulary import MICRO, PROBLEMS
from chaincode.args import Args, check_identifier_key
from chaincode.commitments import update_commitment, votes_commitment
from chaincode.contract.ballots import Accepted, Ballot, closing
from chaincode.contract.context import Caller, Tx, fail
from chaincode.contract.dispatch import function
from chaincode.contract.liveness import round_failed, shortfall
from chaincode.contract.store import (
    MAX_ROUNDS,
    MAX_SAMPLE_WEIGHT,
    MAX_SCORE_MICRO,
    MAX_SILOS,
    content_key,
    deadline_factor,
    enrolled,
    enrolment_key,
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
    round_records,
    save_round,
    schedule_entry,
    trial_key,
    trial_keys_key,
)
from chaincode.rules import MAX_NORM_MILLI, content_owner


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
    if r > trial["final_round"]:
        fail(
            "WRONG_STATE",
            f"trial {trial_id!r} has finalized all {trial['final_round']} rounds of its plan; "
            "complete it (or roll back)",
        )
    if expected_round is not None and expected_round != r:
        fail(
            "WRONG_STATE",
            f"round: got {expected_round}, the next round of trial {trial_id!r} is {r}",
            round=r,
        )
    attempt = trial["attempts"].get(str(r), 0) + 1
    deadline = tx.now + trial["phase_seconds"]["submit"] * deadline_factor(trial)
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
        "excluded": {},
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
        "sequence": sum(trial["attempts"].values()) + 1,  # each open adds one attempt
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
    """Update commitments carry the base model's sha256 (STALE otherwise) and need a reveal left
    in the hospital's DP schedule (BUDGET_EXCEEDED); a reveal's weight is bounded by the
    enrolment's training records, its sha256 must not have been revealed in an earlier round or
    attempt (DUPLICATE_CONTENT), and it is charged the schedule's next epsilon difference."""

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
        if not has_budget_left(trial, account):
            fail(
                "BUDGET_EXCEEDED",
                f"{msp_id} has made all {len(account['entries'])} reveals its DP schedule allows in trial "
                f"{trial['trial_id']!r} ({account['epsilon_spent_micro']} of "
                f"{account['budget_micro']} micro-epsilon spent)",
                reveals=len(account["entries"]),
                spent_micro=account["epsilon_spent_micro"],
                budget_micro=account["budget_micro"],
            )

    def expected_committers(self, tx: Tx, trial: Trial, members: list[str]) -> list[str]:
        # A hospital whose budget is spent cannot commit, so nobody waits for it.
        return [m for m in members if has_budget_left(trial, privacy_account(tx, trial, m))]

    def too_few(
        self, tx: Tx, trial: Trial, rnd: Round, committed: list[str], members: list[str]
    ) -> tuple[str, str] | None:
        """Fewer than min_silos enrolled committers, not counting those who withheld a reveal
        in an earlier failed attempt of this streak: a hospital that commits and never reveals
        would otherwise make the honest ones reveal (and be charged) again and again for a
        round that then fails short of candidates."""
        withheld = withheld_reveals(tx, trial, rnd)
        counted = [m for m in committed if m in members and m not in withheld]
        if len(counted) < trial["min_silos"]:
            unheld = sorted(set(committed) & withheld)
            return shortfall(
                trial,
                "enrolled hospitals committed an update",
                counted,
                f", not counting {', '.join(unheld)} (withheld a reveal)" if unheld else "",
            )
        return None

    def parse_reveal(self, a: Args) -> dict[str, Any]:
        return {
            "content_id": a.content_id("content_id"),
            "sha256": a.sha256("sha256"),
            "sample_weight": a.integer("sample_weight", minimum=1, maximum=MAX_SAMPLE_WEIGHT),
            "salt": a.salt("salt"),
        }

    def commitment_of(self, rnd: Round, msp_id: str, values: dict[str, Any]) -> str:
        return update_commitment(
            trial_id=rnd["trial_id"],
            round=rnd["round"],
            msp_id=msp_id,
            sha256=values["sha256"],
            sample_weight=values["sample_weight"],
            salt=values["salt"],
        )

    def accept_reveal(self, tx: Tx, trial: Trial, rnd: Round, record: Update) -> Accepted:
        """Checks the weight and the content, charges epsilon: completes ``record`` with the
        charged ``epsilon_spent_micro`` and writes the privacy account and the content record."""
        trial_id, msp_id = trial["trial_id"], record["msp_id"]
        sha256, weight = record["sha256"], record["sample_weight"]
        assert sha256 is not None and weight is not None  # parse_reveal set them
        check_registered_weight(tx, trial_id, msp_id, weight)
        content: ContentOwner | None = tx.get(content_key(trial_id, sha256))
        if content is not None and (
            content.get("disclosed")  # its author opened it: whatever the attempt, it is taken
            or (content["round"], content["attempt"]) != (rnd["round"], rnd["attempt"])
        ):
            refuse_seen_content(trial_id, content)
        account = privacy_account(tx, trial, msp_id)
        epsilon = scheduled_charge(tx, trial, account)
        record["epsilon_spent_micro"] = epsilon
        total = account["epsilon_spent_micro"] + epsilon
        entry: PrivacyEntry = {
            "round": rnd["round"],
            "attempt": rnd["attempt"],
            "epsilon_micro": epsilon,
            "at": tx.now,
        }
        revealed_by = [] if content is None else content["revealed_by"]
        owner: ContentOwner = {
            "trial_id": trial_id,
            "sha256": sha256,
            "round": rnd["round"],
            "attempt": rnd["attempt"],
            "revealed_by": sorted([*revealed_by, msp_id]),
            "msp_id": None,
            "decided_at": None,
        }
        writes: list[tuple[str, Any]] = [
            (
                per_org_key("privacy", trial_id, msp_id),
                {**account, "epsilon_spent_micro": total, "entries": account["entries"] + [entry]},
            ),
            (content_key(trial_id, sha256), owner),
        ]
        event = {
            "content_id": record["content_id"],
            "sha256": sha256,
            "sample_weight": weight,
            "epsilon_spent_micro": epsilon,
            "epsilon_cumulative_micro": total,
        }
        return writes, event


def check_registered_weight(tx: Tx, trial_id: str, msp_id: str, weight: int) -> None:
    """INVALID_ARGUMENT for a sample weight over the training records the hospital registered."""
    enrolment: Enrolment | None = tx.get(enrolment_key(trial_id, msp_id))
    registered = 0 if enrolment is None else enrolment["training_records"]
    if weight > registered:
        fail(
            "INVALID_ARGUMENT",
            f"sample_weight: got {weight}, expected at most {registered}, the training_records "
            f"{msp_id} registered"
            + ("" if enrolment is None else f" (dataset {enrolment['dataset_id']!r})"),
            field="sample_weight",
            value=weight,
            expected=f"at most {registered}",
        )


def refuse_seen_content(trial_id: str, content: ContentOwner) -> NoReturn:
    """DUPLICATE_CONTENT: these bytes were revealed (or disclosed) in an earlier attempt."""
    verb = "disclosed" if content.get("disclosed") else "revealed"
    fail(
        "DUPLICATE_CONTENT",
        f"sha256: {content['sha256']} was already {verb} in round {content['round']} (attempt "
        f"{content['attempt']}) of trial {trial_id!r} by {content['revealed_by']}; an "
        "update is disclosed once",
        field="sha256",
        value=content["sha256"],
        round=content["round"],
        attempt=content["attempt"],
        revealed_by=content["revealed_by"],
    )


def withheld_reveals(tx: Tx, trial: Trial, rnd: Round) -> set[str]:
    """Hospitals that committed but did not reveal in the attempts of this round that failed in
    a row just before ``rnd`` (after their commit phase had closed)."""
    withheld: set[str] = set()
    r, a = rnd["round"], rnd["attempt"]
    for earlier in range(max(1, a - trial.get("failed_attempts", 0)), a):
        before: Round | None = tx.get(round_key(trial["trial_id"], r, earlier))
        halt = None if before is None else before["halt"]
        if halt is None or halt.get("phase", "SUBMIT") == "SUBMIT":
            continue
        withheld |= {
            u["msp_id"]
            for u in round_records(tx, "update", trial["trial_id"], r, earlier)
            if not u["revealed"]
        }
    return withheld


def scheduled_charge(tx: Tx, trial: Trial, account: PrivacyAccount) -> int:
    """The epsilon of the hospital's next reveal: 0 with DP off, else the next difference of
    its schedule entry's cumulative epsilons (BUDGET_EXCEEDED past its end)."""
    if not trial["dp"]["enabled"]:
        return 0
    msp_id = account["msp_id"]
    entry = schedule_entry(tx, trial, msp_id)
    if entry is None:  # start_trial records an entry for every hospital enrolled in a DP trial
        fail(
            "BUDGET_EXCEEDED",
            f"{msp_id} has no entry in the DP schedule of trial {trial['trial_id']!r}, "
            "so no epsilon can be charged to it",
            msp_id=msp_id,
        )
    cumulative = entry["epsilon_micro"]
    k = len(account["entries"])
    if k >= len(cumulative):
        fail(
            "BUDGET_EXCEEDED",
            f"{msp_id} has made all {len(cumulative)} reveals its DP schedule allows in trial "
            f"{trial['trial_id']!r} ({account['epsilon_spent_micro']} of {cumulative[-1]} "
            "micro-epsilon spent)",
            reveals=k,
            spent_micro=account["epsilon_spent_micro"],
            budget_micro=cumulative[-1],
        )
    return cumulative[k] - (cumulative[k - 1] if k else 0)


def duplicate_content(
    revealed: list[Update], tolerance_seconds: int
) -> tuple[dict[str, Exclusion], dict[str, str | None]]:
    """(the excluded reveals by MSP id, the owner of each revealed sha256): content revealed by
    several hospitals in one attempt goes to the earliest commitment when it is earlier than the
    others by more than the trial's clock tolerance, to nobody otherwise
    (``chaincode.rules.content_owner``)."""
    by_sha256: dict[str, list[Update]] = {}
    for update in revealed:
        assert update["sha256"] is not None
        by_sha256.setdefault(update["sha256"], []).append(update)
    excluded: dict[str, Exclusion] = {}
    owners: dict[str, str | None] = {}
    for sha256, group in sorted(by_sha256.items()):
        owner = content_owner({u["msp_id"]: u["committed_at"] for u in group}, tolerance_seconds)
        owners[sha256] = owner
        for update in group:
            if update["msp_id"] != owner:
                excluded[update["msp_id"]] = {
                    "reason": "duplicate_content",
                    "sha256": sha256,
                    "owner": owner,
                }
    return excluded, owners


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
    """silo; {trial_id, round, content_id, sha256, sample_weight, salt}; in REVEAL, on time;
    returns the update record, with the epsilon the contract charged; event UpdateRevealed."""
    return UPDATES.reveal(tx, caller, a)


@function("close_update_reveals", "admin", "coordinator")
def close_update_reveals(tx: Tx, caller: Caller, a: Args) -> Round:
    """admin|coordinator; {trial_id, round}; REVEAL -> VOTE_COMMIT with the enrolled hospitals'
    revealed updates as the candidates, less those ``excluded`` as duplicate content (or HALTED:
    NO_REVEALS, or NO_CANDIDATES when every reveal was excluded); decides the owner of each
    revealed sha256; returns the round; event UpdateRevealsClosed | RoundHalted."""
    trial, rnd = closing(tx, a, "REVEAL")
    trial_id = trial["trial_id"]
    members = enrolled(tx, trial_id)
    revealed, _ = UPDATES.revealed(tx, rnd, members)
    everyone = [u for u in UPDATES.records(tx, rnd) if u["revealed"]]
    excluded, owners = duplicate_content(everyone, trial["clock_tolerance_seconds"])
    for sha256, owner in owners.items():
        content: ContentOwner = tx.get(content_key(trial_id, sha256))
        tx.put(content_key(trial_id, sha256), {**content, "msp_id": owner, "decided_at": tx.now})
    candidates = sorted(u["msp_id"] for u in revealed if u["msp_id"] not in excluded)
    rnd = {**rnd, "excluded": excluded, "candidates": candidates}
    if len(candidates) < trial["min_silos"]:
        code, reason = (
            shortfall(trial, "candidate updates", candidates)
            if candidates
            else ("NO_CANDIDATES", "every revealed update was excluded as duplicate content")
            if revealed
            else ("NO_REVEALS", "no committed update was revealed before the deadline")
        )
        return round_failed(tx, caller, trial, rnd, code, reason)
    rnd = {**next_phase(tx, trial, rnd, "VOTE_COMMIT"), "candidates": candidates}
    save_round(tx, rnd)
    tx.emit(
        "UpdateRevealsClosed",
        round_event(
            rnd, candidates=candidates, excluded=sorted(excluded), deadline=rnd["deadline"]
        ),
    )
    return rnd


# ---------------------------------------------------------------------------------------------
# Votes: commit (VOTE_COMMIT), reveal (VOTE_REVEAL); closing the reveals is close_voting
# ---------------------------------------------------------------------------------------------


class VoteBallot(Ballot[Vote]):
    """A voter reveals exactly one finding for each candidate but itself (SELF_VOTE for its
    own): ``{score_micro, [score_se_micro], norm_milli, similarity_micro, problem}``
    (``bcfl_common.records.Finding``). With a ``problem`` (one of PROBLEMS) the error, norm and
    similarity are null; without one the norm and similarity are required. Removed hospitals'
    commitments do not count when closing."""

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
    """One finding, every field checked; stored with every field (null spelled out);
    ``score_se_micro`` is optional (null: the voter reports no standard error)."""
    finding: Finding = {
        "score_micro": f.integer("score_micro", minimum=-MAX_SCORE_MICRO, maximum=MAX_SCORE_MICRO),
        "score_se_micro": f.integer(
            "score_se_micro", minimum=0, maximum=MAX_SCORE_MICRO, default=None
        ),
        "norm_milli": f.integer("norm_milli", minimum=0, maximum=MAX_NORM_MILLI, default=None),
        "similarity_micro": f.integer("similarity_micro", minimum=0, maximum=MICRO, default=None),
        "problem": f.choice("problem", PROBLEMS, default=None),
    }
    f.done()
    problem = finding["problem"]
    if problem is not None and finding["score_se_micro"] is not None:
        f.fail(
            "score_se_micro",
            finding["score_se_micro"],
            f"null: the finding reports the problem {problem!r}",
        )
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
    """silo; {trial_id, round, findings: {peer msp_id: {score_micro, [score_se_micro],
    norm_milli, similarity_micro, problem}}, salt}: one finding per peer candidate
    (``VoteBallot``); in VOTE_REVEAL, on time; returns the vote record; event VotesRevealed.

    score_micro: how much the candidate's update alone, applied to the base model, lowers the
    voter's validation log-loss (micro-units, +-MAX_SCORE_MICRO); score_se_micro: its standard
    error over the voter's validation rows (optional); norm_milli: ceil(1000 * L2 norm of the
    decrypted update); similarity_micro: round(1e6 * the largest
    cosine similarity of that delta with every update revealed in an earlier round or attempt
    of the trial and every earlier aggregate delta), 0 when there is none; problem: null or one
    of PROBLEMS (then norm and similarity are null)."""
    return VOTES.reveal(tx, caller, a)
