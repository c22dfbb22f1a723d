"""The Fabric ledger (``fabric://...``): the peer's Gateway service over gRPC, as the caller's own identity.

URLs (choose one form):

* ``fabric:///abs/path/network.json``: the description `bcfl network up` writes. The caller's own
  organisation's peer is the gateway; the other peers are fallbacks, tried in turn when it is down.
* ``fabric://HOST:PORT[,HOST:PORT...]/CHANNEL/CHAINCODE?tls_ca=/path/ca.pem[&tls_ca=...]``: explicit
  gateway peers (in order of preference) and the TLS CA certificates that sign their server
  certificates. ``server_name=NAME`` overrides the TLS host name to check.

Query parameters of both forms: ``channel=`` and ``chaincode=`` (the profile form's defaults are
the network's), ``timeout=`` seconds per call (30), ``mvcc_retries=`` (5), ``commit_wait=all``
(default: ``submit`` returns once every reachable peer committed, so the next transaction,
whoever sends it through whichever peer, sees it) or ``gateway`` (once the gateway peer did). ``open_ledger`` also
takes ``clock=`` (a callable returning seconds): the time stamped on proposals, which is the
transaction time the contract sees.

Every request is signed by the caller: ECDSA P-256 over SHA-256 in low-S form, the creator being a
``SerializedIdentity`` of the caller's MSP id and PEM certificate. ``submit`` is the Gateway flow:
Endorse (the gateway collects endorsements satisfying the MAJORITY policy), sign the prepared
envelope, Submit, then wait on CommitStatus. A transaction invalidated by an MVCC or phantom read
conflict is run again (a new proposal) up to ``mvcc_retries`` times.

Calling convention with the chaincode (``chaincode.host_fabric``): arguments ``[function, args]``
with ``args`` the canonical JSON of one object; an error response's message is
``"<CODE>: <message>"`` and becomes ``ContractError(code=CODE)`` here.

Blocks come from the peer's Deliver service; ``verify`` checks what Fabric provides: the header
hash chain, each block's data hash, the orderer's signature on every block against the ordering
organisation's CA in the channel configuration, and every transaction's creator signature and
endorsements against the organisations' CAs in that configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fabric_protos.common import common_pb2, configtx_pb2
from fabric_protos.gateway import gateway_pb2, gateway_pb2_grpc
from fabric_protos.msp import identities_pb2, msp_config_pb2
from fabric_protos.orderer import ab_pb2
from fabric_protos.peer import (
    chaincode_event_pb2,
    chaincode_pb2,
    events_pb2_grpc,
    proposal_pb2,
    proposal_response_pb2,
    transaction_pb2,
)
from google.protobuf import timestamp_pb2

from bcfl_common.canonical import canonical_json
from bcfl_common.errors import ConfigError, ContractError, IdentityError, LedgerError
from consortium.identity import Identity
from consortium.ledger.base import MAX_PROPOSAL_BYTES, Block, LedgerEvent, TxResult, VerifyReport

DEFAULT_TIMEOUT = 30.0
MVCC_CODES = {transaction_pb2.MVCC_READ_CONFLICT, transaction_pb2.PHANTOM_READ_CONFLICT}
_MAX_MESSAGE = 100 * 1024 * 1024
_CODE_RE = re.compile(r"^([A-Z][A-Z0-9_]{1,63}): (.*)$", re.S)
_CC_RESPONSE_RE = re.compile(r"chaincode response (\d+), (.*)$", re.S)
DETAIL_MARKER = "\n\x1edetail="  # as in chaincode.host_fabric (not imported: clients need no shim)


class TransactionInvalid(LedgerError):
    """The ordered transaction was marked invalid by the peers' validation (``code`` = Fabric's reason)."""

    code = "TX_INVALID"


# ---------------------------------------------------------------------------------------------
# URL / configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class GatewayPeer:
    address: str
    msp_id: str | None = None


@dataclass
class FabricTarget:
    peers: list[GatewayPeer]
    channel: str
    chaincode: str
    tls_root_pems: bytes
    server_name: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def parse_fabric_url(url: str, msp_id: str | None = None) -> FabricTarget:
    parsed = urlparse(url)
    if parsed.scheme != "fabric":
        raise ConfigError(f"ledger URL {url!r}: expected scheme fabric://")
    query = {k: v for k, v in parse_qs(parsed.query).items()}
    options = {k: v[-1] for k, v in query.items()}
    if not parsed.netloc:
        target = _target_from_profile(Path(unquote(parsed.path)), msp_id, options)
        target.channel = options.get("channel", target.channel)
        target.chaincode = options.get("chaincode", target.chaincode)
        return target
    parts = [p for p in unquote(parsed.path).split("/") if p]
    if len(parts) != 2:
        raise ConfigError(
            f"ledger URL {url!r}: expected fabric://HOST:PORT[,HOST:PORT]/CHANNEL/CHAINCODE?tls_ca=PATH "
            "or fabric:///path/to/network.json"
        )
    cas = query.get("tls_ca", [])
    if not cas:
        raise ConfigError(
            f"ledger URL {url!r}: TLS is required; add ?tls_ca=/path/to/peer-tls-ca.pem"
        )
    pems = b"".join(_read_file(p, "tls_ca") for p in cas)
    peers = [GatewayPeer(a.strip()) for a in parsed.netloc.split(",") if a.strip()]
    return FabricTarget(peers, parts[0], parts[1], pems, options.get("server_name"), options)


def _read_file(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}={path}: cannot read it ({exc.strerror})") from exc


def _target_from_profile(path: Path, msp_id: str | None, options: dict[str, str]) -> FabricTarget:
    try:
        info = json.loads(_read_file(path, "network profile"))
    except ValueError as exc:
        raise ConfigError(f"{path} is not a network description (JSON): {exc}") from exc
    state = Path(info["state_dir"])
    peers, pems = [], b""
    for p in info["peers"]:
        peers.append(GatewayPeer(f"127.0.0.1:{p['port']}", p["msp_id"]))
        short = p["msp_id"].removesuffix("MSP").lower()
        ca = state / "crypto" / "peerOrganizations" / short / "peers" / p["name"] / "tls" / "ca.crt"
        pem = _read_file(ca, "peer TLS CA")
        if pem not in pems:
            pems += pem
    # own organisation's peer first, then the others in a stable, per-organisation rotated order
    own = [p for p in peers if p.msp_id == msp_id]
    others = [p for p in peers if p.msp_id != msp_id]
    if others and msp_id:
        shift = int(hashlib.sha256(msp_id.encode()).hexdigest(), 16) % len(others)
        others = others[shift:] + others[:shift]
    return FabricTarget(own + others, info["channel"], info["chaincode"], pems, None, options)


# ---------------------------------------------------------------------------------------------
# Signing and message building
# ---------------------------------------------------------------------------------------------


def serialized_identity(identity: Identity) -> bytes:
    return identities_pb2.SerializedIdentity(
        mspid=identity.msp_id, id_bytes=identity.cert_pem
    ).SerializeToString()


def _timestamp(now: float | None = None) -> timestamp_pb2.Timestamp:
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
        timestamp=_timestamp(now),
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


def _decode_grpc_status_details(blob: bytes) -> list[tuple[str, str, str]]:
    """(address, msp_id, message) of every gateway ErrorDetail in a google.rpc.Status blob."""

    def fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
        i = 0
        while i < len(data):
            key, i = _varint(data, i)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, i = _varint(data, i)
            elif wire == 2:
                length, i = _varint(data, i)
                value, i = data[i : i + length], i + length
            elif wire == 5:
                value, i = data[i : i + 4], i + 4
            elif wire == 1:
                value, i = data[i : i + 8], i + 8
            else:
                return
            yield number, wire, value

    details = []
    try:
        for number, wire, value in fields(blob):
            if number == 3 and wire == 2:  # repeated google.protobuf.Any details
                any_fields = {n: v for n, _, v in fields(value)}
                if bytes(any_fields.get(1, b"")).endswith(b"gateway.ErrorDetail"):
                    d = gateway_pb2.ErrorDetail.FromString(any_fields.get(2, b""))
                    details.append((d.address, d.msp_id, d.message))
    except Exception:  # malformed details must not hide the error itself
        return details
    return details


def _varint(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _rpc_error_text(err: grpc.RpcError) -> tuple[str, list[tuple[str, str, str]]]:
    message = err.details() if hasattr(err, "details") else str(err)
    details: list[tuple[str, str, str]] = []
    for key, value in (err.trailing_metadata() or ()) if hasattr(err, "trailing_metadata") else ():
        if key == "grpc-status-details-bin":
            details = _decode_grpc_status_details(value)
    return message or "", details


def _contract_error_from(texts: list[str]) -> ContractError | None:
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


# ---------------------------------------------------------------------------------------------
# The ledger
# ---------------------------------------------------------------------------------------------


class _CommittedBlocks:
    """Per peer (of a channel of a network): the highest block it is known to have committed, and
    the commit status requests in flight for a block, shared by every client of this process."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._height: dict[tuple[Any, str], int] = {}
        self._asking: dict[tuple[Any, str, int], Any] = {}

    def committed(self, scope: Any, address: str, block: int) -> None:
        with self._lock:
            if self._height.get((scope, address), -1) < block:
                self._height[(scope, address)] = block

    def wait_for(self, scope: Any, address: str, block: int, ask: Callable[[], Any]) -> Any:
        """None when ``address`` has committed ``block``, else a future answering when it has."""
        with self._lock:
            if self._height.get((scope, address), -1) >= block:
                return None
            key = (scope, address, block)
            future = self._asking.get(key)
            if future is None:
                future = self._asking[key] = ask()
            else:
                return future

        def settle(done: Any) -> None:
            with self._lock:
                self._asking.pop(key, None)
            try:
                answered = done.exception() is None
            except Exception:  # cancelled
                answered = False
            if answered:
                self.committed(scope, address, block)

        future.add_done_callback(settle)
        return future


_BLOCKS = _CommittedBlocks()


class FabricLedger:
    """``Ledger`` over a Fabric channel, through the peers' Gateway service."""

    def __init__(
        self,
        target: FabricTarget,
        identity: Identity,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        mvcc_retries: int = 5,
        clock: Callable[[], float] = time.time,
        commit_wait: str = "all",
    ):
        self.target = target
        self._clock = clock  # stamps proposals: the transaction time the chaincode sees
        # "all": submit returns once every reachable peer has committed (read-your-writes for the
        # next transaction whoever submits it); "gateway": once the gateway peer has
        self.commit_wait = commit_wait
        self.commit_wait_timeout = 5.0
        self.identity = identity
        self.timeout = timeout
        self.mvcc_retries = mvcc_retries
        self._creator = serialized_identity(identity)
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[
            str, gateway_pb2_grpc.GatewayStub
        ] = {}  # one per channel: building one costs
        self._tls_id = hashlib.sha256(
            target.tls_root_pems
        ).hexdigest()  # which network (ports are reused)
        self._preferred = 0  # index of the gateway peer that answered last
        credentials = grpc.ssl_channel_credentials(root_certificates=target.tls_root_pems)
        self._credentials = credentials

    # -- connections --
    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                options = [
                    ("grpc.max_receive_message_length", _MAX_MESSAGE),
                    ("grpc.max_send_message_length", _MAX_MESSAGE),
                    ("grpc.keepalive_time_ms", 60_000),
                ]
                if self.target.server_name:
                    options.append(("grpc.ssl_target_name_override", self.target.server_name))
                channel = grpc.secure_channel(address, self._credentials, options=options)
                self._channels[address] = channel
            return channel

    def _stub(self, address: str) -> gateway_pb2_grpc.GatewayStub:
        stub = self._stubs.get(address)
        if stub is None:
            stub = self._stubs[address] = gateway_pb2_grpc.GatewayStub(self._channel(address))
        return stub

    def _gateways(self) -> list[GatewayPeer]:
        peers = self.target.peers
        start = self._preferred
        return peers[start:] + peers[:start]

    def _call(self, what: str, fn: Any) -> Any:
        """Run ``fn(stub, peer)`` on the preferred gateway peer, failing over to the next when unreachable."""
        errors = []
        for peer in self._gateways():
            stub = self._stub(peer.address)
            try:
                result = fn(stub, peer)
            except grpc.RpcError as err:
                if err.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ) and not getattr(err, "_bcfl_final", False):
                    errors.append(f"{peer.address}: {err.code().name}")
                    continue
                raise
            self._preferred = self.target.peers.index(peer)
            return result
        raise LedgerError(
            f"{what}: no gateway peer answered ({'; '.join(errors)})", code="LEDGER_UNAVAILABLE"
        )

    def _args(self, function: str, args: dict[str, Any]) -> list[bytes]:
        if not isinstance(args, dict):
            raise ContractError(
                f"args: expected a JSON object, got {type(args).__name__}", code="MALFORMED_ARGS"
            )
        encoded = canonical_json(args)
        if len(encoded) > MAX_PROPOSAL_BYTES:
            raise LedgerError(
                f"arguments of {function!r} are {len(encoded)} bytes; the limit is {MAX_PROPOSAL_BYTES}",
                code="PROPOSAL_TOO_LARGE",
            )
        return [function.encode(), encoded]

    def _raise_for(self, what: str, err: grpc.RpcError) -> None:
        message, details = _rpc_error_text(err)
        texts = [d[2] for d in details] + [message]
        contract_error = _contract_error_from(texts)
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
                f"{what} refused by the peer for {self.identity.msp_id}: {full}",
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

    # -- Ledger interface --
    def evaluate(self, function: str, args: dict[str, Any]) -> Any:
        proposal = make_proposal(
            self.identity,
            self.target.channel,
            self.target.chaincode,
            self._args(function, args),
            now=self._clock(),
        )
        request = gateway_pb2.EvaluateRequest(
            transaction_id=proposal.tx_id,
            channel_id=self.target.channel,
            proposed_transaction=proposal.signed,
        )
        try:
            response = self._call(
                "evaluate", lambda stub, peer: stub.Evaluate(request, timeout=self.timeout)
            )
        except grpc.RpcError as err:
            self._raise_for("evaluate", err)
        return _json_result(bytes(response.result.payload), function)

    def submit(self, function: str, args: dict[str, Any]) -> TxResult:
        encoded = self._args(function, args)
        for attempt in range(self.mvcc_retries + 1):
            proposal = make_proposal(
                self.identity,
                self.target.channel,
                self.target.chaincode,
                encoded,
                now=self._clock(),
            )
            try:
                envelope = self.sign_envelope(self.endorse(proposal))
                return self.submit_envelope(proposal.tx_id, envelope, function)
            except LedgerError as exc:
                # a read conflict (at validation: MVCC/phantom; at endorsement: peers disagree) is
                # worth running again from a fresh proposal, a bounded number of times
                conflict = exc.code in ("MVCC_CONFLICT", "ENDORSEMENT_MISMATCH")
                if conflict and attempt < self.mvcc_retries:
                    time.sleep(random.uniform(0.02, 0.08) * (attempt + 1))
                    continue
                if exc.code == "NO_ENDORSERS" and attempt < self.mvcc_retries:
                    time.sleep(0.5 * (attempt + 1))  # gossip needs a few alive intervals
                    continue
                raise
        raise AssertionError("unreachable")

    def endorse(self, proposal: SignedProposal) -> common_pb2.Envelope:
        """Endorse through the gateway; returns the prepared (unsigned) transaction envelope."""
        request = gateway_pb2.EndorseRequest(
            transaction_id=proposal.tx_id,
            channel_id=self.target.channel,
            proposed_transaction=proposal.signed,
        )
        try:
            response = self._call(
                "endorse", lambda stub, peer: stub.Endorse(request, timeout=self.timeout)
            )
        except grpc.RpcError as err:
            self._raise_for("endorse", err)
        return response.prepared_transaction

    def sign_envelope(self, prepared: common_pb2.Envelope) -> common_pb2.Envelope:
        return common_pb2.Envelope(
            payload=prepared.payload, signature=self.identity.sign(prepared.payload)
        )

    def submit_envelope(
        self, tx_id: str, envelope: common_pb2.Envelope, function: str = ""
    ) -> TxResult:
        """Submit a signed envelope and wait for its commit status on the same gateway peer."""
        submit = gateway_pb2.SubmitRequest(
            transaction_id=tx_id, channel_id=self.target.channel, prepared_transaction=envelope
        )
        status_request = gateway_pb2.CommitStatusRequest(
            transaction_id=tx_id, channel_id=self.target.channel, identity=self._creator
        ).SerializeToString()
        signed_status = gateway_pb2.SignedCommitStatusRequest(
            request=status_request, signature=self.identity.sign(status_request)
        )

        gateway: list[str] = []  # the peer that answered

        def submit_and_wait(stub: gateway_pb2_grpc.GatewayStub, peer: GatewayPeer) -> Any:
            stub.Submit(submit, timeout=self.timeout)
            try:
                status = stub.CommitStatus(signed_status, timeout=self.timeout)
                gateway.append(peer.address)
                return status
            except grpc.RpcError as err:
                # submitted already: never resubmit elsewhere, a lost answer is not a lost transaction
                err._bcfl_final = True  # type: ignore[attr-defined]
                raise

        try:
            status = self._call("submit", submit_and_wait)
        except grpc.RpcError as err:
            self._raise_for("submit", err)
        if status.result == transaction_pb2.VALID and self.commit_wait == "all":
            self._wait_everywhere(signed_status, int(status.block_number), gateway[-1])
        if status.result != transaction_pb2.VALID:
            name = transaction_pb2.TxValidationCode.Name(status.result)
            raise TransactionInvalid(
                f"transaction {tx_id} ({function or 'unknown'}) was invalidated by the peers: {name}"
                + (
                    " (it was a replay of a committed transaction)"
                    if name == "DUPLICATE_TXID"
                    else ""
                ),
                code="MVCC_CONFLICT" if status.result in MVCC_CODES else name,
                detail={
                    "validation_code": status.result,
                    "block_number": status.block_number,
                    "tx_id": tx_id,
                },
            )
        result, event_name = _prepared_result(envelope)
        return TxResult(
            tx_id=tx_id,
            block_number=int(status.block_number),
            result=_json_result(result, function),
            event_name=event_name,
        )

    def _wait_everywhere(
        self, signed_status: gateway_pb2.SignedCommitStatusRequest, block: int, gateway: str
    ) -> None:
        """Wait until every reachable peer has committed the transaction's block (bounded).

        The gateway answered once its own peer committed; the next transaction, maybe submitted by
        another member through another organisation's peer, must not be endorsed against older
        state, as the embedded ledger never is. Unreachable peers are skipped (they catch up).
        A peer commits a block whole, so one answer per peer and block serves every transaction of
        that block submitted from this process (``_BLOCKS``): a transaction whose block a peer is
        known to have committed asks that peer nothing, and one whose block is being asked about
        waits for that answer.
        """
        scope = (self._tls_id, self.target.channel)
        waits = []
        for peer in self.target.peers:
            if peer.address == gateway:  # the gateway that answered: committed already
                _BLOCKS.committed(scope, peer.address, block)
                continue
            stub = self._stub(peer.address)
            waits.append(
                _BLOCKS.wait_for(
                    scope,
                    peer.address,
                    block,
                    lambda stub=stub: stub.CommitStatus.future(
                        signed_status, timeout=self.commit_wait_timeout
                    ),
                )
            )
        for wait in waits:
            if wait is not None:
                try:
                    wait.result()
                except grpc.RpcError:
                    pass  # down or behind: it is not in the way of the next endorsement for long

    def chaincode_events(
        self, start_block: int = 0, timeout: float | None = None
    ) -> Iterator[LedgerEvent]:
        """Live chaincode events from ``start_block`` on (the Gateway's ChaincodeEvents stream; never ends
        by itself unless ``timeout`` seconds pass)."""
        request = gateway_pb2.ChaincodeEventsRequest(
            channel_id=self.target.channel,
            chaincode_id=self.target.chaincode,
            identity=self._creator,
            start_position=ab_pb2.SeekPosition(specified=ab_pb2.SeekSpecified(number=start_block)),
        ).SerializeToString()
        signed = gateway_pb2.SignedChaincodeEventsRequest(
            request=request, signature=self.identity.sign(request)
        )
        stream = self._call(
            "chaincode events", lambda stub, peer: stub.ChaincodeEvents(signed, timeout=timeout)
        )
        try:
            for response in stream:
                for event in response.events:
                    yield LedgerEvent(
                        block_number=int(response.block_number),
                        tx_id=event.tx_id,
                        name=event.event_name,
                        payload=_json_payload(bytes(event.payload)),
                    )
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                self._raise_for("chaincode events", err)
        finally:
            stream.cancel()

    def events(self, start_block: int = 0) -> Iterator[LedgerEvent]:
        """Contract events of valid transactions committed so far in blocks >= ``start_block``."""
        for raw in self.raw_blocks(start_block):
            for tx in _transactions(raw):
                if tx["valid"] and tx.get("event"):
                    yield LedgerEvent(
                        block_number=raw.header.number,
                        tx_id=tx["proposal"]["tx_id"],
                        name=tx["event"]["name"],
                        payload=_json_payload(tx["event"]["payload"].encode()),
                    )

    def height(self) -> int:
        info = self._qscc("GetChainInfo", [self.target.channel.encode()])
        from fabric_protos.common import ledger_pb2

        return int(ledger_pb2.BlockchainInfo.FromString(info).height)

    def _qscc(self, function: str, args: list[bytes]) -> bytes:
        proposal = make_proposal(
            self.identity, self.target.channel, "qscc", [function.encode(), *args]
        )
        request = gateway_pb2.EvaluateRequest(
            transaction_id=proposal.tx_id,
            channel_id=self.target.channel,
            proposed_transaction=proposal.signed,
        )
        try:
            response = self._call(
                "query", lambda stub, peer: stub.Evaluate(request, timeout=self.timeout)
            )
        except grpc.RpcError as err:
            self._raise_for("query", err)
        return bytes(response.result.payload)

    def raw_blocks(self, start: int = 0, end: int | None = None) -> Iterator[common_pb2.Block]:
        """Blocks [start, end) from the gateway peer's Deliver service (end=None: up to the current height)."""
        stop = (end - 1) if end is not None else None
        if stop is None:
            stop = self.height() - 1
        if stop < start:
            return
        envelope = self._seek_envelope(start, stop)

        def deliver(stub: Any, peer: GatewayPeer) -> list[common_pb2.Block]:
            deliver_stub = events_pb2_grpc.DeliverStub(self._channel(peer.address))
            blocks = []
            for response in deliver_stub.Deliver(iter([envelope]), timeout=self.timeout * 4):
                kind = response.WhichOneof("Type")
                if kind == "block":
                    blocks.append(response.block)
                elif kind == "status":
                    if response.status != common_pb2.SUCCESS:
                        raise LedgerError(
                            f"the peer refused to deliver blocks {start}..{stop}: "
                            f"{common_pb2.Status.Name(response.status)}",
                            code="DELIVER_FAILED",
                        )
                    break
            return blocks

        try:
            blocks = self._call("deliver", deliver)
        except grpc.RpcError as err:
            self._raise_for("deliver", err)
        yield from blocks

    def _seek_envelope(self, start: int, stop: int) -> common_pb2.Envelope:
        seek = ab_pb2.SeekInfo(
            start=ab_pb2.SeekPosition(specified=ab_pb2.SeekSpecified(number=start)),
            stop=ab_pb2.SeekPosition(specified=ab_pb2.SeekSpecified(number=stop)),
            behavior=ab_pb2.SeekInfo.FAIL_IF_NOT_READY,
        )
        nonce = os.urandom(24)
        channel_header = common_pb2.ChannelHeader(
            type=common_pb2.DELIVER_SEEK_INFO,
            channel_id=self.target.channel,
            timestamp=_timestamp(),
            tx_id=hashlib.sha256(nonce + self._creator).hexdigest(),
        )
        header = common_pb2.Header(
            channel_header=channel_header.SerializeToString(),
            signature_header=common_pb2.SignatureHeader(
                creator=self._creator, nonce=nonce
            ).SerializeToString(),
        )
        payload = common_pb2.Payload(
            header=header, data=seek.SerializeToString()
        ).SerializeToString()
        return common_pb2.Envelope(payload=payload, signature=self.identity.sign(payload))

    def blocks(self, start: int = 0, end: int | None = None) -> Iterator[Block]:
        for raw in self.raw_blocks(start, end):
            signer = ""
            try:
                md = common_pb2.Metadata.FromString(raw.metadata.metadata[common_pb2.SIGNATURES])
                if md.signatures:
                    sh = common_pb2.SignatureHeader.FromString(md.signatures[0].signature_header)
                    signer = identities_pb2.SerializedIdentity.FromString(sh.creator).mspid
            except Exception:
                signer = ""
            txs = _transactions(raw)
            timestamp = max((t["proposal"]["timestamp"] for t in txs), default=0)
            yield Block(
                number=int(raw.header.number),
                hash=block_header_hash(raw.header).hex(),
                previous_hash=bytes(raw.header.previous_hash).hex(),
                timestamp=timestamp,
                signer_msp_id=signer,
                transactions=[t for t in txs if t["type"] != "config"],
            )

    def verify(self) -> VerifyReport:
        return verify_blocks(self.raw_blocks(0))

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()

    def __enter__(self) -> FabricLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_fabric_ledger(url: str, identity: Identity, **options: Any) -> FabricLedger:
    target = parse_fabric_url(url, identity.msp_id)
    timeout = float(options.pop("timeout", target.options.get("timeout", DEFAULT_TIMEOUT)))
    retries = int(options.pop("mvcc_retries", target.options.get("mvcc_retries", 5)))
    clock = options.pop("clock", time.time)
    commit_wait = str(options.pop("commit_wait", target.options.get("commit_wait", "all")))
    if commit_wait not in ("all", "gateway"):
        raise ConfigError(f"commit_wait={commit_wait!r}: expected 'all' or 'gateway'")
    if options:
        raise ConfigError(
            f"unknown Fabric ledger options {sorted(options)}; expected timeout, mvcc_retries, clock"
        )
    return FabricLedger(
        target,
        identity,
        timeout=timeout,
        mvcc_retries=retries,
        clock=clock,
        commit_wait=commit_wait,
    )


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _json_result(payload: bytes, function: str) -> Any:
    if not payload:
        return None
    try:
        return json.loads(payload)
    except ValueError as exc:
        raise LedgerError(
            f"{function}: the chaincode returned non-JSON bytes ({exc})", code="BAD_RESPONSE"
        ) from exc


def _json_payload(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload) if payload else {}
    except ValueError:
        return {"raw": payload.hex()}
    return value if isinstance(value, dict) else {"value": value}


def _prepared_result(envelope: common_pb2.Envelope) -> tuple[bytes, str | None]:
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
    return hashlib.sha256(_block_header_der(header)).digest()


def _block_header_der(header: common_pb2.BlockHeader) -> bytes:
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


def _transactions(block: common_pb2.Block) -> list[dict[str, Any]]:
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


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


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
                    bytes(md.value) + bytes(sig.signature_header) + _block_header_der(block.header)
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
