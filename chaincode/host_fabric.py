"""The Fabric host: runs the contract as a chaincode-as-a-service server over fabric-chaincode-python.

Run it as ``python -m chaincode.host_fabric`` with

* ``CHAINCODE_ID``: the package id the peer installed (``label:sha256``), also accepted as
  ``CORE_CHAINCODE_ID_NAME``;
* ``CHAINCODE_SERVER_ADDRESS``: where to listen, e.g. ``127.0.0.1:9999``;
* optionally ``CHAINCODE_TLS_CERT_FILE`` / ``CHAINCODE_TLS_KEY_FILE`` (server TLS) and
  ``CHAINCODE_TLS_CLIENT_CA_FILE`` (require the peer's client certificate). Without them the
  server speaks plaintext, which is fine on loopback only.

Calling convention: the chaincode input is ``[function, args]`` where ``args`` is one JSON object
(bytes). The response payload is the contract's canonical JSON. A ``ContractError`` becomes an
error response whose message is ``"<CODE>: <message>"`` (then, when the error carries
structured detail, ``DETAIL_MARKER`` and its canonical JSON) so a client can rebuild the error.

The shim's stub is asynchronous while the contract is written against the synchronous
``ChaincodeState``; the contract therefore runs in a worker thread and each state call is a
request to the peer scheduled on the shim's event loop. The handler is extended (not replaced) for
two things the shim does not do: check the peer's answer for ERROR messages, and send the
transaction's chaincode event with the COMPLETED message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from fabric_chaincode_python.fabric_shim.handler import Handler
from fabric_chaincode_python.fabric_shim.msg_queue_handler import QueueMessage
from fabric_protos.common import common_pb2 as _common_pb2
from fabric_protos.ledger.queryresult import kv_query_result_pb2 as _kv_query_result_pb2
from fabric_protos.msp import identities_pb2 as _identities_pb2
from fabric_protos.peer import chaincode_event_pb2 as _chaincode_event_pb2
from fabric_protos.peer import chaincode_pb2 as _chaincode_pb2
from fabric_protos.peer import chaincode_shim_pb2 as _chaincode_shim_pb2
from fabric_protos.peer import chaincode_shim_pb2_grpc as shim_grpc
from fabric_protos.peer import proposal_pb2 as _proposal_pb2
from fabric_protos.peer import proposal_response_pb2 as _proposal_response_pb2

from chaincode.contract import invoke as contract_invoke
from chaincode.state import (
    Creator,
    HistoryEntry,
    HostState,
)

# The generated protobuf modules have no type stubs (their message classes are built from
# descriptors at import time), so they are typed as what they are to mypy: untyped.
common_pb2: Any = _common_pb2
kv_query_result_pb2: Any = _kv_query_result_pb2
identities_pb2: Any = _identities_pb2
chaincode_event_pb2: Any = _chaincode_event_pb2
chaincode_pb2: Any = _chaincode_pb2
proposal_pb2: Any = _proposal_pb2
proposal_response_pb2: Any = _proposal_response_pb2
shim: Any = _chaincode_shim_pb2
# In annotations: a protobuf message (ChaincodeMessage, SignedProposal, Response, ChaincodeEvent).
Message = Any

log = logging.getLogger("bcfl.chaincode.fabric")

# Fabric's shims replace an empty range start with this, so simple range queries skip composite keys.
# How long one state call may wait for the peer; the peer's own execute timeout is 30 s.
_STATE_CALL_TIMEOUT = 30.0
_MAX_MESSAGE = 100 * 1024 * 1024
OK, ERROR = 200, 500

ContractInvoke = Callable[[Any, str, bytes], bytes]
# An error's structured detail travels after this marker, as canonical JSON, at the message's end.
DETAIL_MARKER = "\n\x1edetail="


class PeerStateError(RuntimeError):
    """The peer refused a state request (bad key, query limit, timeout...)."""


class ShimState(HostState):
    """``ChaincodeState`` for one transaction, over the shim's stream to the peer (worker-thread side)."""

    def __init__(
        self,
        handler: BcflHandler,
        loop: asyncio.AbstractEventLoop,
        msg: Message,
        creator: Creator,
        timestamp: int,
    ):
        super().__init__(creator, msg.txid, timestamp)
        self._handler = handler
        self._loop = loop
        self._channel_id = msg.channel_id

    def _ask(self, msg_type: int, payload: Any) -> Message:
        coro = self._handler.ask(
            msg_type, payload.SerializeToString(), self._channel_id, self._tx_id
        )
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_STATE_CALL_TIMEOUT)

    # -- reads --
    def get_state(self, key: str) -> bytes | None:
        self.check_key(key)
        response = self._ask(shim.ChaincodeMessage.GET_STATE, shim.GetState(key=key, collection=""))
        return bytes(response.payload) if response.payload else None

    def _range(self, start: str, end: str) -> Iterator[tuple[str, bytes]]:
        first = self._ask(
            shim.ChaincodeMessage.GET_STATE_BY_RANGE,
            shim.GetStateByRange(startKey=start, endKey=end, collection=""),
        )
        rows = [(kv.key, bytes(kv.value)) for kv in self._pages(first, kv_query_result_pb2.KV)]
        return iter(rows)

    def get_history_for_key(self, key: str) -> Iterator[HistoryEntry]:
        self.check_key(key)
        first = self._ask(shim.ChaincodeMessage.GET_HISTORY_FOR_KEY, shim.GetHistoryForKey(key=key))
        entries = [
            HistoryEntry(
                tx_id=m.tx_id,
                timestamp=int(m.timestamp.seconds),
                value=None if m.is_delete else bytes(m.value),
                is_delete=bool(m.is_delete),
            )
            for m in self._pages(first, kv_query_result_pb2.KeyModification)
        ]
        return iter(entries)

    def _pages(self, first: Message, record_type: Any) -> list[Any]:
        """Every record of a paged query (the peer sends them in batches)."""
        records = []
        response = shim.QueryResponse.FromString(first.payload)
        while True:
            records += [record_type.FromString(r.resultBytes) for r in response.results]
            if not response.has_more:
                return records
            nxt = self._ask(
                shim.ChaincodeMessage.QUERY_STATE_NEXT, shim.QueryStateNext(id=response.id)
            )
            response = shim.QueryResponse.FromString(nxt.payload)

    # -- writes --
    def put_state(self, key: str, value: bytes) -> None:
        self.check_key(key)
        self.check_value(key, value)
        self._ask(
            shim.ChaincodeMessage.PUT_STATE,
            shim.PutState(key=key, value=bytes(value), collection=""),
        )

    def del_state(self, key: str) -> None:
        self.check_key(key)
        self._ask(shim.ChaincodeMessage.DEL_STATE, shim.DelState(key=key, collection=""))


def proposal_context(signed_proposal: Message) -> tuple[Creator, int]:
    """The creator (MSP id, PEM certificate) and the timestamp (seconds) of a signed proposal."""
    proposal = proposal_pb2.Proposal.FromString(signed_proposal.proposal_bytes)
    header = common_pb2.Header.FromString(proposal.header)
    signature_header = common_pb2.SignatureHeader.FromString(header.signature_header)
    identity = identities_pb2.SerializedIdentity.FromString(signature_header.creator)
    channel_header = common_pb2.ChannelHeader.FromString(header.channel_header)
    return Creator(msp_id=identity.mspid, cert_pem=bytes(identity.id_bytes)), int(
        channel_header.timestamp.seconds
    )


def error_message(exc: BaseException) -> str:
    """``"<CODE>: <message>"`` for a ContractError, ``"INTERNAL: ..."`` for anything else."""
    from bcfl_common.errors import ContractError

    if isinstance(exc, ContractError):
        if exc.detail:
            from bcfl_common.canonical import canonical_json

            return f"{exc.code}: {exc.message}{DETAIL_MARKER}{canonical_json(exc.detail).decode()}"
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, PeerStateError):
        return f"LEDGER: {exc}"
    return f"INTERNAL: {type(exc).__name__}: {exc}"


class BcflHandler(Handler):
    """The shim's handler, running the bcfl contract for every TRANSACTION (and INIT) message."""

    def __init__(self, cc_id: str, invoke: ContractInvoke, executor: concurrent.futures.Executor):
        super().__init__(cc_id, None)  # type: ignore[arg-type]  # we dispatch ourselves
        self._invoke = invoke
        self._executor = executor

    async def ask(self, msg_type: int, payload: bytes, channel_id: str, tx_id: str) -> Message:
        """Send one request to the peer for ``tx_id`` and wait for its RESPONSE (or raise on ERROR)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        msg = shim.ChaincodeMessage(
            type=msg_type, payload=payload, txid=tx_id, channel_id=channel_id
        )
        await self.msg_queue_handler.queue_msg(
            QueueMessage(msg, shim.ChaincodeMessage.Type.Name(msg_type), future)
        )
        response: Message = await future
        if response.type == shim.ChaincodeMessage.ERROR:
            raise PeerStateError(bytes(response.payload).decode("utf-8", "replace"))
        if response.type != shim.ChaincodeMessage.RESPONSE:
            raise PeerStateError(
                f"unexpected {shim.ChaincodeMessage.Type.Name(response.type)} from the peer"
            )
        return response

    async def handle_stub_interaction(self, msg: Message, action: str = "Invoke") -> None:
        event = None
        if action.lower() == "init":
            response = proposal_response_pb2.Response(status=OK)
        else:
            response, event = await self._run_transaction(msg)
        completed = shim.ChaincodeMessage(
            type=shim.ChaincodeMessage.COMPLETED,
            payload=response.SerializeToString(),
            txid=msg.txid,
            channel_id=msg.channel_id,
        )
        if event is not None and response.status < 400:
            completed.chaincode_event.CopyFrom(event)
        await self.context.write(completed)

    async def _run_transaction(self, msg: Message) -> tuple[Message, Message | None]:
        loop = asyncio.get_running_loop()
        try:
            cc_input = chaincode_pb2.ChaincodeInput.FromString(msg.payload)
            args = list(cc_input.args)
            if len(args) != 2:
                raise _bad_call(f"expected [function, args-json], got {len(args)} argument(s)")
            function = bytes(args[0]).decode("utf-8")
            creator, timestamp = proposal_context(msg.proposal)
            state = ShimState(self, loop, msg, creator, timestamp)
            result = await loop.run_in_executor(
                self._executor, self._invoke, state, function, bytes(args[1])
            )
        except Exception as exc:  # every failure becomes an error response, never a dead stream
            if not _is_contract_error(exc):
                log.exception("transaction %s failed", msg.txid)
            return proposal_response_pb2.Response(status=ERROR, message=error_message(exc)), None
        event = None
        if state.event is not None:
            event = chaincode_event_pb2.ChaincodeEvent(
                tx_id=msg.txid, event_name=state.event[0], payload=state.event[1]
            )
        return proposal_response_pb2.Response(status=OK, payload=bytes(result)), event


def _bad_call(message: str) -> Exception:
    from bcfl_common.errors import ContractError

    return ContractError(message, code="BAD_REQUEST")


def _is_contract_error(exc: BaseException) -> bool:
    from bcfl_common.errors import ContractError

    return isinstance(exc, ContractError)


class SerialWriter:
    """The stream context with one write at a time: the shim writes from concurrent tasks, and a
    gRPC aio stream refuses a second write while one is in flight (TOO_MANY_OPERATIONS)."""

    def __init__(self, context: grpc.aio.ServicerContext):
        self._context = context
        self._lock = asyncio.Lock()

    async def write(self, message: Message) -> None:
        async with self._lock:
            await self._context.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class ChaincodeServer(shim_grpc.ChaincodeServicer):
    """The gRPC service the peer dials (chaincode as a service); one stream per peer."""

    def __init__(self, cc_id: str, invoke: ContractInvoke, workers: int = 16):
        self._cc_id = cc_id
        self._invoke = invoke
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="contract"
        )

    async def Connect(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        handler = BcflHandler(self._cc_id, self._invoke, self._executor)
        try:
            await handler.chat_with_peer(request_iterator, SerialWriter(context))
        except asyncio.CancelledError:
            log.info("peer stream closed")


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as handle:
        return handle.read()


async def serve(cc_id: str, address: str, invoke: ContractInvoke) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            # the peer keeps its stream alive with pings; never answer them with GOAWAY too_many_pings
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
            ("grpc.http2.max_ping_strikes", 0),
        ]
    )
    shim_grpc.add_ChaincodeServicer_to_server(ChaincodeServer(cc_id, invoke), server)
    cert, key = (
        _read(os.environ.get("CHAINCODE_TLS_CERT_FILE")),
        _read(os.environ.get("CHAINCODE_TLS_KEY_FILE")),
    )
    if cert and key:
        client_ca = _read(os.environ.get("CHAINCODE_TLS_CLIENT_CA_FILE"))
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
        server.add_secure_port(address, credentials)
    else:
        server.add_insecure_port(address)
    await server.start()
    log.warning(
        "bcfl chaincode %s listening on %s (%s)",
        cc_id,
        address,
        "TLS" if cert and key else "plaintext",
    )
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(2)


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("BCFL_CHAINCODE_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # the shim logs every message (with its payload) at INFO/WARNING on the asyncio logger
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    logging.getLogger("grpc").setLevel(logging.WARNING)
    cc_id = os.environ.get("CHAINCODE_ID") or os.environ.get("CORE_CHAINCODE_ID_NAME")
    address = os.environ.get("CHAINCODE_SERVER_ADDRESS")
    if not cc_id or not address:
        sys.exit(
            "chaincode.host_fabric: set CHAINCODE_ID (the installed package id) and "
            "CHAINCODE_SERVER_ADDRESS (host:port to listen on)"
        )
    try:
        _run(serve(cc_id, address, contract_invoke))
    except KeyboardInterrupt:
        pass


def _run(main_coroutine: Any) -> None:
    """``asyncio.run``, on uvloop when it is installed (``BCFL_CHAINCODE_UVLOOP=0``: never).

    Every state call of the contract is a hop between a worker thread and the event loop; on this
    host uvloop took about a sixth off the service's CPU time per transaction.
    """
    if os.environ.get("BCFL_CHAINCODE_UVLOOP", "1") != "0":
        try:
            import uvloop  # type: ignore[import-not-found]
        except ImportError:
            pass
        else:
            uvloop.run(main_coroutine)
            return
    asyncio.run(main_coroutine)


if __name__ == "__main__":
    main()
