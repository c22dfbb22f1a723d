"""The coordinator's HTTP API (FastAPI): admin, silo and read-only auditor endpoints, all signed by consortium identities.

Every ``/api/`` request is checked in this order, each failure answering JSON ``{code, message, detail}``:

1. body size: more than ``max_body_bytes`` (default 1 MiB) -> 413 ``PAYLOAD_TOO_LARGE``, before
   anything is parsed (declared Content-Length or counted while reading);
2. signature (``consortium.http_auth``): missing or bad headers, an untrusted certificate, a bad
   signature -> 401; a timestamp off by more than ``max_clock_skew`` -> 401 ``STALE_REQUEST``;
   a nonce seen before -> 401 ``REPLAYED`` (nonces are kept in the database, so a restart does
   not reopen replays);
3. role, from the certificate's bcfl OU and honoured only from an organisation of the matching
   kind: ``/api/v1/admin/*`` needs ``admin``, ``/api/v1/silo/*`` needs ``silo``, everything else
   any member -> 403 ``FORBIDDEN_ROLE``; a silo acting or reading for another organisation -> 403
   ``WRONG_ORGANISATION``;
4. body and parameters (pydantic, unknown fields refused) -> 422 ``INVALID_REQUEST`` naming the field;
5. the contract's verdict: its error codes map to 403/404/409/422; ledger or store failures -> 502/503.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bcfl_common.errors import BcflError, ConfigError, ContractError
from consortium.http_auth import AUTH_HEADERS, Principal, authenticate
from coordinator.schemas import (
    IDENTIFIER,
    EnrolBody,
    EnrolmentRequestBody,
    ErrorBody,
    OptionalReasonBody,
    ReasonBody,
    RollbackBody,
    TrialSpec,
)
from coordinator.service import ENROLMENT_STATUSES, MAX_EVENTS_PAGE, CoordinatorService
from coordinator.settlement_step import SettlementSwitchBody

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Contract codes and the HTTP status they become (anything else a ContractError carries -> 409).
CONTRACT_STATUS: dict[str, int] = {
    "FORBIDDEN_ROLE": 403,
    "WRONG_ORGANISATION": 403,
    "NOT_MEMBER": 403,
    "INVALID_IDENTITY": 403,
    "NOT_FOUND": 404,
    "NO_SUCH_ROUND": 404,
    "INVALID_ARGUMENT": 422,
    "MALFORMED_ARGS": 422,
    "ARGS_TOO_LARGE": 413,
    "SELF_VOTE": 422,
    "UNKNOWN_FUNCTION": 422,
    "NOT_INITIALISED": 503,
}


def error_status(exc: BcflError) -> int:
    if isinstance(exc, ContractError):
        return CONTRACT_STATUS.get(exc.code, 409)
    if isinstance(exc, ConfigError):
        return 503  # the service itself is misconfigured, not the request
    return exc.http_status


def _json_error(
    status: int, code: str, message: str, detail: dict[str, Any] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message, "detail": detail or {}}, status_code=status
    )


async def _send_error(
    send: Send, status: int, code: str, message: str, detail: dict[str, Any] | None = None
) -> None:
    body = json.dumps({"code": code, "message": message, "detail": detail or {}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


TrialId = Annotated[str, Path(pattern=IDENTIFIER, description="Trial id")]
MspId = Annotated[str, Path(pattern=IDENTIFIER, description="MSP id of a hospital")]
RoundNo = Annotated[int, Path(ge=1, le=1000, description="Round number")]
Attempt = Annotated[int | None, Query(ge=1, le=10**6, description="Attempt (default: the latest)")]


def _principal(request: Request) -> Principal:
    """The caller, authenticated by SignedRequestMiddleware."""
    return request.state.principal


Who = Annotated[Principal, Depends(_principal)]


def required_role(path: str) -> str | None:
    if path.startswith(f"{API_PREFIX}/admin/") or path == f"{API_PREFIX}/admin":
        return "admin"
    if path.startswith(f"{API_PREFIX}/silo/") or path == f"{API_PREFIX}/silo":
        return "silo"
    return None


class SignedRequestMiddleware:
    """Size limit, signature, replay and role checks for every /api/ request (pure ASGI, before routing)."""

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
        method: str = scope["method"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status_box: dict[str, Any] = {"status": 500, "code": None}

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
            await send(message)

        async def refuse(
            status: int, code: str, message: str, detail: dict[str, Any] | None = None
        ) -> None:
            status_box["code"] = code
            await _send_error(send_recording, status, code, message, detail)

        principal: Principal | None = None
        try:
            declared = headers.get("content-length")
            if declared is not None:
                if not declared.isdigit():
                    await refuse(
                        400,
                        "BAD_REQUEST",
                        f"Content-Length: got {declared[:40]!r}, expected a byte count",
                    )
                    return
                if int(declared) > self.limit:
                    await refuse(
                        413,
                        "PAYLOAD_TOO_LARGE",
                        f"request body: {declared} bytes, expected at most {self.limit} bytes",
                        {"size": int(declared), "max_body_bytes": self.limit},
                    )
                    return
            if not path.startswith("/api/"):
                await self.app(scope, receive, send_recording)
                return
            body = bytearray()
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.limit:
                    await refuse(
                        413,
                        "PAYLOAD_TOO_LARGE",
                        f"request body: more than {self.limit} bytes, expected at most {self.limit} bytes",
                        {"max_body_bytes": self.limit},
                    )
                    return
            raw_path = scope.get("raw_path") or path.encode()
            target = raw_path.decode("latin-1")
            if scope.get("query_string"):
                target += "?" + scope["query_string"].decode("latin-1")
            try:
                principal = await anyio.to_thread.run_sync(
                    self._authenticate, headers, method, target, bytes(body)
                )
            except BcflError as exc:
                await refuse(error_status(exc), exc.code, exc.message, exc.detail)
                return
            role = required_role(path)
            if not principal.role_honoured:
                await refuse(
                    403,
                    "FORBIDDEN_ROLE",
                    f"role {principal.role!r} is not honoured from {principal.msp_id}, a "
                    f"{principal.organisation_kind} organisation",
                    {"role": principal.role},
                )
                return
            if role is not None and principal.role != role:
                await refuse(
                    403,
                    "FORBIDDEN_ROLE",
                    f"{method} {path} is for role {role!r}, not {principal.role!r} "
                    f"({principal.name}@{principal.msp_id})",
                    {"role": principal.role, "required": role},
                )
                return
            scope.setdefault("state", {})["principal"] = principal
            replayed = False

            async def replay_body() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            await self.app(scope, replay_body, send_recording)
        finally:
            if path.startswith("/api/"):
                fields = {
                    "msp_id": principal.msp_id
                    if principal
                    else headers.get(AUTH_HEADERS[0].lower(), "")[:64] or None,
                    "name": principal.name if principal else None,
                    "role": principal.role if principal else None,
                    "method": method[:16],
                    "path": path[:2048],
                    "status": int(status_box["status"]),
                    "code": status_box["code"],
                }
                await anyio.to_thread.run_sync(lambda: self.service.audit(**fields))
                log.info(
                    "%s %s %s -> %s (%.0f ms)",
                    fields["msp_id"],
                    method,
                    path,
                    fields["status"],
                    1000 * (time.time() - started),
                )

    def _authenticate(
        self, headers: dict[str, str], method: str, target: str, body: bytes
    ) -> Principal:
        principal = authenticate(
            headers,
            method,
            target,
            body,
            self.service.consortium,
            max_skew=self.service.config.max_clock_skew,
        )
        self.service.remember_nonce(principal)
        return principal


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    if loc and loc[0] in ("query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validation_error_body(exc: RequestValidationError) -> dict[str, Any]:
    errors = []
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        field = _field_name(loc)
        kind = error.get("type", "")
        if kind == "json_invalid":
            text = f"body: not valid JSON ({error.get('ctx', {}).get('error', error.get('msg'))}); expected a JSON object"
        elif kind == "extra_forbidden":
            text = f"{field}: unknown field (got {_show(error.get('input'))}); expected only the documented fields"
        elif kind == "missing":
            text = f"{field}: missing; expected a value"
        else:
            text = f"{field}: got {_show(error.get('input'))}, expected {error.get('msg', '').removeprefix('Input should be ')}"
        errors.append({"field": field, "type": kind, "message": text})
    first = errors[0]["message"] if errors else "invalid request"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return {
        "code": "INVALID_REQUEST",
        "message": first + more,
        "detail": {"field": errors[0]["field"] if errors else None, "errors": errors},
    }


def _require_admin_or_auditor(who: Any, what: str) -> None:
    if who.role not in ("admin", "auditor"):
        raise ContractError(
            f"{what} is for admins and auditors, not {who.role!r}",
            code="FORBIDDEN_ROLE",
            detail={"role": who.role, "allowed": ["admin", "auditor"]},
        )


def create_app(service: CoordinatorService, *, manage_service: bool = True) -> FastAPI:
    """The API over ``service``. With ``manage_service`` the app starts the scheduler on startup
    and closes the service on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        if manage_service:
            service.start_background()
        try:
            yield
        finally:
            if manage_service:
                await anyio.to_thread.run_sync(service.close)

    errors = {code: {"model": ErrorBody} for code in (401, 403, 404, 409, 413, 422, 502, 503)}
    app = FastAPI(
        title="bcfl coordinator",
        version="1",
        summary="Trials, enrolment and rounds of a hospital consortium; every request signed by a consortium identity.",
        description=__doc__,
        lifespan=lifespan,
        responses=errors,  # type: ignore[arg-type]
    )
    app.add_middleware(SignedRequestMiddleware, service=service)  # type: ignore[arg-type]
    app.state.service = service

    @app.exception_handler(BcflError)
    async def bcfl_error(request: Request, exc: BcflError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=error_status(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error_body(exc), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            message = f"{request.url.path}: no such endpoint; expected one listed in /openapi.json"
        return _json_error(exc.status_code, codes.get(exc.status_code, "HTTP_ERROR"), message)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return _json_error(500, "INTERNAL", "internal error in the coordinator; see its log")

    def own_organisation(who: Principal, msp_id: str | None, what: str) -> None:
        if msp_id is not None and msp_id != who.msp_id:
            raise ContractError(
                f"msp_id: got {msp_id!r}, expected the caller's own organisation {who.msp_id!r} "
                f"(a hospital may {what} only for itself)",
                code="WRONG_ORGANISATION",
                detail={"field": "msp_id", "value": msp_id, "expected": who.msp_id},
            )

    # -- open -------------------------------------------------------------------------------
    @app.get("/healthz", tags=["service"], summary="Liveness (no authentication)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # -- any member -------------------------------------------------------------------------
    @app.get(f"{API_PREFIX}/whoami", tags=["read"], summary="The authenticated caller")
    def whoami(who: Who) -> dict[str, Any]:
        return who.to_dict()

    @app.get(f"{API_PREFIX}/trials", tags=["read"], summary="Trials on the ledger")
    def list_trials(
        state: str | None = Query(
            default=None, pattern="^(DRAFT|ENROLLING|RUNNING|COMPLETED|HALTED)$"
        ),
    ) -> list[dict[str, Any]]:
        return service.query("list_trials", {} if state is None else {"state": state})

    @app.get(f"{API_PREFIX}/trials/{{trial_id}}", tags=["read"], summary="One trial record")
    def get_trial(trial_id: TrialId) -> dict[str, Any]:
        return service.trial(trial_id)

    @app.get(
        f"{API_PREFIX}/trials/{{trial_id}}/enrolments",
        tags=["read"],
        summary="Enrolments on the ledger",
    )
    def get_enrolments(trial_id: TrialId) -> list[dict[str, Any]]:
        return service.query("get_enrolments", {"trial_id": trial_id})

    @app.get(
        f"{API_PREFIX}/trials/{{trial_id}}/keys",
        tags=["read"],
        summary="The trial's public HE context and key envelopes (refs)",
    )
    def get_trial_keys(trial_id: TrialId) -> dict[str, Any]:
        return service.query("get_trial_keys", {"trial_id": trial_id})

    @app.get(
        f"{API_PREFIX}/trials/{{trial_id}}/rounds",
        tags=["read"],
        summary="Every attempt of every round",
    )
    def list_rounds(trial_id: TrialId) -> list[dict[str, Any]]:
        return service.query("list_rounds", {"trial_id": trial_id})

    def _round_args(trial_id: str, round_number: int, attempt: int | None) -> dict[str, Any]:
        args: dict[str, Any] = {"trial_id": trial_id, "round": round_number}
        if attempt is not None:
            args["attempt"] = attempt
        return args

    @app.get(
        f"{API_PREFIX}/trials/{{trial_id}}/rounds/{{round_number}}",
        tags=["read"],
        summary="One round",
    )
    def get_round(
        trial_id: TrialId, round_number: RoundNo, attempt: Attempt = None
    ) -> dict[str, Any]:
        return service.query("get_round", _round_args(trial_id, round_number, attempt))

    @app.get(
        f"{API_PREFIX}/trials/{{trial_id}}/rounds/{{round_number}}/submissions",
        tags=["read"],
        summary="Update commitments and reveals of a round",
    )
    def get_submissions(
        trial_id: TrialId, round_number: RoundNo, attempt: Attempt = None
    ) -> list[dict[str, Any]]:
        return service.query("get_submissions", _round_args(trial_id, round_number, attempt))

    @app.get(
        f"{API_PREFIX}/trials/{{trial_id}}/rounds/{{round_number}}/votes",
        tags=["read"],
        summary="Vote commitments and reveals",
    )
    def get_votes(
        trial_id: TrialId, round_number: RoundNo, attempt: Attempt = None
    ) -> list[dict[str, Any]]:
        return service.query("get_votes", _round_args(trial_id, round_number, attempt))

    @app.get(
        f"{API_PREFIX}/trials/{{trial_id}}/rounds/{{round_number}}/acceptance",
        tags=["read"],
        summary="Acceptance, weights, contributions and rewards computed by the contract",
    )
    def get_acceptance(
        trial_id: TrialId, round_number: RoundNo, attempt: Attempt = None
    ) -> dict[str, Any]:
        return service.query("get_acceptance", _round_args(trial_id, round_number, attempt))

    @app.get(
        f"{API_PREFIX}/trials/{{trial_id}}/rounds/{{round_number}}/attestations",
        tags=["read"],
        summary="Model attestations",
    )
    def get_attestations(
        trial_id: TrialId, round_number: RoundNo, attempt: Attempt = None
    ) -> list[dict[str, Any]]:
        return service.query("get_attestations", _round_args(trial_id, round_number, attempt))

    @app.get(
        f"{API_PREFIX}/trials/{{trial_id}}/privacy",
        tags=["read"],
        summary="Privacy ledger: epsilon spent per hospital",
    )
    def get_privacy(
        trial_id: TrialId, msp_id: str | None = Query(default=None, pattern=IDENTIFIER)
    ) -> list[dict[str, Any]]:
        return service.query(
            "get_privacy_ledger", {"trial_id": trial_id} | ({"msp_id": msp_id} if msp_id else {})
        )

    @app.get(
        f"{API_PREFIX}/trials/{{trial_id}}/rewards",
        tags=["read"],
        summary="Reward accounts and per-round rewards",
    )
    def get_rewards(
        trial_id: TrialId, msp_id: str | None = Query(default=None, pattern=IDENTIFIER)
    ) -> dict[str, Any]:
        return service.query(
            "get_rewards", {"trial_id": trial_id} | ({"msp_id": msp_id} if msp_id else {})
        )

    @app.get(
        f"{API_PREFIX}/trials/{{trial_id}}/lineage",
        tags=["read"],
        summary="Model lineage and rollbacks",
    )
    def get_lineage(trial_id: TrialId) -> dict[str, Any]:
        return service.query("get_model_lineage", {"trial_id": trial_id})

    @app.get(
        f"{API_PREFIX}/trials/{{trial_id}}/history",
        tags=["read"],
        summary="Every value a trial record ever had",
    )
    def get_history(
        trial_id: TrialId,
        record: str = Query(default="trial", pattern=r"^[a-z_]{1,32}$"),
        round_number: int | None = Query(default=None, alias="round", ge=1, le=1000),
        attempt: Attempt = None,
        msp_id: str | None = Query(default=None, pattern=IDENTIFIER),
    ) -> list[dict[str, Any]]:
        args: dict[str, Any] = {"trial_id": trial_id, "record": record}
        for key, value in (("round", round_number), ("attempt", attempt), ("msp_id", msp_id)):
            if value is not None:
                args[key] = value
        return service.query("get_history", args)

    @app.get(
        f"{API_PREFIX}/trials/{{trial_id}}/events",
        tags=["read"],
        summary="Progress feed: the trial's ledger events",
    )
    def get_events(
        trial_id: TrialId,
        since_block: int = Query(default=0, ge=0),
        limit: int = Query(default=200, ge=1, le=MAX_EVENTS_PAGE),
    ) -> dict[str, Any]:
        return service.events(trial_id, since_block, limit)

    @app.get(f"{API_PREFIX}/ledger", tags=["read"], summary="Ledger height")
    def ledger_info() -> dict[str, Any]:
        return {
            "url_scheme": service.config.ledger_url.split(":", 1)[0],
            "height": service.reader.height(),
        }

    @app.get(
        f"{API_PREFIX}/ledger/verify",
        tags=["read"],
        summary="Re-verify every block, signature and index of the ledger (admins and auditors: it reads the whole chain)",
    )
    def verify_ledger(who: Who) -> dict[str, Any]:
        _require_admin_or_auditor(who, "a full ledger verification")
        return service.verify_ledger()

    @app.get(f"{API_PREFIX}/scheduler", tags=["read"], summary="Scheduler status and recent steps")
    def scheduler_status() -> dict[str, Any]:
        return service.scheduler.status()

    @app.get(
        f"{API_PREFIX}/trials/{{trial_id}}/settlement",
        tags=["read"],
        summary="Ethereum settlement of the trial: switch, halt (e.g. SETTLEMENT_CHAIN_CHANGED) and each round's settlement",
    )
    def get_settlement(trial_id: TrialId) -> dict[str, Any]:
        return service.trial_settlement(trial_id)

    @app.get(
        f"{API_PREFIX}/audit-log", tags=["read"], summary="The API audit log (admins and auditors)"
    )
    def audit_log(
        who: Who,
        limit: int = Query(default=100, ge=1, le=1000),
        msp_id: str | None = Query(default=None, pattern=IDENTIFIER),
    ) -> list[dict[str, Any]]:
        _require_admin_or_auditor(who, "the audit log")
        return service.database.audit_log(limit=limit, msp_id=msp_id)

    # -- silo -------------------------------------------------------------------------------
    @app.post(
        f"{API_PREFIX}/silo/trials/{{trial_id}}/enrolment-requests",
        status_code=201,
        tags=["silo"],
        summary="Ask to join a trial with the hospital's X25519 key (one request per hospital per trial)",
    )
    def request_enrolment(
        body: EnrolmentRequestBody, trial_id: TrialId, who: Who
    ) -> dict[str, Any]:
        own_organisation(who, body.msp_id, "request enrolment")
        return service.request_enrolment(trial_id, who, body.encryption_public_key)

    @app.get(
        f"{API_PREFIX}/silo/trials/{{trial_id}}/enrolment-requests/{{msp_id}}",
        tags=["silo"],
        summary="The caller's own enrolment request",
    )
    def own_enrolment_request(trial_id: TrialId, msp_id: MspId, who: Who) -> dict[str, Any]:
        own_organisation(who, msp_id, "read enrolment requests")
        return service.enrolment_request(trial_id, msp_id)

    # -- admin ------------------------------------------------------------------------------
    @app.post(
        f"{API_PREFIX}/admin/trials",
        status_code=201,
        tags=["admin"],
        summary="Create a trial (builds and stores the initial model) and open its enrolment",
    )
    def create_trial(spec: TrialSpec, who: Who) -> dict[str, Any]:
        return service.create_trial(spec, who)

    @app.post(
        f"{API_PREFIX}/admin/trials/{{trial_id}}/open-enrolment",
        tags=["admin"],
        summary="DRAFT -> ENROLLING",
    )
    def open_enrolment(trial_id: TrialId, who: Who) -> dict[str, Any]:
        return service.open_enrolment(trial_id, who)

    @app.get(
        f"{API_PREFIX}/admin/trials/{{trial_id}}/enrolment-requests",
        tags=["admin"],
        summary="Enrolment requests of a trial",
    )
    def list_enrolment_requests(
        trial_id: TrialId,
        status: str | None = Query(
            default=None, pattern="^(" + "|".join(ENROLMENT_STATUSES) + ")$"
        ),
    ) -> list[dict[str, Any]]:
        return service.enrolment_requests(trial_id, status)

    @app.post(
        f"{API_PREFIX}/admin/trials/{{trial_id}}/enrolments",
        status_code=201,
        tags=["admin"],
        summary="Approve a hospital's pending request: enrol it on the ledger with its key",
    )
    def enrol(body: EnrolBody, trial_id: TrialId, who: Who) -> dict[str, Any]:
        return service.approve_enrolment(trial_id, body.msp_id, who)

    @app.post(
        f"{API_PREFIX}/admin/trials/{{trial_id}}/enrolment-requests/{{msp_id}}/reject",
        tags=["admin"],
        summary="Reject a pending enrolment request",
    )
    def reject(
        trial_id: TrialId, msp_id: MspId, who: Who, body: OptionalReasonBody | None = None
    ) -> dict[str, Any]:
        return service.reject_enrolment(trial_id, msp_id, body.reason if body else None, who)

    @app.delete(
        f"{API_PREFIX}/admin/trials/{{trial_id}}/enrolments/{{msp_id}}",
        tags=["admin"],
        summary="Remove an enrolled hospital",
    )
    def remove(
        trial_id: TrialId,
        msp_id: MspId,
        who: Who,
        reason: str | None = Query(default=None, max_length=1024),
    ) -> dict[str, Any]:
        return service.remove_hospital(trial_id, msp_id, reason, who)

    @app.post(
        f"{API_PREFIX}/admin/trials/{{trial_id}}/start",
        tags=["admin"],
        summary="ENROLLING -> RUNNING",
    )
    def start(trial_id: TrialId, who: Who) -> dict[str, Any]:
        return service.start_trial(trial_id, who)

    @app.post(
        f"{API_PREFIX}/admin/trials/{{trial_id}}/halt",
        tags=["admin"],
        summary="Halt the trial (and its open round)",
    )
    def halt(body: ReasonBody, trial_id: TrialId, who: Who) -> dict[str, Any]:
        return service.halt_trial(trial_id, body.reason, who)

    @app.post(
        f"{API_PREFIX}/admin/trials/{{trial_id}}/rollback",
        tags=["admin"],
        summary="Reopen training from an earlier finalized round",
    )
    def rollback(body: RollbackBody, trial_id: TrialId, who: Who) -> dict[str, Any]:
        return service.rollback(trial_id, body.to_round, body.reason, who)

    @app.post(
        f"{API_PREFIX}/admin/trials/{{trial_id}}/complete",
        tags=["admin"],
        summary="RUNNING -> COMPLETED (all rounds finalized)",
    )
    def complete(trial_id: TrialId, who: Who) -> dict[str, Any]:
        return service.complete_trial(trial_id, who)

    @app.post(
        f"{API_PREFIX}/admin/trials/{{trial_id}}/rounds",
        status_code=201,
        tags=["admin"],
        summary="Open the next round now (e.g. to resume after a halted round)",
    )
    def open_round(trial_id: TrialId, who: Who) -> dict[str, Any]:
        return service.open_round(trial_id, who)

    @app.post(
        f"{API_PREFIX}/admin/trials/{{trial_id}}/rounds/{{round_number}}/abort",
        tags=["admin"],
        summary="Halt the current round",
    )
    def abort_round(
        body: ReasonBody, trial_id: TrialId, round_number: RoundNo, who: Who
    ) -> dict[str, Any]:
        return service.abort_round(trial_id, round_number, body.reason, who)

    @app.put(
        f"{API_PREFIX}/admin/trials/{{trial_id}}/settlement",
        tags=["admin"],
        summary="Switch Ethereum settlement of the trial's finalized rounds on or off (on again resumes after a halt)",
    )
    def set_settlement(body: SettlementSwitchBody, trial_id: TrialId, who: Who) -> dict[str, Any]:
        return service.set_trial_settlement(trial_id, body.enabled, body.reason, who)

    @app.post(
        f"{API_PREFIX}/admin/scheduler/run",
        tags=["admin"],
        summary="Run one scheduler pass now and return what it did",
    )
    def run_scheduler() -> dict[str, Any]:
        return {"outcomes": [o.to_dict() for o in service.scheduler.tick()]}

    return app
