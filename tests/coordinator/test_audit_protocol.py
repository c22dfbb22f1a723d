"""The auditor's recomputations of the protocol's decisions, on ledger-shaped records: the
attacks a hostile hospital (or a colluding pair, or a coordinator writing the records) would try."""

from __future__ import annotations

from typing import Any

from coordinator.audit_protocol import (
    Timeline,
    attestation_problems,
    charge_problems,
    claim_problems,
    disclosure_problems,
    duplicate_problems,
    excluded_duplicates,
    expected_charges,
    replay,
    revealed_in_order,
    weight_problems,
)

T = "trial-x"
DP_ON = {"trial_id": T, "rounds": 3, "dp": {"enabled": True}}
ENTRY = {"epsilon_micro": [400_000, 700_000, 900_000]}
SCHEDULE = {"trial_id": T, "entries": {"A": ENTRY, "B": ENTRY}}


def update(msp: str, r: int, a: int = 1, **fields: Any) -> dict[str, Any]:
    return {
        "trial_id": T,
        "round": r,
        "attempt": a,
        "msp_id": msp,
        "committed_at": 100,
        "revealed": True,
        "revealed_at": 200 + r,
        "sha256": f"{msp}-{r}-{a}",
        "sample_weight": 10,
        "epsilon_spent_micro": 0,
        **fields,
    }


def account(
    msp: str, charges: list[tuple[int, int]], budget: int | None = 900_000
) -> dict[str, Any]:
    return {
        "trial_id": T,
        "msp_id": msp,
        "budget_micro": budget,
        "epsilon_spent_micro": sum(e for _, e in charges),
        "entries": [{"round": r, "attempt": 1, "epsilon_micro": e, "at": 0} for r, e in charges],
    }


def test_each_reveal_costs_the_schedule_difference_for_its_position() -> None:
    assert expected_charges(ENTRY, 4) == [400_000, 300_000, 200_000, None]
    assert expected_charges(None, 2) == [0, 0]  # DP off
    honest = {
        "A": [
            update("A", 1, epsilon_spent_micro=400_000),
            update("A", 2, epsilon_spent_micro=300_000),
        ]
    }
    accounts = {"A": account("A", [(1, 400_000), (2, 300_000)])}
    assert charge_problems(DP_ON, SCHEDULE, accounts, honest) == []

    # A charge that differs from the schedule (an understated second reveal).
    cheap = {"A": [honest["A"][0], update("A", 2, epsilon_spent_micro=1)]}
    cheap_account = {"A": account("A", [(1, 400_000), (2, 1)])}
    problems = charge_problems(DP_ON, SCHEDULE, cheap_account, cheap)
    assert any(
        "A round 2: charged epsilon_spent_micro 1, the schedule's reveal number 2 costs 300000" in p
        for p in problems
    ), problems
    assert any("privacy account entries" in p for p in problems)

    # A privacy account whose cumulative is not the sum of its entries, or with another budget.
    wrong = {"A": dict(accounts["A"], epsilon_spent_micro=400_000, budget_micro=10**6)}
    problems = charge_problems(DP_ON, SCHEDULE, wrong, honest)
    assert any("cumulative 400000 micro-epsilon, its entries sum to 700000" in p for p in problems)
    assert any("budget_micro 1000000, expected 900000" in p for p in problems)


def test_a_reveal_past_the_schedule_and_a_hospital_without_an_entry_are_named() -> None:
    four = [
        update("A", r, epsilon_spent_micro=c)
        for r, c in zip(range(1, 5), [400_000, 300_000, 200_000, 0], strict=True)
    ]
    problems = charge_problems(DP_ON, SCHEDULE, {}, {"A": four, "C": [update("C", 1)]})
    assert any("reveal number 4 but the schedule plans only 3" in p for p in problems)
    assert any("C: 1 revealed update(s) but no schedule entry" in p for p in problems)


def test_dp_off_charges_nothing() -> None:
    trial = {"trial_id": T, "rounds": 2, "dp": {"enabled": False}}
    revealed = {"A": [update("A", 1, epsilon_spent_micro=5)]}
    problems = charge_problems(trial, None, {"A": account("A", [(1, 5)], budget=None)}, revealed)
    assert any(
        "charged epsilon_spent_micro 5, the schedule's reveal number 1 costs 0" in p
        for p in problems
    )


def test_a_weight_over_the_registered_records_is_named() -> None:
    enrolments = {"A": {"training_records": 10}, "B": {"training_records": 500}}
    revealed = {"A": [update("A", 1, sample_weight=10)], "B": [update("B", 1, sample_weight=501)]}
    assert weight_problems(enrolments, revealed) == [
        "B round 1: sample_weight 501 is over its registered training_records 500"
    ]


def test_duplicates_go_to_the_earliest_commitment_never_the_first_reveal() -> None:
    owner = update("A", 1, sha256="s", committed_at=100, revealed_at=300)
    thief = update("B", 1, sha256="s", committed_at=101, revealed_at=250)  # revealed first
    other = update("C", 1, sha256="t")
    assert excluded_duplicates([owner, thief, other], 0) == {
        "B": {"reason": "duplicate_content", "sha256": "s", "owner": "A"}
    }
    # A colluding pair committing in the same second: the content goes to nobody.
    twin = update("B", 1, sha256="s", committed_at=100)
    nobody = {
        "A": {"reason": "duplicate_content", "sha256": "s", "owner": None},
        "B": {"reason": "duplicate_content", "sha256": "s", "owner": None},
    }
    assert excluded_duplicates([owner, twin], 0) == nobody
    # Within the trial's clock tolerance, one second apart is a tie too; past it, the earliest.
    assert excluded_duplicates([owner, thief], 1) == nobody
    late = update("B", 1, sha256="s", committed_at=102)
    assert excluded_duplicates([owner, late], 1)["B"]["owner"] == "A"


def round_record(r: int, a: int = 1, **fields: Any) -> dict[str, Any]:
    return {
        "trial_id": T,
        "round": r,
        "attempt": a,
        "phase": "FINALIZED",
        "candidates": [],
        "excluded": {},
        "accepted_sha256s": [],
        "participants": [],
        "disputes": [],
        "model": None,
        "halt": None,
        **fields,
    }


def test_a_wrong_excluded_set_and_content_revealed_again_are_named() -> None:
    owner = update("A", 1, sha256="s", committed_at=100)
    thief = update("B", 1, sha256="s", committed_at=101)
    timeline = Timeline()
    timeline.enrolled_at_reveal_close[(T, 1, 1)] = ["A", "B"]
    timeline.opened[(T, 1, 1)] = 1
    honest = round_record(
        1,
        candidates=["A"],
        excluded={"B": {"reason": "duplicate_content", "sha256": "s", "owner": "A"}},
    )
    updates = {(1, 1): {"A": owner, "B": thief}}
    trial = {"trial_id": T, "clock_tolerance_seconds": 0}
    assert duplicate_problems(trial, [honest], updates, timeline) == []
    # With a tolerance the same commitments are a tie, and the recorded owner a mismatch.
    tolerant = duplicate_problems(
        {**trial, "clock_tolerance_seconds": 900}, [honest], updates, timeline
    )
    assert any("'owner': None" in p for p in tolerant)
    # The thief gets the content instead (as if decided by who revealed first).
    forged = round_record(
        1,
        candidates=["B"],
        excluded={"A": {"reason": "duplicate_content", "sha256": "s", "owner": "B"}},
    )
    problems = duplicate_problems(trial, [forged], updates, timeline)
    assert any(
        "round.excluded" in p and "earliest commitment owns the content" in p for p in problems
    )
    assert any("round.candidates ['B'], recomputed: ['A']" in p for p in problems)

    # Round 2: B reveals A's round-1 bytes again and they are accepted.
    timeline.enrolled_at_reveal_close[(T, 2, 1)] = ["A", "B"]
    timeline.opened[(T, 2, 1)] = 2
    replay = update("B", 2, sha256="s")
    second = round_record(2, candidates=["B"], accepted_sha256s=["s"])
    problems = duplicate_problems(
        trial, [honest, second], {**updates, (2, 1): {"B": replay}}, timeline
    )
    assert problems == [
        "round 2: B revealed sha256 s, already revealed by A in round 1: revealed accepted again "
        "(DUPLICATE_CONTENT)"
    ]


def test_a_disclosure_is_charged_and_its_bytes_may_not_come_back() -> None:
    """A's round-1 reveal was late after its upload; it disclosed the bytes (``disclose_update``).
    The auditor counts the disclosure as a charge in ledger order and names a later reveal of
    those bytes by anyone."""
    disclosed = update(
        "A", 1, sha256="s", content_id="cid-s", revealed=False, revealed_at=None, disclosed_at=250
    )
    disclosed["epsilon_spent_micro"] = 400_000
    b1 = update("B", 1, epsilon_spent_micro=400_000)
    timeline = Timeline()
    timeline.enrolled_at_reveal_close[(T, 1, 1)] = ["A", "B"]
    timeline.opened[(T, 1, 1)] = 1
    timeline.reveals[(T, "B")] = [(1, 1)]
    timeline.reveals[(T, "A")] = [(1, 1)]  # its UpdateDisclosed event
    updates = {(1, 1): {"A": disclosed, "B": b1}}
    revealed = revealed_in_order(T, updates, timeline)
    assert [u["sha256"] for u in revealed["A"]] == ["s"]
    accounts = {"A": account("A", [(1, 400_000)]), "B": account("B", [(1, 400_000)])}
    assert charge_problems(DP_ON, SCHEDULE, accounts, revealed) == []
    # A coordinator that leaves the disclosure's charge out of A's account is named.
    unpaid = {**accounts, "A": account("A", [])}
    assert any(
        p.startswith("A: privacy account entries []")
        for p in charge_problems(DP_ON, SCHEDULE, unpaid, revealed)
    )
    # The disclosure is no candidate of its round ...
    first = round_record(1, candidates=["B"], accepted_sha256s=["B-1-1"])
    trial = {"trial_id": T, "clock_tolerance_seconds": 900}
    assert duplicate_problems(trial, [first], updates, timeline) == []
    # ... and B revealing A's disclosed bytes in round 2 is named.
    timeline.enrolled_at_reveal_close[(T, 2, 1)] = ["A", "B"]
    timeline.opened[(T, 2, 1)] = 2
    copy = update("B", 2, sha256="s")
    second = round_record(2, candidates=["B"], accepted_sha256s=["s"])
    problems = duplicate_problems(
        trial, [first, second], {**updates, (2, 1): {"B": copy}}, timeline
    )
    assert problems == [
        "round 2: B revealed sha256 s, already revealed by A in round 1: revealed accepted again "
        "(DUPLICATE_CONTENT)"
    ]
    # A disclosure of bytes revealed in an earlier attempt is named too (the contract refuses it).
    late = update("B", 2, sha256="B-1-1", revealed=False, revealed_at=None, disclosed_at=400)
    none = round_record(2, candidates=[])
    problems = duplicate_problems(trial, [first, none], {**updates, (2, 1): {"B": late}}, timeline)
    assert problems == [
        "round 2: B disclosed sha256 B-1-1, already revealed by B in round 1: disclosed again "
        "(DUPLICATE_CONTENT)"
    ]


class Event:
    def __init__(self, name: str, **payload: Any):
        self.name = name
        self.payload = {"trial_id": T, "round": 1, "attempt": 1, **payload}


def test_a_disclosure_before_its_attempts_reveals_were_over_is_named() -> None:
    """A disclosure opens a commitment without a reveal: only once no reveal can land in the
    attempt (the contract's TOO_EARLY otherwise). A coordinator, or a ledger rewritten by one,
    that lets a hospital disclose sooner is named, from the event order and ``disclosed_at``."""
    trial = {"trial_id": T}

    def disclosed(msp: str, at: int, **fields: Any) -> dict[str, Any]:
        return update(msp, 1, revealed=False, revealed_at=None, disclosed_at=at, **fields)

    committed = Event("UpdateCommitsClosed", committed=["A", "B", "C"], deadline=500)
    events = [
        committed,
        Event("UpdateDisclosed", msp_id="A"),  # after the deadline (its disclosed_at says)
        Event("UpdateDisclosed", msp_id="B"),  # while the reveal was open: too early
        Event("UpdateRevealsClosed", candidates=[]),
        Event("UpdateDisclosed", msp_id="C"),  # after the close: fine whatever its time
    ]
    timeline = replay(events)
    updates = {(1, 1): {"A": disclosed("A", 501), "B": disclosed("B", 500), "C": disclosed("C", 9)}}
    assert disclosure_problems(trial, updates, timeline) == [
        "round 1: B disclosed its update at 500, while its reveals were open until 500 "
        "(TOO_EARLY: a disclosure is only for updates whose reveal can no longer land)"
    ]
    # An attempt halted in SUBMIT never fixed its commitments; halted in REVEAL, it did.
    for phase, expected in (("SUBMIT", 1), ("REVEAL", 0)):
        halted = replay(
            [
                Event("RoundHalted", code="TOO_FEW_HOSPITALS", phase=phase),
                Event("UpdateDisclosed", msp_id="A"),
            ]
        )
        problems = disclosure_problems(trial, {(1, 1): {"A": disclosed("A", 50)}}, halted)
        assert len(problems) == expected, problems
        if expected:
            assert "before the attempt's commitments were fixed" in problems[0]
    # A record that claims a disclosure the ledger has no event of, or both openings at once.
    both = {(1, 1): {"A": update("A", 1, disclosed_at=600)}}
    assert disclosure_problems(trial, both, replay([committed])) == [
        "round 1: A disclosed its update at 600 and revealed it too (one opening per commitment)",
        "round 1: A disclosed its update at 600, but no UpdateDisclosed event of it is on the ledger",
    ]


def test_a_claim_on_copied_bytes_must_rest_on_a_commitment_earlier_by_the_tolerance() -> None:
    """A's round-1 commitment to bytes ``s`` was disclosed after B revealed ``s`` in round 2; the
    contract then marks B's update ``claimed_by`` A. The auditor checks that A's commitment was
    more than the tolerance earlier, that the claim is A's disclosure (its time, its event naming
    B, after B's reveal), and that bytes a disclosure opened keep exactly one unclaimed opener."""
    trial = {"trial_id": T, "clock_tolerance_seconds": 900}
    a1 = update("A", 1, sha256="s", revealed=False, revealed_at=None, disclosed_at=5000)
    claim = {"msp_id": "A", "round": 1, "attempt": 1, "at": 5000}
    b2 = update("B", 2, sha256="s", committed_at=1001, claimed_by=claim)
    timeline = Timeline()
    timeline.opened_by = {(T, 2, 1, "B"): 7, (T, 1, 1, "A"): 9}
    timeline.claims = {(T, 1, 1, "A"): ["B"]}
    timeline.reveals_ended = {(T, 2, 1): 8}  # B's attempt closed its reveals, then A claimed

    def problems(a: dict[str, Any], b: dict[str, Any], tl: Timeline = timeline) -> list[str]:
        return claim_problems(trial, {(1, 1): {"A": a}, (2, 1): {"B": b}}, tl)

    assert problems(a1, b2) == []
    # within the tolerance: the claim proves nothing (a backdated commitment could make it)
    assert problems(a1, dict(b2, committed_at=1000)) == [
        "round 2: B's update is claimed_by A, whose commitment at 100 is not more than 900 s "
        "before its own at 1000"
    ]
    # a claim by a hospital that disclosed nothing of the kind
    assert problems(dict(a1, sha256="t"), b2)[0] == (
        f"round 2: B's update is claimed_by {claim}, which disclosed no update of sha256 s"
    )
    # a claim dated otherwise than the disclosure, one its event does not name, and one on a
    # reveal that came after the disclosure (the contract refuses such a reveal: hidden so)
    assert problems(a1, dict(b2, claimed_by=dict(claim, at=4000))) == [
        "round 2: B's update: its claim is dated 4000, the claiming disclosure 5000"
    ]
    silent = Timeline(opened_by=timeline.opened_by, claims={(T, 1, 1, "A"): []})
    assert problems(a1, b2, silent) == [
        "round 2: B's update: the claiming UpdateDisclosed event does not name it"
    ]
    after = Timeline(opened_by={(T, 2, 1, "B"): 11, (T, 1, 1, "A"): 9}, claims=timeline.claims)
    assert problems(a1, b2, after) == [
        "round 2: B's update was opened after the disclosure that claims it"
    ]
    # a claim before B's attempt closed its reveals (the contract waits: TOO_EARLY)
    early = Timeline(
        opened_by=timeline.opened_by, claims=timeline.claims, reveals_ended={(T, 2, 1): 10}
    )
    assert problems(a1, b2, early) == [
        "round 2: B's update was claimed while its attempt still took reveals (the contract's "
        "TOO_EARLY: that attempt's close decides its owner)"
    ]
    # across attempts the ledger order decides, not the clocks: A's attempt opened first, so a
    # commitment of B's within the tolerance of A's is still a copy; the other way it is not
    ordered = Timeline(**{**timeline.__dict__, "opened": {(T, 1, 1): 1, (T, 2, 1): 5}})
    assert problems(a1, dict(b2, committed_at=150), ordered) == []
    reversed_order = Timeline(**{**timeline.__dict__, "opened": {(T, 1, 1): 6, (T, 2, 1): 5}})
    assert problems(a1, b2, reversed_order) == [
        "round 2: B's update is claimed_by A, whose commitment is of round 1, opened after its "
        "own attempt"
    ]
    # a pair left without a claim: two openers of disclosed bytes
    unmarked = {k: v for k, v in b2.items() if k != "claimed_by"}
    assert problems(a1, unmarked) == [
        "sha256 s: opened by A (round 1), B (round 2) without a claim between them (a disclosure "
        "leaves one opener: itself, or the contract refuses the other)"
    ]


def attestation(msp: str, sha256: str, at: int) -> dict[str, Any]:
    return {"msp_id": msp, "sha256": sha256, "attested_at": at}


def test_disputes_are_recomputed_from_the_attestations() -> None:
    attestations = [
        attestation("A", "good", 10),
        attestation("B", "bad", 11),
        attestation("C", "good", 12),
        attestation("D", "good", 13),
    ]
    dispute = {"msp_id": "B", "sha256": "bad", "at": 11, "against": "good"}
    rnd = round_record(
        1, participants=["A", "B", "C", "D"], model={"sha256": "good"}, disputes=[dispute]
    )
    assert attestation_problems(rnd, attestations) == []
    # A missing dispute (the dissent of B hidden).
    problems = attestation_problems(dict(rnd, disputes=[]), attestations)
    assert (
        len(problems) == 1 and "round.disputes []" in problems[0] and "'msp_id': 'B'" in problems[0]
    )
    # Finalized without a quorum (3 of 4 needed).
    problems = attestation_problems(rnd, attestations[:3])
    assert any("attested by 2, the quorum is 3" in p for p in problems)


def test_a_minority_dissent_is_no_reason_to_halt() -> None:
    halted = round_record(
        1,
        phase="HALTED",
        participants=["A", "B", "C"],
        halt={"code": "ATTESTATION_MISMATCH"},
    )
    # "good" has 1 attestation and C has not attested: 1 + 1 reaches the quorum of 2.
    problems = attestation_problems(
        halted, [attestation("A", "good", 1), attestation("B", "bad", 2)]
    )
    assert any("a minority dissent is a dispute, not a halt" in p for p in problems)
    three = [attestation("A", "x", 1), attestation("B", "y", 2), attestation("C", "z", 3)]
    assert attestation_problems(halted, three) == []


def _attempt(r: int, a: int, opened: int, **fields: Any) -> dict[str, Any]:
    return {"round": r, "attempt": a, "opened_at": opened, "phase_changed_at": opened + 5, **fields}


def test_liveness_recomputes_failed_attempts_retries_and_min_silos() -> None:
    from coordinator.audit_protocol import liveness_problems

    trial = {"min_silos": 2, "max_retries": 1, "rollbacks": [], "resumes": [], "state": "RUNNING"}
    failed = {"code": "NO_REVEALS", "at": 5}
    honest = [
        _attempt(1, 1, 0, phase="HALTED", halt={**failed, "failed_attempts": 1, "retry": True}),
        _attempt(1, 2, 10, phase="FINALIZED", accepted=["A", "B"], finalized_at=15),
        _attempt(
            2, 1, 20, phase="HALTED", halt={**failed, "at": 25, "failed_attempts": 1, "retry": True}
        ),
    ]
    assert liveness_problems({**trial, "halt": None}, honest) == []
    # A count that does not restart, a retry past max_retries, a thin finalized round, a
    # halted trial without a code: each is named.
    forged = [
        _attempt(1, 1, 0, phase="HALTED", halt={**failed, "failed_attempts": 1, "retry": True}),
        _attempt(
            1, 2, 10, phase="HALTED", halt={**failed, "at": 15, "failed_attempts": 2, "retry": True}
        ),
        _attempt(1, 3, 20, phase="FINALIZED", accepted=["A"], finalized_at=25),
        _attempt(2, 1, 30, phase="HALTED", halt={**failed, "at": 35, "failed_attempts": 3}),
    ]
    problems = liveness_problems({**trial, "state": "HALTED", "halt": {"reason": "?"}}, forged)
    assert any("retried after 2 failures in a row, max_retries=1" in p for p in problems)
    assert any("1 accepted updates, fewer than min_silos=2" in p for p in problems)
    assert any("halt.failed_attempts 3, recomputed 1" in p for p in problems)
    assert any("without a known code" in p for p in problems)
    # A resume between two failures restarts the count.
    resumed = {**trial, "halt": None, "resumes": [{"at": 7}]}
    pair = [
        _attempt(1, 1, 0, phase="HALTED", halt={**failed, "failed_attempts": 1, "retry": True}),
        _attempt(
            1, 2, 10, phase="HALTED", halt={**failed, "at": 15, "failed_attempts": 1, "retry": True}
        ),
    ]
    assert liveness_problems(resumed, pair) == []
