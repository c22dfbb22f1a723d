"""An update whose bytes went out but whose reveal did not land: disclosed, charged, owned.

A silo uploads its encrypted update only once the commitments are fixed, then reveals it. When
the reveal is refused after the upload (LATE: the deadline passed in between) or never sent (the
agent stopped), the bytes sit in the listable store and nothing on the ledger says whose they
are: a copier could commit to them in a later round and reveal them as its own, and the epsilon
of a release that happened was never charged. ``disclose_update`` lets the author open its
commitment once the attempt's reveals are over: the contract records the content as the
author's (no later attempt may reveal it: DUPLICATE_CONTENT) and charges the next epsilon of the
author's schedule, as a reveal would. The update is no candidate: a disclosure decides nothing of
the round.

An author that comes back after a copier revealed its stale bytes still discloses them: a
commitment of an earlier attempt (or, in the same attempt, more than the clock tolerance
earlier) proves whose they are (bytes reach the store only after their author's commitment is
fixed), so the disclosure takes the content and marks the copier's update ``claimed_by``
(event field ``claimed_from``), and the author's release of its data is charged. What the copy
earned in its round stays paid; the claim is the evidence an auditor and the admin act on.
"""

from __future__ import annotations

from bcfl_common.records import Claim, ContentOwner, PrivacyEntry, Round, Trial, Update
from chaincode.args import Args
from chaincode.commitments import update_commitment
from chaincode.contract.context import Caller, Tx, fail
from chaincode.contract.dispatch import function
from chaincode.contract.rounds import (
    check_registered_weight,
    refuse_seen_content,
    scheduled_charge,
)
from chaincode.contract.store import (
    MAX_SAMPLE_WEIGHT,
    content_key,
    own_organisation,
    per_org_key,
    per_round_key,
    privacy_account,
    require_enrolled_in_running,
    round_args,
    round_key,
    round_label,
)


def reveals_over(tx: Tx, rnd: Round) -> bool:
    """Whether the attempt's commitments were fixed and no reveal can land in it any more: it
    left its reveal phase (closed, or halted after the commit phase), or the reveal deadline
    has passed. An attempt halted while committing never fixed its commitments: its bytes were
    never due in the store, and a disclosure would only let a copier that committed to someone
    else's bytes claim them."""
    halt = rnd["halt"]
    if halt is not None:
        return halt.get("phase", "SUBMIT") != "SUBMIT"
    if rnd["phase"] not in ("SUBMIT", "REVEAL"):
        return True
    return rnd["phase"] == "REVEAL" and rnd["deadline"] is not None and tx.now > rnd["deadline"]


@function("disclose_update", "silo")
def disclose_update(tx: Tx, caller: Caller, a: Args) -> Update:
    """silo, enrolled in the RUNNING trial; {trial_id, round, attempt, content_id, sha256,
    sample_weight, salt}: the opening of its own unrevealed commitment of that attempt, where its
    bytes are in the store (voters compare later candidates with them), once the attempt's
    reveals are over (``reveals_over``); records the
    content as the caller's (``content`` with ``disclosed_at``) and charges the next epsilon of
    its DP schedule (0 with DP off); returns the update record (still ``revealed`` false, with
    ``disclosed_at``); event UpdateDisclosed. Refused: WRONG_STATE / NOT_ENROLLED as a reveal,
    TOO_EARLY while the reveal is still open (reveal it instead) or the attempt halted before its
    commitments were fixed, NOT_COMMITTED, DUPLICATE when it was revealed or disclosed already,
    COMMITMENT_MISMATCH, DUPLICATE_CONTENT when the bytes were revealed or disclosed already
    (unless this commitment provably came first, ``claimable_copies``: then the disclosure
    claims them), and BUDGET_EXCEEDED past the schedule's end."""
    trial, r = round_args(tx, a)
    trial_id = trial["trial_id"]
    attempt = a.integer("attempt", minimum=1, maximum=10**6)
    msp_id = own_organisation(a, caller)
    content_id = a.content_id("content_id")
    sha256 = a.sha256("sha256")
    weight = a.integer("sample_weight", minimum=1, maximum=MAX_SAMPLE_WEIGHT)
    salt = a.salt("salt")
    a.done()
    require_enrolled_in_running(tx, trial, msp_id)
    rnd: Round | None = tx.get(round_key(trial_id, r, attempt))
    if rnd is None:
        fail("NOT_FOUND", f"round {r} (attempt {attempt}) of trial {trial_id!r} does not exist")
    key = per_round_key("update", trial_id, r, attempt, msp_id)
    record: Update | None = tx.get(key)
    if record is None:
        fail("NOT_COMMITTED", f"{msp_id} made no update commitment in {round_label(rnd)}")
    if record["revealed"] or record.get("disclosed_at") is not None:
        fail(
            "DUPLICATE",
            f"{msp_id} already {'revealed' if record['revealed'] else 'disclosed'} its update "
            f"in {round_label(rnd)}",
            msp_id=msp_id,
        )
    if not reveals_over(tx, rnd):
        fail(
            "TOO_EARLY",
            f"{round_label(rnd)} is in phase {rnd['phase']} until {rnd['deadline']}: "
            + (
                "reveal the update instead"
                if rnd["phase"] == "REVEAL"
                else "the commitments are not fixed yet"
            ),
            phase=rnd["phase"],
            deadline=rnd["deadline"],
        )
    recomputed = update_commitment(
        trial_id=trial_id, round=r, msp_id=msp_id, sha256=sha256, sample_weight=weight, salt=salt
    )
    if recomputed != record["commitment"]:
        fail(
            "COMMITMENT_MISMATCH",
            f"the disclosed update of {msp_id} hashes to {recomputed}, not to its commitment "
            f"{record['commitment']}",
            recomputed=recomputed,
            commitment=record["commitment"],
        )
    check_registered_weight(tx, trial_id, msp_id, weight)
    content: ContentOwner | None = tx.get(content_key(trial_id, sha256))
    copies: list[tuple[str, Update]] = []
    if content is not None:
        copies = claimable_copies(tx, trial, rnd, record, content)
        if not copies:
            refuse_seen_content(trial_id, content)
    account = privacy_account(tx, trial, msp_id)
    epsilon = scheduled_charge(tx, trial, account)
    total = account["epsilon_spent_micro"] + epsilon
    entry: PrivacyEntry = {"round": r, "attempt": attempt, "epsilon_micro": epsilon, "at": tx.now}
    disclosed: Update = {
        **record,
        "content_id": content_id,
        "sha256": sha256,
        "sample_weight": weight,
        "salt": salt,
        "epsilon_spent_micro": epsilon,
        "disclosed_at": tx.now,
    }
    owner: ContentOwner = {
        "trial_id": trial_id,
        "sha256": sha256,
        "round": r,
        "attempt": attempt,
        "revealed_by": [msp_id],
        "msp_id": msp_id,
        "decided_at": tx.now,
        "disclosed": True,
    }
    claim: Claim = {"msp_id": msp_id, "round": r, "attempt": attempt, "at": tx.now}
    for copy_key, copy in copies:  # proven copies: their author had the bytes later
        tx.put(copy_key, {**copy, "claimed_by": claim})
    if copies:
        owner["claimed_from"] = sorted(
            (
                {"msp_id": c["msp_id"], "round": c["round"], "attempt": c["attempt"]}
                for _, c in copies
            ),
            key=lambda ref: (ref["msp_id"], ref["round"], ref["attempt"]),
        )
    tx.put(key, disclosed)
    tx.put(content_key(trial_id, sha256), owner)
    tx.put(
        per_org_key("privacy", trial_id, msp_id),
        {**account, "epsilon_spent_micro": total, "entries": account["entries"] + [entry]},
    )
    tx.emit(
        "UpdateDisclosed",
        {
            "trial_id": trial_id,
            "round": r,
            "attempt": attempt,
            "msp_id": msp_id,
            "sha256": sha256,
            "epsilon_spent_micro": epsilon,
            "epsilon_cumulative_micro": total,
            "claimed_from": sorted(c["msp_id"] for _, c in copies),
        },
    )
    return disclosed


def claimable_copies(
    tx: Tx, trial: Trial, rnd: Round, record: Update, content: ContentOwner
) -> list[tuple[str, Update]]:
    """The update records (key, record) that opened ``content`` before this disclosure (its
    revealers, or its discloser, and the copies an earlier claim marked) when the discloser's
    ``record`` (of attempt ``rnd``) provably had the bytes first; else none. Bytes reach the
    store only after their author's commitment is fixed (an agent re-commits only bytes it never
    uploaded), so the earliest commitment is the author's:

    * in an earlier attempt (a smaller ``sequence``: attempts run one at a time, so its
      commitments were fixed before the copy's attempt opened), by ledger order alone;
    * in the same attempt, or where an attempt has no sequence, by commitment times more than
      the trial's ``clock_tolerance_seconds`` apart (``rules.duplicate_content``'s rule).

    TOO_EARLY while the attempt that opened the content still takes reveals (its close decides
    the content's owner and candidates: a claim waits for it)."""
    tolerance = trial["clock_tolerance_seconds"]
    trial_id = trial["trial_id"]
    refs = [(m, content["round"], content["attempt"]) for m in content["revealed_by"]]
    refs += [(c["msp_id"], c["round"], c["attempt"]) for c in content.get("claimed_from", [])]
    copies = []
    for msp, r, attempt in refs:
        key = per_round_key("update", trial_id, r, attempt, msp)
        copy: Update | None = tx.get(key)
        if copy is None or msp == record["msp_id"]:
            return []
        theirs: Round = tx.get(round_key(trial_id, r, attempt))
        other_attempt = (r, attempt) != (rnd["round"], rnd["attempt"])
        if other_attempt and "sequence" in theirs and "sequence" in rnd:
            earlier = rnd["sequence"] < theirs["sequence"]  # ledger order, not clocks
        else:
            earlier = record["committed_at"] + tolerance < copy["committed_at"]
        if not earlier:
            return []
        copies.append((key, copy))
    opened: Round = tx.get(round_key(trial_id, content["round"], content["attempt"]))
    if opened["halt"] is None and opened["phase"] in ("SUBMIT", "REVEAL"):
        fail(
            "TOO_EARLY",
            f"{round_label(opened)} revealed these bytes and still takes reveals: claim them "
            "once its reveals are closed",
            phase=opened["phase"],
            deadline=opened["deadline"],
        )
    return copies
