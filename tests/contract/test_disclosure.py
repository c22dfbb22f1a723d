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
from contract_flow import TRAINING_RECORDS, refused


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
