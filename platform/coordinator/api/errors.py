"""How errors become HTTP answers: every 4xx/5xx is JSON ``{code, message, detail}``.

A ``BcflError`` carries its own status (contract codes are mapped here); request validation
errors become 422 ``INVALID_REQUEST`` naming the field; unknown routes a JSON 404.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bcfl_common.errors import BcflError, ConfigError, ContractError

log = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
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

# Status codes every operation may answer with an ErrorBody (documented in /openapi.json).
ERROR_STATUSES = (401, 403, 404, 409, 413, 422, 502, 503)


def error_status(exc: BcflError) -> int:
    if isinstance(exc, ContractError):
        return CONTRACT_STATUS.get(exc.code, 409)
    if isinstance(exc, ConfigError):
        return 503  # the service itself is misconfigured, not the request
    return exc.http_status


def error_body(code: str, message: str, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "detail": detail or {}}


async def send_error(
    send: Send, status: int, code: str, message: str, detail: dict[str, Any] | None = None
) -> None:
    """Answer with an error from ASGI middleware (before any routing)."""
    body = json.dumps(error_body(code, message, detail)).encode()
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


def _validation_message(field: str, error: Any) -> str:
    kind = error.get("type", "")
    if kind == "json_invalid":
        reason = error.get("ctx", {}).get("error", error.get("msg"))
        return f"body: not valid JSON ({reason}); expected a JSON object"
    if kind == "extra_forbidden":
        return f"{field}: unknown field (got {_show(error.get('input'))}); expected only the documented fields"
    if kind == "missing":
        return f"{field}: missing; expected a value"
    expected = error.get("msg", "").removeprefix("Input should be ")
    return f"{field}: got {_show(error.get('input'))}, expected {expected}"


def validation_error_body(exc: RequestValidationError) -> dict[str, Any]:
    errors = []
    for error in exc.errors():
        field = _field_name(tuple(error.get("loc", ())))
        errors.append(
            {
                "field": field,
                "type": error.get("type", ""),
                "message": _validation_message(field, error),
            }
        )
    first = errors[0]["message"] if errors else "invalid request"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return error_body(
        "INVALID_REQUEST",
        first + more,
        {"field": errors[0]["field"] if errors else None, "errors": errors},
    )


def _answer(request: Request, status: int, body: dict[str, Any]) -> JSONResponse:
    # The signed-request middleware records the code in the API audit log.
    request.state.error_code = body["code"]
    return JSONResponse(body, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BcflError)
    async def bcfl_error(request: Request, exc: BcflError) -> JSONResponse:
        return _answer(request, error_status(exc), exc.to_dict())

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _answer(request, 422, validation_error_body(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            message = f"{request.url.path}: no such endpoint; expected one listed in /openapi.json"
        code = codes.get(exc.status_code, "HTTP_ERROR")
        return _answer(request, exc.status_code, error_body(code, message))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        body = error_body("INTERNAL", "internal error in the coordinator; see its log")
        return _answer(request, 500, body)
