"""Hospital (silo) endpoints: ``/api/v1/silo/*``, for callers with the ``silo`` role, each acting
only for its own organisation. The protocol itself (commits, reveals, votes, attestations) goes
straight to the ledger, signed by the hospital; here a hospital asks to join a trial."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from coordinator.api.dependencies import (
    API_PREFIX,
    MspId,
    Service,
    TrialId,
    Who,
    own_organisation,
    require_role,
)
from coordinator.schemas import EnrolmentRequest, EnrolmentRequestBody

router = APIRouter(
    prefix=f"{API_PREFIX}/silo", tags=["silo"], dependencies=[Depends(require_role("silo"))]
)


@router.post(
    "/trials/{trial_id}/enrolment-requests",
    status_code=201,
    response_model=EnrolmentRequest,
    summary="Ask to join a trial with the hospital's X25519 key (one request per hospital per trial)",
)
def request_enrolment(
    body: EnrolmentRequestBody, trial_id: TrialId, who: Who, service: Service
) -> dict[str, Any]:
    own_organisation(who, body.msp_id, "request enrolment")
    return service.request_enrolment(trial_id, who, body.encryption_public_key)


@router.get(
    "/trials/{trial_id}/enrolment-requests/{msp_id}",
    response_model=EnrolmentRequest,
    summary="The caller's own enrolment request",
)
def own_enrolment_request(
    trial_id: TrialId, msp_id: MspId, who: Who, service: Service
) -> dict[str, Any]:
    own_organisation(who, msp_id, "read enrolment requests")
    return service.enrolment_request(trial_id, msp_id)
