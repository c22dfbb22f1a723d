"""The coordinator service: its identities, ledger clients, store and database, and the trial operations the API exposes.

The service holds two identities. Admin actions arrive as signed requests from an admin-role
member and are submitted to the ledger as the consortium admin; scheduling (open and close
rounds, record aggregates) is done as the coordinator. Reads are thin calls of the contract's
read-only functions: the ledger is the one source of truth, the database keeps only what the
ledger cannot (enrolment requests, nonces, scheduler bookkeeping, the API audit log).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bcfl_common.certificates import x25519_public_key_raw
from bcfl_common.errors import BcflError, ConfigError, ContractError, IdentityError, SchemaError
from consortium.http_auth import Principal
from consortium.identity import Consortium, Identity, load_identity
from consortium.storage import open_store
from coordinator.config import CoordinatorConfig
from coordinator.db import Database, EnrolmentRequest
from coordinator.dp_schedule import Progress, start_trial_schedule
from coordinator.ledgers import ThreadBoundLedger
from coordinator.progress import trial_progress
from coordinator.scheduler import Scheduler
from coordinator.schemas import TrialSpec
from coordinator.settlement_step import SettlementStep

log = logging.getLogger(__name__)

ENROLMENT_STATUSES = ("pending", "approved", "rejected", "removed")
MAX_EVENTS_PAGE = 1000


def _who(principal: Principal | None) -> str:
    return "coordinator" if principal is None else f"{principal.name}@{principal.msp_id}"


def x25519_public_key_b64(text: str, field: str = "encryption_public_key") -> str:
    """base64 of the raw 32 bytes of an X25519 public key given as PEM or base64 (SchemaError otherwise)."""
    expected = "an X25519 public key: PEM (SubjectPublicKeyInfo) or base64 of its 32 raw bytes"
    try:
        raw = x25519_public_key_raw(text)
    except ValueError as exc:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise SchemaError(
            f"{field}: got {shown!r}, expected {expected}",
            code="INVALID_REQUEST",
            detail={"field": field, "expected": expected},
        ) from exc
    return base64.b64encode(raw).decode("ascii")


def build_initial_model(
    model_spec: dict[str, Any], data_schema: dict[str, Any], seed: int
) -> bytes:
    """The trial's initial model artifact, from the model registry of the silo agent.

    The initial model is a public random initialisation, so the coordinator may build and see it.
    """
    try:
        from model_registry.models import initial_model
    except ImportError as exc:
        raise ConfigError(
            "cannot build the initial model: model_registry.models.initial_model is not available "
            f"({exc}); expected the silo agent's model registry to be installed",
            code="MODEL_REGISTRY_UNAVAILABLE",
        ) from exc
    data = initial_model(model_spec, data_schema, seed)
    if not isinstance(data, bytes | bytearray) or not data:
        raise ConfigError(
            f"model_registry.models.initial_model returned {type(data).__name__}; expected non-empty bytes",
            code="MODEL_REGISTRY_UNAVAILABLE",
        )
    return bytes(data)


class CoordinatorService:
    """Everything the API and the scheduler act through. ``clock`` is the ledger's transaction clock
    (tests move it); request authentication always uses the real time."""

    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        clock: Callable[[], float] | None = None,
        initial_model_builder: Callable[
            [dict[str, Any], dict[str, Any], int], bytes
        ] = build_initial_model,
    ):
        self.config = config
        self.clock = clock or time.time
        self._build_initial_model = initial_model_builder
        self.consortium = Consortium.load(config.consortium)
        self.admin_identity = self._load_identity(config.admin_identity, "admin")
        self.coordinator_identity = self._load_identity(config.coordinator_identity, "coordinator")
        self.database = Database(config.database_url)
        self.database.upgrade()
        options: dict[str, Any] = {} if clock is None else {"clock": clock}
        self._ledgers: list[ThreadBoundLedger] = []
        try:
            self.admin_ledger = self._open_ledger(self.admin_identity, "admin", options)
            self.coordinator_ledger = self._open_ledger(
                self.coordinator_identity, "coordinator", options
            )
            # Reads (and ledger verification, which can take a while) never hold up the scheduler.
            self.reader = self._open_ledger(self.coordinator_identity, "reader", options)
            self.store = open_store(config.store_url)
            self.settlement = SettlementStep.from_config(
                config, self.coordinator_ledger, self.database
            )
        except BaseException:
            self.close()
            raise
        self.scheduler = Scheduler(
            self.coordinator_ledger,
            self.store,
            admin_ledger=self.admin_ledger,
            database=self.database,
            settlement=self.settlement,
            clock=self.clock,
            poll_interval=config.poll_interval,
        )

    def _load_identity(self, directory: Any, role: str) -> Identity:
        identity = load_identity(directory)
        if identity.role != role:
            raise ConfigError(
                f"{role}_identity: {directory} holds {identity.name!r} with role {identity.role!r}; expected a {role}",
                detail={"key": f"{role}_identity"},
            )
        self.consortium.verify_member_certificate(identity.msp_id, identity.cert_pem)
        return identity

    def _open_ledger(
        self, identity: Identity, name: str, options: dict[str, Any]
    ) -> ThreadBoundLedger:
        ledger = ThreadBoundLedger(self.config.ledger_url, identity, name=name, **options)
        self._ledgers.append(ledger)
        return ledger

    def start_background(self) -> None:
        if self.config.scheduler:
            self.scheduler.start()

    def close(self) -> None:
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.stop()
        for ledger in self._ledgers:
            try:
                ledger.close()
            except Exception:  # closing must not hide the first failure
                log.exception("closing ledger client failed")
        self._ledgers = []
        settlement = getattr(self, "settlement", None)
        if settlement is not None:
            settlement.close()
            self.settlement = None
        self.database.close()

    # -- reads -------------------------------------------------------------------------------
    def query(self, function: str, args: dict[str, Any]) -> Any:
        return self.reader.evaluate(function, args)

    def trial(self, trial_id: str) -> dict[str, Any]:
        return self.query("get_trial", {"trial_id": trial_id})

    def progress(self, trial_id: str) -> dict[str, Any]:
        """Where the trial stands and whom it waits for, from the ledger (``coordinator.progress``)."""
        return trial_progress(self.query, self.trial(trial_id), now=int(time.time()))

    def events(self, trial_id: str, since_block: int, limit: int) -> dict[str, Any]:
        """Contract events of one trial from ``since_block`` on; ``next_block`` is where to continue."""
        self.trial(trial_id)  # 404 for an unknown trial
        height = self.reader.height()
        found: list[dict[str, Any]] = []
        next_block = height
        for event in self.reader.events(since_block):
            if event.payload.get("trial_id") != trial_id:
                continue
            if len(found) == limit:
                next_block = event.block_number
                break
            found.append(
                {
                    "block_number": event.block_number,
                    "tx_id": event.tx_id,
                    "name": event.name,
                    "payload": event.payload,
                }
            )
        return {
            "trial_id": trial_id,
            "since_block": since_block,
            "next_block": next_block,
            "height": height,
            "events": found,
        }

    def verify_ledger(self) -> dict[str, Any]:
        return self.reader.verify().to_dict()

    # -- admin: trials -----------------------------------------------------------------------
    def _admin(self, function: str, args: dict[str, Any], principal: Principal | None) -> Any:
        result = self.admin_ledger.submit(function, args)
        log.info(
            "%s by %s: tx %s block %s", function, _who(principal), result.tx_id, result.block_number
        )
        self.scheduler.wake()
        return result.result

    def create_trial(self, spec: TrialSpec, principal: Principal | None = None) -> dict[str, Any]:
        from privacy.he.presets import DEFAULT_PRESET, PRESETS

        try:
            self.query("get_trial", {"trial_id": spec.trial_id})
        except ContractError as exc:
            if exc.code != "NOT_FOUND":
                raise
        else:
            raise ContractError(
                f"trial {spec.trial_id!r} already exists",
                code="ALREADY_EXISTS",
                detail={"field": "trial_id", "value": spec.trial_id},
            )
        he = spec.he.model_dump(exclude_none=True)
        if he.get("enabled", True):
            preset = he.setdefault("preset", DEFAULT_PRESET)
            if preset not in PRESETS:
                raise SchemaError(
                    f"he.preset: got {preset!r}, expected one of {sorted(PRESETS)}",
                    code="INVALID_REQUEST",
                    detail={"field": "he.preset", "value": preset, "expected": sorted(PRESETS)},
                )
        else:
            raise SchemaError(
                "he.enabled: got false, expected true: the coordinator aggregates only encrypted updates "
                "and must never see a plaintext one",
                code="INVALID_REQUEST",
                detail={"field": "he.enabled", "value": False, "expected": True},
            )
        model_spec = spec.model.model_dump()
        try:
            model_bytes = self._build_initial_model(
                model_spec, spec.data_schema, spec.initial_model_seed
            )
        except ConfigError as exc:
            if exc.code == "MODEL_REGISTRY_UNAVAILABLE":
                raise
            # The registry refused the model or its hyperparameters: the request is at fault.
            raise SchemaError(exc.message, code=exc.code, detail=exc.detail) from exc
        artifact = self.store.put(model_bytes)
        args = {
            "trial_id": spec.trial_id,
            "task": spec.task,
            "data_schema": spec.data_schema,
            "model": model_spec,
            "initial_model": {"content_id": artifact.content_id, "sha256": artifact.sha256},
            "rounds": spec.rounds,
            "min_silos": spec.min_silos,
            "max_retries": spec.max_retries,
            "dp": spec.dp.model_dump(exclude_none=True),
            "he": he,
            "evaluation": spec.evaluation.model_dump(exclude_none=True),
            "phase_seconds": spec.phase_seconds.model_dump(exclude_none=True),
        }
        if spec.clock_tolerance_seconds is not None:
            args["clock_tolerance_seconds"] = spec.clock_tolerance_seconds
        trial = self._admin("create_trial", args, principal)
        if spec.open_enrolment:
            trial = self._admin("open_enrolment", {"trial_id": spec.trial_id}, principal)
        return trial

    def open_enrolment(self, trial_id: str, principal: Principal | None = None) -> dict[str, Any]:
        return self._admin("open_enrolment", {"trial_id": trial_id}, principal)

    def start_trial(
        self,
        trial_id: str,
        principal: Principal | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """ENROLLING -> RUNNING; with DP on, with every enrolled hospital's DP schedule
        (:mod:`coordinator.dp_schedule`, Opacus) for the contract to charge epsilon from."""
        trial = self.trial(trial_id)
        if trial["state"] != "ENROLLING":
            # Refuse before spending seconds on a schedule the contract would refuse anyway.
            raise ContractError(
                f"trial {trial_id!r} is {trial['state']}, expected ENROLLING to start it",
                code="WRONG_STATE",
                detail={"trial_id": trial_id, "state": trial["state"], "expected": ["ENROLLING"]},
            )
        args: dict[str, Any] = {"trial_id": trial_id}
        schedule = start_trial_schedule(
            trial, self.query("get_enrolments", {"trial_id": trial_id}), progress=progress
        )
        if schedule is not None:
            args["dp_schedule"] = schedule
        return self._admin("start_trial", args, principal)

    def dp_schedule(self, trial_id: str) -> dict[str, Any]:
        """The DP schedule recorded when the trial started (NOT_FOUND before, or with DP off)."""
        return self.query("get_dp_schedule", {"trial_id": trial_id})

    def halt_trial(
        self, trial_id: str, reason: str, principal: Principal | None = None
    ) -> dict[str, Any]:
        return self._admin("halt_trial", {"trial_id": trial_id, "reason": reason}, principal)

    def complete_trial(self, trial_id: str, principal: Principal | None = None) -> dict[str, Any]:
        return self._admin("complete_trial", {"trial_id": trial_id}, principal)

    def rollback(
        self,
        trial_id: str,
        to_round: int,
        reason: str | None,
        principal: Principal | None = None,
        *,
        final_round: int | None = None,
        abort_current: bool = False,
    ) -> dict[str, Any]:
        args: dict[str, Any] = {"trial_id": trial_id, "to_round": to_round}
        if reason is not None:
            args["reason"] = reason
        if final_round is not None:
            args["final_round"] = final_round
        if abort_current:
            args["abort_current"] = True
        return self._admin("rollback", args, principal)

    def resume_trial(
        self,
        trial_id: str,
        reason: str,
        principal: Principal | None = None,
        *,
        to_round: int | None = None,
        final_round: int | None = None,
    ) -> dict[str, Any]:
        args: dict[str, Any] = {"trial_id": trial_id, "reason": reason}
        if to_round is not None:
            args["to_round"] = to_round
        if final_round is not None:
            args["final_round"] = final_round
        return self._admin("resume_trial", args, principal)

    def open_round(self, trial_id: str, principal: Principal | None = None) -> dict[str, Any]:
        return self._admin("open_round", {"trial_id": trial_id}, principal)

    def abort_round(
        self, trial_id: str, round_number: int, reason: str, principal: Principal | None = None
    ) -> dict[str, Any]:
        return self._admin(
            "abort_round",
            {"trial_id": trial_id, "round": round_number, "reason": reason},
            principal,
        )

    # -- settlement (optional, per trial) ------------------------------------------------------
    def trial_settlement(self, trial_id: str) -> dict[str, Any]:
        """The trial's settlement switch, any halt, and its rounds' settlements on the ledger."""
        self.trial(trial_id)
        if self.settlement is None:
            return {
                "trial_id": trial_id,
                "configured": False,
                "enabled": False,
                "switch": self.database.trial_settlement(trial_id),
                "halted": None,
            }
        return self.settlement.trial_status(trial_id)

    def set_trial_settlement(
        self,
        trial_id: str,
        enabled: bool,
        reason: str | None = None,
        principal: Principal | None = None,
    ) -> dict[str, Any]:
        """Switch Ethereum settlement on or off for a trial; switching on again resumes a halted one."""
        self.trial(trial_id)
        if enabled and self.settlement is None:
            raise ConfigError(
                "settlement is not configured on this coordinator; expected [settlement] url (eth://...) and "
                "payees in coordinator.toml (or BCFL_COORDINATOR_SETTLEMENT_URL / _PAYEES)",
                code="SETTLEMENT_NOT_CONFIGURED",
                detail={"trial_id": trial_id},
            )
        self.database.set_trial_settlement(trial_id, enabled, by=_who(principal), reason=reason)
        log.info(
            "settlement %s for trial %s by %s",
            "on" if enabled else "off",
            trial_id,
            _who(principal),
        )
        if self.settlement is not None:
            self.settlement.retry_now(trial_id)
        self.scheduler.wake()
        return self.trial_settlement(trial_id)

    # -- enrolment ---------------------------------------------------------------------------
    def _ledger_enrolment(self, trial_id: str, msp_id: str) -> dict[str, Any] | None:
        for record in self.query("get_enrolments", {"trial_id": trial_id}):
            if record["msp_id"] == msp_id:
                return record
        return None

    def request_enrolment(
        self, trial_id: str, principal: Principal, public_key: str
    ) -> dict[str, Any]:
        key = x25519_public_key_b64(public_key)
        trial = self.trial(trial_id)
        if trial["state"] != "ENROLLING":
            raise ContractError(
                f"trial {trial_id!r} is {trial['state']}, expected ENROLLING to accept enrolment requests",
                code="WRONG_STATE",
                detail={"trial_id": trial_id, "state": trial["state"], "expected": ["ENROLLING"]},
            )
        existing = self._ledger_enrolment(trial_id, principal.msp_id)
        if existing is not None and existing["status"] == "enrolled":
            raise ContractError(
                f"{principal.msp_id} is already enrolled in trial {trial_id!r}",
                code="ALREADY_EXISTS",
                detail={"msp_id": principal.msp_id},
            )
        now = int(time.time())
        try:
            with self.database.session() as session:
                row = session.scalars(
                    select(EnrolmentRequest).where(
                        EnrolmentRequest.trial_id == trial_id,
                        EnrolmentRequest.msp_id == principal.msp_id,
                    )
                ).first()
                if row is not None and row.status in ("pending", "approved"):
                    raise ContractError(
                        f"{principal.msp_id} already has a {row.status} enrolment request for trial {trial_id!r} "
                        f"(made {row.requested_at}); expected one request per hospital per trial",
                        code="ALREADY_EXISTS",
                        detail={"msp_id": principal.msp_id, "status": row.status},
                    )
                if row is None:
                    row = EnrolmentRequest(trial_id=trial_id, msp_id=principal.msp_id)
                    session.add(row)
                row.encryption_public_key = key
                row.status = "pending"
                row.requested_at = now
                row.requested_by = _who(principal)
                row.decided_at = row.decided_by = row.reason = row.tx_id = None
                session.flush()
                return row.to_dict()
        except IntegrityError as exc:  # two requests raced; the other one won
            raise ContractError(
                f"{principal.msp_id} already has an enrolment request for trial {trial_id!r}",
                code="ALREADY_EXISTS",
                detail={"msp_id": principal.msp_id},
            ) from exc

    def enrolment_request(self, trial_id: str, msp_id: str) -> dict[str, Any]:
        with self.database.session() as session:
            row = session.scalars(
                select(EnrolmentRequest).where(
                    EnrolmentRequest.trial_id == trial_id, EnrolmentRequest.msp_id == msp_id
                )
            ).first()
            if row is None:
                raise ContractError(
                    f"no enrolment request from {msp_id} for trial {trial_id!r}",
                    code="NOT_FOUND",
                    detail={"trial_id": trial_id, "msp_id": msp_id},
                )
            return row.to_dict()

    def enrolment_requests(self, trial_id: str, status: str | None = None) -> list[dict[str, Any]]:
        self.trial(trial_id)
        with self.database.session() as session:
            query = (
                select(EnrolmentRequest)
                .where(EnrolmentRequest.trial_id == trial_id)
                .order_by(EnrolmentRequest.msp_id)
            )
            if status is not None:
                query = query.where(EnrolmentRequest.status == status)
            return [row.to_dict() for row in session.scalars(query)]

    def _set_request(
        self,
        trial_id: str,
        msp_id: str,
        status: str,
        principal: Principal | None,
        reason: str | None = None,
        tx_id: str | None = None,
    ) -> None:
        with self.database.session() as session:
            row = session.scalars(
                select(EnrolmentRequest).where(
                    EnrolmentRequest.trial_id == trial_id, EnrolmentRequest.msp_id == msp_id
                )
            ).first()
            if row is None:
                return
            row.status = status
            row.decided_at = int(time.time())
            row.decided_by = _who(principal)
            row.reason = reason
            if tx_id is not None:
                row.tx_id = tx_id

    def approve_enrolment(
        self, trial_id: str, msp_id: str, principal: Principal | None = None
    ) -> dict[str, Any]:
        """Enrol the hospital on the ledger with the key from its pending request."""
        self.trial(trial_id)
        request = self.enrolment_request(trial_id, msp_id)
        if request["status"] != "pending":
            existing = self._ledger_enrolment(trial_id, msp_id)
            if (
                request["status"] == "approved"
                and existing is not None
                and existing["status"] == "enrolled"
            ):
                return existing  # approving twice is harmless
            raise ContractError(
                f"the enrolment request of {msp_id} for trial {trial_id!r} is {request['status']}, expected pending",
                code="WRONG_STATE",
                detail={"msp_id": msp_id, "status": request["status"], "expected": "pending"},
            )
        args = {
            "trial_id": trial_id,
            "msp_id": msp_id,
            "encryption_public_key": request["encryption_public_key"],
        }
        try:
            result = self.admin_ledger.submit("enrol_hospital", args)
        except ContractError as exc:
            existing = self._ledger_enrolment(trial_id, msp_id)
            if (
                exc.code == "ALREADY_EXISTS"
                and existing is not None
                and existing["encryption_public_key"] == request["encryption_public_key"]
            ):
                # Enrolled earlier but the database update was lost: finish the bookkeeping.
                self._set_request(trial_id, msp_id, "approved", principal)
                return existing
            raise
        log.info(
            "enrol_hospital %s in %s by %s: tx %s", msp_id, trial_id, _who(principal), result.tx_id
        )
        self._set_request(trial_id, msp_id, "approved", principal, tx_id=result.tx_id)
        return result.result

    def reject_enrolment(
        self, trial_id: str, msp_id: str, reason: str | None, principal: Principal | None = None
    ) -> dict[str, Any]:
        request = self.enrolment_request(trial_id, msp_id)
        if request["status"] != "pending":
            raise ContractError(
                f"the enrolment request of {msp_id} for trial {trial_id!r} is {request['status']}, expected pending",
                code="WRONG_STATE",
                detail={"msp_id": msp_id, "status": request["status"], "expected": "pending"},
            )
        self._set_request(trial_id, msp_id, "rejected", principal, reason=reason)
        return self.enrolment_request(trial_id, msp_id)

    def remove_hospital(
        self, trial_id: str, msp_id: str, reason: str | None, principal: Principal | None = None
    ) -> dict[str, Any]:
        args: dict[str, Any] = {"trial_id": trial_id, "msp_id": msp_id}
        if reason:
            args["reason"] = reason
        record = self._admin("remove_hospital", args, principal)
        self._set_request(trial_id, msp_id, "removed", principal, reason=reason)
        return record

    # -- authentication support --------------------------------------------------------------
    def remember_nonce(self, principal: Principal) -> None:
        now = int(time.time())
        fresh = self.database.remember_nonce(
            principal.msp_id,
            principal.nonce,
            principal.timestamp,
            now=now,
            keep_seconds=2 * self.config.max_clock_skew + 60,
        )
        if not fresh:
            raise IdentityError(
                f"nonce {principal.nonce} of {principal.msp_id} was already used; a replayed request is refused "
                "(sign every request with a fresh nonce)",
                code="REPLAYED",
                detail={"msp_id": principal.msp_id, "nonce": principal.nonce},
            )

    def audit(self, **fields: Any) -> None:
        try:
            self.database.audit(**fields)
        except BcflError:
            log.exception("could not write the API audit log")
