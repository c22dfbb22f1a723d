"""The auditor's reports over HTTP (admins and auditors): what ``bcfl audit ...`` prints, as JSON.

Each report is recomputed from the ledger on every request, exactly as the CLI does
(:mod:`coordinator.audit`, :mod:`coordinator.audit_privacy`, :mod:`coordinator.audit_verify`); a
failed check answers 200 with ``ok`` false and the sentences in ``problems`` (the report is the
answer, the failure is its content). ``verify`` recomputes every DP schedule with Opacus and
replays the whole chain: it can take a while.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from coordinator import audit, audit_privacy, audit_verify
from coordinator.api.dependencies import API_PREFIX, Service, TrialId, require_role
from coordinator.schemas import IDENTIFIER, AuditReport

router = APIRouter(
    prefix=API_PREFIX + "/audit",
    tags=["audit"],
    dependencies=[Depends(require_role("admin", "auditor"))],
)
TRIAL = "/trials/{trial_id}"


@router.get("/trials", response_model=AuditReport, summary="Every trial on the ledger")
def trials(service: Service) -> dict[str, Any]:
    return audit.trials_report(service.reader)


@router.get(
    TRIAL,
    response_model=AuditReport,
    summary="A trial: switches, enrolments, each candidate's reason, improvement, capped weight and reward, each voter's agreement",
)
def trial(trial_id: TrialId, service: Service) -> dict[str, Any]:
    return audit.trial_report(service.reader, trial_id)


@router.get(
    TRIAL + "/privacy",
    response_model=AuditReport,
    summary="Per hospital: its DP schedule, the epsilon charged per reveal, its dataset's lifetime budget",
)
def privacy(trial_id: TrialId, service: Service) -> dict[str, Any]:
    return audit_privacy.privacy_report(service.reader, trial_id)


@router.get(
    TRIAL + "/rewards",
    response_model=AuditReport,
    summary="Per round: update and voter rewards, what was paid; the accounts, cross-checked",
)
def rewards(trial_id: TrialId, service: Service) -> dict[str, Any]:
    return audit.rewards_report(service.reader, trial_id)


@router.get(TRIAL + "/lineage", response_model=AuditReport, summary="The chain of finalized models")
def lineage(trial_id: TrialId, service: Service) -> dict[str, Any]:
    return audit.lineage_report(service.reader, trial_id)


@router.get(
    "/verify",
    response_model=AuditReport,
    summary="Verify the ledger and recompute every decision (DP schedules, charges, weights, duplicates, disputes, dataset budgets, acceptance)",
)
def verify(
    service: Service,
    trial_id: str | None = Query(default=None, pattern=IDENTIFIER, description="Only this trial"),
) -> dict[str, Any]:
    return audit_verify.verify_report(service.reader, trial_id=trial_id)
