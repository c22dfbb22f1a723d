"""The auditor's check of a Fabric channel: hash chain, data hashes, orderer, creator and endorsement signatures."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fabric_protos.common import common_pb2, configtx_pb2
from fabric_protos.msp import identities_pb2, msp_config_pb2
from fabric_protos.peer import (
    transaction_pb2,
)

from consortium.ledger.base import VerifyReport
from consortium.ledger.fabric.blocks import block_header_der, block_header_hash


def _msp_roots(config_block: common_pb2.Block) -> dict[str, list[x509.Certificate]]:
    """MSP id -> root CA certificates, from a channel configuration block."""
    envelope = common_pb2.Envelope.FromString(config_block.data.data[0])
    payload = common_pb2.Payload.FromString(envelope.payload)
    config = configtx_pb2.ConfigEnvelope.FromString(payload.data).config
    roots: dict[str, list[x509.Certificate]] = {}

    def walk(group: configtx_pb2.ConfigGroup) -> None:
        if "MSP" in group.values:
            msp = msp_config_pb2.MSPConfig.FromString(group.values["MSP"].value)
            fabric = msp_config_pb2.FabricMSPConfig.FromString(msp.config)
            roots[fabric.name] = [
                x509.load_pem_x509_certificate(bytes(c)) for c in fabric.root_certs
            ]
        for child in group.groups.values():
            walk(child)

    walk(config.channel_group)
    return roots


def _check_signature(
    creator_bytes: bytes, data: bytes, signature: bytes, roots: dict[str, list[x509.Certificate]]
) -> str | None:
    """None when ``signature`` over ``data`` is valid and the creator's cert chains to its MSP's root."""
    try:
        creator = identities_pb2.SerializedIdentity.FromString(creator_bytes)
        cert = x509.load_pem_x509_certificate(bytes(creator.id_bytes))
    except Exception as exc:
        return f"undecodable creator ({exc})"
    cas = roots.get(creator.mspid)
    if not cas:
        return f"creator MSP {creator.mspid!r} is not in the channel configuration"
    if not any(_issued_by(cert, ca) for ca in cas):
        return f"certificate of {creator.mspid} ({cert.subject.rfc4514_string()}) is not issued by its MSP's CA"
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return "creator key is not ECDSA"
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return f"signature by {creator.mspid} does not verify"
    return None


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def verify_blocks(blocks: Iterator[common_pb2.Block]) -> VerifyReport:
    report = VerifyReport()
    roots: dict[str, list[x509.Certificate]] = {}
    previous: common_pb2.BlockHeader | None = None
    for block in blocks:
        n = int(block.header.number)
        report.blocks += 1
        if previous is None:
            if n != 0:
                report.problems.append(f"the chain starts at block {n}, not 0")
            try:
                roots = _msp_roots(block)
            except Exception as exc:
                report.problems.append(f"block 0: not a channel configuration block ({exc})")
        else:
            if n != previous.number + 1:
                report.problems.append(f"block {n} follows block {previous.number}")
            if bytes(block.header.previous_hash) != block_header_hash(previous):
                report.problems.append(
                    f"block {n}: previous_hash does not match the hash of block {previous.number}"
                )
        if bytes(block.header.data_hash) != hashlib.sha256(b"".join(block.data.data)).digest():
            report.problems.append(f"block {n}: data hash does not match its transactions")
        if n > 0:
            try:
                md = common_pb2.Metadata.FromString(block.metadata.metadata[common_pb2.SIGNATURES])
            except Exception:
                md = common_pb2.Metadata()
            if not md.signatures:
                report.problems.append(f"block {n}: no orderer signature")
            for sig in md.signatures:
                signed = (
                    bytes(md.value) + bytes(sig.signature_header) + block_header_der(block.header)
                )
                try:
                    creator = common_pb2.SignatureHeader.FromString(sig.signature_header).creator
                except Exception:
                    creator = b""
                problem = _check_signature(creator, signed, bytes(sig.signature), roots)
                if problem:
                    report.problems.append(f"block {n}: orderer signature: {problem}")
        for index, raw in enumerate(block.data.data):
            envelope = common_pb2.Envelope.FromString(raw)
            payload = common_pb2.Payload.FromString(envelope.payload)
            ch = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
            if ch.type != common_pb2.ENDORSER_TRANSACTION:
                continue
            report.transactions += 1
            where = f"block {n} tx {index} ({ch.tx_id[:12]})"
            sh = common_pb2.SignatureHeader.FromString(payload.header.signature_header)
            problem = _check_signature(
                sh.creator, bytes(envelope.payload), bytes(envelope.signature), roots
            )
            if problem:
                report.problems.append(f"{where}: creator: {problem}")
            if hashlib.sha256(bytes(sh.nonce) + bytes(sh.creator)).hexdigest() != ch.tx_id:
                report.problems.append(
                    f"{where}: transaction id does not derive from its nonce and creator"
                )
            try:
                tx = transaction_pb2.Transaction.FromString(payload.data)
                cap = transaction_pb2.ChaincodeActionPayload.FromString(tx.actions[0].payload)
                for e in cap.action.endorsements:
                    data = bytes(cap.action.proposal_response_payload) + bytes(e.endorser)
                    problem = _check_signature(bytes(e.endorser), data, bytes(e.signature), roots)
                    if problem:
                        report.problems.append(f"{where}: endorsement: {problem}")
            except Exception as exc:
                report.problems.append(f"{where}: undecodable transaction ({exc})")
        previous = block.header
    if report.blocks == 0:
        report.problems.append("the channel has no blocks")
    report.checks = [
        "block header hash chain (SHA-256 of the DER header) from the configuration block",
        "each block's data hash",
        "the orderer's signature on every block, its certificate issued by the ordering organisation's CA",
        "every transaction's creator signature, certificate issued by its organisation's CA in the channel configuration",
        "every endorsement signature, certificate issued by the endorser's organisation's CA",
        "transaction ids derive from nonce and creator",
    ]
    return report
