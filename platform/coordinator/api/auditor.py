"""Read-only endpoints: any member of the consortium, and the auditor's whole surface.

Everything here reads the ledger (or the coordinator's own records); nothing changes state. The
full ledger verification and the API audit log are for admins and auditors only.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from coordinator.api.dependencies import (
    API_PREFIX,
    Attempt,
    DatasetId,
    MspFilter,
    MspId,
    RoundNo,
    Service,
    TrialId,
    Who,
    require_role,
    round_args,
)
from coordinator.schemas import (
    AcceptanceRecord,
    AttestationRecord,
    AuditLogEntry,
    Caller,
    DatasetBudgetRecord,
    DatasetRecord,
    DpScheduleRecord,
    EnrolmentRecord,
    EventsPage,
    HistoryRecord,
    LedgerInfo,
    LedgerVerification,
    LineageRecord,
    PrivacyAccountRecord,
    RewardsRecord,
    RoundRecord,
    SchedulerStatus,
    TrialKeysRecord,
    TrialProgress,
    TrialRecord,
    TrialSettlement,
    UpdateRecord,
    VoteRecord,
)
from coordinator.service import MAX_EVENTS_PAGE

router = APIRouter(prefix=API_PREFIX, tags=["read"])
admins_and_auditors = [Depends(require_role("admin", "auditor"))]

TRIAL = "/trials/{trial_id}"
ROUND = TRIAL + "/rounds/{round_number}"


@router.get("/whoami", response_model=Caller, summary="The authenticated caller")
def whoami(who: Who) -> dict[str, Any]:
    return who.to_dict()


@router.get("/trials", response_model=list[TrialRecord], summary="Trials on the ledger")
def list_trials(
    service: Service,
    state: str | None = Query(default=None, pattern="^(DRAFT|ENROLLING|RUNNING|COMPLETED|HALTED)$"),
) -> list[dict[str, Any]]:
    return service.query("list_trials", {} if state is None else {"state": state})


@router.get(TRIAL, response_model=TrialRecord, summary="One trial record")
def get_trial(trial_id: TrialId, service: Service) -> dict[str, Any]:
    return service.trial(trial_id)


@router.get(
    TRIAL + "/progress",
    response_model=TrialProgress,
    summary="Where the trial stands: whom it waits for and why, or why it ended",
)
def get_progress(trial_id: TrialId, service: Service) -> dict[str, Any]:
    return service.progress(trial_id)


@router.get(
    TRIAL + "/enrolments",
    response_model=list[EnrolmentRecord],
    summary="Enrolments on the ledger",
)
def get_enrolments(trial_id: TrialId, service: Service) -> list[dict[str, Any]]:
    return service.query("get_enrolments", {"trial_id": trial_id})


@router.get(
    TRIAL + "/dp-schedule",
    response_model=DpScheduleRecord,
    summary="Every enrolled hospital's public DP schedule, recorded when the trial started (404 with DP off)",
)
def get_dp_schedule(trial_id: TrialId, service: Service) -> dict[str, Any]:
    return service.dp_schedule(trial_id)


@router.get("/datasets", response_model=list[DatasetRecord], summary="Registered datasets")
def get_datasets(service: Service, msp_id: MspFilter = None) -> list[dict[str, Any]]:
    return service.query("get_datasets", {"msp_id": msp_id} if msp_id else {})


@router.get(
    "/datasets/{msp_id}/{dataset_id}/budget",
    response_model=DatasetBudgetRecord,
    summary="A dataset's lifetime privacy budget: committed by its trials and remaining",
)
def get_dataset_budget(msp_id: MspId, dataset_id: DatasetId, service: Service) -> dict[str, Any]:
    return service.query("get_dataset_budget", {"msp_id": msp_id, "dataset_id": dataset_id})


@router.get(
    TRIAL + "/keys",
    response_model=TrialKeysRecord,
    summary="The trial's public HE context and key envelopes (refs)",
)
def get_trial_keys(trial_id: TrialId, service: Service) -> dict[str, Any]:
    return service.query("get_trial_keys", {"trial_id": trial_id})


@router.get(
    TRIAL + "/rounds", response_model=list[RoundRecord], summary="Every attempt of every round"
)
def list_rounds(trial_id: TrialId, service: Service) -> list[dict[str, Any]]:
    return service.query("list_rounds", {"trial_id": trial_id})


@router.get(ROUND, response_model=RoundRecord, summary="One round")
def get_round(
    trial_id: TrialId, round_number: RoundNo, service: Service, attempt: Attempt = None
) -> dict[str, Any]:
    return service.query("get_round", round_args(trial_id, round_number, attempt))


@router.get(
    ROUND + "/submissions",
    response_model=list[UpdateRecord],
    summary="Update commitments and reveals of a round",
)
def get_submissions(
    trial_id: TrialId, round_number: RoundNo, service: Service, attempt: Attempt = None
) -> list[dict[str, Any]]:
    return service.query("get_submissions", round_args(trial_id, round_number, attempt))


@router.get(
    ROUND + "/votes", response_model=list[VoteRecord], summary="Vote commitments and reveals"
)
def get_votes(
    trial_id: TrialId, round_number: RoundNo, service: Service, attempt: Attempt = None
) -> list[dict[str, Any]]:
    return service.query("get_votes", round_args(trial_id, round_number, attempt))


@router.get(
    ROUND + "/acceptance",
    response_model=AcceptanceRecord,
    summary="Acceptance, weights, contributions and rewards computed by the contract",
)
def get_acceptance(
    trial_id: TrialId, round_number: RoundNo, service: Service, attempt: Attempt = None
) -> dict[str, Any]:
    return service.query("get_acceptance", round_args(trial_id, round_number, attempt))


@router.get(
    ROUND + "/attestations", response_model=list[AttestationRecord], summary="Model attestations"
)
def get_attestations(
    trial_id: TrialId, round_number: RoundNo, service: Service, attempt: Attempt = None
) -> list[dict[str, Any]]:
    return service.query("get_attestations", round_args(trial_id, round_number, attempt))


@router.get(
    TRIAL + "/privacy",
    response_model=list[PrivacyAccountRecord],
    summary="Privacy ledger: epsilon spent per hospital",
)
def get_privacy(
    trial_id: TrialId, service: Service, msp_id: MspFilter = None
) -> list[dict[str, Any]]:
    args = {"trial_id": trial_id} | ({"msp_id": msp_id} if msp_id else {})
    return service.query("get_privacy_ledger", args)


@router.get(
    TRIAL + "/rewards",
    response_model=RewardsRecord,
    summary="Reward accounts and per-round rewards",
)
def get_rewards(trial_id: TrialId, service: Service, msp_id: MspFilter = None) -> dict[str, Any]:
    args = {"trial_id": trial_id} | ({"msp_id": msp_id} if msp_id else {})
    return service.query("get_rewards", args)


@router.get(TRIAL + "/lineage", response_model=LineageRecord, summary="Model lineage and rollbacks")
def get_lineage(trial_id: TrialId, service: Service) -> dict[str, Any]:
    return service.query("get_model_lineage", {"trial_id": trial_id})


@router.get(
    TRIAL + "/history",
    response_model=list[HistoryRecord],
    summary="Every value a trial record ever had",
)
def get_history(
    trial_id: TrialId,
    service: Service,
    record: str = Query(default="trial", pattern=r"^[a-z_]{1,32}$"),
    round_number: int | None = Query(default=None, alias="round", ge=1, le=1000),
    attempt: Attempt = None,
    msp_id: MspFilter = None,
) -> list[dict[str, Any]]:
    args: dict[str, Any] = {"trial_id": trial_id, "record": record}
    for key, value in (("round", round_number), ("attempt", attempt), ("msp_id", msp_id)):
        if value is not None:
            args[key] = value
    return service.query("get_history", args)


@router.get(
    TRIAL + "/events",
    response_model=EventsPage,
    summary="Progress feed: the trial's ledger events",
)
def get_events(
    trial_id: TrialId,
    service: Service,
    since_block: int = Query(default=0, ge=0),
    limit: int = Query(default=200, ge=1, le=MAX_EVENTS_PAGE),
) -> dict[str, Any]:
    return service.events(trial_id, since_block, limit)


@router.get(
    TRIAL + "/settlement",
    response_model=TrialSettlement,
    summary="Ethereum settlement of the trial: switch, halt (e.g. SETTLEMENT_CHAIN_CHANGED) and each round's settlement",
)
def get_settlement(trial_id: TrialId, service: Service) -> dict[str, Any]:
    return service.trial_settlement(trial_id)


@router.get("/ledger", response_model=LedgerInfo, summary="Ledger height")
def ledger_info(service: Service) -> dict[str, Any]:
    return {
        "url_scheme": service.config.ledger_url.split(":", 1)[0],
        "height": service.reader.height(),
    }


@router.get(
    "/ledger/verify",
    response_model=LedgerVerification,
    dependencies=admins_and_auditors,
    summary="Re-verify every block, signature and index of the ledger (admins and auditors: it reads the whole chain)",
)
def verify_ledger(service: Service) -> dict[str, Any]:
    return service.verify_ledger()


@router.get(
    "/scheduler", response_model=SchedulerStatus, summary="Scheduler status and recent steps"
)
def scheduler_status(service: Service) -> dict[str, Any]:
    return service.scheduler.status()


@router.get(
    "/audit-log",
    response_model=list[AuditLogEntry],
    dependencies=admins_and_auditors,
    summary="The API audit log (admins and auditors)",
)
def audit_log(
    service: Service,
    limit: int = Query(default=100, ge=1, le=1000),
    msp_id: MspFilter = None,
) -> list[dict[str, Any]]:
    return service.database.audit_log(limit=limit, msp_id=msp_id)
