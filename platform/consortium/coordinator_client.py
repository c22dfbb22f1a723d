"""A small client of the coordinator API: every request signed as a consortium identity, every error a BcflError again."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from bcfl_common.errors import (
    AuthError,
    BcflError,
    ContractError,
    IdentityError,
    LedgerError,
    SchemaError,
    StoreError,
)
from consortium.http_auth import BcflAuth
from consortium.identity import Identity

DEFAULT_TIMEOUT = 60.0


class CoordinatorUnavailable(BcflError):
    """The coordinator could not be reached, or answered something that is not its API."""

    code = "COORDINATOR_UNAVAILABLE"
    exit_code = 15
    http_status = 503


def _contract_codes() -> frozenset[str]:
    from chaincode.contract import CODES

    return frozenset(CODES)


def error_from_response(response: httpx.Response) -> BcflError:
    """Rebuild the BcflError an error answer describes (its code, message and detail kept)."""
    try:
        body = response.json()
        code, message, detail = str(body["code"]), str(body["message"]), body.get("detail") or {}
        if not isinstance(detail, dict):
            detail = {"detail": detail}
    except (ValueError, KeyError, TypeError):
        return CoordinatorUnavailable(
            f"{response.request.method} {response.request.url}: HTTP {response.status_code} without a bcfl error body "
            f"({response.text[:200]!r})",
            detail={"status": response.status_code},
        )
    status = response.status_code
    cls: type[BcflError]
    # Who-may-do-what answers keep their class whatever produced them (signature check, role
    # check or the contract); the code says which.
    if status == 401:
        cls = IdentityError
    elif status == 403:
        cls = AuthError
    elif code in _contract_codes():
        cls = ContractError
    elif status in (413, 422) or code == "INVALID_REQUEST":
        cls = SchemaError
    elif code.startswith("LEDGER"):
        cls = LedgerError
    elif code.startswith(("STORE", "ARTIFACT")):
        cls = StoreError
    elif status >= 500:
        cls = CoordinatorUnavailable
    else:
        cls = BcflError
    error = cls(message, code=code, detail=dict(detail, http_status=status))
    error.http_status = status
    return error


def _seg(value: str | int) -> str:
    return quote(str(value), safe="")


class CoordinatorClient:
    """One method per endpoint of the coordinator API (``/api/v1``), acting as ``identity``."""

    def __init__(
        self,
        base_url: str,
        identity: Identity,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self._http = httpx.Client(
            base_url=self.base_url, auth=BcflAuth(identity), timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------
    def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(
                method, "/api/v1" + path, json=json, params=params or None
            )
        except httpx.HTTPError as exc:
            raise CoordinatorUnavailable(
                f"coordinator at {self.base_url} cannot be reached ({type(exc).__name__}: {exc})",
                detail={"url": self.base_url},
            ) from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        try:
            return response.json()
        except ValueError as exc:
            raise CoordinatorUnavailable(
                f"{method} {path}: the answer is not JSON ({response.text[:200]!r})"
            ) from exc

    def health(self) -> dict[str, Any]:
        try:
            response = self._http.get("/healthz")
        except httpx.HTTPError as exc:
            raise CoordinatorUnavailable(
                f"coordinator at {self.base_url} cannot be reached ({exc})"
            ) from exc
        if response.status_code != 200:
            raise error_from_response(response)
        return response.json()

    # -- any member --------------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        return self.request("GET", "/whoami")

    def list_trials(self, state: str | None = None) -> list[dict[str, Any]]:
        return self.request("GET", "/trials", params={"state": state})

    def trial(self, trial_id: str) -> dict[str, Any]:
        return self.request("GET", f"/trials/{_seg(trial_id)}")

    def progress(self, trial_id: str) -> dict[str, Any]:
        """Where the trial stands, whom it waits for and why (GET /trials/{id}/progress)."""
        return self.request("GET", f"/trials/{_seg(trial_id)}/progress")

    def enrolments(self, trial_id: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/trials/{_seg(trial_id)}/enrolments")

    def dp_schedule(self, trial_id: str) -> dict[str, Any]:
        return self.request("GET", f"/trials/{_seg(trial_id)}/dp-schedule")

    def datasets(self, msp_id: str | None = None) -> list[dict[str, Any]]:
        return self.request("GET", "/datasets", params={"msp_id": msp_id})

    def dataset_budget(self, msp_id: str, dataset_id: str) -> dict[str, Any]:
        return self.request("GET", f"/datasets/{_seg(msp_id)}/{_seg(dataset_id)}/budget")

    def audit_report(self, report: str, trial_id: str | None = None) -> dict[str, Any]:
        """An auditor's report (admins and auditors): ``trials``, or ``trial``, ``privacy``,
        ``rewards``, ``lineage`` of ``trial_id``."""
        if report == "trials":
            return self.request("GET", "/audit/trials")
        suffix = "" if report == "trial" else f"/{_seg(report)}"
        return self.request("GET", f"/audit/trials/{_seg(trial_id or '')}{suffix}")

    def audit_verify(self, trial_id: str | None = None) -> dict[str, Any]:
        return self.request("GET", "/audit/verify", params={"trial_id": trial_id})

    def trial_keys(self, trial_id: str) -> dict[str, Any]:
        return self.request("GET", f"/trials/{_seg(trial_id)}/keys")

    def rounds(self, trial_id: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/trials/{_seg(trial_id)}/rounds")

    def round(self, trial_id: str, round_number: int, attempt: int | None = None) -> dict[str, Any]:
        return self.request(
            "GET",
            f"/trials/{_seg(trial_id)}/rounds/{int(round_number)}",
            params={"attempt": attempt},
        )

    def submissions(
        self, trial_id: str, round_number: int, attempt: int | None = None
    ) -> list[dict[str, Any]]:
        return self.request(
            "GET",
            f"/trials/{_seg(trial_id)}/rounds/{int(round_number)}/submissions",
            params={"attempt": attempt},
        )

    def votes(
        self, trial_id: str, round_number: int, attempt: int | None = None
    ) -> list[dict[str, Any]]:
        return self.request(
            "GET",
            f"/trials/{_seg(trial_id)}/rounds/{int(round_number)}/votes",
            params={"attempt": attempt},
        )

    def acceptance(
        self, trial_id: str, round_number: int, attempt: int | None = None
    ) -> dict[str, Any]:
        return self.request(
            "GET",
            f"/trials/{_seg(trial_id)}/rounds/{int(round_number)}/acceptance",
            params={"attempt": attempt},
        )

    def attestations(
        self, trial_id: str, round_number: int, attempt: int | None = None
    ) -> list[dict[str, Any]]:
        return self.request(
            "GET",
            f"/trials/{_seg(trial_id)}/rounds/{int(round_number)}/attestations",
            params={"attempt": attempt},
        )

    def privacy_ledger(self, trial_id: str, msp_id: str | None = None) -> list[dict[str, Any]]:
        return self.request("GET", f"/trials/{_seg(trial_id)}/privacy", params={"msp_id": msp_id})

    def rewards(self, trial_id: str, msp_id: str | None = None) -> dict[str, Any]:
        return self.request("GET", f"/trials/{_seg(trial_id)}/rewards", params={"msp_id": msp_id})

    def lineage(self, trial_id: str) -> dict[str, Any]:
        return self.request("GET", f"/trials/{_seg(trial_id)}/lineage")

    def history(
        self,
        trial_id: str,
        record: str = "trial",
        *,
        round_number: int | None = None,
        attempt: int | None = None,
        msp_id: str | None = None,
    ) -> list[dict[str, Any]]:
        params = {"record": record, "round": round_number, "attempt": attempt, "msp_id": msp_id}
        return self.request("GET", f"/trials/{_seg(trial_id)}/history", params=params)

    def events(
        self, trial_id: str, since_block: int = 0, limit: int | None = None
    ) -> dict[str, Any]:
        """``{events: [...], next_block}``: pass ``next_block`` as ``since_block`` to continue."""
        return self.request(
            "GET",
            f"/trials/{_seg(trial_id)}/events",
            params={"since_block": since_block, "limit": limit},
        )

    def ledger(self) -> dict[str, Any]:
        return self.request("GET", "/ledger")

    def verify_ledger(self) -> dict[str, Any]:
        return self.request("GET", "/ledger/verify")

    def scheduler_status(self) -> dict[str, Any]:
        return self.request("GET", "/scheduler")

    def audit_log(
        self, limit: int | None = None, msp_id: str | None = None
    ) -> list[dict[str, Any]]:
        return self.request("GET", "/audit-log", params={"limit": limit, "msp_id": msp_id})

    # -- silo --------------------------------------------------------------------------------
    def request_enrolment(
        self, trial_id: str, encryption_public_key: str | bytes
    ) -> dict[str, Any]:
        """Ask to join ``trial_id`` with the hospital's X25519 public key (PEM)."""
        key = (
            encryption_public_key.decode("ascii")
            if isinstance(encryption_public_key, bytes)
            else encryption_public_key
        )
        return self.request(
            "POST",
            f"/silo/trials/{_seg(trial_id)}/enrolment-requests",
            json={"encryption_public_key": key},
        )

    def enrolment_request(self, trial_id: str, msp_id: str | None = None) -> dict[str, Any]:
        msp_id = msp_id or self.identity.msp_id
        return self.request(
            "GET", f"/silo/trials/{_seg(trial_id)}/enrolment-requests/{_seg(msp_id)}"
        )

    # -- admin -------------------------------------------------------------------------------
    def create_trial(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/admin/trials", json=spec)

    def open_enrolment(self, trial_id: str) -> dict[str, Any]:
        return self.request("POST", f"/admin/trials/{_seg(trial_id)}/open-enrolment")

    def enrolment_requests(self, trial_id: str, status: str | None = None) -> list[dict[str, Any]]:
        return self.request(
            "GET", f"/admin/trials/{_seg(trial_id)}/enrolment-requests", params={"status": status}
        )

    def enrol(self, trial_id: str, msp_id: str) -> dict[str, Any]:
        return self.request(
            "POST", f"/admin/trials/{_seg(trial_id)}/enrolments", json={"msp_id": msp_id}
        )

    def reject_enrolment(
        self, trial_id: str, msp_id: str, reason: str | None = None
    ) -> dict[str, Any]:
        return self.request(
            "POST",
            f"/admin/trials/{_seg(trial_id)}/enrolment-requests/{_seg(msp_id)}/reject",
            json={"reason": reason},
        )

    def remove_hospital(
        self, trial_id: str, msp_id: str, reason: str | None = None
    ) -> dict[str, Any]:
        return self.request(
            "DELETE",
            f"/admin/trials/{_seg(trial_id)}/enrolments/{_seg(msp_id)}",
            params={"reason": reason},
        )

    def start_trial(self, trial_id: str) -> dict[str, Any]:
        return self.request("POST", f"/admin/trials/{_seg(trial_id)}/start")

    def halt_trial(self, trial_id: str, reason: str) -> dict[str, Any]:
        return self.request("POST", f"/admin/trials/{_seg(trial_id)}/halt", json={"reason": reason})

    def rollback(
        self,
        trial_id: str,
        to_round: int,
        reason: str | None = None,
        *,
        final_round: int | None = None,
        abort_current: bool = False,
    ) -> dict[str, Any]:
        return self.request(
            "POST",
            f"/admin/trials/{_seg(trial_id)}/rollback",
            json={
                "to_round": to_round,
                "reason": reason,
                "final_round": final_round,
                "abort_current": abort_current,
            },
        )

    def resume_trial(
        self,
        trial_id: str,
        reason: str,
        *,
        to_round: int | None = None,
        final_round: int | None = None,
    ) -> dict[str, Any]:
        return self.request(
            "POST",
            f"/admin/trials/{_seg(trial_id)}/resume",
            json={"reason": reason, "to_round": to_round, "final_round": final_round},
        )

    def complete_trial(self, trial_id: str) -> dict[str, Any]:
        return self.request("POST", f"/admin/trials/{_seg(trial_id)}/complete")

    def open_round(self, trial_id: str) -> dict[str, Any]:
        return self.request("POST", f"/admin/trials/{_seg(trial_id)}/rounds")

    def abort_round(self, trial_id: str, round_number: int, reason: str) -> dict[str, Any]:
        return self.request(
            "POST",
            f"/admin/trials/{_seg(trial_id)}/rounds/{int(round_number)}/abort",
            json={"reason": reason},
        )

    def set_trial_settlement(
        self, trial_id: str, enabled: bool, reason: str | None = None
    ) -> dict[str, Any]:
        return self.request(
            "PUT",
            f"/admin/trials/{_seg(trial_id)}/settlement",
            json={"enabled": enabled, "reason": reason},
        )

    def trial_settlement(self, trial_id: str) -> dict[str, Any]:
        return self.request("GET", f"/trials/{_seg(trial_id)}/settlement")

    def run_scheduler(self) -> dict[str, Any]:
        return self.request("POST", "/admin/scheduler/run")
