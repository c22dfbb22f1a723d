"""Consortium admin endpoints: ``/api/v1/admin/*``, for callers with the ``admin`` role.

Each state change is a ledger transaction signed by the coordinator's admin identity; the
contract decides whether it is allowed and returns the record it wrote.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from coordinator.api.dependencies import (
    API_PREFIX,
    MspId,
    RoundNo,
    Service,
    TrialId,
    Who,
    require_role,
)
from coordinator.schemas import (
    EnrolBody,
    EnrolmentRecord,
    EnrolmentRequest,
    OptionalReasonBody,
    ReasonBody,
    ResumeBody,
    RollbackBody,
    RoundRecord,
    SchedulerRun,
    TrialRecord,
    TrialSettlement,
    TrialSpec,
)
from coordinator.service import ENROLMENT_STATUSES
from coordinator.settlement_step import SettlementSwitchBody

router = APIRouter(
    prefix=f"{API_PREFIX}/admin", tags=["admin"], dependencies=[Depends(require_role("admin"))]
)

TRIAL = "/trials/{trial_id}"


@router.post(
    "/trials",
    status_code=201,
    response_model=TrialRecord,
    summary="Create a trial (builds and stores the initial model) and open its enrolment",
)
def create_trial(spec: TrialSpec, who: Who, service: Service) -> dict[str, Any]:
    return service.create_trial(spec, who)


@router.post(TRIAL + "/open-enrolment", response_model=TrialRecord, summary="DRAFT -> ENROLLING")
def open_enrolment(trial_id: TrialId, who: Who, service: Service) -> dict[str, Any]:
    return service.open_enrolment(trial_id, who)


@router.get(
    TRIAL + "/enrolment-requests",
    response_model=list[EnrolmentRequest],
    summary="Enrolment requests of a trial",
)
def list_enrolment_requests(
    trial_id: TrialId,
    service: Service,
    status: str | None = Query(default=None, pattern="^(" + "|".join(ENROLMENT_STATUSES) + ")$"),
) -> list[dict[str, Any]]:
    return service.enrolment_requests(trial_id, status)


@router.post(
    TRIAL + "/enrolments",
    status_code=201,
    response_model=EnrolmentRecord,
    summary="Approve a hospital's pending request: enrol it on the ledger with its key",
)
def enrol(body: EnrolBody, trial_id: TrialId, who: Who, service: Service) -> dict[str, Any]:
    return service.approve_enrolment(trial_id, body.msp_id, who)


@router.post(
    TRIAL + "/enrolment-requests/{msp_id}/reject",
    response_model=EnrolmentRequest,
    summary="Reject a pending enrolment request",
)
def reject(
    trial_id: TrialId,
    msp_id: MspId,
    who: Who,
    service: Service,
    body: OptionalReasonBody | None = None,
) -> dict[str, Any]:
    return service.reject_enrolment(trial_id, msp_id, body.reason if body else None, who)


@router.delete(
    TRIAL + "/enrolments/{msp_id}",
    response_model=EnrolmentRecord,
    summary="Remove an enrolled hospital",
)
def remove(
    trial_id: TrialId,
    msp_id: MspId,
    who: Who,
    service: Service,
    reason: str | None = Query(default=None, max_length=1024),
) -> dict[str, Any]:
    return service.remove_hospital(trial_id, msp_id, reason, who)


@router.post(TRIAL + "/start", response_model=TrialRecord, summary="ENROLLING -> RUNNING")
def start(trial_id: TrialId, who: Who, service: Service) -> dict[str, Any]:
    return service.start_trial(trial_id, who)


@router.post(
    TRIAL + "/halt", response_model=TrialRecord, summary="Halt the trial (and its open round)"
)
def halt(body: ReasonBody, trial_id: TrialId, who: Who, service: Service) -> dict[str, Any]:
    return service.halt_trial(trial_id, body.reason, who)


@router.post(
    TRIAL + "/rollback",
    response_model=TrialRecord,
    summary="Reopen training from an earlier finalized round",
)
def rollback(body: RollbackBody, trial_id: TrialId, who: Who, service: Service) -> dict[str, Any]:
    return service.rollback(
        trial_id,
        body.to_round,
        body.reason,
        who,
        final_round=body.final_round,
        abort_current=body.abort_current,
    )


@router.post(
    TRIAL + "/resume",
    response_model=TrialRecord,
    summary="HALTED -> RUNNING, if the hospitals' remaining budgets carry the plan (409 otherwise)",
)
def resume(body: ResumeBody, trial_id: TrialId, who: Who, service: Service) -> dict[str, Any]:
    return service.resume_trial(
        trial_id, body.reason, who, to_round=body.to_round, final_round=body.final_round
    )


@router.post(
    TRIAL + "/complete",
    response_model=TrialRecord,
    summary="RUNNING -> COMPLETED (all rounds finalized)",
)
def complete(trial_id: TrialId, who: Who, service: Service) -> dict[str, Any]:
    return service.complete_trial(trial_id, who)


@router.post(
    TRIAL + "/rounds",
    status_code=201,
    response_model=RoundRecord,
    summary="Open the next round now (e.g. to resume after a halted round)",
)
def open_round(trial_id: TrialId, who: Who, service: Service) -> dict[str, Any]:
    return service.open_round(trial_id, who)


@router.post(
    TRIAL + "/rounds/{round_number}/abort",
    response_model=RoundRecord,
    summary="Halt the current round",
)
def abort_round(
    body: ReasonBody, trial_id: TrialId, round_number: RoundNo, who: Who, service: Service
) -> dict[str, Any]:
    return service.abort_round(trial_id, round_number, body.reason, who)


@router.put(
    TRIAL + "/settlement",
    response_model=TrialSettlement,
    summary="Switch Ethereum settlement of the trial's finalized rounds on or off (on again resumes after a halt)",
)
def set_settlement(
    body: SettlementSwitchBody, trial_id: TrialId, who: Who, service: Service
) -> dict[str, Any]:
    return service.set_trial_settlement(trial_id, body.enabled, body.reason, who)


@router.post(
    "/scheduler/run",
    response_model=SchedulerRun,
    summary="Run one scheduler pass now and return what it did",
)
def run_scheduler(service: Service) -> dict[str, Any]:
    return {"outcomes": [o.to_dict() for o in service.scheduler.tick()]}
