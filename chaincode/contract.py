"""The consortium contract: trials, enrolment, trial keys, rounds (commit-reveal updates and votes), acceptance, attestation, rewards, rollback.

Entry point: ``invoke(state, function, args) -> bytes``. ``args`` is ONE JSON object (UTF-8, at
most ``MAX_ARGS_BYTES``); the result is canonical JSON. A refusal raises ``ContractError`` whose
``code`` is a key of ``CODES``, whose message names the field, the value and what was expected,
and the host discards the transaction's writes. Every state-changing function emits exactly one
event (payload: canonical JSON with ``trial_id`` and, for round steps, ``round`` and ``attempt``).

Determinism: time is the transaction timestamp (int seconds); no randomness; no float decides
anything (scores, thresholds and epsilons are ints in micro-units (1e-6), gradient norms in
milli-units, weights and rewards are ints, delta is a reduced fraction [num, den]). The
arithmetic lives in ``chaincode.rules`` and the commitment hashes in ``chaincode.commitments``.

Identities
==========
The creator's certificate (already verified by the host against its MSP's CA) carries the bcfl
role as a subject OU: ``admin``, ``coordinator``, ``silo`` or ``auditor`` (the name is the CN).
If several role OUs are present, ``admin`` is read as Fabric's admin NodeOU and ignored (least
privilege); two other role OUs are refused. After ``init_consortium`` a role counts only from an
organisation of the matching kind: admin/coordinator from ``operator``, silo from ``hospital``,
auditor from ``auditor`` organisations. A silo always acts for its own MSP id: silo functions
accept an optional ``msp_id`` that must equal the creator's (``WRONG_ORGANISATION`` otherwise).
Queries are open to every member.

Trial life cycle:  DRAFT -> ENROLLING -> RUNNING -> COMPLETED;  ENROLLING | RUNNING -> HALTED

Functions (role; arguments; what it returns; event). ``[x]`` is optional; silo functions also
take an optional ``msp_id`` that must be the caller's own.
==============================================================================================
init_consortium   admin (of an operator org it lists); {organisations: [{msp_id, kind}]};
                  consortium; ConsortiumInitialised. Runs once.
create_trial      admin; {trial_id, task, data_schema, model: {name, [hyperparameters]},
                  initial_model: ref, rounds, min_silos (>= 2), [dp], [he], [evaluation],
                  [phase_seconds]}; trial; TrialCreated. Omitted fields take DEFAULT_DP, DEFAULT_HE_PRESET,
                  DEFAULT_EVALUATION and DEFAULT_PHASE_SECONDS;
                  DP and HE are on unless {"enabled": false, ["reason"]} is given.
open_enrolment    admin; {trial_id}; trial; EnrolmentOpened
register_encryption_key  silo; {trial_id, encryption_public_key}: the hospital's own X25519 key for the trial
enrol_hospital    admin; {trial_id, msp_id, encryption_public_key (X25519, PEM or base64)}, which must equal
                  the key that hospital registered itself;
                  enrolment; HospitalEnrolled
remove_hospital   admin; {trial_id, msp_id, [reason]}; enrolment; HospitalRemoved
start_trial       admin; {trial_id}; trial; TrialStarted (needs min_silos enrolled)
halt_trial        admin; {trial_id, reason}; trial; TrialHalted (an open round halts too)
complete_trial    admin; {trial_id}; trial; TrialCompleted (the head is the last planned round)
record_trial_keys silo; {trial_id, public_context: ref, envelopes: {msp_id: ref} for exactly the
                  enrolled hospitals}; trial_keys; TrialKeysRecorded. Once, while RUNNING.
open_round        admin|coordinator; {trial_id, [round]}; round; RoundOpened
commit_update     silo; {trial_id, round, base_model_sha256, commitment}; update; UpdateCommitted
close_update_commits  admin|coordinator; {trial_id, round}; round; UpdateCommitsClosed|RoundHalted
reveal_update     silo; {trial_id, round, content_id, sha256, sample_weight,
                  epsilon_spent_micro, salt}; update; UpdateRevealed
close_update_reveals  admin|coordinator; {trial_id, round}; round; UpdateRevealsClosed|RoundHalted
commit_votes      silo; {trial_id, round, commitment}; vote; VotesCommitted
close_vote_commits    admin|coordinator; {trial_id, round}; round; VoteCommitsClosed|RoundHalted
reveal_votes      silo; {trial_id, round, scores: {peer msp_id: score_micro}, salt}; vote;
                  VotesRevealed
close_voting      admin|coordinator; {trial_id, round}; acceptance; VotingClosed|RoundHalted
record_aggregate  coordinator; {trial_id, round, content_id, sha256, update_sha256s}; round;
                  AggregateRecorded
attest_model      silo; {trial_id, round, sha256, [content_id]}; {attestation, round};
                  ModelAttested | RoundFinalized | AttestationMismatch
abort_round       admin; {trial_id, round, reason}; round; RoundHalted
rollback          admin; {trial_id, to_round (0 = initial model), [reason]}; trial; RolledBack
record_settlement coordinator; {trial_id, round, [attempt], chain_id, tx_hash (0x + 64 hex)};
                  round_rewards; SettlementRecorded. Once per finalized round attempt.
Queries (every member): whoami {} -> {msp_id, name, role, organisation_kind, member};
get_consortium {}; list_trials {[state]}; get_trial, get_enrolments, get_trial_keys,
list_rounds, get_model_lineage {trial_id}; get_round {trial_id, [round], [attempt]} (defaults:
the current round, the latest attempt); get_submissions, get_votes, get_attestations,
get_acceptance {trial_id, round, [attempt]}; get_privacy_ledger {trial_id, [msp_id]} -> [privacy];
get_rewards {trial_id, [msp_id]} -> {trial_id, accounts: [reward_account], rounds:
[round_rewards]}; get_history {trial_id, record (a record name below, default "trial"), and
round/[attempt]/msp_id as that record needs} -> [{tx_id, timestamp, is_delete, value}], newest
first; get_model_lineage -> {trial_id, initial_model, head, rounds: lineage, rollbacks}.

A round (ARCHITECTURE.md "A round")
===================================
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
  reveal_votes          each committed voter (a score for every candidate but itself)
  close_voting          admin|coordinator   -> AGGREGATE    acceptance, weights, rewards computed
  record_aggregate      coordinator         -> ATTEST       must sum exactly the accepted updates
  attest_model          each enrolled silo  -> FINALIZED at quorum; any mismatch -> HALTED

A close step halts the round instead when there is nothing to continue with (no commitments,
no reveals, no vote commitments, nothing accepted); ``abort_round`` (admin) halts it by hand.
A close step is ``TOO_EARLY`` while someone is still expected and the deadline has not passed
(submissions are on time up to and including the deadline second; closing is allowed after it).

Update commitment = ``sha256_hex(canonical_json({"trial_id", "round", "msp_id", "content_id",
"sha256", "sample_weight", "epsilon_spent_micro", "salt"}))``; votes commitment =
``sha256_hex(canonical_json({"trial_id", "round", "msp_id", "scores", "salt"}))``: see
``chaincode.commitments``. ``epsilon_spent_micro`` is what this round adds to the hospital's
cumulative epsilon (its accountant's cumulative epsilon after the round minus the cumulative on
the ledger), so the ledger's cumulative equals the accountant's. Epsilon is spent at reveal and
never refunded (a halted round or a rollback does not un-disclose an update).

Acceptance, weights, contribution, rewards, quorum: see ``chaincode.rules`` (lower median of
peer scores >= -threshold with enough votes; weight = sample weight; contribution =
median + threshold + 1; largest-remainder reward split; quorum = majority of participants).
Rewards computed at ``close_voting`` are credited to the hospitals' accounts when the round
finalizes, and voided if it halts.

Records (canonical JSON under composite keys; r and a are zero-padded to 6 digits in keys)
==========================================================================================
consortium     ("consortium", [])
    {organisations: {msp_id: {msp_id, kind}}, initialised_at, initialised_by: who}
    where who = {msp_id, name, role}
trial          ("trial", [trial_id])
    {trial_id, task, data_schema, model: {name, hyperparameters}, initial_model: ref, rounds,
     min_silos, dp, he, evaluation, phase_seconds, state, created_at, created_by: who,
     state_changed_at, enrolled_at_start: [msp_id] | null, halt: {reason, at, by} | null,
     current: {round, attempt} | null (the latest opened round), attempts: {"r": count},
     head: {round, attempt, model: ref} (the base of the next round; round 0 = initial model),
     lineage: [{round, attempt, model: ref, finalized_at}] (current chain, round 1..head),
     rollbacks: [{from_round, from_attempt, to_round, to_attempt, reason, at, by}]}
    ref = {content_id, sha256} (content_id may be null for attested models: a silo can then
    rebuild the model from its base and the round's aggregate)
    dp = {enabled: true, target_epsilon_micro (for the whole trial), delta: [num, den],
          max_grad_norm_milli, local_epochs, accountant: "rdp" | "prv",
          grad_sample_mode: "ghost" | "hooks"} | {enabled: false, reason | null}
    he = {enabled: true, preset} | {enabled: false, reason | null}
    evaluation = {acceptance_threshold_micro, min_voters, reward_per_round}
    phase_seconds = {submit, reveal, vote_commit, vote_reveal}
enrolment      ("enrolment", [trial_id, msp_id])
    {trial_id, msp_id, status: "enrolled" | "removed", encryption_public_key (base64 of the raw
     32-byte X25519 key), enrolled_at, enrolled_by: who, removed_at, removed_by, removal_reason}
trial_keys     ("trial_keys", [trial_id])
    {trial_id, msp_id (creator), public_context: ref, envelopes: {msp_id: ref}, recorded_at}
round          ("round", [trial_id, r, a])
    {trial_id, round, attempt, phase, base: {round, attempt, model: ref}, enrolled: [msp_id],
     opened_at, opened_by: who, phase_changed_at, deadline (current phase) | null,
     deadlines: {submit, reveal, vote_commit, vote_reveal} (as each phase starts),
     committed: [msp_id], candidates: [msp_id], vote_committed: [msp_id],
     accepted: [msp_id], accepted_sha256s: [sha256], total_weight, participants: [msp_id],
     attestation_quorum | null, aggregate: {content_id, sha256, update_sha256s, total_weight,
     recorded_at, recorded_by} | null, model: ref | null, finalized_at | null,
     halt: {code, reason, at, by, ...} | null, disputes: [{msp_id, sha256, at}]}
update         ("update", [trial_id, r, a, msp_id])
    {trial_id, round, attempt, msp_id, base_model_sha256, commitment, committed_at, revealed,
     content_id, sha256, sample_weight, epsilon_spent_micro, salt, revealed_at}
vote           ("vote", [trial_id, r, a, msp_id])
    {trial_id, round, attempt, msp_id, commitment, committed_at, revealed, scores: {msp_id:
     score_micro} | null, salt, revealed_at}
acceptance     ("acceptance", [trial_id, r, a])
    {trial_id, round, attempt, threshold_micro, min_voters, computed_at, voters_revealed,
     voters_missing, candidates: {msp_id: {sha256, sample_weight, scores: {voter: score},
     votes, required_votes, median_micro | null, accepted, reason, weight, contribution,
     reward}}, accepted, rejected, accepted_sha256s, total_weight, reward_pool, rewards}
    reason: "accepted" | "not_enrolled" | "too_few_votes" | "below_threshold"
attestation    ("attestation", [trial_id, r, a, msp_id])
    {trial_id, round, attempt, msp_id, sha256, content_id | null, attested_at}
round_rewards  ("round_rewards", [trial_id, r, a])
    {trial_id, round, attempt, pool, rewards: {msp_id: int}, status: "pending" | "credited" |
     "void", settlement: {chain_id, tx_hash, recorded_at, recorded_by} | null}
reward_account ("reward_account", [trial_id, msp_id])
    {trial_id, msp_id, total, entries: [{round, attempt, amount}]}
privacy        ("privacy", [trial_id, msp_id])
    {trial_id, msp_id, budget_micro | null (DP off), epsilon_spent_micro (cumulative),
     entries: [{round, attempt, epsilon_micro, at}]}
content        ("content", [trial_id, sha256])
    {trial_id, sha256, msp_id, round, attempt}: who first revealed these bytes in this trial
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from bcfl_common.canonical import canonical_json
from bcfl_common.certificates import (
    certificate_common_name,
    certificate_ous,
    parse_certificate,
    role_from_ous,
    x25519_public_key_raw,
)
from bcfl_common.errors import ContractError
from bcfl_common.vocabulary import (
    DONE_PHASES,
    ETH_TX_HASH,
    LABEL,
    ORGANISATION_KINDS,
    PHASE_DURATION,
    PHASES,
    ROLES,
    ROLES_BY_KIND,
    TRIAL_STATES,
)
from chaincode import rules
from chaincode.args import (
    Args,
    check_identifier_key,
    parse_args,
)
from chaincode.commitments import update_commitment, votes_commitment
from chaincode.state import ChaincodeState, create_composite_key

# Big things (models, updates, key envelopes) live in the artifact store; arguments carry ids
# and hashes only, so 64 KiB is generous and bounds what one transaction can make peers parse.
MAX_ARGS_BYTES = 65536

CODES: dict[str, str] = {
    "UNKNOWN_FUNCTION": "no contract function has this name",
    "MALFORMED_ARGS": "the arguments are not one JSON object in UTF-8 (or repeat a key, or nest too deep)",
    "ARGS_TOO_LARGE": f"the arguments are larger than {MAX_ARGS_BYTES} bytes",
    "INVALID_ARGUMENT": "a field is missing, unknown or has the wrong type or range (the message names it)",
    "INVALID_IDENTITY": "the creator certificate cannot be read or does not carry exactly one bcfl role OU",
    "NOT_INITIALISED": "init_consortium has not been called yet",
    "NOT_MEMBER": "the creator's MSP is not an organisation of the consortium",
    "FORBIDDEN_ROLE": "the creator's role may not call this function, or is not honoured from its kind of organisation",
    "WRONG_ORGANISATION": "the arguments name another organisation than the caller's, or an organisation of the wrong kind",
    "NOT_FOUND": "no such trial or record",
    "ALREADY_EXISTS": "the thing to create exists already (consortium, trial, enrolment, trial keys, settlement)",
    "WRONG_STATE": "the trial or round is not in a state that allows this (too early, or halted)",
    "TOO_EARLY": "a phase cannot close yet: someone is still expected and its deadline has not passed",
    "INSUFFICIENT_SILOS": "fewer hospitals are enrolled than the trial's min_silos",
    "NOT_ENROLLED": "the hospital is not (or no longer) enrolled in the trial",
    "NO_SUCH_ROUND": "the round was never opened, or is not a finalized round of the current lineage",
    "LATE": "the deadline passed or the phase (or round) moved on",
    "DUPLICATE": "this organisation already did this in this round",
    "STALE": "the update was trained from another base model than the round's",
    "BUDGET_EXCEEDED": "the hospital's cumulative epsilon would exceed the trial's privacy budget",
    "NOT_COMMITTED": "a reveal from an organisation that made no commitment in this round",
    "COMMITMENT_MISMATCH": "the revealed values do not hash to the organisation's commitment",
    "DUPLICATE_CONTENT": "another organisation already revealed an update with this sha256 in this trial",
    "SELF_VOTE": "a voter scored its own update",
    "KEY_MISMATCH": "the encryption key given for a hospital is not the one the hospital registered itself",
    "AGGREGATE_MISMATCH": "the aggregate does not sum exactly the accepted updates",
    "ATTESTATION_MISMATCH": "attested model hashes differ; the round was halted (halt code and event, not raised)",
}

MAX_ROUNDS = 1000
MAX_SILOS = 1000
MAX_SAMPLE_WEIGHT = 10**12
MAX_SCORE_MICRO = 10**12
MAX_EPSILON_MICRO = 10**12
MAX_PHASE_SECONDS = 30 * 24 * 3600

# Mirrors privacy.dp.policy (ACCOUNTANTS, GRAD_SAMPLE_MODES) and privacy.he.presets.DEFAULT_PRESET;
# the contract may not import them (stdlib and cryptography only), so silos re-check the names.
DP_ACCOUNTANTS = ("rdp", "prv")
DP_GRAD_SAMPLE_MODES = ("ghost", "hooks")
DEFAULT_DP = {
    "target_epsilon_micro": 8_000_000,
    "delta": "1/100000",
    "max_grad_norm_milli": 1000,
    "local_epochs": 1,
    "accountant": "rdp",
    "grad_sample_mode": "ghost",
}
DEFAULT_HE_PRESET = "ckks-n4096-s33"
DEFAULT_EVALUATION = {
    "acceptance_threshold_micro": 10_000,
    "min_voters": 2,
    "reward_per_round": 1000,
}
DEFAULT_PHASE_SECONDS = {"submit": 3600, "reveal": 900, "vote_commit": 1800, "vote_reveal": 900}

_TASK = "a task name: 1-128 of letters, digits, space . _ : / + - starting with a letter or digit"


def _fail(code: str, message: str, **detail: Any) -> NoReturn:
    raise ContractError(message, code=code, detail=detail)


# ---------------------------------------------------------------------------------------------
# Transaction context, caller and the function table
# ---------------------------------------------------------------------------------------------


class _Tx:
    """One transaction: JSON records in, JSON records out, at most one event."""

    def __init__(self, state: ChaincodeState):
        self.state = state
        self.now = int(state.get_tx_timestamp())
        self.event: tuple[str, dict[str, Any]] | None = None
        self.writes = 0

    def get(self, key: str) -> Any:
        raw = self.state.get_state(key)
        return None if raw is None else json.loads(raw)

    def put(self, key: str, record: Any) -> None:
        self.state.put_state(key, canonical_json(record))
        self.writes += 1

    def scan(self, object_type: str, attributes: list[str]) -> list[Any]:
        return [
            json.loads(v)
            for _, v in self.state.get_state_by_partial_composite_key(object_type, attributes)
        ]

    def emit(self, name: str, payload: dict[str, Any]) -> None:
        if self.event is not None:  # a contract bug: Fabric would silently keep only the last one
            raise RuntimeError(f"second event {name!r} after {self.event[0]!r} in one transaction")
        self.event = (name, payload)


@dataclass(frozen=True)
class _Caller:
    msp_id: str
    name: str
    role: str
    kind: str | None

    def who(self) -> dict[str, str]:
        return {"msp_id": self.msp_id, "name": self.name, "role": self.role}


Handler = Callable[[_Tx, _Caller, Args], Any]


@dataclass(frozen=True)
class _Spec:
    handler: Handler
    roles: frozenset[str]
    read_only: bool
    # "member": a consortium member whose role its organisation may hold; "bootstrap": before
    # the consortium exists (init_consortium); "anyone": any readable certificate (whoami).
    access: str


_FUNCTIONS: dict[str, _Spec] = {}


def _function(
    name: str, *roles: str, read_only: bool = False, access: str = "member"
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        _FUNCTIONS[name] = _Spec(handler, frozenset(roles or ROLES), read_only, access)
        return handler

    return register


def _certificate_identity(cert_pem: bytes) -> tuple[str, str]:
    """(role, name) from the creator certificate's subject OUs and CN."""
    try:
        cert = parse_certificate(cert_pem)
    except ValueError as exc:
        _fail("INVALID_IDENTITY", f"creator certificate: {exc}")
    ous = certificate_ous(cert)
    role = role_from_ous(ous)
    if role is None:
        _fail(
            "INVALID_IDENTITY",
            f"creator certificate: OUs {ous} do not carry exactly one bcfl role of {list(ROLES)}",
            ous=ous,
        )
    return role, certificate_common_name(cert)


def _identify(tx: _Tx, spec: _Spec, function: str) -> _Caller:
    creator = tx.state.get_creator()
    role, name = _certificate_identity(creator.cert_pem)
    consortium = tx.get(_CONSORTIUM_KEY)
    org = None if consortium is None else consortium["organisations"].get(creator.msp_id)
    caller = _Caller(creator.msp_id, name, role, None if org is None else org["kind"])
    if spec.access == "anyone":
        return caller
    if spec.access == "member":
        if consortium is None:
            _fail(
                "NOT_INITIALISED",
                f"{function}: the consortium is not initialised yet (init_consortium)",
            )
        if org is None:
            _fail(
                "NOT_MEMBER",
                f"{creator.msp_id} is not an organisation of the consortium",
                msp_id=creator.msp_id,
            )
        if role not in ROLES_BY_KIND[org["kind"]]:
            _fail(
                "FORBIDDEN_ROLE",
                f"role {role!r} is not honoured from {creator.msp_id}, a {org['kind']} organisation "
                f"(which may hold only {list(ROLES_BY_KIND[org['kind']])})",
                role=role,
                msp_id=creator.msp_id,
            )
    if role not in spec.roles:
        _fail(
            "FORBIDDEN_ROLE",
            f"{function} is for role {' or '.join(sorted(spec.roles))}, not {role!r} ({name}@{creator.msp_id})",
            role=role,
            allowed=sorted(spec.roles),
        )
    return caller


def invoke(state: ChaincodeState, function: str, args: bytes) -> bytes:
    """args is ONE JSON object (UTF-8 bytes); returns canonical JSON bytes. Raises ContractError with a stable code."""
    if not isinstance(args, bytes | bytearray):
        _fail("MALFORMED_ARGS", f"args: expected bytes, got {type(args).__name__}")
    if len(args) > MAX_ARGS_BYTES:
        _fail(
            "ARGS_TOO_LARGE",
            f"args: {len(args)} bytes, expected at most {MAX_ARGS_BYTES}",
            size=len(args),
        )
    spec = _FUNCTIONS.get(function)
    if spec is None:
        _fail(
            "UNKNOWN_FUNCTION",
            f"function {function!r} does not exist; expected one of {sorted(_FUNCTIONS)}",
        )
    data = parse_args(args)
    tx = _Tx(state)
    caller = _identify(tx, spec, function)
    result = spec.handler(tx, caller, Args(data))
    if spec.read_only:
        if tx.writes or tx.event:
            raise RuntimeError(f"query {function} wrote state")  # a contract bug, never user input
    else:
        if tx.event is None:
            raise RuntimeError(f"{function} emitted no event")
        state.set_event(tx.event[0], canonical_json(tx.event[1]))
    return canonical_json(result)


# ---------------------------------------------------------------------------------------------
# Keys and lookups
# ---------------------------------------------------------------------------------------------

_CONSORTIUM_KEY = create_composite_key("consortium", [])


def _n(number: int) -> str:
    return f"{number:06d}"  # fixed width so range scans return rounds in numeric order


def _trial_key(trial_id: str) -> str:
    return create_composite_key("trial", [trial_id])


def _enrolment_key(trial_id: str, msp_id: str) -> str:
    return create_composite_key("enrolment", [trial_id, msp_id])


def _trial_keys_key(trial_id: str) -> str:
    return create_composite_key("trial_keys", [trial_id])


def _round_key(trial_id: str, r: int, a: int) -> str:
    return create_composite_key("round", [trial_id, _n(r), _n(a)])


def _per_round_key(kind: str, trial_id: str, r: int, a: int, msp_id: str | None = None) -> str:
    return create_composite_key(kind, [trial_id, _n(r), _n(a)] + ([msp_id] if msp_id else []))


def _per_org_key(kind: str, trial_id: str, msp_id: str) -> str:
    return create_composite_key(kind, [trial_id, msp_id])


def _content_key(trial_id: str, sha256: str) -> str:
    return create_composite_key("content", [trial_id, sha256])


def _load_trial(tx: _Tx, trial_id: str) -> dict[str, Any]:
    trial = tx.get(_trial_key(trial_id))
    if trial is None:
        _fail("NOT_FOUND", f"trial {trial_id!r} does not exist", trial_id=trial_id)
    return trial


def _require_trial_state(trial: dict[str, Any], *states: str) -> None:
    if trial["state"] not in states:
        _fail(
            "WRONG_STATE",
            f"trial {trial['trial_id']!r} is {trial['state']}, expected {' or '.join(states)}",
            trial_id=trial["trial_id"],
            state=trial["state"],
            expected=list(states),
        )


def _enrolments(tx: _Tx, trial_id: str) -> dict[str, dict[str, Any]]:
    return {rec["msp_id"]: rec for rec in tx.scan("enrolment", [trial_id])}


def _enrolled(tx: _Tx, trial_id: str) -> list[str]:
    return sorted(m for m, rec in _enrolments(tx, trial_id).items() if rec["status"] == "enrolled")


def _require_enrolled(tx: _Tx, trial_id: str, msp_id: str) -> None:
    rec = tx.get(_enrolment_key(trial_id, msp_id))
    if rec is None or rec["status"] != "enrolled":
        _fail(
            "NOT_ENROLLED",
            f"{msp_id} is not enrolled in trial {trial_id!r}",
            trial_id=trial_id,
            msp_id=msp_id,
        )


def _own_organisation(a: Args, caller: _Caller) -> str:
    """A silo acts for its own MSP id; naming another one is refused, not silently corrected."""
    claimed = a.identifier("msp_id", default=None)
    if claimed is not None and claimed != caller.msp_id:
        _fail(
            "WRONG_ORGANISATION",
            f"msp_id: got {claimed!r}, expected the caller's own organisation {caller.msp_id!r}",
            field="msp_id",
            value=claimed,
            expected=caller.msp_id,
        )
    return caller.msp_id


def _round_label(rnd: dict[str, Any]) -> str:
    return f"round {rnd['round']} (attempt {rnd['attempt']}) of trial {rnd['trial_id']!r}"


def _current_round(tx: _Tx, trial: dict[str, Any], r: int) -> dict[str, Any]:
    """The current attempt of round r, which must be the trial's latest round."""
    current = trial["current"]
    if current is not None and current["round"] == r:
        return tx.get(_round_key(trial["trial_id"], r, current["attempt"]))
    now = "none" if current is None else f"round {current['round']} (attempt {current['attempt']})"
    if str(r) in trial["attempts"]:
        _fail(
            "LATE",
            f"round {r} of trial {trial['trial_id']!r} is over; the current round is {now}",
            round=r,
        )
    _fail(
        "NO_SUCH_ROUND",
        f"round {r} of trial {trial['trial_id']!r} was never opened; the current round is {now}",
        round=r,
    )


def _find_round(tx: _Tx, trial: dict[str, Any], r: int | None, a: int | None) -> dict[str, Any]:
    """Any attempt of any round (queries, settlement): attempt defaults to the latest one."""
    if r is None:
        if trial["current"] is None:
            _fail("NO_SUCH_ROUND", f"trial {trial['trial_id']!r} has no rounds yet")
        r = trial["current"]["round"]
    attempts = trial["attempts"].get(str(r), 0)
    a = attempts if a is None else a
    if not 1 <= a <= attempts:
        _fail(
            "NO_SUCH_ROUND",
            f"round {r} attempt {a} of trial {trial['trial_id']!r} does not exist ({attempts} attempts opened)",
            round=r,
            attempt=a,
        )
    return tx.get(_round_key(trial["trial_id"], r, a))


def _require_phase(rnd: dict[str, Any], phase: str) -> None:
    current = rnd["phase"]
    if current == phase:
        return
    if current == "HALTED":
        _fail(
            "WRONG_STATE", f"{_round_label(rnd)} was halted: {rnd['halt']['reason']}", phase=current
        )
    if PHASES.index(current) > PHASES.index(phase):
        _fail(
            "LATE",
            f"{_round_label(rnd)} is in phase {current}; phase {phase} is over",
            phase=current,
            expected=phase,
        )
    _fail(
        "WRONG_STATE",
        f"{_round_label(rnd)} is in phase {current}; phase {phase} has not started",
        phase=current,
        expected=phase,
    )


def _require_on_time(tx: _Tx, rnd: dict[str, Any]) -> None:
    if tx.now > rnd["deadline"]:
        _fail(
            "LATE",
            f"{_round_label(rnd)}: phase {rnd['phase']} closed at {rnd['deadline']}, transaction time is {tx.now}",
            deadline=rnd["deadline"],
            now=tx.now,
        )


def _require_closable(tx: _Tx, rnd: dict[str, Any], waiting_for: list[str]) -> None:
    if waiting_for and tx.now <= rnd["deadline"]:
        _fail(
            "TOO_EARLY",
            f"{_round_label(rnd)}: phase {rnd['phase']} cannot close before its deadline {rnd['deadline']} "
            f"(now {tx.now}) while waiting for {waiting_for}",
            waiting_for=waiting_for,
            deadline=rnd["deadline"],
            now=tx.now,
        )


def _next_phase(tx: _Tx, trial: dict[str, Any], rnd: dict[str, Any], phase: str) -> dict[str, Any]:
    """The round moved to ``phase``; a phase with a duration gets its deadline from now."""
    changed = dict(rnd, phase=phase, phase_changed_at=tx.now, deadline=None)
    if phase in PHASE_DURATION:
        name = PHASE_DURATION[phase]
        changed["deadline"] = tx.now + trial["phase_seconds"][name]
        changed["deadlines"] = dict(rnd["deadlines"], **{name: changed["deadline"]})
    return changed


def _halt_round(
    tx: _Tx, caller: _Caller, rnd: dict[str, Any], code: str, reason: str, **extra: Any
) -> dict[str, Any]:
    """Halt a round (record only; the caller emits the event). Pending rewards become void."""
    rewards_key = _per_round_key("round_rewards", rnd["trial_id"], rnd["round"], rnd["attempt"])
    rewards = tx.get(rewards_key)
    if rewards is not None and rewards["status"] == "pending":
        tx.put(rewards_key, dict(rewards, status="void"))
    halted = dict(
        rnd,
        phase="HALTED",
        phase_changed_at=tx.now,
        deadline=None,
        halt={"code": code, "reason": reason, "at": tx.now, "by": caller.who(), **extra},
    )
    tx.put(_round_key(rnd["trial_id"], rnd["round"], rnd["attempt"]), halted)
    return halted


def _round_event(rnd: dict[str, Any], **payload: Any) -> dict[str, Any]:
    return {
        "trial_id": rnd["trial_id"],
        "round": rnd["round"],
        "attempt": rnd["attempt"],
        **payload,
    }


def _halted_event(tx: _Tx, rnd: dict[str, Any]) -> None:
    tx.emit(
        "RoundHalted", _round_event(rnd, code=rnd["halt"]["code"], reason=rnd["halt"]["reason"])
    )


def _model_ref(a: Args, name: str) -> dict[str, str]:
    ref = a.object(name)
    value = {"content_id": ref.content_id("content_id"), "sha256": ref.sha256("sha256")}
    ref.done()
    return value


def _privacy_account(tx: _Tx, trial: dict[str, Any], msp_id: str) -> dict[str, Any]:
    existing = tx.get(_per_org_key("privacy", trial["trial_id"], msp_id))
    if existing is not None:
        return existing
    budget = trial["dp"]["target_epsilon_micro"] if trial["dp"]["enabled"] else None
    return {
        "trial_id": trial["trial_id"],
        "msp_id": msp_id,
        "budget_micro": budget,
        "epsilon_spent_micro": 0,
        "entries": [],
    }


def _has_budget_left(account: dict[str, Any]) -> bool:
    return (
        account["budget_micro"] is None or account["epsilon_spent_micro"] < account["budget_micro"]
    )


# ---------------------------------------------------------------------------------------------
# Consortium
# ---------------------------------------------------------------------------------------------


@_function("init_consortium", "admin", access="bootstrap")
def _init_consortium(tx: _Tx, caller: _Caller, a: Args) -> Any:
    if tx.get(_CONSORTIUM_KEY) is not None:
        _fail("ALREADY_EXISTS", "the consortium is already initialised; init_consortium runs once")
    organisations: dict[str, dict[str, str]] = {}
    items = a.list("organisations", min_items=1, max_items=256)
    for i, item in enumerate(items):
        org = a.item("organisations", i, item)
        msp_id = org.identifier("msp_id")
        kind = org.choice("kind", ORGANISATION_KINDS)
        org.done()
        if msp_id in organisations:
            a.fail(f"organisations[{i}].msp_id", msp_id, "each MSP id once")
        organisations[msp_id] = {"msp_id": msp_id, "kind": kind}
    a.done()
    # Otherwise any organisation's CA could mint an "admin" and bootstrap the consortium.
    mine = organisations.get(caller.msp_id)
    if mine is None or mine["kind"] != "operator":
        _fail(
            "FORBIDDEN_ROLE",
            f"init_consortium must come from an admin of an operator organisation it lists; "
            f"{caller.msp_id} is {'not listed' if mine is None else 'a ' + mine['kind'] + ' organisation'}",
            msp_id=caller.msp_id,
        )
    record = {
        "organisations": organisations,
        "initialised_at": tx.now,
        "initialised_by": caller.who(),
    }
    tx.put(_CONSORTIUM_KEY, record)
    tx.emit("ConsortiumInitialised", {"organisations": sorted(organisations)})
    return record


@_function("whoami", read_only=True, access="anyone")
def _whoami(tx: _Tx, caller: _Caller, a: Args) -> Any:
    a.done()
    honoured = caller.kind is not None and caller.role in ROLES_BY_KIND[caller.kind]
    return {
        "msp_id": caller.msp_id,
        "name": caller.name,
        "role": caller.role,
        "organisation_kind": caller.kind,
        "member": honoured,
    }


@_function("get_consortium", read_only=True)
def _get_consortium(tx: _Tx, caller: _Caller, a: Args) -> Any:
    a.done()
    return tx.get(_CONSORTIUM_KEY)


# ---------------------------------------------------------------------------------------------
# Trials
# ---------------------------------------------------------------------------------------------


def _parse_dp(a: Args) -> dict[str, Any]:
    dp = a.object("dp", default={})
    # DP is on unless switched off explicitly; the switch-off and its reason are recorded.
    if not dp.boolean("enabled", default=True):
        policy = {"enabled": False, "reason": dp.string("reason", default=None)}
        dp.done()
        return policy
    policy = {
        "enabled": True,
        "target_epsilon_micro": dp.integer(
            "target_epsilon_micro",
            minimum=1,
            maximum=MAX_EPSILON_MICRO,
            default=DEFAULT_DP["target_epsilon_micro"],
        ),
        "delta": dp.fraction("delta", default=DEFAULT_DP["delta"]),
        "max_grad_norm_milli": dp.integer(
            "max_grad_norm_milli",
            minimum=1,
            maximum=10**9,
            default=DEFAULT_DP["max_grad_norm_milli"],
        ),
        "local_epochs": dp.integer(
            "local_epochs", minimum=1, maximum=1000, default=DEFAULT_DP["local_epochs"]
        ),
        "accountant": dp.choice("accountant", DP_ACCOUNTANTS, default=DEFAULT_DP["accountant"]),
        "grad_sample_mode": dp.choice(
            "grad_sample_mode", DP_GRAD_SAMPLE_MODES, default=DEFAULT_DP["grad_sample_mode"]
        ),
    }
    dp.done()
    return policy


def _parse_he(a: Args) -> dict[str, Any]:
    he = a.object("he", default={})
    if not he.boolean("enabled", default=True):
        policy = {"enabled": False, "reason": he.string("reason", default=None)}
    else:
        policy = {
            "enabled": True,
            "preset": he.string(
                "preset", pattern=LABEL, expected="a preset name", default=DEFAULT_HE_PRESET
            ),
        }
    he.done()
    return policy


def _parse_evaluation(a: Args) -> dict[str, int]:
    ev = a.object("evaluation", default={})
    d = DEFAULT_EVALUATION
    policy = {
        "acceptance_threshold_micro": ev.integer(
            "acceptance_threshold_micro",
            minimum=0,
            maximum=MAX_SCORE_MICRO,
            default=d["acceptance_threshold_micro"],
        ),
        "min_voters": ev.integer(
            "min_voters", minimum=1, maximum=MAX_SILOS, default=d["min_voters"]
        ),
        "reward_per_round": ev.integer(
            "reward_per_round", minimum=0, maximum=10**15, default=d["reward_per_round"]
        ),
    }
    ev.done()
    return policy


def _parse_phase_seconds(a: Args) -> dict[str, int]:
    ph = a.object("phase_seconds", default={})
    durations = {
        name: ph.integer(name, minimum=1, maximum=MAX_PHASE_SECONDS, default=default)
        for name, default in DEFAULT_PHASE_SECONDS.items()
    }
    ph.done()
    return durations


@_function("create_trial", "admin")
def _create_trial(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial_id = a.identifier("trial_id")
    model = a.object("model")
    model_spec = {
        "name": model.string("name", pattern=LABEL, expected="a model name from the registry"),
        "hyperparameters": model.opaque_object("hyperparameters", default={}),
    }
    model.done()
    initial_model = _model_ref(a, "initial_model")
    trial = {
        "trial_id": trial_id,
        "task": a.string("task", pattern=LABEL, expected=_TASK),
        "data_schema": a.opaque_object("data_schema"),
        "model": model_spec,
        "initial_model": initial_model,
        "rounds": a.integer("rounds", minimum=1, maximum=MAX_ROUNDS),
        # Peer evaluation needs peers: one hospital alone cannot be judged by anyone.
        "min_silos": a.integer("min_silos", minimum=2, maximum=MAX_SILOS),
        "dp": _parse_dp(a),
        "he": _parse_he(a),
        "evaluation": _parse_evaluation(a),
        "phase_seconds": _parse_phase_seconds(a),
        "state": "DRAFT",
        "created_at": tx.now,
        "created_by": caller.who(),
        "state_changed_at": tx.now,
        "enrolled_at_start": None,
        "halt": None,
        "current": None,
        "attempts": {},
        "head": {"round": 0, "attempt": 0, "model": initial_model},
        "lineage": [],
        "rollbacks": [],
    }
    a.done()
    if tx.get(_trial_key(trial_id)) is not None:
        _fail("ALREADY_EXISTS", f"trial {trial_id!r} already exists", trial_id=trial_id)
    tx.put(_trial_key(trial_id), trial)
    tx.emit(
        "TrialCreated",
        {
            "trial_id": trial_id,
            "rounds": trial["rounds"],
            "min_silos": trial["min_silos"],
            "dp_enabled": trial["dp"]["enabled"],
            "he_enabled": trial["he"]["enabled"],
        },
    )
    return trial


def _set_trial_state(tx: _Tx, trial: dict[str, Any], state: str, **changes: Any) -> dict[str, Any]:
    updated = dict(trial, state=state, state_changed_at=tx.now, **changes)
    tx.put(_trial_key(trial["trial_id"]), updated)
    return updated


@_function("open_enrolment", "admin")
def _open_enrolment(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    a.done()
    _require_trial_state(trial, "DRAFT")
    trial = _set_trial_state(tx, trial, "ENROLLING")
    tx.emit("EnrolmentOpened", {"trial_id": trial["trial_id"]})
    return trial


def _x25519_public_key(a: Args, name: str) -> str:
    """Normalise a PEM or base64 X25519 public key to base64 of its 32 raw bytes."""
    expected = "an X25519 public key: PEM (SubjectPublicKeyInfo) or base64 of its 32 raw bytes"
    text = a.string(name, max_len=4096, expected=expected)
    try:
        raw = x25519_public_key_raw(text)
    except ValueError:
        a.fail(name, text, expected)
    return base64.b64encode(raw).decode("ascii")


def _key_registration_key(trial_id: str, msp_id: str) -> str:
    return create_composite_key("encryption_key", [trial_id, msp_id])


@_function("register_encryption_key", "silo")
def _register_encryption_key(tx: _Tx, caller: _Caller, a: Args) -> Any:
    """A hospital registers its own X25519 key for a trial, signed by itself.

    The trial's secret context is sealed to the enrolled keys, so they must come from the
    hospitals, not from the operator: ``enrol_hospital`` accepts only the key the hospital
    registered here (otherwise an operator could enrol a key of its own and open the envelope).
    """
    trial = _load_trial(tx, a.identifier("trial_id"))
    msp_id = _own_organisation(a, caller)
    public_key = _x25519_public_key(a, "encryption_public_key")
    a.done()
    _require_trial_state(trial, "DRAFT", "ENROLLING")
    enrolment = tx.get(_enrolment_key(trial["trial_id"], msp_id))
    if enrolment is not None and enrolment["status"] == "enrolled":
        _fail(
            "ALREADY_EXISTS",
            f"{msp_id} is already enrolled in trial {trial['trial_id']!r}; its key is fixed",
            msp_id=msp_id,
        )
    record = {
        "trial_id": trial["trial_id"],
        "msp_id": msp_id,
        "encryption_public_key": public_key,
        "registered_at": tx.now,
    }
    tx.put(_key_registration_key(trial["trial_id"], msp_id), record)
    tx.emit("EncryptionKeyRegistered", {"trial_id": trial["trial_id"], "msp_id": msp_id})
    return record


@_function("enrol_hospital", "admin")
def _enrol_hospital(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    msp_id = a.identifier("msp_id")
    public_key = _x25519_public_key(a, "encryption_public_key")
    a.done()
    _require_trial_state(trial, "ENROLLING")
    org = tx.get(_CONSORTIUM_KEY)["organisations"].get(msp_id)
    if org is None:
        _fail(
            "NOT_FOUND",
            f"msp_id: {msp_id!r} is not an organisation of the consortium",
            field="msp_id",
            value=msp_id,
        )
    if org["kind"] != "hospital":
        _fail(
            "WRONG_ORGANISATION",
            f"msp_id: {msp_id!r} is a {org['kind']} organisation, expected a hospital",
            field="msp_id",
            value=msp_id,
        )
    key = _enrolment_key(trial["trial_id"], msp_id)
    existing = tx.get(key)
    if existing is not None and existing["status"] == "enrolled":
        _fail(
            "ALREADY_EXISTS",
            f"{msp_id} is already enrolled in trial {trial['trial_id']!r}",
            msp_id=msp_id,
        )
    registered = tx.get(_key_registration_key(trial["trial_id"], msp_id))
    if registered is None:
        _fail(
            "NOT_FOUND",
            f"{msp_id} has not registered an encryption key for trial {trial['trial_id']!r}; "
            "the hospital itself must call register_encryption_key first",
            msp_id=msp_id,
        )
    if registered["encryption_public_key"] != public_key:
        _fail(
            "KEY_MISMATCH",
            f"encryption_public_key: not the key {msp_id} registered itself for trial "
            f"{trial['trial_id']!r}; expected {registered['encryption_public_key']}",
            field="encryption_public_key",
            msp_id=msp_id,
        )
    record = {
        "trial_id": trial["trial_id"],
        "msp_id": msp_id,
        "status": "enrolled",
        "encryption_public_key": public_key,
        "enrolled_at": tx.now,
        "enrolled_by": caller.who(),
        "removed_at": None,
        "removed_by": None,
        "removal_reason": None,
    }
    tx.put(key, record)
    tx.emit("HospitalEnrolled", {"trial_id": trial["trial_id"], "msp_id": msp_id})
    return record


@_function("remove_hospital", "admin")
def _remove_hospital(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    msp_id = a.identifier("msp_id")
    reason = a.string("reason", default=None)
    a.done()
    _require_trial_state(trial, "ENROLLING", "RUNNING")
    _require_enrolled(tx, trial["trial_id"], msp_id)
    key = _enrolment_key(trial["trial_id"], msp_id)
    record = dict(
        tx.get(key),
        status="removed",
        removed_at=tx.now,
        removed_by=caller.who(),
        removal_reason=reason,
    )
    tx.put(key, record)
    tx.emit("HospitalRemoved", {"trial_id": trial["trial_id"], "msp_id": msp_id, "reason": reason})
    return record


@_function("start_trial", "admin")
def _start_trial(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    a.done()
    _require_trial_state(trial, "ENROLLING")
    enrolled = _enrolled(tx, trial["trial_id"])
    if len(enrolled) < trial["min_silos"]:
        _fail(
            "INSUFFICIENT_SILOS",
            f"trial {trial['trial_id']!r} has {len(enrolled)} enrolled hospitals, expected at least min_silos={trial['min_silos']}",
            enrolled=enrolled,
            min_silos=trial["min_silos"],
        )
    trial = _set_trial_state(tx, trial, "RUNNING", enrolled_at_start=enrolled)
    tx.emit("TrialStarted", {"trial_id": trial["trial_id"], "enrolled": enrolled})
    return trial


@_function("halt_trial", "admin")
def _halt_trial(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    reason = a.string("reason")
    a.done()
    _require_trial_state(trial, "ENROLLING", "RUNNING")
    current = trial["current"]
    if current is not None:
        rnd = tx.get(_round_key(trial["trial_id"], current["round"], current["attempt"]))
        if rnd["phase"] not in DONE_PHASES:
            # Leave no round looking open under a halted trial.
            _halt_round(tx, caller, rnd, "TRIAL_HALTED", reason)
    trial = _set_trial_state(
        tx, trial, "HALTED", halt={"reason": reason, "at": tx.now, "by": caller.who()}
    )
    tx.emit("TrialHalted", {"trial_id": trial["trial_id"], "reason": reason})
    return trial


def _require_no_round_in_progress(tx: _Tx, trial: dict[str, Any]) -> None:
    current = trial["current"]
    if current is None:
        return
    rnd = tx.get(_round_key(trial["trial_id"], current["round"], current["attempt"]))
    if rnd["phase"] not in DONE_PHASES:
        _fail(
            "WRONG_STATE",
            f"{_round_label(rnd)} is still in progress (phase {rnd['phase']}); finish or abort it first",
            round=rnd["round"],
            phase=rnd["phase"],
        )


@_function("complete_trial", "admin")
def _complete_trial(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    a.done()
    _require_trial_state(trial, "RUNNING")
    _require_no_round_in_progress(tx, trial)
    if trial["head"]["round"] != trial["rounds"]:
        _fail(
            "WRONG_STATE",
            f"trial {trial['trial_id']!r} has finalized {trial['head']['round']} of {trial['rounds']} rounds",
            finalized=trial["head"]["round"],
            rounds=trial["rounds"],
        )
    trial = _set_trial_state(tx, trial, "COMPLETED")
    tx.emit(
        "TrialCompleted", {"trial_id": trial["trial_id"], "final_model": trial["head"]["model"]}
    )
    return trial


@_function("get_trial", read_only=True)
def _get_trial(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    a.done()
    return trial


@_function("list_trials", read_only=True)
def _list_trials(tx: _Tx, caller: _Caller, a: Args) -> Any:
    state = a.choice("state", TRIAL_STATES, default=None)
    a.done()
    return [t for t in tx.scan("trial", []) if state is None or t["state"] == state]


@_function("get_enrolments", read_only=True)
def _get_enrolments(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    a.done()
    return [rec for _, rec in sorted(_enrolments(tx, trial["trial_id"]).items())]


# ---------------------------------------------------------------------------------------------
# Trial keys
# ---------------------------------------------------------------------------------------------


@_function("record_trial_keys", "silo")
def _record_trial_keys(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    msp_id = _own_organisation(a, caller)
    public_context = _model_ref(a, "public_context")
    raw_envelopes = a.mapping("envelopes", key=check_identifier_key, max_items=MAX_SILOS)
    envelopes: dict[str, dict[str, str]] = {}
    for holder in raw_envelopes:
        envelopes[holder] = _model_ref(
            Args(raw_envelopes, prefix=a.field("envelopes") + "."), holder
        )
    a.done()
    _require_trial_state(trial, "RUNNING")
    _require_enrolled(tx, trial["trial_id"], msp_id)
    if tx.get(_trial_keys_key(trial["trial_id"])) is not None:
        _fail("ALREADY_EXISTS", f"trial {trial['trial_id']!r} already has its keys recorded")
    enrolled = _enrolled(tx, trial["trial_id"])
    missing = sorted(set(enrolled) - set(envelopes))
    extra = sorted(set(envelopes) - set(enrolled))
    if missing or extra:
        a.fail(
            "envelopes",
            sorted(envelopes),
            f"one envelope for each enrolled hospital {enrolled} (missing {missing}, not enrolled {extra})",
        )
    record = {
        "trial_id": trial["trial_id"],
        "msp_id": msp_id,
        "public_context": public_context,
        "envelopes": envelopes,
        "recorded_at": tx.now,
    }
    tx.put(_trial_keys_key(trial["trial_id"]), record)
    tx.emit(
        "TrialKeysRecorded",
        {
            "trial_id": trial["trial_id"],
            "msp_id": msp_id,
            "public_context_sha256": public_context["sha256"],
        },
    )
    return record


@_function("get_trial_keys", read_only=True)
def _get_trial_keys(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    a.done()
    record = tx.get(_trial_keys_key(trial["trial_id"]))
    if record is None:
        _fail("NOT_FOUND", f"trial {trial['trial_id']!r} has no keys recorded yet")
    return record


# ---------------------------------------------------------------------------------------------
# Rounds: open
# ---------------------------------------------------------------------------------------------


def _round_args(tx: _Tx, a: Args) -> tuple[dict[str, Any], int]:
    trial = _load_trial(tx, a.identifier("trial_id"))
    return trial, a.integer("round", minimum=1, maximum=MAX_ROUNDS)


@_function("open_round", "admin", "coordinator")
def _open_round(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    expected_round = a.integer("round", minimum=1, maximum=MAX_ROUNDS, default=None)
    a.done()
    trial_id = trial["trial_id"]
    _require_trial_state(trial, "RUNNING")
    if tx.get(_trial_keys_key(trial_id)) is None:
        _fail(
            "WRONG_STATE",
            f"trial {trial_id!r} has no keys yet: an enrolled silo must record_trial_keys first",
        )
    _require_no_round_in_progress(tx, trial)
    head = trial["head"]
    r = head["round"] + 1
    if r > trial["rounds"]:
        _fail(
            "WRONG_STATE",
            f"trial {trial_id!r} has finalized all {trial['rounds']} rounds; complete it (or roll back)",
        )
    if expected_round is not None and expected_round != r:
        _fail(
            "WRONG_STATE",
            f"round: got {expected_round}, the next round of trial {trial_id!r} is {r}",
            round=r,
        )
    attempt = trial["attempts"].get(str(r), 0) + 1
    deadline = tx.now + trial["phase_seconds"]["submit"]
    rnd = {
        "trial_id": trial_id,
        "round": r,
        "attempt": attempt,
        "phase": "SUBMIT",
        "base": head,
        "enrolled": _enrolled(tx, trial_id),
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
    tx.put(_round_key(trial_id, r, attempt), rnd)
    tx.put(
        _trial_key(trial_id),
        dict(
            trial,
            current={"round": r, "attempt": attempt},
            attempts=dict(trial["attempts"], **{str(r): attempt}),
        ),
    )
    tx.emit(
        "RoundOpened",
        _round_event(rnd, base_model=head["model"], base_round=head["round"], deadline=deadline),
    )
    return rnd


# ---------------------------------------------------------------------------------------------
# Rounds: update commit / reveal
# ---------------------------------------------------------------------------------------------


@_function("commit_update", "silo")
def _commit_update(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial, r = _round_args(tx, a)
    msp_id = _own_organisation(a, caller)
    base_sha256 = a.sha256("base_model_sha256")
    commitment = a.sha256("commitment")
    a.done()
    _require_trial_state(trial, "RUNNING")
    _require_enrolled(tx, trial["trial_id"], msp_id)
    rnd = _current_round(tx, trial, r)
    _require_phase(rnd, "SUBMIT")
    _require_on_time(tx, rnd)
    key = _per_round_key("update", rnd["trial_id"], r, rnd["attempt"], msp_id)
    if tx.get(key) is not None:
        _fail(
            "DUPLICATE",
            f"{msp_id} already committed an update in {_round_label(rnd)}",
            msp_id=msp_id,
        )
    if base_sha256 != rnd["base"]["model"]["sha256"]:
        _fail(
            "STALE",
            f"base_model_sha256: got {base_sha256}, expected the base model of {_round_label(rnd)} "
            f"({rnd['base']['model']['sha256']}, the model of round {rnd['base']['round']})",
            field="base_model_sha256",
            value=base_sha256,
            expected=rnd["base"]["model"]["sha256"],
        )
    account = _privacy_account(tx, trial, msp_id)
    if not _has_budget_left(account):
        _fail(
            "BUDGET_EXCEEDED",
            f"{msp_id} has spent its whole privacy budget in trial {trial['trial_id']!r} "
            f"({account['epsilon_spent_micro']} of {account['budget_micro']} micro-epsilon)",
            spent_micro=account["epsilon_spent_micro"],
            budget_micro=account["budget_micro"],
        )
    record = {
        "trial_id": rnd["trial_id"],
        "round": r,
        "attempt": rnd["attempt"],
        "msp_id": msp_id,
        "base_model_sha256": base_sha256,
        "commitment": commitment,
        "committed_at": tx.now,
        "revealed": False,
        "content_id": None,
        "sha256": None,
        "sample_weight": None,
        "epsilon_spent_micro": None,
        "salt": None,
        "revealed_at": None,
    }
    tx.put(key, record)
    tx.emit("UpdateCommitted", _round_event(rnd, msp_id=msp_id, commitment=commitment))
    return record


@_function("close_update_commits", "admin", "coordinator")
def _close_update_commits(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial, r = _round_args(tx, a)
    a.done()
    _require_trial_state(trial, "RUNNING")
    rnd = _current_round(tx, trial, r)
    _require_phase(rnd, "SUBMIT")
    committed = sorted(
        u["msp_id"] for u in tx.scan("update", [rnd["trial_id"], _n(r), _n(rnd["attempt"])])
    )
    # A hospital whose budget is spent cannot commit, so nobody waits for it.
    expected = [
        m
        for m in _enrolled(tx, trial["trial_id"])
        if _has_budget_left(_privacy_account(tx, trial, m))
    ]
    _require_closable(tx, rnd, sorted(set(expected) - set(committed)))
    if not committed:
        rnd = _halt_round(
            tx, caller, rnd, "NO_COMMITMENTS", "no hospital committed an update before the deadline"
        )
        _halted_event(tx, rnd)
        return rnd
    rnd = dict(_next_phase(tx, trial, rnd, "REVEAL"), committed=committed)
    tx.put(_round_key(rnd["trial_id"], r, rnd["attempt"]), rnd)
    tx.emit("UpdateCommitsClosed", _round_event(rnd, committed=committed, deadline=rnd["deadline"]))
    return rnd


@_function("reveal_update", "silo")
def _reveal_update(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial, r = _round_args(tx, a)
    msp_id = _own_organisation(a, caller)
    content_id = a.content_id("content_id")
    sha256 = a.sha256("sha256")
    sample_weight = a.integer("sample_weight", minimum=1, maximum=MAX_SAMPLE_WEIGHT)
    epsilon = a.integer("epsilon_spent_micro", minimum=0, maximum=MAX_EPSILON_MICRO)
    salt = a.salt("salt")
    a.done()
    trial_id = trial["trial_id"]
    _require_trial_state(trial, "RUNNING")
    _require_enrolled(tx, trial_id, msp_id)
    rnd = _current_round(tx, trial, r)
    _require_phase(rnd, "REVEAL")
    _require_on_time(tx, rnd)
    key = _per_round_key("update", trial_id, r, rnd["attempt"], msp_id)
    record = tx.get(key)
    if record is None:
        _fail(
            "NOT_COMMITTED",
            f"{msp_id} made no update commitment in {_round_label(rnd)}",
            msp_id=msp_id,
        )
    if record["revealed"]:
        _fail(
            "DUPLICATE",
            f"{msp_id} already revealed its update in {_round_label(rnd)}",
            msp_id=msp_id,
        )
    recomputed = update_commitment(
        trial_id=trial_id,
        round=r,
        msp_id=msp_id,
        content_id=content_id,
        sha256=sha256,
        sample_weight=sample_weight,
        epsilon_spent_micro=epsilon,
        salt=salt,
    )
    if recomputed != record["commitment"]:
        _fail(
            "COMMITMENT_MISMATCH",
            f"the revealed update of {msp_id} hashes to {recomputed}, not to its commitment {record['commitment']}",
            recomputed=recomputed,
            commitment=record["commitment"],
        )
    first = tx.get(_content_key(trial_id, sha256))
    if first is not None and first["msp_id"] != msp_id:
        _fail(
            "DUPLICATE_CONTENT",
            f"sha256: {sha256} was already revealed by {first['msp_id']} in round {first['round']} of trial {trial_id!r}",
            field="sha256",
            value=sha256,
            first_revealed_by=first["msp_id"],
        )
    account = _privacy_account(tx, trial, msp_id)
    total = account["epsilon_spent_micro"] + epsilon
    if account["budget_micro"] is not None and total > account["budget_micro"]:
        _fail(
            "BUDGET_EXCEEDED",
            f"epsilon_spent_micro: {epsilon} would bring {msp_id} to {total} micro-epsilon, over the trial's "
            f"budget of {account['budget_micro']} (already spent {account['epsilon_spent_micro']})",
            field="epsilon_spent_micro",
            value=epsilon,
            spent_micro=account["epsilon_spent_micro"],
            budget_micro=account["budget_micro"],
        )
    record = dict(
        record,
        revealed=True,
        content_id=content_id,
        sha256=sha256,
        sample_weight=sample_weight,
        epsilon_spent_micro=epsilon,
        salt=salt,
        revealed_at=tx.now,
    )
    tx.put(key, record)
    entry = {"round": r, "attempt": rnd["attempt"], "epsilon_micro": epsilon, "at": tx.now}
    tx.put(
        _per_org_key("privacy", trial_id, msp_id),
        dict(account, epsilon_spent_micro=total, entries=account["entries"] + [entry]),
    )
    if first is None:
        tx.put(
            _content_key(trial_id, sha256),
            {
                "trial_id": trial_id,
                "sha256": sha256,
                "msp_id": msp_id,
                "round": r,
                "attempt": rnd["attempt"],
            },
        )
    tx.emit(
        "UpdateRevealed",
        _round_event(
            rnd,
            msp_id=msp_id,
            content_id=content_id,
            sha256=sha256,
            sample_weight=sample_weight,
            epsilon_spent_micro=epsilon,
            epsilon_cumulative_micro=total,
        ),
    )
    return record


@_function("close_update_reveals", "admin", "coordinator")
def _close_update_reveals(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial, r = _round_args(tx, a)
    a.done()
    _require_trial_state(trial, "RUNNING")
    rnd = _current_round(tx, trial, r)
    _require_phase(rnd, "REVEAL")
    enrolled = set(_enrolled(tx, trial["trial_id"]))
    updates = [
        u
        for u in tx.scan("update", [rnd["trial_id"], _n(r), _n(rnd["attempt"])])
        if u["msp_id"] in enrolled
    ]
    _require_closable(tx, rnd, sorted(u["msp_id"] for u in updates if not u["revealed"]))
    candidates = sorted(u["msp_id"] for u in updates if u["revealed"])
    if not candidates:
        rnd = _halt_round(
            tx, caller, rnd, "NO_REVEALS", "no committed update was revealed before the deadline"
        )
        _halted_event(tx, rnd)
        return rnd
    rnd = dict(_next_phase(tx, trial, rnd, "VOTE_COMMIT"), candidates=candidates)
    tx.put(_round_key(rnd["trial_id"], r, rnd["attempt"]), rnd)
    tx.emit(
        "UpdateRevealsClosed", _round_event(rnd, candidates=candidates, deadline=rnd["deadline"])
    )
    return rnd


# ---------------------------------------------------------------------------------------------
# Rounds: votes commit / reveal, close voting
# ---------------------------------------------------------------------------------------------


@_function("commit_votes", "silo")
def _commit_votes(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial, r = _round_args(tx, a)
    msp_id = _own_organisation(a, caller)
    commitment = a.sha256("commitment")
    a.done()
    _require_trial_state(trial, "RUNNING")
    _require_enrolled(tx, trial["trial_id"], msp_id)
    rnd = _current_round(tx, trial, r)
    _require_phase(rnd, "VOTE_COMMIT")
    _require_on_time(tx, rnd)
    key = _per_round_key("vote", rnd["trial_id"], r, rnd["attempt"], msp_id)
    if tx.get(key) is not None:
        _fail(
            "DUPLICATE",
            f"{msp_id} already committed its votes in {_round_label(rnd)}",
            msp_id=msp_id,
        )
    record = {
        "trial_id": rnd["trial_id"],
        "round": r,
        "attempt": rnd["attempt"],
        "msp_id": msp_id,
        "commitment": commitment,
        "committed_at": tx.now,
        "revealed": False,
        "scores": None,
        "salt": None,
        "revealed_at": None,
    }
    tx.put(key, record)
    tx.emit("VotesCommitted", _round_event(rnd, msp_id=msp_id, commitment=commitment))
    return record


@_function("close_vote_commits", "admin", "coordinator")
def _close_vote_commits(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial, r = _round_args(tx, a)
    a.done()
    _require_trial_state(trial, "RUNNING")
    rnd = _current_round(tx, trial, r)
    _require_phase(rnd, "VOTE_COMMIT")
    enrolled = _enrolled(tx, trial["trial_id"])
    voters = sorted(
        v["msp_id"]
        for v in tx.scan("vote", [rnd["trial_id"], _n(r), _n(rnd["attempt"])])
        if v["msp_id"] in enrolled
    )
    _require_closable(tx, rnd, sorted(set(enrolled) - set(voters)))
    if not voters:
        rnd = _halt_round(
            tx, caller, rnd, "NO_VOTES", "no hospital committed votes before the deadline"
        )
        _halted_event(tx, rnd)
        return rnd
    rnd = dict(_next_phase(tx, trial, rnd, "VOTE_REVEAL"), vote_committed=voters)
    tx.put(_round_key(rnd["trial_id"], r, rnd["attempt"]), rnd)
    tx.emit("VoteCommitsClosed", _round_event(rnd, voters=voters, deadline=rnd["deadline"]))
    return rnd


@_function("reveal_votes", "silo")
def _reveal_votes(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial, r = _round_args(tx, a)
    msp_id = _own_organisation(a, caller)
    scores = a.mapping("scores", key=check_identifier_key, max_items=MAX_SILOS)
    salt = a.salt("salt")
    score_args = Args(scores, prefix=a.field("scores") + ".")
    for peer in scores:
        score_args.integer(peer, minimum=-MAX_SCORE_MICRO, maximum=MAX_SCORE_MICRO)
    a.done()
    _require_trial_state(trial, "RUNNING")
    _require_enrolled(tx, trial["trial_id"], msp_id)
    rnd = _current_round(tx, trial, r)
    _require_phase(rnd, "VOTE_REVEAL")
    _require_on_time(tx, rnd)
    if msp_id in scores:
        _fail(
            "SELF_VOTE",
            f"scores: {msp_id} scored its own update; a voter scores only its peers",
            field=f"scores.{msp_id}",
        )
    expected = sorted(set(rnd["candidates"]) - {msp_id})
    if sorted(scores) != expected:
        a.fail(
            "scores",
            scores,
            f"exactly one score for each peer candidate {expected} "
            f"(missing {sorted(set(expected) - set(scores))}, not candidates {sorted(set(scores) - set(expected))})",
        )
    key = _per_round_key("vote", rnd["trial_id"], r, rnd["attempt"], msp_id)
    record = tx.get(key)
    if record is None:
        _fail(
            "NOT_COMMITTED",
            f"{msp_id} made no votes commitment in {_round_label(rnd)}",
            msp_id=msp_id,
        )
    if record["revealed"]:
        _fail(
            "DUPLICATE",
            f"{msp_id} already revealed its votes in {_round_label(rnd)}",
            msp_id=msp_id,
        )
    recomputed = votes_commitment(
        trial_id=rnd["trial_id"], round=r, msp_id=msp_id, scores=scores, salt=salt
    )
    if recomputed != record["commitment"]:
        _fail(
            "COMMITMENT_MISMATCH",
            f"the revealed votes of {msp_id} hash to {recomputed}, not to its commitment {record['commitment']}",
            recomputed=recomputed,
            commitment=record["commitment"],
        )
    record = dict(record, revealed=True, scores=scores, salt=salt, revealed_at=tx.now)
    tx.put(key, record)
    tx.emit("VotesRevealed", _round_event(rnd, msp_id=msp_id, scores=scores))
    return record


@_function("close_voting", "admin", "coordinator")
def _close_voting(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial, r = _round_args(tx, a)
    a.done()
    trial_id = trial["trial_id"]
    _require_trial_state(trial, "RUNNING")
    rnd = _current_round(tx, trial, r)
    _require_phase(rnd, "VOTE_REVEAL")
    attempt = rnd["attempt"]
    enrolled = _enrolled(tx, trial_id)
    votes = [v for v in tx.scan("vote", [trial_id, _n(r), _n(attempt)]) if v["msp_id"] in enrolled]
    missing = sorted(v["msp_id"] for v in votes if not v["revealed"])
    _require_closable(tx, rnd, missing)
    revealed = {v["msp_id"]: v["scores"] for v in votes if v["revealed"]}
    updates = {u["msp_id"]: u for u in tx.scan("update", [trial_id, _n(r), _n(attempt)])}
    policy = trial["evaluation"]
    verdict = rules.judge_round(
        candidates={m: updates[m] for m in rnd["candidates"]},
        votes=revealed,
        enrolled=enrolled,
        threshold_micro=policy["acceptance_threshold_micro"],
        min_voters=policy["min_voters"],
        reward_pool=policy["reward_per_round"],
    )
    participants = sorted((set(rnd["candidates"]) | set(revealed)) & set(enrolled))
    quorum = rules.attestation_quorum(len(participants))
    acceptance = {
        "trial_id": trial_id,
        "round": r,
        "attempt": attempt,
        "threshold_micro": policy["acceptance_threshold_micro"],
        "min_voters": policy["min_voters"],
        "computed_at": tx.now,
        "voters_revealed": sorted(revealed),
        "voters_missing": missing,
        **verdict,
    }
    tx.put(_per_round_key("acceptance", trial_id, r, attempt), acceptance)
    accepted = verdict["accepted"]
    tx.put(
        _per_round_key("round_rewards", trial_id, r, attempt),
        {
            "trial_id": trial_id,
            "round": r,
            "attempt": attempt,
            "pool": verdict["reward_pool"],
            "rewards": verdict["rewards"],
            "status": "pending" if accepted else "void",
            "settlement": None,
        },
    )
    rnd = dict(
        rnd,
        accepted=accepted,
        accepted_sha256s=verdict["accepted_sha256s"],
        total_weight=verdict["total_weight"],
        participants=participants,
        attestation_quorum=quorum,
    )
    if not accepted:
        rnd = _halt_round(
            tx, caller, rnd, "NONE_ACCEPTED", "no update was accepted by the peer votes"
        )
        _halted_event(tx, rnd)
        return acceptance
    rnd = _next_phase(tx, trial, rnd, "AGGREGATE")
    tx.put(_round_key(trial_id, r, attempt), rnd)
    tx.emit(
        "VotingClosed",
        _round_event(
            rnd,
            accepted=accepted,
            rejected=verdict["rejected"],
            accepted_sha256s=verdict["accepted_sha256s"],
            total_weight=verdict["total_weight"],
            rewards=verdict["rewards"],
            attestation_quorum=quorum,
        ),
    )
    return acceptance


# ---------------------------------------------------------------------------------------------
# Rounds: aggregate, attest, finalize
# ---------------------------------------------------------------------------------------------


@_function("record_aggregate", "coordinator")
def _record_aggregate(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial, r = _round_args(tx, a)
    content_id = a.content_id("content_id")
    sha256 = a.sha256("sha256")
    summed = a.list("update_sha256s", min_items=1, max_items=MAX_SILOS)
    for i, value in enumerate(summed):
        if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
            a.fail(f"update_sha256s[{i}]", value, "a sha256 digest: 64 lowercase hex digits")
    a.done()
    if len(set(summed)) != len(summed):
        a.fail("update_sha256s", summed, "each accepted update once")
    _require_trial_state(trial, "RUNNING")
    rnd = _current_round(tx, trial, r)
    _require_phase(rnd, "AGGREGATE")
    if sorted(summed) != rnd["accepted_sha256s"]:
        _fail(
            "AGGREGATE_MISMATCH",
            f"update_sha256s: the aggregate must sum exactly the accepted updates of {_round_label(rnd)} "
            f"(missing {sorted(set(rnd['accepted_sha256s']) - set(summed))}, "
            f"not accepted {sorted(set(summed) - set(rnd['accepted_sha256s']))})",
            field="update_sha256s",
            expected=rnd["accepted_sha256s"],
        )
    aggregate = {
        "content_id": content_id,
        "sha256": sha256,
        "update_sha256s": sorted(summed),
        "total_weight": rnd["total_weight"],
        "recorded_at": tx.now,
        "recorded_by": caller.who(),
    }
    rnd = dict(_next_phase(tx, trial, rnd, "ATTEST"), aggregate=aggregate)
    tx.put(_round_key(rnd["trial_id"], r, rnd["attempt"]), rnd)
    tx.emit(
        "AggregateRecorded",
        _round_event(rnd, content_id=content_id, sha256=sha256, total_weight=rnd["total_weight"]),
    )
    return rnd


def _credit_rewards(tx: _Tx, rnd: dict[str, Any]) -> dict[str, int]:
    key = _per_round_key("round_rewards", rnd["trial_id"], rnd["round"], rnd["attempt"])
    record = tx.get(key)
    tx.put(key, dict(record, status="credited"))
    for msp_id, amount in sorted(record["rewards"].items()):
        account_key = _per_org_key("reward_account", rnd["trial_id"], msp_id)
        account = tx.get(account_key) or {
            "trial_id": rnd["trial_id"],
            "msp_id": msp_id,
            "total": 0,
            "entries": [],
        }
        entry = {"round": rnd["round"], "attempt": rnd["attempt"], "amount": amount}
        tx.put(
            account_key,
            dict(account, total=account["total"] + amount, entries=account["entries"] + [entry]),
        )
    return record["rewards"]


@_function("attest_model", "silo")
def _attest_model(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial, r = _round_args(tx, a)
    msp_id = _own_organisation(a, caller)
    sha256 = a.sha256("sha256")
    content_id = a.content_id("content_id", default=None)
    a.done()
    trial_id = trial["trial_id"]
    _require_trial_state(trial, "RUNNING")
    _require_enrolled(tx, trial_id, msp_id)
    rnd = _current_round(tx, trial, r)
    if rnd["phase"] != "FINALIZED":
        _require_phase(rnd, "ATTEST")
    attempt = rnd["attempt"]
    key = _per_round_key("attestation", trial_id, r, attempt, msp_id)
    if tx.get(key) is not None:
        _fail(
            "DUPLICATE",
            f"{msp_id} already attested the model of {_round_label(rnd)}",
            msp_id=msp_id,
        )
    earlier = tx.scan("attestation", [trial_id, _n(r), _n(attempt)])
    record = {
        "trial_id": trial_id,
        "round": r,
        "attempt": attempt,
        "msp_id": msp_id,
        "sha256": sha256,
        "content_id": content_id,
        "attested_at": tx.now,
    }
    tx.put(key, record)
    attestations = {e["msp_id"]: e["sha256"] for e in earlier} | {msp_id: sha256}
    round_key = _round_key(trial_id, r, attempt)

    if rnd["phase"] == "FINALIZED":
        # A quorum already agreed; a later dissent is recorded for the admin to judge (rollback)
        # rather than letting one hospital undo a finalized round.
        if sha256 == rnd["model"]["sha256"]:
            tx.emit(
                "ModelAttested", _round_event(rnd, msp_id=msp_id, sha256=sha256, finalized=True)
            )
        else:
            rnd = dict(
                rnd, disputes=rnd["disputes"] + [{"msp_id": msp_id, "sha256": sha256, "at": tx.now}]
            )
            tx.put(round_key, rnd)
            tx.emit(
                "AttestationMismatch",
                _round_event(
                    rnd,
                    code="ATTESTATION_MISMATCH",
                    msp_id=msp_id,
                    phase="FINALIZED",
                    attestations=attestations,
                ),
            )
        return {"attestation": record, "round": rnd}

    if len(set(attestations.values())) > 1:
        reason = f"attested model hashes differ: {attestations}"
        rnd = _halt_round(
            tx, caller, rnd, "ATTESTATION_MISMATCH", reason, attestations=attestations
        )
        tx.emit(
            "AttestationMismatch",
            _round_event(
                rnd,
                code="ATTESTATION_MISMATCH",
                msp_id=msp_id,
                phase="HALTED",
                attestations=attestations,
            ),
        )
        return {"attestation": record, "round": rnd}

    if len(attestations) < rnd["attestation_quorum"]:
        tx.emit(
            "ModelAttested",
            _round_event(
                rnd,
                msp_id=msp_id,
                sha256=sha256,
                attestations=len(attestations),
                quorum=rnd["attestation_quorum"],
            ),
        )
        return {"attestation": record, "round": rnd}

    # Quorum: the first content id given (earliest, then by MSP id) names the stored model.
    ordered = sorted(earlier, key=lambda e: (e["attested_at"], e["msp_id"])) + [record]
    model = {
        "content_id": next((e["content_id"] for e in ordered if e["content_id"]), None),
        "sha256": sha256,
    }
    rnd = dict(rnd, phase="FINALIZED", phase_changed_at=tx.now, model=model, finalized_at=tx.now)
    tx.put(round_key, rnd)
    head = {"round": r, "attempt": attempt, "model": model}
    lineage = trial["lineage"] + [
        {"round": r, "attempt": attempt, "model": model, "finalized_at": tx.now}
    ]
    tx.put(_trial_key(trial_id), dict(trial, head=head, lineage=lineage))
    rewards = _credit_rewards(tx, rnd)
    tx.emit(
        "RoundFinalized",
        _round_event(
            rnd,
            model=model,
            attesters=sorted(attestations),
            rewards=rewards,
            last_round=r == trial["rounds"],
        ),
    )
    return {"attestation": record, "round": rnd}


@_function("abort_round", "admin")
def _abort_round(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial, r = _round_args(tx, a)
    reason = a.string("reason")
    a.done()
    _require_trial_state(trial, "RUNNING")
    rnd = _current_round(tx, trial, r)
    if rnd["phase"] in DONE_PHASES:
        _fail("WRONG_STATE", f"{_round_label(rnd)} is already {rnd['phase']}", phase=rnd["phase"])
    rnd = _halt_round(tx, caller, rnd, "ABORTED", reason)
    _halted_event(tx, rnd)
    return rnd


@_function("rollback", "admin")
def _rollback(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    to_round = a.integer("to_round", minimum=0, maximum=MAX_ROUNDS)
    reason = a.string("reason", default=None)
    a.done()
    _require_trial_state(trial, "RUNNING")
    _require_no_round_in_progress(tx, trial)
    head = trial["head"]
    if to_round > head["round"]:
        _fail(
            "NO_SUCH_ROUND",
            f"to_round: {to_round} is not a finalized round of trial {trial['trial_id']!r} "
            f"(its lineage holds rounds 0 to {head['round']})",
            field="to_round",
            value=to_round,
            head=head["round"],
        )
    lineage = trial["lineage"][:to_round]
    if to_round == 0:
        new_head = {"round": 0, "attempt": 0, "model": trial["initial_model"]}
    else:
        last = lineage[-1]
        new_head = {"round": last["round"], "attempt": last["attempt"], "model": last["model"]}
    rollback = {
        "from_round": head["round"],
        "from_attempt": head["attempt"],
        "to_round": to_round,
        "to_attempt": new_head["attempt"],
        "reason": reason,
        "at": tx.now,
        "by": caller.who(),
    }
    trial = dict(trial, head=new_head, lineage=lineage, rollbacks=trial["rollbacks"] + [rollback])
    tx.put(_trial_key(trial["trial_id"]), trial)
    tx.emit(
        "RolledBack",
        {
            "trial_id": trial["trial_id"],
            **{k: v for k, v in rollback.items() if k != "by"},
            "model": new_head["model"],
        },
    )
    return trial


@_function("record_settlement", "coordinator")
def _record_settlement(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial, r = _round_args(tx, a)
    attempt = a.integer("attempt", minimum=1, maximum=10**6, default=None)
    chain_id = a.integer("chain_id", minimum=1, maximum=2**63 - 1)
    tx_hash = a.string(
        "tx_hash",
        pattern=ETH_TX_HASH,
        expected="a transaction hash: 0x and 64 lowercase hex digits",
    )
    a.done()
    rnd = _find_round(tx, trial, r, attempt)
    if rnd["phase"] != "FINALIZED":
        _fail(
            "WRONG_STATE",
            f"{_round_label(rnd)} is {rnd['phase']}; only finalized rounds are settled",
            phase=rnd["phase"],
        )
    key = _per_round_key("round_rewards", trial["trial_id"], r, rnd["attempt"])
    record = tx.get(key)
    if record["settlement"] is not None:
        _fail(
            "ALREADY_EXISTS",
            f"{_round_label(rnd)} is already settled by {record['settlement']['tx_hash']}",
        )
    record = dict(
        record,
        settlement={
            "chain_id": chain_id,
            "tx_hash": tx_hash,
            "recorded_at": tx.now,
            "recorded_by": caller.who(),
        },
    )
    tx.put(key, record)
    tx.emit("SettlementRecorded", _round_event(rnd, chain_id=chain_id, tx_hash=tx_hash))
    return record


# ---------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------


@_function("get_round", read_only=True)
def _get_round(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    r = a.integer("round", minimum=1, maximum=MAX_ROUNDS, default=None)
    attempt = a.integer("attempt", minimum=1, maximum=10**6, default=None)
    a.done()
    return _find_round(tx, trial, r, attempt)


@_function("list_rounds", read_only=True)
def _list_rounds(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    a.done()
    return tx.scan("round", [trial["trial_id"]])


def _per_round_records(tx: _Tx, a: Args, kind: str) -> list[Any]:
    trial = _load_trial(tx, a.identifier("trial_id"))
    r = a.integer("round", minimum=1, maximum=MAX_ROUNDS)
    attempt = a.integer("attempt", minimum=1, maximum=10**6, default=None)
    a.done()
    rnd = _find_round(tx, trial, r, attempt)
    return tx.scan(kind, [trial["trial_id"], _n(r), _n(rnd["attempt"])])


@_function("get_submissions", read_only=True)
def _get_submissions(tx: _Tx, caller: _Caller, a: Args) -> Any:
    return _per_round_records(tx, a, "update")


@_function("get_votes", read_only=True)
def _get_votes(tx: _Tx, caller: _Caller, a: Args) -> Any:
    return _per_round_records(tx, a, "vote")


@_function("get_attestations", read_only=True)
def _get_attestations(tx: _Tx, caller: _Caller, a: Args) -> Any:
    return _per_round_records(tx, a, "attestation")


@_function("get_acceptance", read_only=True)
def _get_acceptance(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    r = a.integer("round", minimum=1, maximum=MAX_ROUNDS)
    attempt = a.integer("attempt", minimum=1, maximum=10**6, default=None)
    a.done()
    rnd = _find_round(tx, trial, r, attempt)
    record = tx.get(_per_round_key("acceptance", trial["trial_id"], r, rnd["attempt"]))
    if record is None:
        _fail(
            "NOT_FOUND",
            f"{_round_label(rnd)} has no acceptance yet (phase {rnd['phase']})",
            phase=rnd["phase"],
        )
    return record


@_function("get_privacy_ledger", read_only=True)
def _get_privacy_ledger(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    msp_id = a.identifier("msp_id", default=None)
    a.done()
    # Every enrolled (or once enrolled) hospital appears, with zero spent if it never revealed.
    holders = sorted(_enrolments(tx, trial["trial_id"])) if msp_id is None else [msp_id]
    return [_privacy_account(tx, trial, m) for m in holders]


@_function("get_rewards", read_only=True)
def _get_rewards(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    msp_id = a.identifier("msp_id", default=None)
    a.done()
    trial_id = trial["trial_id"]
    accounts = tx.scan("reward_account", [trial_id])
    if msp_id is not None:
        accounts = [acc for acc in accounts if acc["msp_id"] == msp_id] or [
            {"trial_id": trial_id, "msp_id": msp_id, "total": 0, "entries": []}
        ]
    return {
        "trial_id": trial_id,
        "accounts": accounts,
        "rounds": tx.scan("round_rewards", [trial_id]),
    }


_HISTORY_RECORDS: dict[str, tuple[str, ...]] = {
    # record -> the arguments that locate it (besides trial_id)
    "trial": (),
    "trial_keys": (),
    "enrolment": ("msp_id",),
    "privacy": ("msp_id",),
    "reward_account": ("msp_id",),
    "round": ("round", "attempt"),
    "acceptance": ("round", "attempt"),
    "round_rewards": ("round", "attempt"),
    "update": ("round", "attempt", "msp_id"),
    "vote": ("round", "attempt", "msp_id"),
    "attestation": ("round", "attempt", "msp_id"),
}


@_function("get_history", read_only=True)
def _get_history(tx: _Tx, caller: _Caller, a: Args) -> Any:
    """Every value a trial record ever had, as the host's key history returns it (newest first on both hosts)."""
    trial = _load_trial(tx, a.identifier("trial_id"))
    record = a.choice("record", tuple(_HISTORY_RECORDS), default="trial")
    needs = _HISTORY_RECORDS[record]
    trial_id = trial["trial_id"]
    if "round" in needs:
        rnd = _find_round(
            tx,
            trial,
            a.integer("round", minimum=1, maximum=MAX_ROUNDS),
            a.integer("attempt", minimum=1, maximum=10**6, default=None),
        )
        attrs = [trial_id, _n(rnd["round"]), _n(rnd["attempt"])]
    else:
        attrs = [trial_id]
    if "msp_id" in needs:
        attrs.append(a.identifier("msp_id"))
    a.done()
    key = create_composite_key(record, attrs)
    return [
        {
            "tx_id": entry.tx_id,
            "timestamp": entry.timestamp,
            "is_delete": entry.is_delete,
            "value": None if entry.value is None else json.loads(entry.value),
        }
        for entry in tx.state.get_history_for_key(key)
    ]


@_function("get_model_lineage", read_only=True)
def _get_model_lineage(tx: _Tx, caller: _Caller, a: Args) -> Any:
    trial = _load_trial(tx, a.identifier("trial_id"))
    a.done()
    return {
        "trial_id": trial["trial_id"],
        "initial_model": trial["initial_model"],
        "head": trial["head"],
        "rounds": trial["lineage"],
        "rollbacks": trial["rollbacks"],
    }


READ_ONLY_FUNCTIONS: frozenset[str] = frozenset(
    name for name, spec in _FUNCTIONS.items() if spec.read_only
)
FUNCTIONS: frozenset[str] = frozenset(_FUNCTIONS)
