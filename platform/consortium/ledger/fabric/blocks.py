"""Decoding what the peers return: prepared envelopes, block headers, transactions and their events."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fabric_protos.common import common_pb2
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import (
    chaincode_event_pb2,
    chaincode_pb2,
    proposal_pb2,
    proposal_response_pb2,
    transaction_pb2,
)

from bcfl_common.errors import LedgerError


def json_result(payload: bytes, function: str) -> Any:
    if not payload:
        return None
    try:
        return json.loads(payload)
    except ValueError as exc:
        raise LedgerError(
            f"{function}: the chaincode returned non-JSON bytes ({exc})", code="BAD_RESPONSE"
        ) from exc


def json_payload(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload) if payload else {}
    except ValueError:
        return {"raw": payload.hex()}
    return value if isinstance(value, dict) else {"value": value}


def prepared_result(envelope: common_pb2.Envelope) -> tuple[bytes, str | None]:
    """The chaincode's response payload and event name carried in an endorsed transaction."""
    payload = common_pb2.Payload.FromString(envelope.payload)
    tx = transaction_pb2.Transaction.FromString(payload.data)
    action_payload = transaction_pb2.ChaincodeActionPayload.FromString(tx.actions[0].payload)
    prp = proposal_response_pb2.ProposalResponsePayload.FromString(
        action_payload.action.proposal_response_payload
    )
    action = proposal_pb2.ChaincodeAction.FromString(prp.extension)
    event_name = None
    if action.events:
        event_name = chaincode_event_pb2.ChaincodeEvent.FromString(action.events).event_name or None
    return bytes(action.response.payload), event_name


def block_header_hash(header: common_pb2.BlockHeader) -> bytes:
    """Fabric's block hash: SHA-256 of the DER SEQUENCE {number INTEGER, previous OCTET STRING, data OCTET STRING}."""
    return hashlib.sha256(block_header_der(header)).digest()


def block_header_der(header: common_pb2.BlockHeader) -> bytes:
    def tlv(tag: int, body: bytes) -> bytes:
        n = len(body)
        if n < 0x80:
            length = bytes([n])
        else:
            raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
            length = bytes([0x80 | len(raw)]) + raw
        return bytes([tag]) + length + body

    number = int(header.number)
    num = number.to_bytes(max(1, (number.bit_length() + 8) // 8), "big", signed=True)
    return tlv(
        0x30,
        tlv(0x02, num)
        + tlv(0x04, bytes(header.previous_hash))
        + tlv(0x04, bytes(header.data_hash)),
    )


def block_transactions(block: common_pb2.Block) -> list[dict[str, Any]]:
    """Every transaction of a block, decoded into the JSON-friendly shape `bcfl ledger show` prints."""
    flags = b""
    if len(block.metadata.metadata) > common_pb2.TRANSACTIONS_FILTER:
        flags = bytes(block.metadata.metadata[common_pb2.TRANSACTIONS_FILTER])
    out = []
    for index, raw in enumerate(block.data.data):
        envelope = common_pb2.Envelope.FromString(raw)
        payload = common_pb2.Payload.FromString(envelope.payload)
        ch = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
        sh = common_pb2.SignatureHeader.FromString(payload.header.signature_header)
        creator = identities_pb2.SerializedIdentity.FromString(sh.creator)
        code = flags[index] if index < len(flags) else transaction_pb2.NOT_VALIDATED
        entry: dict[str, Any] = {
            "type": "config"
            if ch.type == common_pb2.CONFIG
            else "endorser"
            if ch.type == common_pb2.ENDORSER_TRANSACTION
            else str(ch.type),
            "valid": code == transaction_pb2.VALID,
            "validation_code": transaction_pb2.TxValidationCode.Name(code)
            if code in transaction_pb2.TxValidationCode.values()
            else str(code),
            "proposal": {
                "tx_id": ch.tx_id,
                "channel": ch.channel_id,
                "timestamp": int(ch.timestamp.seconds),
                "creator": {
                    "msp_id": creator.mspid,
                    "cert": bytes(creator.id_bytes).decode("utf-8", "replace"),
                },
                "function": "",
                "args": "",
            },
            "event": None,
            "result": "",
            "endorsers": [],
        }
        if ch.type == common_pb2.ENDORSER_TRANSACTION:
            try:
                tx = transaction_pb2.Transaction.FromString(payload.data)
                cap = transaction_pb2.ChaincodeActionPayload.FromString(tx.actions[0].payload)
                ccpp = proposal_pb2.ChaincodeProposalPayload.FromString(
                    cap.chaincode_proposal_payload
                )
                cis = chaincode_pb2.ChaincodeInvocationSpec.FromString(ccpp.input)
                args = list(cis.chaincode_spec.input.args)
                entry["proposal"]["function"] = args[0].decode("utf-8", "replace") if args else ""
                entry["proposal"]["args"] = (
                    args[1].decode("utf-8", "replace") if len(args) > 1 else ""
                )
                prp = proposal_response_pb2.ProposalResponsePayload.FromString(
                    cap.action.proposal_response_payload
                )
                action = proposal_pb2.ChaincodeAction.FromString(prp.extension)
                entry["result"] = bytes(action.response.payload).decode("utf-8", "replace")
                if action.events:
                    ev = chaincode_event_pb2.ChaincodeEvent.FromString(action.events)
                    if ev.event_name:
                        entry["event"] = {
                            "name": ev.event_name,
                            "chaincode": ev.chaincode_id,
                            "payload": bytes(ev.payload).decode("utf-8", "replace"),
                        }
                entry["endorsers"] = [
                    identities_pb2.SerializedIdentity.FromString(e.endorser).mspid
                    for e in cap.action.endorsements
                ]
            except Exception as exc:  # reported by verify; show what can be shown
                entry["decode_error"] = str(exc)
        out.append(entry)
    return out
