"""How the peers' refusals become our errors: gRPC status details, chaincode responses, invalid transactions."""

from __future__ import annotations

import json
import re
from typing import NoReturn

import grpc
from fabric_protos.gateway import gateway_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from grpc_status import rpc_status

from bcfl_common.errors import ContractError, IdentityError, LedgerError

_CODE_RE = re.compile(r"^([A-Z][A-Z0-9_]{1,63}): (.*)$", re.S)
_CC_RESPONSE_RE = re.compile(r"chaincode response (\d+), (.*)$", re.S)
DETAIL_MARKER = "\n\x1edetail="  # as in chaincode.host_fabric (not imported: clients need no shim)


class TransactionInvalid(LedgerError):
    """The ordered transaction was marked invalid by the peers' validation (``code`` = Fabric's reason)."""

    code = "TX_INVALID"


def gateway_error_details(err: grpc.RpcError) -> list[tuple[str, str, str]]:
    """(address, msp_id, message) of every gateway ErrorDetail in the call's rich status."""
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        # the rich status disagrees with the call's code or message: its details still say which
        # peer refused and why
        status = next(
            (
                status_pb2.Status.FromString(value)
                for key, value in err.trailing_metadata() or ()
                if key == rpc_status.GRPC_DETAILS_METADATA_KEY
            ),
            None,
        )
    except (AttributeError, TypeError):  # not a call (no trailing metadata)
        return []
    details = []
    for packed in status.details if status is not None else ():
        if packed.Is(gateway_pb2.ErrorDetail.DESCRIPTOR):
            detail = gateway_pb2.ErrorDetail()
            packed.Unpack(detail)
            details.append((detail.address, detail.msp_id, detail.message))
    return details


def rpc_error_text(err: grpc.RpcError) -> tuple[str, list[tuple[str, str, str]]]:
    message = err.details() if hasattr(err, "details") else str(err)
    try:
        details = gateway_error_details(err)
    except DecodeError:  # malformed details must not hide the error itself
        details = []
    return message or "", details


def contract_error_from(texts: list[str]) -> ContractError | None:
    """Rebuild the chaincode's ContractError from the peer's "chaincode response 500, CODE: msg"."""
    for text in texts:
        match = _CC_RESPONSE_RE.search(text)
        if not match:
            continue
        body, detail = match.group(2), {}
        if DETAIL_MARKER in body:
            body, _, raw = body.rpartition(DETAIL_MARKER)
            try:
                detail = json.loads(raw)
            except ValueError:
                detail = {}
        code_match = _CODE_RE.match(body)
        if code_match:
            return ContractError(
                code_match.group(2),
                code=code_match.group(1),
                detail=detail if isinstance(detail, dict) else {},
            )
        return ContractError(body, code="CONTRACT")
    return None


def raise_for(what: str, err: grpc.RpcError, msp_id: str) -> NoReturn:
    """Raise the error a peer's refusal of ``what`` means for the caller (MSP ``msp_id``)."""
    message, details = rpc_error_text(err)
    texts = [d[2] for d in details] + [message]
    contract_error = contract_error_from(texts)
    if contract_error is not None:
        raise contract_error from None
    where = "; ".join(f"{d[1] or '?'}@{d[0] or '?'}: {d[2]}" for d in details)
    full = f"{message}" + (f" ({where})" if where else "")
    lowered = full.lower()
    if (
        "access denied" in lowered
        or "creator" in lowered
        and ("unknown" in lowered or "invalid" in lowered)
        or err.code() == grpc.StatusCode.PERMISSION_DENIED
    ):
        raise IdentityError(
            f"{what} refused by the peer for {msp_id}: {full}",
            code="ACCESS_DENIED",
        ) from None
    if "no combination of peers can be derived" in lowered:
        # discovery has not (yet) seen enough peers with the chaincode: after a definition, a restart
        raise LedgerError(
            f"{what}: not enough endorsing peers are available for the MAJORITY policy: {full}",
            code="NO_ENDORSERS",
        ) from None
    if "proposalresponsepayloads do not match" in lowered:
        # peers at different heights read different versions: a conflict seen at endorsement
        raise LedgerError(
            f"{what}: the endorsing peers disagree (they read different ledger states): {full}",
            code="ENDORSEMENT_MISMATCH",
        ) from None
    if "duplicate" in lowered:
        raise LedgerError(f"{what}: {full}", code="DUPLICATE_TXID") from None
    raise LedgerError(
        f"{what} failed ({err.code().name}): {full}",
        code="ENDORSEMENT_FAILED" if what == "endorse" else "LEDGER",
    ) from None
