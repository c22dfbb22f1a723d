"""Request bodies of the coordinator API (pydantic, unknown fields refused); the contract's own records are returned as they are."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
LABEL = r"^[A-Za-z0-9][A-Za-z0-9 ._:/+-]{0,127}$"
MAX_REASON = 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    name: str = Field(
        pattern=LABEL, description="A model name from the model registry (model_registry.models)."
    )
    hyperparameters: dict[str, Any] = Field(default_factory=dict)


class DPPolicy(_Strict):
    """The contract's DP policy (integers in micro/milli units; see chaincode.contract)."""

    enabled: bool = True
    reason: str | None = Field(default=None, max_length=MAX_REASON)
    target_epsilon_micro: int | None = Field(default=None, ge=1, le=10**12)
    delta: str | list[int] | None = Field(
        default=None, description='"1e-5", "1/100000" or [num, den]'
    )
    max_grad_norm_milli: int | None = Field(default=None, ge=1, le=10**9)
    noise_multiplier_milli: int | None = Field(default=None, ge=1, le=10**9)
    accountant: str | None = Field(default=None, pattern=r"^(rdp|prv)$")


class HEPolicy(_Strict):
    enabled: bool = True
    preset: str | None = Field(
        default=None, description="A CKKS preset of privacy.he (default: its DEFAULT_PRESET)."
    )
    reason: str | None = Field(default=None, max_length=MAX_REASON)


class EvaluationPolicy(_Strict):
    acceptance_threshold_micro: int | None = Field(default=None, ge=0, le=10**12)
    min_voters: int | None = Field(default=None, ge=1, le=1000)
    reward_per_round: int | None = Field(default=None, ge=0, le=10**15)


class PhaseSeconds(_Strict):
    submit: int | None = Field(default=None, ge=1, le=30 * 24 * 3600)
    reveal: int | None = Field(default=None, ge=1, le=30 * 24 * 3600)
    vote_commit: int | None = Field(default=None, ge=1, le=30 * 24 * 3600)
    vote_reveal: int | None = Field(default=None, ge=1, le=30 * 24 * 3600)


class TrialSpec(_Strict):
    """A new trial. The coordinator builds the (public, randomly initialised) initial model from
    ``model``, ``data_schema`` and ``initial_model_seed``, stores it and creates the trial."""

    trial_id: str = Field(pattern=IDENTIFIER)
    task: str = Field(pattern=LABEL)
    data_schema: dict[str, Any]
    model: ModelSpec
    rounds: int = Field(ge=1, le=1000)
    min_silos: int = Field(ge=2, le=1000)
    dp: DPPolicy = Field(default_factory=DPPolicy)
    he: HEPolicy = Field(default_factory=HEPolicy)
    evaluation: EvaluationPolicy = Field(default_factory=EvaluationPolicy)
    phase_seconds: PhaseSeconds = Field(default_factory=PhaseSeconds)
    initial_model_seed: int = Field(default=0, ge=0, le=2**32 - 1)
    open_enrolment: bool = Field(
        default=True, description="Open enrolment right after creating the trial."
    )


class EnrolmentRequestBody(_Strict):
    encryption_public_key: str = Field(
        max_length=4096,
        description="The hospital's X25519 public key (PEM SubjectPublicKeyInfo, or base64 of its 32 raw bytes).",
    )
    msp_id: str | None = Field(
        default=None, pattern=IDENTIFIER, description="Optional; must be the caller's own MSP id."
    )


class EnrolBody(_Strict):
    msp_id: str = Field(pattern=IDENTIFIER)


class ReasonBody(_Strict):
    reason: str = Field(min_length=1, max_length=MAX_REASON)


class OptionalReasonBody(_Strict):
    reason: str | None = Field(default=None, max_length=MAX_REASON)


class RollbackBody(_Strict):
    to_round: int = Field(ge=0, le=1000)
    reason: str | None = Field(default=None, max_length=MAX_REASON)


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a stable code, a message naming field, value and expectation, and detail."""

    code: str
    message: str
    detail: dict[str, Any] = Field(default_factory=dict)
