"""The Gateway flow over gRPC: connect, evaluate, endorse and submit, commit status, failover, MVCC retries."""

from __future__ import annotations

import functools
import hashlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2, gateway_pb2_grpc
from fabric_protos.msp import identities_pb2
from fabric_protos.orderer import ab_pb2
from fabric_protos.peer import (
    events_pb2_grpc,
    transaction_pb2,
)

from bcfl_common.canonical import canonical_json
from bcfl_common.errors import ConfigError, ContractError, LedgerError
from consortium.identity import Identity
from consortium.ledger.base import MAX_PROPOSAL_BYTES, Block, LedgerEvent, TxResult, VerifyReport
from consortium.ledger.fabric.blocks import (
    block_header_hash,
    block_transactions,
    json_payload,
    json_result,
    prepared_result,
)
from consortium.ledger.fabric.config import (
    DEFAULT_TIMEOUT,
    FabricTarget,
    GatewayPeer,
    parse_fabric_url,
)
from consortium.ledger.fabric.errors import TransactionInvalid, raise_for
from consortium.ledger.fabric.proposals import (
    SignedProposal,
    make_proposal,
    proto_timestamp,
    serialized_identity,
)
from consortium.ledger.fabric.verify import verify_blocks

MVCC_CODES = {transaction_pb2.MVCC_READ_CONFLICT, transaction_pb2.PHANTOM_READ_CONFLICT}
_MAX_MESSAGE = 100 * 1024 * 1024


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
                options: list[tuple[str, int | str]] = [
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

    def _raise_for(self, what: str, err: grpc.RpcError) -> NoReturn:
        raise_for(what, err, self.identity.msp_id)

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
        return json_result(bytes(response.result.payload), function)

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
        result, event_name = prepared_result(envelope)
        return TxResult(
            tx_id=tx_id,
            block_number=int(status.block_number),
            result=json_result(result, function),
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
                    functools.partial(
                        stub.CommitStatus.future, signed_status, timeout=self.commit_wait_timeout
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
                        payload=json_payload(bytes(event.payload)),
                    )
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                self._raise_for("chaincode events", err)
        finally:
            stream.cancel()

    def events(self, start_block: int = 0) -> Iterator[LedgerEvent]:
        """Contract events of valid transactions committed so far in blocks >= ``start_block``:
        this ledger's chaincode's only (a channel may hold others, whose events are theirs)."""
        for raw in self.raw_blocks(start_block):
            for tx in block_transactions(raw):
                event = tx.get("event")
                if tx["valid"] and event and event["chaincode"] == self.target.chaincode:
                    yield LedgerEvent(
                        block_number=raw.header.number,
                        tx_id=tx["proposal"]["tx_id"],
                        name=tx["event"]["name"],
                        payload=json_payload(tx["event"]["payload"].encode()),
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
            timestamp=proto_timestamp(),
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
            txs = block_transactions(raw)
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
