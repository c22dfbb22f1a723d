"""The auditor's recomputation of the round protocol's per-trial decisions, from the ledger alone.

Each check is a function returning the problems it found (sentences naming the hospital, the
round and both values); :mod:`coordinator.audit_verify` runs them and lists each one by name.

* :func:`schedule_problems`: every hospital's DP schedule entry, recomputed with Opacus
  (:func:`coordinator.dp_schedule.schedule_for`) from the trial record and the registered
  ``training_records``; a smaller epsilon than Opacus gives is an understated privacy cost.
* :func:`charge_problems`: every revealed (or disclosed: ``disclose_update``) update is charged ``epsilon_micro[k] - epsilon_micro[k-1]``
  of its hospital's schedule, k its position among that hospital's reveals (ledger order); the
  privacy account lists exactly those charges and its cumulative is their sum.
* :func:`weight_problems`: no revealed ``sample_weight`` exceeds the registered ``training_records``.
* :func:`duplicate_problems`: ``Round.excluded`` recomputed (the earliest commitment owns bytes
  revealed twice in one attempt when it is more than the trial's ``clock_tolerance_seconds``
  earlier than the others, removed hospitals' reveals included; otherwise nobody does), the candidates are the enrolled hospitals' other revealed updates, and
  no sha256 revealed or disclosed in an earlier attempt came back.
* :func:`disclosure_problems`: every disclosure came once its attempt's reveals were over; a
  disclosure that claimed bytes opened first by another (``claimed_by``) did so under a
  commitment that provably came first (an attempt opened earlier, or within one attempt more
  than the clock tolerance earlier), after the copy's reveals closed (:func:`claim_problems`).
* :func:`attestation_problems`: ``round.disputes`` recomputed from the attestations and the
  finalized model; a halt ATTESTATION_MISMATCH only when no hash can reach the quorum any more.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chaincode import rules

RoundKey = tuple[str, int, int]  # trial, round, attempt


def label(r: int, a: int) -> str:
    return f"round {r}" + (f" attempt {a}" if a != 1 else "")


@dataclass
class Timeline:
    """What only the order of the ledger's events tells, replayed in one pass."""

    enrolled_at_vote_close: dict[RoundKey, list[str]] = field(default_factory=dict)
    enrolled_at_reveal_close: dict[RoundKey, list[str]] = field(default_factory=dict)
    # (trial, msp) -> the (round, attempt) of each of its reveals, in ledger order.
    reveals: dict[tuple[str, str], list[tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    # (trial, round, attempt) -> position of its RoundOpened event (the order attempts ran in).
    opened: dict[RoundKey, int] = field(default_factory=dict)
    # Every event, in order, as (name, payload): the dataset replay walks them again.
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # The reveal deadline each attempt's UpdateCommitsClosed set.
    reveal_deadline: dict[RoundKey, float | None] = field(default_factory=dict)
    # Attempts whose reveals were over by event: UpdateRevealsClosed, or a halt past SUBMIT.
    # (the position of the event that ended them)
    reveals_ended: dict[RoundKey, int] = field(default_factory=dict)
    # (trial, round, attempt, msp) -> position of its UpdateRevealed / UpdateDisclosed event.
    opened_by: dict[tuple[str, int, int, str], int] = field(default_factory=dict)
    # (trial, round, attempt, msp) of every UpdateDisclosed -> the copies it claimed (MSP ids).
    claims: dict[tuple[str, int, int, str], list[str]] = field(default_factory=dict)


def replay(events: Iterable[Any]) -> Timeline:
    timeline = Timeline()
    enrolled: dict[str, set[str]] = defaultdict(set)
    current: dict[str, RoundKey] = {}  # trial -> its latest attempt
    for ev in events:
        p = ev.payload
        timeline.events.append((ev.name, p))
        if _halts_the_open_attempt(ev.name, p):
            # halt_open_round halts it without a RoundHalted of its own: past SUBMIT (its
            # commitments fixed), its reveals are over
            key = current.get(p["trial_id"])
            if key is not None and key in timeline.reveal_deadline:
                timeline.reveals_ended.setdefault(key, len(timeline.events))
        if ev.name == "RoundOpened":
            current[p["trial_id"]] = (p["trial_id"], p["round"], p["attempt"])
            timeline.opened[(p["trial_id"], p["round"], p["attempt"])] = len(timeline.events)
        elif ev.name == "HospitalEnrolled":
            enrolled[p["trial_id"]].add(p["msp_id"])
        elif ev.name == "HospitalRemoved":
            enrolled[p["trial_id"]].discard(p["msp_id"])
        elif ev.name in ("UpdateRevealed", "UpdateDisclosed"):  # each charges the next epsilon
            timeline.reveals[(p["trial_id"], p["msp_id"])].append((p["round"], p["attempt"]))
            key = (p["trial_id"], p["round"], p["attempt"])
            timeline.opened_by[(*key, p["msp_id"])] = len(timeline.events)
            if ev.name == "UpdateDisclosed":
                timeline.claims[(*key, p["msp_id"])] = list(p.get("claimed_from") or [])
        elif ev.name == "UpdateCommitsClosed":
            timeline.reveal_deadline[(p["trial_id"], p["round"], p["attempt"])] = p.get("deadline")
        elif ev.name == "UpdateRevealsClosed" or (
            ev.name == "RoundHalted"
            and (
                p.get("code") in ("NO_REVEALS", "NO_CANDIDATES")
                or (p.get("code") == "TOO_FEW_HOSPITALS" and p.get("phase") == "REVEAL")
            )
        ):
            key = (p["trial_id"], p["round"], p["attempt"])
            timeline.enrolled_at_reveal_close[key] = sorted(enrolled[p["trial_id"]])
        elif ev.name == "VotingClosed" or (
            ev.name == "RoundHalted"
            and (
                p.get("code") == "NONE_ACCEPTED"
                or (p.get("code") == "TOO_FEW_HOSPITALS" and p.get("phase") == "VOTE_REVEAL")
            )
        ):
            key = (p["trial_id"], p["round"], p["attempt"])
            timeline.enrolled_at_vote_close[key] = sorted(enrolled[p["trial_id"]])
        if ev.name == "UpdateRevealsClosed" or (
            ev.name == "RoundHalted" and (p.get("phase") or "SUBMIT") != "SUBMIT"
        ):
            key = (p["trial_id"], p["round"], p["attempt"])
            timeline.reveals_ended.setdefault(key, len(timeline.events))
    return timeline


def _halts_the_open_attempt(name: str, p: Mapping[str, Any]) -> bool:
    """Events of a trial-wide step that halts the trial's open attempt with it."""
    return (
        name == "TrialHalted"
        or (name == "RolledBack" and p.get("aborted_round") is not None)
        or (name == "HospitalRemoved" and p.get("trial_halt") is not None)
    )


# ---------------------------------------------------------------------------------------------
# (a) the DP schedule
# ---------------------------------------------------------------------------------------------


def schedule_problems(
    trial: Mapping[str, Any],
    enrolments: Mapping[str, Mapping[str, Any]],
    schedule: Mapping[str, Any] | None,
) -> list[str]:
    """The recorded schedule is exactly what Opacus gives for the hospitals enrolled at the start."""
    from coordinator.dp_schedule import schedule_for
    from privacy.dp import schedule_differences

    if not trial["dp"]["enabled"]:
        return (
            []
            if schedule is None
            else ["the trial has DP off but a DP schedule is recorded for it"]
        )
    if trial["state"] in ("DRAFT", "ENROLLING"):
        return [] if schedule is None else ["a DP schedule is recorded before the trial started"]
    if schedule is None:
        return [
            "the trial has DP on and started, but no DP schedule is recorded: nothing bounds the epsilon it charges"
        ]
    problems: list[str] = []
    entries = schedule["entries"]
    started = sorted(trial["enrolled_at_start"] or [])
    if sorted(entries) != started:
        problems.append(
            f"the schedule has entries for {sorted(entries)}, the hospitals enrolled at the start are {started}"
        )
    counts: dict[str, int] = {}
    for msp in sorted(entries):
        registered = (enrolments.get(msp) or {}).get("training_records")
        if not isinstance(registered, int) or registered < 1:
            problems.append(f"{msp}: has a schedule entry but no registered training_records")
            continue
        counts[msp] = registered
    recomputed = schedule_for(trial, counts)
    for msp, expected in recomputed.items():
        for difference in schedule_differences(entries[msp], expected):
            problems.append(f"schedule entry of {msp}: {difference}")
    return problems


# ---------------------------------------------------------------------------------------------
# (b) epsilon charged from the schedule, (c) sample weights
# ---------------------------------------------------------------------------------------------


def expected_charges(entry: Mapping[str, Any] | None, reveals: int) -> list[int | None]:
    """What the k-th reveal (k = 0, 1, ...) of a hospital is charged: the difference of its
    schedule's cumulative epsilons; 0 with DP off (entry None); None past the schedule's end."""
    if entry is None:
        return [0] * reveals
    eps = entry["epsilon_micro"]
    return [(eps[k] - (eps[k - 1] if k else 0)) if k < len(eps) else None for k in range(reveals)]


def revealed_in_order(
    trial_id: str,
    updates: Mapping[tuple[int, int], Mapping[str, Mapping[str, Any]]],
    timeline: Timeline,
) -> dict[str, list[Mapping[str, Any]]]:
    """msp -> its revealed (or disclosed) update records in the order they were charged."""
    by_msp: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for records in updates.values():
        for msp, u in records.items():
            if u["revealed"] or u.get("disclosed_at") is not None:
                by_msp[msp].append(u)
    ordered = {}
    for msp, records in by_msp.items():
        order = {ra: i for i, ra in enumerate(timeline.reveals.get((trial_id, msp), []))}
        ordered[msp] = sorted(
            records,
            key=lambda u: (
                order.get((u["round"], u["attempt"]), len(order)),
                u["revealed_at"] or u.get("disclosed_at") or 0,
                u["round"],
                u["attempt"],
            ),
        )
    return ordered


def charge_problems(
    trial: Mapping[str, Any],
    schedule: Mapping[str, Any] | None,
    accounts: Mapping[str, Mapping[str, Any]],
    revealed: Mapping[str, list[Mapping[str, Any]]],
) -> list[str]:
    problems: list[str] = []
    dp_on = trial["dp"]["enabled"]
    entries = (schedule or {}).get("entries", {})
    for msp in sorted(set(revealed) | set(accounts)):
        updates = revealed.get(msp, [])
        entry = entries.get(msp) if dp_on else None
        if dp_on and entry is None:
            if updates:
                problems.append(
                    f"{msp}: {len(updates)} revealed update(s) but no schedule entry to charge them from"
                )
            continue
        want = expected_charges(entry, len(updates))
        for k, (u, expected) in enumerate(zip(updates, want, strict=True)):
            where = f"{msp} {label(u['round'], u['attempt'])}"
            if expected is None:
                problems.append(
                    f"{where}: reveal number {k + 1} but the schedule plans only {trial['rounds']}: "
                    "it should have been refused BUDGET_EXCEEDED"
                )
            elif u["epsilon_spent_micro"] != expected:
                problems.append(
                    f"{where}: charged epsilon_spent_micro {u['epsilon_spent_micro']}, the schedule's "
                    f"reveal number {k + 1} costs {expected}"
                )
        account = accounts.get(msp)
        if account is None:
            if updates:
                problems.append(f"{msp}: revealed updates but has no privacy account")
            continue
        listed = [(e["round"], e["attempt"], e["epsilon_micro"]) for e in account["entries"]]
        charged = [
            (u["round"], u["attempt"], w if w is not None else u["epsilon_spent_micro"])
            for u, w in zip(updates, want, strict=True)
        ]
        if listed != charged:
            problems.append(
                f"{msp}: privacy account entries {listed}, the reveals charged from the schedule {charged}"
            )
        total = sum(e[2] for e in listed)
        if account["epsilon_spent_micro"] != total:
            problems.append(
                f"{msp}: privacy account cumulative {account['epsilon_spent_micro']} micro-epsilon, "
                f"its entries sum to {total}"
            )
        budget = entry["epsilon_micro"][-1] if entry is not None else None
        if account["budget_micro"] != budget:
            problems.append(
                f"{msp}: privacy account budget_micro {account['budget_micro']}, expected {budget} "
                + ("(its schedule's last epsilon)" if dp_on else "(DP off: no budget)")
            )
    return problems


def weight_problems(
    enrolments: Mapping[str, Mapping[str, Any]],
    revealed: Mapping[str, list[Mapping[str, Any]]],
) -> list[str]:
    problems = []
    for msp, updates in sorted(revealed.items()):
        registered = (enrolments.get(msp) or {}).get("training_records")
        for u in updates:
            if not isinstance(registered, int) or u["sample_weight"] > registered:
                problems.append(
                    f"{msp} {label(u['round'], u['attempt'])}: sample_weight {u['sample_weight']} is over "
                    f"its registered training_records {registered}"
                )
    return problems


# ---------------------------------------------------------------------------------------------
# (d) duplicates
# ---------------------------------------------------------------------------------------------


def excluded_duplicates(
    updates: Iterable[Mapping[str, Any]], tolerance_seconds: int
) -> dict[str, dict[str, Any]]:
    """Round.excluded of one attempt: among revealed updates with the same sha256, the earliest
    ``committed_at`` owns the content when it is more than the trial's clock tolerance earlier
    than every other (``rules.content_owner``); nobody otherwise. Never by who revealed first."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for u in updates:
        if u["revealed"]:
            groups[u["sha256"]].append(u)
    excluded: dict[str, dict[str, Any]] = {}
    for sha256, group in groups.items():
        if len(group) < 2:
            continue
        owner = rules.content_owner(
            {u["msp_id"]: u["committed_at"] for u in group}, tolerance_seconds
        )
        for u in group:
            if u["msp_id"] != owner:
                excluded[u["msp_id"]] = {
                    "reason": "duplicate_content",
                    "sha256": sha256,
                    "owner": owner,
                }
    return dict(sorted(excluded.items()))


def duplicate_problems(
    trial: Mapping[str, Any],
    rounds: list[Mapping[str, Any]],
    updates: Mapping[tuple[int, int], Mapping[str, Mapping[str, Any]]],
    timeline: Timeline,
) -> list[str]:
    trial_id = trial["trial_id"]
    tolerance = trial.get("clock_tolerance_seconds", 0)  # 0: trials recorded before it existed
    problems: list[str] = []
    for rnd in rounds:
        r, a = rnd["round"], rnd["attempt"]
        at_close = timeline.enrolled_at_reveal_close.get((trial_id, r, a))
        if at_close is None:
            continue  # the reveals have not closed yet
        records = updates.get((r, a), {})
        # Removed hospitals' reveals count when deciding the owner: a copier gains nothing from
        # its victim's removal.
        excluded = excluded_duplicates(records.values(), tolerance)
        if rnd.get("excluded", {}) != excluded:
            problems.append(
                f"{label(r, a)}: round.excluded {rnd.get('excluded', {})}, recomputed from the update "
                f"records (earliest commitment owns the content): {excluded}"
            )
        halt = (rnd.get("halt") or {}).get("code")
        if halt not in ("NO_REVEALS", "NO_CANDIDATES") or rnd["candidates"]:
            candidates = sorted(
                m
                for m, u in records.items()
                if u["revealed"] and m in at_close and m not in excluded
            )
            if rnd["candidates"] != candidates:
                problems.append(
                    f"{label(r, a)}: round.candidates {rnd['candidates']}, recomputed: {candidates} "
                    "(the enrolled hospitals' revealed updates that are not excluded)"
                )
    # Across attempts (in the order they were opened): bytes revealed once may never come back.
    first_seen: dict[str, tuple[str, int, int]] = {}
    accepted = {(x["round"], x["attempt"]): set(x["accepted_sha256s"]) for x in rounds}
    opened = sorted(
        (timeline.opened.get((trial_id, x["round"], x["attempt"]), 0), x["round"], x["attempt"])
        for x in rounds
    )
    for _, r, a in opened:
        fresh = []
        for msp, u in sorted(updates.get((r, a), {}).items()):
            disclosed = u.get("disclosed_at") is not None  # its author's, from this attempt on
            if not u["revealed"] and not disclosed:
                continue
            earlier = first_seen.get(u["sha256"])
            if earlier is not None and (u.get("claimed_by") or {}).get("msp_id") == earlier[0]:
                continue  # a copy its author's disclosure claimed (disclosure_problems checks it)
            if earlier is not None and (disclosed or earlier[1:] != (r, a)):
                what = "accepted again" if u["sha256"] in accepted.get((r, a), set()) else "again"
                verb = "disclosed" if disclosed else "revealed"
                problems.append(
                    f"{label(r, a)}: {msp} {verb} sha256 {u['sha256']}, already revealed by {earlier[0]} "
                    f"in {label(earlier[1], earlier[2])}: {verb} {what} (DUPLICATE_CONTENT)"
                )
            else:
                fresh.append((u["sha256"], msp))
        for sha256, msp in fresh:
            first_seen.setdefault(sha256, (msp, r, a))
    return problems


def disclosure_problems(
    trial: Mapping[str, Any],
    updates: Mapping[tuple[int, int], Mapping[str, Mapping[str, Any]]],
    timeline: Timeline,
) -> list[str]:
    """Every disclosed update (``disclose_update``) was opened once its attempt's reveals were
    over: after the reveals closed or the attempt halted past SUBMIT (by event order), or after
    the reveal deadline (by its ``disclosed_at``). Sooner, it is a reveal outside the rules: a
    copier could claim bytes its victim had not revealed yet, or dodge the voters' scoring."""
    trial_id = trial["trial_id"]
    problems = []
    for (r, a), records in sorted(updates.items()):
        for msp, u in sorted(records.items()):
            at = u.get("disclosed_at")
            if at is None:
                continue
            where = f"{label(r, a)}: {msp} disclosed its update at {at}"
            mine = (trial_id, r, a, msp)  # claims holds every UpdateDisclosed, opened_by where
            event_at = timeline.opened_by.get(mine) if mine in timeline.claims else None
            ended_at = timeline.reveals_ended.get((trial_id, r, a))
            deadline = timeline.reveal_deadline.get((trial_id, r, a))
            if u["revealed"]:
                problems.append(f"{where} and revealed it too (one opening per commitment)")
            if event_at is None:
                problems.append(f"{where}, but no UpdateDisclosed event of it is on the ledger")
            elif ended_at is not None and ended_at < event_at:
                continue  # after the attempt's reveals closed (or it halted past SUBMIT)
            elif (trial_id, r, a) not in timeline.reveal_deadline:
                problems.append(
                    f"{where}, before the attempt's commitments were fixed "
                    "(no UpdateCommitsClosed precedes it)"
                )
            elif deadline is not None and at <= deadline:
                problems.append(
                    f"{where}, while its reveals were open until {deadline} (TOO_EARLY: "
                    "a disclosure is only for updates whose reveal can no longer land)"
                )
    return problems + claim_problems(trial, updates, timeline)


def claim_problems(
    trial: Mapping[str, Any],
    updates: Mapping[tuple[int, int], Mapping[str, Mapping[str, Any]]],
    timeline: Timeline,
) -> list[str]:
    """A disclosure of bytes another hospital opened first (revealed or disclosed) claims them,
    marking each such record ``claimed_by``, only under a commitment that provably came first:
    of an attempt opened earlier (ledger order), or within one attempt more than
    ``clock_tolerance_seconds`` earlier. Every claim is checked so, and against the ledger order
    (the copy opened, and its attempt closed its reveals, before the claiming disclosure, whose
    event names it); bytes any disclosure opened keep exactly one unclaimed opener, a
    disclosure."""
    trial_id = trial["trial_id"]
    tolerance = trial.get("clock_tolerance_seconds", 0)
    opened = [
        u
        for by_msp in updates.values()
        for u in by_msp.values()
        if u["revealed"] or u.get("disclosed_at") is not None
    ]
    disclosed = {
        (u["msp_id"], u["round"], u["attempt"]): u
        for u in opened
        if u.get("disclosed_at") is not None
    }
    problems = []
    for u in opened:
        claim = u.get("claimed_by")
        if claim is None:
            continue
        where = f"{label(u['round'], u['attempt'])}: {u['msp_id']}'s update"
        by = disclosed.get((claim["msp_id"], claim["round"], claim["attempt"]))
        if by is None or by["sha256"] != u["sha256"]:
            problems.append(
                f"{where} is claimed_by {claim}, which disclosed no update of sha256 {u['sha256']}"
            )
            continue
        theirs = timeline.opened.get((trial_id, claim["round"], claim["attempt"]))
        mine_opened = timeline.opened.get((trial_id, u["round"], u["attempt"]))
        other_attempt = (claim["round"], claim["attempt"]) != (u["round"], u["attempt"])
        if other_attempt and theirs is not None and mine_opened is not None:
            if not theirs < mine_opened:  # attempts run one at a time: ledger order decides
                problems.append(
                    f"{where} is claimed_by {claim['msp_id']}, whose commitment is of "
                    f"{label(claim['round'], claim['attempt'])}, opened after its own attempt"
                )
        elif not by["committed_at"] + tolerance < u["committed_at"]:
            problems.append(
                f"{where} is claimed_by {claim['msp_id']}, whose commitment at "
                f"{by['committed_at']} is not more than {tolerance} s before its own at "
                f"{u['committed_at']}"
            )
        if claim["at"] != by["disclosed_at"]:
            problems.append(
                f"{where}: its claim is dated {claim['at']}, the claiming disclosure "
                f"{by['disclosed_at']}"
            )
        claimer = (trial_id, claim["round"], claim["attempt"], claim["msp_id"])
        mine = (trial_id, u["round"], u["attempt"], u["msp_id"])
        claimed_at = timeline.opened_by.get(claimer, 0)
        ended = timeline.reveals_ended.get((trial_id, u["round"], u["attempt"]))
        if u["msp_id"] not in timeline.claims.get(claimer, []):
            problems.append(f"{where}: the claiming UpdateDisclosed event does not name it")
        elif not timeline.opened_by.get(mine, 0) < claimed_at:
            problems.append(f"{where} was opened after the disclosure that claims it")
        elif u["revealed"] and (ended is None or not ended < claimed_at):
            problems.append(
                f"{where} was claimed while its attempt still took reveals (the contract's "
                "TOO_EARLY: that attempt's close decides its owner)"
            )
    by_sha: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for u in opened:
        by_sha[u["sha256"]].append(u)
    for sha256, records in sorted(by_sha.items()):
        if not any(u.get("disclosed_at") is not None for u in records):
            continue  # only reveals: the duplicate rules decide (duplicate_problems)
        unclaimed = [u for u in records if u.get("claimed_by") is None]
        owner = unclaimed[0] if len(unclaimed) == 1 else None
        if owner is None or owner.get("disclosed_at") is None:
            problems.append(
                f"sha256 {sha256}: opened by "
                + ", ".join(f"{u['msp_id']} ({label(u['round'], u['attempt'])})" for u in unclaimed)
                + " without a claim between them (a disclosure leaves one opener: itself, or "
                "the contract refuses the other)"
            )
        elif any(u["claimed_by"]["msp_id"] != owner["msp_id"] for u in records if u is not owner):
            problems.append(
                f"sha256 {sha256}: disclosed by {owner['msp_id']}, but a copy is claimed by another"
            )
    return problems


# ---------------------------------------------------------------------------------------------
# (e) attestations and disputes
# ---------------------------------------------------------------------------------------------


def expected_disputes(
    attestations: Iterable[Mapping[str, Any]], finalized_sha256: str
) -> list[dict[str, Any]]:
    """Every attestation of another hash than the finalized model, earlier or later."""
    return sorted(
        (
            {
                "msp_id": x["msp_id"],
                "sha256": x["sha256"],
                "at": x["attested_at"],
                "against": finalized_sha256,
            }
            for x in attestations
            if x["sha256"] != finalized_sha256
        ),
        key=lambda d: (d["at"], d["msp_id"]),
    )


def attestation_problems(
    rnd: Mapping[str, Any],
    attestations: list[Mapping[str, Any]],
    enrolled: Iterable[str] | None = None,
) -> list[str]:
    """Only the round's participants count towards the quorum; ``enrolled`` (the hospitals
    enrolled now; default every participant) bounds who may still attest."""
    problems: list[str] = []
    participants = rnd["participants"]
    quorum = rules.attestation_quorum(len(participants)) if participants else None
    counts: dict[str, int] = defaultdict(int)
    for x in attestations:
        if x["msp_id"] in participants:
            counts[x["sha256"]] += 1
    top = max(counts.values(), default=0)
    disputes = sorted(rnd["disputes"], key=lambda d: (d["at"], d["msp_id"]))
    if rnd["phase"] == "FINALIZED" and rnd["model"] is not None:
        model = rnd["model"]["sha256"]
        if quorum is not None and counts.get(model, 0) < quorum:
            problems.append(
                f"finalized with {model} attested by {counts.get(model, 0)}, the quorum is {quorum}"
            )
        expected = expected_disputes(attestations, model)
        if disputes != expected:
            problems.append(
                f"round.disputes {disputes}, recomputed from the attestations against the finalized "
                f"model: {expected}"
            )
        return problems
    if disputes:
        problems.append(f"round.disputes {disputes} recorded but the round is {rnd['phase']}")
    if quorum is None:
        return problems
    still = set(participants) & set(participants if enrolled is None else enrolled)
    pending = len(still - {x["msp_id"] for x in attestations})
    halt = rnd["halt"] or {}
    if rnd["phase"] == "HALTED" and halt.get("code") == "ATTESTATION_MISMATCH":
        if top + pending >= quorum:
            problems.append(
                f"halted ATTESTATION_MISMATCH, but a hash attested {top} times with {pending} "
                f"participant(s) still to attest could reach the quorum {quorum}: a minority dissent "
                "is a dispute, not a halt"
            )
    elif rnd["phase"] == "ATTEST" and top >= quorum:
        problems.append(
            f"a hash has {top} attestations (quorum {quorum}) but the round is not finalized"
        )
    return problems


# ---------------------------------------------------------------------------------------------
# (f) liveness: min_silos, the count of failed attempts, the trial's end
# ---------------------------------------------------------------------------------------------

TRIAL_HALT_CODES = ("HALTED_BY_ADMIN", "TOO_FEW_HOSPITALS", "RETRIES_EXHAUSTED", "BUDGETS_SPENT")


def liveness_problems(trial: Mapping[str, Any], rounds: list[Mapping[str, Any]]) -> list[str]:
    """Every finalized round aggregated at least min_silos accepted updates; every failed
    attempt's count (``halt.failed_attempts``), recomputed in the order the attempts were
    opened (restarting at each finalized round, rollback and resume), matches the ledger, and
    the trial halted with it exactly when the count passed max_retries; a HALTED trial has a
    known code."""
    problems: list[str] = []
    min_silos, max_retries = trial["min_silos"], trial.get("max_retries", 0)
    resets = sorted(x["at"] for x in [*trial["rollbacks"], *trial.get("resumes", [])])
    count, last_end = 0, None
    for rnd in sorted(rounds, key=lambda x: (x["opened_at"], x["round"], x["attempt"])):
        where = label(rnd["round"], rnd["attempt"])
        if last_end is not None and any(last_end <= at <= rnd["opened_at"] for at in resets):
            count = 0
        halt = rnd.get("halt") or {}
        if rnd["phase"] == "FINALIZED":
            if len(rnd["accepted"]) < min_silos:
                problems.append(
                    f"{where}: finalized with {len(rnd['accepted'])} accepted updates, fewer "
                    f"than min_silos={min_silos}"
                )
            count, last_end = 0, rnd["finalized_at"]
        elif rnd["phase"] == "HALTED":
            last_end = halt.get("at", rnd["phase_changed_at"])
            if "failed_attempts" not in halt:
                continue  # ABORTED, TRIAL_HALTED (or a ledger from before retries): not counted
            count += 1
            if halt["failed_attempts"] != count:
                problems.append(
                    f"{where}: halt.failed_attempts {halt['failed_attempts']}, recomputed {count}"
                )
            if count > max_retries and halt.get("retry"):
                problems.append(
                    f"{where}: retried after {count} failures in a row, max_retries={max_retries}"
                )
    halt = trial.get("halt")
    if trial["state"] == "HALTED" and (halt is None or halt.get("code") not in TRIAL_HALT_CODES):
        problems.append(f"the trial is HALTED without a known code: {halt}")
    return problems
