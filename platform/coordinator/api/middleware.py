"""Size limit, signature and replay checks for every ``/api/`` request (pure ASGI, before routing)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from bcfl_common.errors import BcflError
from consortium.http_auth import AUTH_HEADERS, Principal, authenticate
from coordinator.api.errors import error_status, send_error
from coordinator.service import CoordinatorService

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class SignedRequestMiddleware:
    """Refuses oversized bodies, then authenticates ``/api/`` requests (signature, clock skew,
    nonce, a role honoured from the caller's kind of organisation) and leaves the caller in
    ``request.state.principal``; records every ``/api/`` request in the API audit log."""

    def __init__(self, app: Callable[..., Awaitable[None]], service: CoordinatorService):
        self.app = app
        self.service = service
        self.limit = service.config.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.time()
        path: str = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        state: dict[str, Any] = scope.setdefault("state", {})
        outcome: dict[str, Any] = {"status": 500, "code": None}

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
            await send(message)

        async def refuse(
            status: int, code: str, message: str, detail: dict[str, Any] | None = None
        ) -> None:
            outcome["code"] = code
            await send_error(send_recording, status, code, message, detail)

        try:
            if not await self._within_limit(headers, refuse):
                return
            if not path.startswith("/api/"):
                await self.app(scope, receive, send_recording)
                return
            body = await self._read_body(receive, refuse)
            if body is None:
                return
            try:
                principal = await anyio.to_thread.run_sync(self._authenticate, headers, scope, body)
            except BcflError as exc:
                await refuse(error_status(exc), exc.code, exc.message, exc.detail)
                return
            state["principal"] = principal
            if not principal.role_honoured:
                await refuse(
                    403,
                    "FORBIDDEN_ROLE",
                    f"role {principal.role!r} is not honoured from {principal.msp_id}, a "
                    f"{principal.organisation_kind} organisation",
                    {"role": principal.role},
                )
                return
            await self.app(scope, _replaying(body, receive), send_recording)
        finally:
            if path.startswith("/api/"):
                await self._record(scope, headers, outcome, started)

    async def _within_limit(self, headers: dict[str, str], refuse: Any) -> bool:
        declared = headers.get("content-length")
        if declared is None:
            return True
        if not declared.isdigit():
            await refuse(
                400, "BAD_REQUEST", f"Content-Length: got {declared[:40]!r}, expected a byte count"
            )
            return False
        if int(declared) > self.limit:
            await refuse(
                413,
                "PAYLOAD_TOO_LARGE",
                f"request body: {declared} bytes, expected at most {self.limit} bytes",
                {"size": int(declared), "max_body_bytes": self.limit},
            )
            return False
        return True

    async def _read_body(self, receive: Receive, refuse: Any) -> bytes | None:
        """The whole body, counted while reading; None if refused or the client went away."""
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await refuse(
                    413,
                    "PAYLOAD_TOO_LARGE",
                    f"request body: more than {self.limit} bytes, expected at most {self.limit} bytes",
                    {"max_body_bytes": self.limit},
                )
                return None
        return bytes(body)

    def _authenticate(self, headers: dict[str, str], scope: Scope, body: bytes) -> Principal:
        target = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        principal = authenticate(
            headers,
            scope["method"],
            target,
            body,
            self.service.consortium,
            max_skew=self.service.config.max_clock_skew,
        )
        self.service.remember_nonce(principal)
        return principal

    async def _record(
        self, scope: Scope, headers: dict[str, str], outcome: dict[str, Any], started: float
    ) -> None:
        state = scope.get("state", {})
        principal: Principal | None = state.get("principal")
        fields = {
            "msp_id": principal.msp_id
            if principal
            else headers.get(AUTH_HEADERS[0].lower(), "")[:64] or None,
            "name": principal.name if principal else None,
            "role": principal.role if principal else None,
            "method": scope["method"][:16],
            "path": scope["path"][:2048],
            "status": int(outcome["status"]),
            "code": outcome["code"] or state.get("error_code"),
        }
        await anyio.to_thread.run_sync(lambda: self.service.audit(**fields))
        log.info(
            "%s %s %s -> %s (%.0f ms)",
            fields["msp_id"],
            scope["method"],
            scope["path"],
            fields["status"],
            1000 * (time.time() - started),
        )


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive channel giving the already-read ``body`` once, then the client's messages."""
    replayed = False

    async def replay_body() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay_body
