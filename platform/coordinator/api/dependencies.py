"""What the routers depend on: the service, the signed-request caller, roles and path parameters.

``SignedRequestMiddleware`` authenticates every ``/api/`` request and leaves the caller in
``request.state.principal``; :func:`require_role` is the one role check, declared by each router
(or a single route) as a dependency.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Path, Query, Request

from bcfl_common.errors import ContractError
from consortium.http_auth import Principal
from coordinator.schemas import IDENTIFIER
from coordinator.service import CoordinatorService

API_PREFIX = "/api/v1"


def _service(request: Request) -> CoordinatorService:
    return request.app.state.service


def _principal(request: Request) -> Principal:
    """The caller, authenticated by SignedRequestMiddleware."""
    return request.state.principal


Service = Annotated[CoordinatorService, Depends(_service)]
Who = Annotated[Principal, Depends(_principal)]

TrialId = Annotated[str, Path(pattern=IDENTIFIER, description="Trial id")]
MspId = Annotated[str, Path(pattern=IDENTIFIER, description="MSP id of a hospital")]
DatasetId = Annotated[
    str, Path(pattern=IDENTIFIER, description="A hospital's registered dataset id")
]
RoundNo = Annotated[int, Path(ge=1, le=1000, description="Round number")]
Attempt = Annotated[int | None, Query(ge=1, le=10**6, description="Attempt (default: the latest)")]
MspFilter = Annotated[str | None, Query(pattern=IDENTIFIER, description="Only this organisation")]


def require_role(*roles: str) -> Callable[[Request, Principal], None]:
    """A dependency refusing (403 ``FORBIDDEN_ROLE``) a caller whose bcfl role is not in ``roles``."""
    if not roles:
        raise ValueError("require_role needs at least one role")

    def check(request: Request, who: Who) -> None:
        if who.role in roles:
            return
        wanted = repr(roles[0]) if len(roles) == 1 else " or ".join(map(repr, roles))
        detail: dict[str, object] = {"role": who.role, "allowed": list(roles)}
        if len(roles) == 1:
            detail["required"] = roles[0]
        raise ContractError(
            f"{request.method} {request.url.path} is for role {wanted}, not {who.role!r} "
            f"({who.name}@{who.msp_id})",
            code="FORBIDDEN_ROLE",
            detail=detail,
        )

    check.__name__ = "require_" + "_or_".join(roles)
    return check


def own_organisation(who: Principal, msp_id: str | None, what: str) -> None:
    """Refuse (403 ``WRONG_ORGANISATION``) a hospital acting or reading for another one."""
    if msp_id is not None and msp_id != who.msp_id:
        raise ContractError(
            f"msp_id: got {msp_id!r}, expected the caller's own organisation {who.msp_id!r} "
            f"(a hospital may {what} only for itself)",
            code="WRONG_ORGANISATION",
            detail={"field": "msp_id", "value": msp_id, "expected": who.msp_id},
        )


def round_args(trial_id: str, round_number: int, attempt: int | None) -> dict[str, object]:
    args: dict[str, object] = {"trial_id": trial_id, "round": round_number}
    if attempt is not None:
        args["attempt"] = attempt
    return args
