"""Signed endorser-transaction proposals: the caller's creator identity, the tx id, the signature."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

from fabric_protos.common import common_pb2
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import (
    chaincode_pb2,
    proposal_pb2,
)
from google.protobuf import timestamp_pb2

from consortium.identity import Identity


def serialized_identity(identity: Identity) -> bytes:
    return identities_pb2.SerializedIdentity(
        mspid=identity.msp_id, id_bytes=identity.cert_pem
    ).SerializeToString()


def proto_timestamp(now: float | None = None) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    now = time.time() if now is None else now
    ts.seconds = int(now)
    ts.nanos = int((now - int(now)) * 1e9)
    return ts


@dataclass
class SignedProposal:
    tx_id: str
    signed: proposal_pb2.SignedProposal


def make_proposal(
    identity: Identity,
    channel: str,
    chaincode: str,
    args: list[bytes],
    nonce: bytes | None = None,
    now: float | None = None,
) -> SignedProposal:
    """A signed endorser-transaction proposal; the tx id is sha256(nonce + creator) as Fabric requires."""
    creator = serialized_identity(identity)
    nonce = nonce if nonce is not None else os.urandom(24)
    tx_id = hashlib.sha256(nonce + creator).hexdigest()
    cc_id = chaincode_pb2.ChaincodeID(name=chaincode)
    channel_header = common_pb2.ChannelHeader(
        type=common_pb2.ENDORSER_TRANSACTION,
        channel_id=channel,
        tx_id=tx_id,
        epoch=0,
        timestamp=proto_timestamp(now),
        extension=proposal_pb2.ChaincodeHeaderExtension(chaincode_id=cc_id).SerializeToString(),
    )
    signature_header = common_pb2.SignatureHeader(creator=creator, nonce=nonce)
    header = common_pb2.Header(
        channel_header=channel_header.SerializeToString(),
        signature_header=signature_header.SerializeToString(),
    )
    spec = chaincode_pb2.ChaincodeSpec(
        type=chaincode_pb2.ChaincodeSpec.UNDEFINED,
        chaincode_id=cc_id,
        input=chaincode_pb2.ChaincodeInput(args=args),
    )
    payload = proposal_pb2.ChaincodeProposalPayload(
        input=chaincode_pb2.ChaincodeInvocationSpec(chaincode_spec=spec).SerializeToString()
    )
    proposal = proposal_pb2.Proposal(
        header=header.SerializeToString(), payload=payload.SerializeToString()
    )
    proposal_bytes = proposal.SerializeToString()
    return SignedProposal(
        tx_id,
        proposal_pb2.SignedProposal(
            proposal_bytes=proposal_bytes, signature=identity.sign(proposal_bytes)
        ),
    )
