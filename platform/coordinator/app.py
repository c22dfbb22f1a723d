"""The coordinator's HTTP API (FastAPI): admin, silo and read-only auditor endpoints, all signed by consortium identities.

Every ``/api/`` request is checked in this order, each failure answering JSON ``{code, message, detail}``:

1. body size: more than ``max_body_bytes`` (default 1 MiB) -> 413 ``PAYLOAD_TOO_LARGE``, before
   anything is parsed (declared Content-Length or counted while reading);
2. signature (``consortium.http_auth``): missing or bad headers, an untrusted certificate, a bad
   signature -> 401; a timestamp off by more than ``max_clock_skew`` -> 401 ``STALE_REQUEST``;
   a nonce seen before -> 401 ``REPLAYED`` (nonces are kept in the database, so a restart does
   not reopen replays); a role not honoured from the caller's kind of organisation -> 403
   ``FORBIDDEN_ROLE``;
3. role, from the certificate's bcfl OU: ``/api/v1/admin/*`` needs ``admin``, ``/api/v1/silo/*``
   needs ``silo``, the ledger verification, the audit reports (``/api/v1/audit/*``) and the
   audit log ``admin`` or ``auditor``, everything
   else any member -> 403 ``FORBIDDEN_ROLE``; a silo acting or reading for another organisation
   -> 403 ``WRONG_ORGANISATION``;
4. body and parameters (pydantic, unknown fields refused) -> 422 ``INVALID_REQUEST`` naming the field;
5. the contract's verdict: its error codes map to 403/404/409/422; ledger or store failures -> 502/503.

Steps 1 and 2 run in ``coordinator.api.middleware`` before routing, step 3 is the routers'
``require_role`` dependency (``coordinator.api.dependencies``), the mapping of errors to answers
is ``coordinator.api.errors``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from coordinator.api import admin, audit_reports, auditor, public, silo
from coordinator.api.errors import ERROR_STATUSES, install_error_handlers
from coordinator.api.middleware import SignedRequestMiddleware
from coordinator.schemas import ErrorBody
from coordinator.service import CoordinatorService

__all__ = ["create_app"]


def create_app(service: CoordinatorService, *, manage_service: bool = True) -> FastAPI:
    """The API over ``service``. With ``manage_service`` the app starts the scheduler on startup
    and closes the service on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_service:
            service.start_background()
        try:
            yield
        finally:
            if manage_service:
                await anyio.to_thread.run_sync(service.close)

    app = FastAPI(
        title="bcfl coordinator",
        version="1",
        summary="Trials, enrolment and rounds of a hospital consortium; every request signed by a consortium identity.",
        description=__doc__,
        lifespan=lifespan,
        responses={status: {"model": ErrorBody} for status in ERROR_STATUSES},  # type: ignore[misc]
    )
    app.add_middleware(SignedRequestMiddleware, service=service)  # type: ignore[arg-type]
    app.state.service = service
    install_error_handlers(app)
    for router in (public.router, auditor.router, audit_reports.router, silo.router, admin.router):
        app.include_router(router)
    return app
