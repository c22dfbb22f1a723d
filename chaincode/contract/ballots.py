"""Commit-reveal, once for both exchanges of a round: updates, then votes.

Each exchange runs the same three steps, and the protocol-specific checks are hooks of its
``Ballot`` (``chaincode.contract.rounds`` defines the two):

``commit``         silo, in ``commit_phase`` and on time: stores ``{..., commitment, revealed:
                   false}`` under (kind, [trial_id, r, a, msp_id]). Refused: not RUNNING, not
                   enrolled, wrong phase (LATE once it moved on), after the deadline (LATE), a
                   second commitment (DUPLICATE), then ``check_commit``.
``close_commits``  admin|coordinator, in ``commit_phase``: TOO_EARLY while someone in
                   ``expected_committers`` has not committed and the deadline has not passed; fails
                   the round (``liveness.round_failed``: ``no_commitments`` when nobody
                   committed, ``too_few`` when too few did); otherwise moves to
                   ``reveal_phase`` with the committers in the round's ``committed_field``.
``reveal``         silo, in ``reveal_phase`` and on time: ``check_reveal_args`` first, then
                   NOT_COMMITTED without a commitment, DUPLICATE for a second reveal,
                   COMMITMENT_MISMATCH unless the revealed values hash to the commitment
                   (``chaincode.commitments``), then ``accept_reveal`` (its checks, and the other
                   records the reveal writes).

``revealed`` is the shared start of the step that closes the reveals (``close_update_reveals``,
``close_voting``): the enrolled organisations' records, TOO_EARLY while one is unrevealed and the
deadline has not passed.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Generic, TypeVar, cast

from bcfl_common.records import Round, Trial, Update, Vote
from bcfl_common.vocabulary import Phase
from chaincode.args import Args
from chaincode.contract.context import Caller, Tx, fail
from chaincode.contract.liveness import round_failed
from chaincode.contract.store import (
    current_round_in,
    enrolled,
    next_phase,
    own_organisation,
    per_round_key,
    require_closable,
    require_enrolled_in_running,
    require_on_time,
    round_args,
    round_event,
    round_label,
    round_records,
    save_round,
)

R = TypeVar("R", Update, Vote)

# Extra writes of a reveal (key, record) and the extra fields of its event.
Accepted = tuple[list[tuple[str, Any]], dict[str, Any]]


class Ballot(Generic[R]):
    """One commit-reveal exchange: its record kind, phases, wording, and protocol-specific hooks."""

    kind: str  # the record type: "update" | "vote"
    commit_phase: Phase
    reveal_phase: Phase
    noun: str  # "update" | "votes": "made no update commitment", "the revealed votes of ..."
    committed_what: str  # "an update" | "its votes": "already committed an update in ..."
    hash_verb: str  # "hashes" | "hash": agrees with noun
    reveal_fields: tuple[str, ...]  # null until revealed (besides salt and revealed_at)
    committed_field: str  # the round's list of committers: "committed" | "vote_committed"
    committed_event: str  # UpdateCommitted | VotesCommitted
    commits_closed_event: str  # UpdateCommitsClosed | VoteCommitsClosed
    revealed_event: str  # UpdateRevealed | VotesRevealed
    committers_event_field: str  # the committers in the CommitsClosed event
    no_commitments: tuple[str, str]  # halt code and reason when nobody committed
    only_enrolled_committers: bool  # do commitments of removed hospitals count when closing?

    # -- hooks ------------------------------------------------------------------------------
    def parse_commit(self, a: Args) -> dict[str, Any]:
        """Arguments committed besides ``commitment`` (parsed before it)."""
        return {}

    def check_commit(
        self, tx: Tx, trial: Trial, rnd: Round, msp_id: str, fields: dict[str, Any]
    ) -> None:
        """Protocol checks of a commitment, after the DUPLICATE check."""

    def expected_committers(self, tx: Tx, trial: Trial, members: list[str]) -> list[str]:
        """Who is waited for before the deadline when closing the commit phase."""
        return members

    def too_few(
        self, tx: Tx, trial: Trial, rnd: Round, committed: list[str], members: list[str]
    ) -> tuple[str, str] | None:
        """Halt code and reason when the committers cannot carry the round (None: enough)."""
        return None

    def parse_reveal(self, a: Args) -> dict[str, Any]:
        """The revealed values, ``salt`` included, as stored in the record."""
        raise NotImplementedError

    def check_reveal_args(self, a: Args, rnd: Round, msp_id: str, values: dict[str, Any]) -> None:
        """Checks of the revealed values against the round, before the commitment is looked up."""

    def commitment_of(self, rnd: Round, msp_id: str, values: dict[str, Any]) -> str:
        raise NotImplementedError

    def accept_reveal(self, tx: Tx, trial: Trial, rnd: Round, record: R) -> Accepted:
        """Checks after the commitment matched; the reveal's other writes and event fields."""
        return [], {}

    # -- the mechanism ----------------------------------------------------------------------
    def commit(self, tx: Tx, caller: Caller, a: Args) -> R:
        trial, r = round_args(tx, a)
        msp_id = own_organisation(a, caller)
        fields = self.parse_commit(a)
        commitment = a.sha256("commitment")
        a.done()
        require_enrolled_in_running(tx, trial, msp_id)
        rnd = current_round_in(tx, trial, r, self.commit_phase)
        require_on_time(tx, rnd)
        key = per_round_key(self.kind, rnd["trial_id"], r, rnd["attempt"], msp_id)
        if tx.get(key) is not None:
            fail(
                "DUPLICATE",
                f"{msp_id} already committed {self.committed_what} in {round_label(rnd)}",
                msp_id=msp_id,
            )
        self.check_commit(tx, trial, rnd, msp_id, fields)
        record = {
            "trial_id": rnd["trial_id"],
            "round": r,
            "attempt": rnd["attempt"],
            "msp_id": msp_id,
            **fields,
            "commitment": commitment,
            # a client dates its own transaction (within the ledger's window): a commitment
            # dated before its phase started counts from the phase's start
            "committed_at": max(tx.now, rnd["phase_changed_at"]),
            "revealed": False,
            **{name: None for name in self.reveal_fields},
            "salt": None,
            "revealed_at": None,
        }
        tx.put(key, record)
        tx.emit(
            self.committed_event,
            round_event(rnd, msp_id=msp_id, commitment=commitment),
        )
        return cast(R, record)

    def close_commits(self, tx: Tx, caller: Caller, a: Args) -> Round:
        trial, rnd = closing(tx, a, self.commit_phase)
        members = enrolled(tx, trial["trial_id"])
        committed = sorted(
            rec["msp_id"]
            for rec in self.records(tx, rnd)
            if not self.only_enrolled_committers or rec["msp_id"] in members
        )
        waiting = set(self.expected_committers(tx, trial, members)) - set(committed)
        require_closable(tx, rnd, sorted(waiting))
        failure = (
            self.no_commitments
            if not committed
            else self.too_few(tx, trial, rnd, committed, members)
        )
        if failure is not None:
            # The failed attempt keeps who did commit: whom the shortfall was short of is seen.
            short = cast(Round, {**rnd, self.committed_field: committed})
            return round_failed(tx, caller, trial, short, *failure)
        moved = next_phase(tx, trial, rnd, self.reveal_phase)
        rnd = cast(Round, {**moved, self.committed_field: committed})
        save_round(tx, rnd)
        tx.emit(
            self.commits_closed_event,
            round_event(rnd, **{self.committers_event_field: committed}, deadline=rnd["deadline"]),
        )
        return rnd

    def reveal(self, tx: Tx, caller: Caller, a: Args) -> R:
        trial, r = round_args(tx, a)
        msp_id = own_organisation(a, caller)
        values = self.parse_reveal(a)
        a.done()
        require_enrolled_in_running(tx, trial, msp_id)
        rnd = current_round_in(tx, trial, r, self.reveal_phase)
        require_on_time(tx, rnd)
        self.check_reveal_args(a, rnd, msp_id, values)
        key = per_round_key(self.kind, rnd["trial_id"], r, rnd["attempt"], msp_id)
        committed: R | None = tx.get(key)
        if committed is None:
            fail(
                "NOT_COMMITTED",
                f"{msp_id} made no {self.noun} commitment in {round_label(rnd)}",
                msp_id=msp_id,
            )
        if committed["revealed"] or committed.get("disclosed_at") is not None:
            # a disclosed update (``disclose_update``) was charged and is no candidate
            fail(
                "DUPLICATE",
                f"{msp_id} already {'revealed' if committed['revealed'] else 'disclosed'} its "
                f"{self.noun} in {round_label(rnd)}",
                msp_id=msp_id,
            )
        recomputed = self.commitment_of(rnd, msp_id, values)
        if recomputed != committed["commitment"]:
            fail(
                "COMMITMENT_MISMATCH",
                f"the revealed {self.noun} of {msp_id} {self.hash_verb} to {recomputed}, "
                f"not to its commitment {committed['commitment']}",
                recomputed=recomputed,
                commitment=committed["commitment"],
            )
        record = cast(R, {**committed, **values, "revealed": True, "revealed_at": tx.now})
        writes, event = self.accept_reveal(tx, trial, rnd, record)
        tx.put(key, record)
        for other_key, other in writes:
            tx.put(other_key, other)
        tx.emit(self.revealed_event, round_event(rnd, msp_id=msp_id, **event))
        return record

    def records(self, tx: Tx, rnd: Round) -> list[R]:
        """Every record of this exchange in the round attempt, by MSP id."""
        return round_records(tx, self.kind, rnd["trial_id"], rnd["round"], rnd["attempt"])

    def revealed(self, tx: Tx, rnd: Round, members: Collection[str]) -> tuple[list[R], list[str]]:
        """(the revealed records, who committed but did not reveal) among ``members``, by MSP
        id; TOO_EARLY while someone has not revealed and the deadline has not passed."""
        records = [rec for rec in self.records(tx, rnd) if rec["msp_id"] in members]
        missing = sorted(rec["msp_id"] for rec in records if not rec["revealed"])
        require_closable(tx, rnd, missing)
        return [rec for rec in records if rec["revealed"]], missing


def closing(tx: Tx, a: Args, phase: Phase) -> tuple[Trial, Round]:
    """The start of every close step: ``{trial_id, round}``, the trial RUNNING, round r current
    and in ``phase``."""
    trial, r = round_args(tx, a)
    a.done()
    return trial, current_round_in(tx, trial, r, phase)
