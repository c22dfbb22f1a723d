"""The entry point: ``invoke``, the function table, the caller's identification and the error codes.

``invoke(state, function, args) -> bytes``. ``args`` is ONE JSON object (UTF-8, at most
``MAX_ARGS_BYTES``); the result is canonical JSON. A refusal raises ``ContractError`` whose
``code`` is a key of ``CODES``, whose message names the field, the value and what was expected,
and the host discards the transaction's writes. Every state-changing function emits exactly one
event (payload: canonical JSON with ``trial_id`` and, for round steps, ``round`` and
``attempt``); a query writes nothing and emits nothing.

Identities: the creator's certificate (already verified by the host against its MSP's CA)
carries the bcfl role as a subject OU: ``admin``, ``coordinator``, ``silo`` or ``auditor`` (the
name is the CN). If several role OUs are present, ``admin`` is read as Fabric's admin NodeOU and
ignored (least privilege); two other role OUs are refused. After ``init_consortium`` a role
counts only from an organisation of the matching kind: admin/coordinator from ``operator``, silo
from ``hospital``, auditor from ``auditor`` organisations (``ROLES_BY_KIND``). Queries are open
to every member.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

from bcfl_common.canonical import canonical_json
from bcfl_common.certificates import (
    certificate_common_name,
    certificate_ous,
    parse_certificate,
    role_from_ous,
)
from bcfl_common.records import ConsortiumRecord
from bcfl_common.vocabulary import ROLES, ROLES_BY_KIND, Role
from chaincode.args import Args, parse_args
from chaincode.contract.context import Caller, Tx, fail
from chaincode.contract.store import CONSORTIUM_KEY
from chaincode.state import ChaincodeState

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
    "ALREADY_EXISTS": "the thing to create exists already (consortium, dataset, trial, enrolment, trial keys, settlement)",
    "WRONG_STATE": "the trial or round is not in a state that allows this (too early, or halted)",
    "TOO_EARLY": "a phase cannot close yet: someone is still expected and its deadline has not passed",
    "INSUFFICIENT_SILOS": "fewer hospitals are enrolled than the trial's min_silos",
    "INFEASIBLE": "the hospitals' remaining DP reveals cannot carry the rounds a rollback or resume asks for (the message says what would fit)",
    "NOT_ENROLLED": "the hospital is not (or no longer) enrolled in the trial",
    "NO_SUCH_ROUND": "the round was never opened, or is not a finalized round of the current lineage",
    "LATE": "the deadline passed or the phase (or round) moved on",
    "DUPLICATE": "this organisation already did this in this round",
    "STALE": "the update was trained from another base model than the round's",
    "BUDGET_EXCEEDED": "the hospital has no reveal left in its DP schedule, or enrolling would over-commit its dataset's lifetime epsilon",
    "NOT_COMMITTED": "a reveal from an organisation that made no commitment in this round",
    "COMMITMENT_MISMATCH": "the revealed values do not hash to the organisation's commitment",
    "DUPLICATE_CONTENT": "an update with this sha256 was already revealed in an earlier round or attempt of this trial",
    "SELF_VOTE": "a voter scored its own update",
    "KEY_MISMATCH": "the encryption key given for a hospital is not the one the hospital registered itself",
    "AGGREGATE_MISMATCH": "the aggregate does not sum exactly the accepted updates",
    "ATTESTATION_MISMATCH": "attested model hashes differ: a dissent from the majority is a dispute; the round halts only when no hash can reach the quorum (halt code and event, not raised)",
}

Handler = Callable[[Tx, Caller, Args], Any]

# "member": a consortium member whose role its organisation may hold; "bootstrap": before the
# consortium exists (init_consortium); "anyone": any readable certificate (whoami).
Access = Literal["member", "bootstrap", "anyone"]


@dataclass(frozen=True)
class Spec:
    handler: Handler
    roles: frozenset[str]
    read_only: bool
    access: Access


TABLE: dict[str, Spec] = {}


def function(
    name: str, *roles: Role, read_only: bool = False, access: Access = "member"
) -> Callable[[Handler], Handler]:
    """Register a handler as contract function ``name`` for ``roles`` (every role if none)."""

    def register(handler: Handler) -> Handler:
        TABLE[name] = Spec(handler, frozenset(roles or ROLES), read_only, access)
        return handler

    return register


def certificate_identity(cert_pem: bytes) -> tuple[Role, str]:
    """(role, name) from the creator certificate's subject OUs and CN."""
    try:
        cert = parse_certificate(cert_pem)
    except ValueError as exc:
        fail("INVALID_IDENTITY", f"creator certificate: {exc}")
    ous = certificate_ous(cert)
    role = role_from_ous(ous)
    if role is None:
        fail(
            "INVALID_IDENTITY",
            f"creator certificate: OUs {ous} do not carry exactly one bcfl role of {list(ROLES)}",
            ous=ous,
        )
    return cast(Role, role), certificate_common_name(cert)


def identify(tx: Tx, spec: Spec, function: str) -> Caller:
    """The caller, refused unless ``spec`` admits its membership and role."""
    creator = tx.state.get_creator()
    role, name = certificate_identity(creator.cert_pem)
    consortium: ConsortiumRecord | None = tx.get(CONSORTIUM_KEY)
    org = None if consortium is None else consortium["organisations"].get(creator.msp_id)
    caller = Caller(creator.msp_id, name, role, None if org is None else org["kind"])
    if spec.access == "anyone":
        return caller
    if spec.access == "member":
        if consortium is None:
            fail(
                "NOT_INITIALISED",
                f"{function}: the consortium is not initialised yet (init_consortium)",
            )
        if org is None:
            fail(
                "NOT_MEMBER",
                f"{creator.msp_id} is not an organisation of the consortium",
                msp_id=creator.msp_id,
            )
        if role not in ROLES_BY_KIND[org["kind"]]:
            fail(
                "FORBIDDEN_ROLE",
                f"role {role!r} is not honoured from {creator.msp_id}, a {org['kind']} organisation "
                f"(which may hold only {list(ROLES_BY_KIND[org['kind']])})",
                role=role,
                msp_id=creator.msp_id,
            )
    if role not in spec.roles:
        fail(
            "FORBIDDEN_ROLE",
            f"{function} is for role {' or '.join(sorted(spec.roles))}, not {role!r} ({name}@{creator.msp_id})",
            role=role,
            allowed=sorted(spec.roles),
        )
    return caller


def invoke(state: ChaincodeState, function: str, args: bytes) -> bytes:
    """args is ONE JSON object (UTF-8 bytes); returns canonical JSON bytes. Raises ContractError with a stable code."""
    if not isinstance(args, bytes | bytearray):
        fail("MALFORMED_ARGS", f"args: expected bytes, got {type(args).__name__}")
    if len(args) > MAX_ARGS_BYTES:
        fail(
            "ARGS_TOO_LARGE",
            f"args: {len(args)} bytes, expected at most {MAX_ARGS_BYTES}",
            size=len(args),
        )
    spec = TABLE.get(function)
    if spec is None:
        fail(
            "UNKNOWN_FUNCTION",
            f"function {function!r} does not exist; expected one of {sorted(TABLE)}",
        )
    data = parse_args(args)
    tx = Tx(state)
    caller = identify(tx, spec, function)
    result = spec.handler(tx, caller, Args(data))
    if spec.read_only:
        if tx.writes or tx.event:
            raise RuntimeError(f"query {function} wrote state")  # a contract bug, never user input
    else:
        if tx.event is None:
            raise RuntimeError(f"{function} emitted no event")
        state.set_event(tx.event[0], canonical_json(tx.event[1]))
    return canonical_json(result)
