"""The one error hierarchy of bcfl: every failure a user can see is a BcflError subclass."""

from __future__ import annotations

from typing import Any


class BcflError(Exception):
    """Root of every bcfl error.

    ``code`` is stable (scripts and the API match on it); ``message`` names the field, the value and
    what was expected; ``detail`` carries structured context for the API's JSON body.
    """

    code: str = "BCFL_ERROR"
    exit_code: int = 1
    http_status: int = 400

    def __init__(
        self, message: str, *, code: str | None = None, detail: dict[str, Any] | None = None
    ):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.detail = detail or {}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "detail": self.detail}


class ConfigError(BcflError):
    code = "CONFIG"
    exit_code = 2


class IdentityError(BcflError):
    code = "IDENTITY"
    exit_code = 3
    http_status = 401


class ContractError(BcflError):
    """Raised by the consortium contract; ``code`` is one of ``chaincode.contract.CODES``."""

    code = "CONTRACT"
    exit_code = 4
    http_status = 409


class LedgerError(BcflError):
    code = "LEDGER"
    exit_code = 5
    http_status = 502


class LedgerIntegrityError(LedgerError):
    """A block, transaction or signature on the ledger does not verify."""

    code = "LEDGER_INTEGRITY"
    exit_code = 6


class StoreError(BcflError):
    code = "STORE"
    exit_code = 7
    http_status = 502


class StoreIntegrityError(StoreError):
    """Stored bytes do not match their content id."""

    code = "STORE_INTEGRITY"
    exit_code = 8


class UpdateFormatError(BcflError):
    code = "UPDATE_FORMAT"
    exit_code = 9
    http_status = 422


class PrivacyBudgetExceeded(BcflError):
    code = "PRIVACY_BUDGET_EXCEEDED"
    exit_code = 10
    http_status = 409


class PrivacyError(BcflError):
    code = "PRIVACY"
    exit_code = 11
    http_status = 422


class SchemaError(BcflError):
    code = "SCHEMA"
    exit_code = 12
    http_status = 422


class SettlementError(BcflError):
    code = "SETTLEMENT"
    exit_code = 13
    http_status = 502


class AuthError(BcflError):
    code = "UNAUTHORISED"
    exit_code = 14
    http_status = 403
