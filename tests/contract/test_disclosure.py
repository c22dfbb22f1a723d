"""Bytes that went out without a reveal: their author discloses them once the reveals are over,
is charged for them, and owns them; a copier who commits to them later is refused.

The attack: a hospital uploads its update once the commitments are fixed, and its reveal is
refused LATE (the deadline passed between the upload and the reveal). The bytes are in the
listable store with nobody's name on them; a peer copies them, commits to them in round 2 and
reveals them as its own.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from contract_flow import HOSPITALS, TRAINING_RECORDS, refused


@pytest.fixture
def late(flow):
    """Round 1: every hospital committed; hospital1 and hospital3 revealed; hospital2's reveal
    came after the deadline (its bytes already uploaded)."""
    flow.running()
    flow.open_round()
    flow.updates = {n: flow.commit_update(n) for n in flow.members}
    u2 = flow.updates["hospital2"]
    refused("TOO_EARLY", flow.client("hospital2").submit, "disclose_update", disclosure(flow, u2))
    flow.close("close_update_commits")
    for n in ("hospital1", "hospital3"):
        flow.reveal_update(n, flow.updates[n])
    # while its reveal is open and on time, the author reveals: disclosing is refused
    error = refused(
        "TOO_EARLY", flow.client("hospital2").submit, "disclose_update", disclosure(flow, u2)
    )
    assert "reveal the update instead" in error.message
    flow.net.advance_time(901)
    refused("LATE", flow.reveal_update, "hospital2", u2)
    return flow


def disclosure(flow, u, **extra):
    return {
        "trial_id": flow.trial_id,
        "round": flow.round,
        "attempt": flow.attempt,
        "content_id": u.content_id,
        "sha256": u.sha256,
        "sample_weight": u.sample_weight,
        "salt": u.salt,
        **extra,
    }


def privacy_of(flow, name):
    return flow.admin.evaluate(
        "get_privacy_ledger", {"trial_id": flow.trial_id, "msp_id": flow.msp[name]}
    )[0]


def test_a_late_update_is_disclosed_charged_and_owned_so_a_copier_is_refused(late):
    flow = late
    u2 = flow.updates["hospital2"]
    h2 = flow.client("hospital2")
    # only the author's own opening, of its own commitment, of bytes nobody revealed
    refused(
        "COMMITMENT_MISMATCH",
        h2.submit,
        "disclose_update",
        disclosure(flow, replace(u2, salt="00" * 16)),
    )
    refused(
        "DUPLICATE",
        flow.client("hospital1").submit,
        "disclose_update",
        disclosure(flow, flow.updates["hospital1"]),
    )
    refused(
        "WRONG_ORGANISATION",
        flow.client("hospital3").submit,
        "disclose_update",
        disclosure(flow, u2, msp_id=flow.msp["hospital2"]),
    )
    before = privacy_of(flow, "hospital2")["epsilon_spent_micro"]
    record = h2.submit("disclose_update", disclosure(flow, u2))
    assert record["revealed"] is False and record["disclosed_at"] is not None
    assert record["sha256"] == u2.sha256 and record["epsilon_spent_micro"] == 1_500_000
    account = privacy_of(flow, "hospital2")
    assert account["epsilon_spent_micro"] == before + 1_500_000
    assert [(e["round"], e["attempt"]) for e in account["entries"]] == [(1, 1)]
    refused("DUPLICATE", h2.submit, "disclose_update", disclosure(flow, u2))

    # The round goes on without it: a disclosure is no candidate.
    rnd = flow.close("close_update_reveals")
    assert rnd["candidates"] == sorted(flow.msp[n] for n in ("hospital1", "hospital3"))
    names = ["hospital1", "hospital3"]
    flow.vote(flow.scores(flow.members, names))
    flow.aggregate()
    for n in flow.members:
        if flow.attest(n)["round"]["phase"] == "FINALIZED":
            break

    # Round 2: hospital3 commits to hospital2's bytes and reveals them as its own: refused,
    # naming the author; hospital2 itself cannot bring them back either.
    flow.open_round()
    copied = flow.commit_update("hospital3", replace(u2, salt="33" * 16))
    again = flow.commit_update("hospital2", replace(u2, salt="22" * 16))
    flow.commit_update("hospital1")
    flow.close("close_update_commits")
    error = refused("DUPLICATE_CONTENT", flow.reveal_update, "hospital3", copied)
    assert error.detail["revealed_by"] == [flow.msp["hospital2"]]
    assert (error.detail["round"], error.detail["attempt"]) == (1, 1)
    refused("DUPLICATE_CONTENT", flow.reveal_update, "hospital2", again)


def test_bytes_revealed_in_the_attempt_cannot_be_disclosed_again(flow):
    """hospital3 committed to the same bytes as hospital2 (colluding, or by chance) and revealed
    them on time; hospital2 was late: the content is recorded already, so hospital2 cannot
    disclose it (the round's exclusion rules decided its owner)."""
    flow.running()
    flow.open_round()
    u2 = flow.commit_update("hospital2")
    same = flow.commit_update("hospital3", replace(u2, salt="33" * 16))
    flow.commit_update("hospital1")
    flow.close("close_update_commits")
    flow.reveal_update("hospital3", same)
    flow.reveal_update("hospital1", flow.make_update("hospital1"))
    flow.net.advance_time(901)
    error = refused(
        "DUPLICATE_CONTENT",
        flow.client("hospital2").submit,
        "disclose_update",
        disclosure(flow, u2),
    )
    assert error.detail["revealed_by"] == [flow.msp["hospital3"]]


def test_a_disclosure_is_bounded_like_a_reveal(flow):
    """A weight over the registered training records is refused at disclosure as at reveal; a
    disclosure names an attempt that exists."""
    flow.running()
    flow.open_round()
    big = flow.commit_update(
        "hospital2", flow.make_update("hospital2", weight=TRAINING_RECORDS + 1)
    )
    flow.commit_update("hospital1")
    flow.commit_update("hospital3")
    flow.close("close_update_commits")
    flow.net.advance_time(901)
    h2 = flow.client("hospital2")
    error = refused("INVALID_ARGUMENT", h2.submit, "disclose_update", disclosure(flow, big))
    assert error.detail["field"] == "sample_weight"
    refused("NOT_FOUND", h2.submit, "disclose_update", disclosure(flow, big, attempt=2))
    refused("INVALID_ARGUMENT", h2.submit, "disclose_update", disclosure(flow, big, content_id=""))


def test_a_disclosed_update_cannot_then_be_revealed(late):
    """A client dates its own transaction (within the ledger's window): a disclosure dated just
    past the deadline, then a reveal dated just before it, must not both land (two charges, and
    a charged disclosure turned candidate)."""
    flow = late
    u2 = flow.updates["hospital2"]
    flow.client("hospital2").submit("disclose_update", disclosure(flow, u2))
    flow.net.advance_time(-2)  # back before the deadline
    error = refused("DUPLICATE", flow.reveal_update, "hospital2", u2)
    assert "already disclosed" in error.message
    assert len(privacy_of(flow, "hospital2")["entries"]) == 1


def test_an_attempt_halted_before_its_commitments_were_fixed_admits_no_disclosure(flow):
    """A copier that committed to someone else's bytes in an attempt that failed while
    committing cannot claim them by disclosing: those commitments were never fixed."""
    flow.running()
    flow.open_round()
    u = flow.commit_update("hospital2")
    flow.net.advance_time(3601)
    rnd = flow.close("close_update_commits")  # one committer under min_silos: halted
    assert rnd["phase"] == "HALTED" and rnd["halt"]["phase"] == "SUBMIT"
    error = refused(
        "TOO_EARLY", flow.client("hospital2").submit, "disclose_update", disclosure(flow, u)
    )
    assert "not fixed" in error.message


def audit_problems(flow):
    """``bcfl audit verify``'s duplicate and disclosure checks on the trial's ledger records."""
    from coordinator.audit_protocol import disclosure_problems, duplicate_problems, replay

    auditor = flow.client("auditor")
    trial = auditor.evaluate("get_trial", {"trial_id": flow.trial_id})
    rounds = auditor.evaluate("list_rounds", {"trial_id": flow.trial_id})
    updates = {
        (x["round"], x["attempt"]): {
            u["msp_id"]: u
            for u in auditor.evaluate(
                "get_submissions",
                {"trial_id": flow.trial_id, "round": x["round"], "attempt": x["attempt"]},
            )
        }
        for x in rounds
    }
    timeline = replay(auditor.ledger.events(0))
    return duplicate_problems(trial, rounds, updates, timeline) + disclosure_problems(
        trial, updates, timeline
    )


def finish_round(flow, names, voters=None, vote_wait=0):
    """Close the reveals, vote for ``names`` (by ``voters``, all members by default; with
    ``vote_wait`` seconds for a silent one) and finalize."""
    flow.close("close_update_reveals")
    flow.vote(flow.scores(voters or flow.members, names), wait=vote_wait)
    flow.aggregate()
    for n in voters or flow.members:
        if flow.attest(n)["round"]["phase"] == "FINALIZED":
            break


def stale_round_1(flow):
    """Round 1 of 3: hospital2 commits and uploads, its reveal comes late, and it is away (it
    does not disclose); the round finalizes on hospital1's and hospital3's updates."""
    flow.running(rounds=3)
    flow.open_round()
    updates = {n: flow.commit_update(n) for n in flow.members}
    flow.close("close_update_commits")
    for n in ("hospital1", "hospital3"):
        flow.reveal_update(n, updates[n])
    flow.net.advance_time(901)
    finish_round(flow, ["hospital1", "hospital3"])
    return updates["hospital2"]


def round_2_commits(flow, **copies):
    """Round 2 opens; ``copies`` (name -> update) commit in that order, each 1000 s after the
    last, hospital1 commits an update of its own unless it copies; hospital2 is still away."""
    flow.open_round()
    committed = {}
    for name, u in copies.items():
        committed[name] = flow.commit_update(name, u)
        flow.net.advance_time(1000)
    if "hospital1" not in copies:
        flow.commit_update("hospital1")
    flow.net.advance_time(3601)
    flow.close("close_update_commits")
    return committed


def disclose(flow, name, u, r, a=1):
    return flow.client(name).submit("disclose_update", disclosure(flow, u, round=r, attempt=a))


def submission(flow, r, name, a=1):
    return next(
        s
        for s in flow.admin.evaluate(
            "get_submissions", {"trial_id": flow.trial_id, "round": r, "attempt": a}
        )
        if s["msp_id"] == flow.msp[name]
    )


DEMO_PHASES = {"submit": 300, "reveal": 120, "vote_commit": 300, "vote_reveal": 120}


def test_across_attempts_the_ledger_order_decides_not_the_clocks(flow):
    """With the demo's phases (reveal 120 s, vote commit 300 s) an author that went down after
    its upload is only ~720 s of clock ahead of a copier committing in the next round, under the
    900 s tolerance: still its claim lands, because its attempt ran (and fixed its commitments)
    before the copier's attempt opened."""
    flow.running(HOSPITALS, rounds=3, phase_seconds=DEMO_PHASES)
    flow.open_round()
    updates = {n: flow.commit_update(n) for n in flow.members}
    flow.close("close_update_commits")
    voters = ["hospital1", "hospital3", "hospital4"]
    for n in voters:
        flow.reveal_update(n, updates[n])
    flow.net.advance_time(121)  # hospital2 uploaded, then went down
    finish_round(flow, voters, voters=voters, vote_wait=301)
    flow.open_round()
    copied = flow.commit_update("hospital3", replace(updates["hospital2"], salt="33" * 16))
    for n in ("hospital1", "hospital4"):
        flow.commit_update(n)
    flow.net.advance_time(301)
    flow.close("close_update_commits")
    flow.reveal_update("hospital3", copied)
    for n in ("hospital1", "hospital4"):
        flow.reveal_update(n, flow.make_update(n))
    flow.close("close_update_reveals")
    disclose(flow, "hospital2", updates["hospital2"], 1)
    assert submission(flow, 2, "hospital3")["claimed_by"]["msp_id"] == flow.msp["hospital2"]
    assert audit_problems(flow) == []


def test_an_author_whose_clock_runs_fast_keeps_its_claim(flow):
    """hospital2's clock is 5 s fast when it commits; its claim across attempts does not depend
    on the clocks at all."""
    flow.running(rounds=3)
    flow.open_round()
    flow.net.advance_time(5)
    u2 = flow.commit_update("hospital2")
    flow.net.advance_time(-5)
    ups = {n: flow.commit_update(n) for n in ("hospital1", "hospital3")}
    flow.close("close_update_commits")
    for n in ups:
        flow.reveal_update(n, ups[n])
    flow.net.advance_time(901)
    finish_round(flow, ["hospital1", "hospital3"])
    copied = round_2_commits(flow, hospital3=replace(u2, salt="33" * 16))["hospital3"]
    flow.reveal_update("hospital3", copied)
    flow.reveal_update("hospital1", flow.make_update("hospital1"))
    flow.close("close_update_reveals")
    disclose(flow, "hospital2", u2, 1)
    assert submission(flow, 2, "hospital3")["claimed_by"]["msp_id"] == flow.msp["hospital2"]
    assert audit_problems(flow) == []


def test_an_author_back_after_a_copier_revealed_its_stale_bytes_claims_them(flow):
    """hospital2's round-1 reveal came late and its agent was away: it did not disclose. In round
    2 hospital3 commits to the bytes it found in the store and reveals them as its own (nothing
    on the ledger knows them yet). Back, hospital2 discloses: its commitment is of an earlier
    attempt, and bytes reach the store only after their author's commitment is fixed, so the
    disclosure takes the content, is charged, and marks hospital3's update as a copy. Nobody can
    take the bytes back the other way."""
    u2 = stale_round_1(flow)
    copied = round_2_commits(flow, hospital3=replace(u2, salt="33" * 16))["hospital3"]
    flow.reveal_update("hospital3", copied)  # unseen bytes: accepted as a candidate
    flow.reveal_update("hospital1", flow.make_update("hospital1"))
    finish_round(flow, ["hospital1", "hospital3"])

    h2 = flow.msp["hospital2"]
    before = privacy_of(flow, "hospital2")["epsilon_spent_micro"]
    record = disclose(flow, "hospital2", u2, 1)
    assert record["disclosed_at"] is not None and record["sha256"] == u2.sha256
    assert record["epsilon_spent_micro"] > 0  # its first release: the schedule's first step
    assert privacy_of(flow, "hospital2")["epsilon_spent_micro"] == (
        before + record["epsilon_spent_micro"]
    )
    copy = submission(flow, 2, "hospital3")
    assert copy["revealed"] and copy["claimed_by"] == {
        "msp_id": h2,
        "round": 1,
        "attempt": 1,
        "at": record["disclosed_at"],
    }
    # What the auditor sees: the claim proven, the copy no duplicate problem of the ledger.
    assert audit_problems(flow) == []
    # hospital3 cannot claim them back: its commitment is the later one, and it revealed.
    refused("DUPLICATE", disclose, flow, "hospital3", copied, 2)
    # The bytes are hospital2's now: a third reveal of them, by anyone, is refused naming it.
    flow.open_round()
    again = flow.commit_update("hospital1", replace(u2, salt="11" * 16))
    flow.commit_update("hospital2")
    flow.commit_update("hospital3")
    flow.close("close_update_commits")
    error = refused("DUPLICATE_CONTENT", flow.reveal_update, "hospital1", again)
    assert error.detail["revealed_by"] == [h2]


def test_a_claim_waits_for_the_copys_reveals_to_close(flow):
    """The claim comes while hospital3's copy is still in its reveal phase: TOO_EARLY (the close
    decides the round's owner and candidates); once the reveals closed, it lands."""
    u2 = stale_round_1(flow)
    copied = round_2_commits(flow, hospital3=replace(u2, salt="33" * 16))["hospital3"]
    flow.reveal_update("hospital3", copied)
    flow.reveal_update("hospital1", flow.make_update("hospital1"))
    error = refused("TOO_EARLY", disclose, flow, "hospital2", u2, 1)
    assert "once its reveals are closed" in error.message
    flow.close("close_update_reveals")
    assert disclose(flow, "hospital2", u2, 1)["disclosed_at"] is not None
    assert audit_problems(flow) == []


def test_a_copier_that_discloses_the_stale_bytes_is_claimed_from_too(flow):
    """hospital3 discloses hospital2's stale bytes under its round-2 commitment instead of
    revealing them; hospital2's round-1 commitment is earlier still: it claims them."""
    u2 = stale_round_1(flow)
    copied = round_2_commits(flow, hospital3=replace(u2, salt="33" * 16))["hospital3"]
    flow.reveal_update("hospital1", flow.make_update("hospital1"))
    flow.net.advance_time(901)
    disclose(flow, "hospital3", copied, 2)
    flow.close("close_update_reveals")
    assert disclose(flow, "hospital2", u2, 1)["disclosed_at"] is not None
    copy = submission(flow, 2, "hospital3")
    assert copy["claimed_by"]["msp_id"] == flow.msp["hospital2"]
    assert audit_problems(flow) == []


def test_two_colluders_cannot_seal_stolen_bytes_between_them(flow):
    """hospital3 commits early to hospital2's stale bytes, hospital1 1000 s later; hospital1
    reveals them, then hospital3 discloses and claims hospital1's copy. hospital2's commitment
    is earlier than both: it claims both copies, and the ledger names it the author."""
    u2 = stale_round_1(flow)
    pair = round_2_commits(
        flow, hospital3=replace(u2, salt="33" * 16), hospital1=replace(u2, salt="11" * 16)
    )
    flow.reveal_update("hospital1", pair["hospital1"])
    flow.net.advance_time(901)
    flow.close("close_update_reveals")
    assert disclose(flow, "hospital3", pair["hospital3"], 2)["disclosed_at"] is not None
    assert submission(flow, 2, "hospital1")["claimed_by"]["msp_id"] == flow.msp["hospital3"]
    disclose(flow, "hospital2", u2, 1)
    for name in ("hospital1", "hospital3"):
        assert submission(flow, 2, name)["claimed_by"]["msp_id"] == flow.msp["hospital2"]
    assert audit_problems(flow) == []


def test_no_reveal_of_disclosed_bytes_lands_in_the_same_attempt(flow):
    """Transaction times are the client's: a disclosure dated past the reveal deadline lands,
    then a reveal of the same bytes dated before it. The bytes are taken: refused."""
    u2 = stale_round_1(flow)
    pair = round_2_commits(
        flow, hospital3=replace(u2, salt="33" * 16), hospital1=replace(u2, salt="11" * 16)
    )
    flow.net.clock.offset += flow.get_round()["deadline"] + 1 - flow.net.clock()
    disclose(flow, "hospital3", pair["hospital3"], 2)
    flow.net.advance_time(-60)  # another client's clock, a minute behind: still on time
    error = refused("DUPLICATE_CONTENT", flow.reveal_update, "hospital1", pair["hospital1"])
    assert "already disclosed" in error.message


def test_a_disclosure_after_an_aborting_rollback_is_no_audit_problem(flow):
    """The admin rolls back with the attempt in REVEAL (abort_current): hospital2's reveal can no
    longer land, so it discloses at once, before the old deadline; the auditor agrees."""
    flow.running()
    flow.open_round()
    updates = {n: flow.commit_update(n) for n in flow.members}
    flow.close("close_update_commits")
    flow.reveal_update("hospital1", updates["hospital1"])
    flow.admin.submit(
        "rollback",
        {"trial_id": flow.trial_id, "to_round": 0, "abort_current": True, "reason": "bad base"},
    )
    assert disclose(flow, "hospital2", updates["hospital2"], 1)["disclosed_at"] is not None
    assert audit_problems(flow) == []


def test_after_a_rollback_the_order_attempts_opened_in_decides_not_round_numbers(flow):
    """Round 2 is aborted and rolled back over, so round 1 runs again after it: round numbers no
    longer follow the ledger. hospital2's round-2 bytes (uploaded, never revealed) copied into
    the re-run round 1 are still claimed by hospital2; hospital4, which copies hospital1's
    round-2 reveal into the re-run, cannot claim it by its smaller round number."""
    flow.running(HOSPITALS, rounds=3)
    flow.full_round()  # round 1, the trial's first attempt
    flow.open_round()  # round 2 attempt 1: the second
    ups = {n: flow.commit_update(n) for n in flow.members}
    flow.close("close_update_commits")
    flow.reveal_update("hospital1", ups["hospital1"])  # hospital2 uploads too, then goes down
    flow.admin.submit(
        "rollback",
        {
            "trial_id": flow.trial_id,
            "to_round": 0,
            "abort_current": True,
            "reason": "bad base",
            "final_round": 2,
        },
    )
    rerun = flow.open_round()  # round 1 attempt 2, opened third
    assert (rerun["round"], rerun["attempt"], rerun["sequence"]) == (1, 2, 3)
    stolen = flow.commit_update("hospital3", replace(ups["hospital2"], salt="33" * 16))
    again = flow.commit_update("hospital4", replace(ups["hospital1"], salt="44" * 16))
    flow.net.advance_time(3601)  # hospital1 and hospital2 do not commit to the re-run
    flow.close("close_update_commits")
    flow.reveal_update("hospital3", stolen)  # nothing on the ledger knows these bytes yet
    refused("DUPLICATE_CONTENT", flow.reveal_update, "hospital4", again)
    flow.net.advance_time(3601)
    flow.close("close_update_reveals")
    # hospital4's commitment is of round 1, but of the attempt opened after hospital1's
    refused("DUPLICATE_CONTENT", disclose, flow, "hospital4", again, 1, 2)
    disclose(flow, "hospital2", ups["hospital2"], 2, 1)  # of round 2, but opened before
    assert submission(flow, 1, "hospital3", 2)["claimed_by"]["msp_id"] == flow.msp["hospital2"]
    assert audit_problems(flow) == []
