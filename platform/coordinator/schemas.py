"""The coordinator API's request bodies (pydantic, unknown fields refused) and response models.

Responses that are ledger records use the kernel's typed records (``bcfl_common.records``), made
tolerant here: a key the record type does not (yet) name is passed through unchanged, never
dropped, because the contract's record is returned exactly as it is stored. The coordinator's own
answers (enrolment requests, events, scheduler and settlement status) are pydantic models that
likewise keep any further keys.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, with_config

from bcfl_common import records

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
    """How the hospitals' findings decide a round (``chaincode.rules.judge_round``); omitted keys
    take the contract's defaults."""

    acceptance_threshold_micro: int | None = Field(
        default=None, ge=0, le=10**12, description="Harm threshold: score below -this is harmful."
    )
    min_voters: int | None = Field(default=None, ge=1, le=1000)
    reward_per_round: int | None = Field(default=None, ge=0, le=10**15)
    max_weight_share_micro: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Cap on an update's aggregation-weight share."
    )
    duplicate_similarity_micro: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="Cosine similarity at or above which a candidate duplicates an earlier update.",
    )
    max_norm_ratio_milli: int | None = Field(
        default=None,
        ge=1000,
        le=10**6,
        description="A norm over this multiple of the round's reference norm is an outlier.",
    )
    max_update_norm_milli: int | None = Field(
        default=None,
        ge=1,
        le=10**12,
        description="Explicit bound on an update's L2 norm per unit weight (default: each hospital's DP schedule).",
    )
    voter_reward_share_micro: int | None = Field(
        default=None, ge=0, le=1_000_000, description="Part of each round's pool paid to voters."
    )
    harm_se_milli: int | None = Field(
        default=None,
        ge=0,
        le=10_000,
        description="Harm must also exceed this many thousandths of the voter's standard error "
        "of a score over its validation rows, the lower median of those it reported in the "
        "round (default 2000; 0: the threshold alone).",
    )
    norm_outlier_scaling: Literal["none", "sqrt_sample_weight"] | None = Field(
        default=None,
        description="How norms are compared with the round's reference to find outliers: per "
        "square root of sample weight (the default with DP off: a hospital with more rows takes "
        "more local steps) or raw (the default with DP on: an update's norm is mostly its noise).",
    )


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
    max_retries: int = Field(
        default=2,
        ge=0,
        le=20,
        description="How many failed attempts in a row a round may have before the trial halts.",
    )
    dp: DPPolicy = Field(default_factory=DPPolicy)
    he: HEPolicy = Field(default_factory=HEPolicy)
    evaluation: EvaluationPolicy = Field(default_factory=EvaluationPolicy)
    phase_seconds: PhaseSeconds = Field(default_factory=PhaseSeconds)
    clock_tolerance_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="Two commitments to the same bytes closer than this in time are a tie that "
        "gives the bytes to nobody (default 900: on Fabric a transaction's time is set by its "
        "client and peers accept it within CORE_PEER_AUTHENTICATION_TIMEWINDOW, 15 minutes by "
        "default; 0 suits a ledger that stamps time itself).",
    )
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
    final_round: int | None = Field(
        default=None, ge=1, le=1000, description="Shorten the plan: complete after this round."
    )
    abort_current: bool = Field(
        default=False, description="Abort the round in progress in the same transaction."
    )


class ResumeBody(_Strict):
    reason: str = Field(min_length=1, max_length=MAX_REASON)
    to_round: int | None = Field(
        default=None, ge=0, le=1000, description="Also roll back to this finalized round."
    )
    final_round: int | None = Field(
        default=None, ge=1, le=1000, description="Shorten the plan: complete after this round."
    )


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a stable code, a message naming field, value and expectation, and detail."""

    code: str
    message: str
    detail: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Responses: ledger records, passed through as the contract returns them
# ---------------------------------------------------------------------------------------------

_PASS_THROUGH = ConfigDict(extra="allow")


@with_config(_PASS_THROUGH)
class TrialRecord(records.Trial):
    """A trial as stored on the ledger (``get_trial``)."""


@with_config(_PASS_THROUGH)
class EnrolmentRecord(records.Enrolment):
    """A hospital's enrolment on the ledger."""


@with_config(_PASS_THROUGH)
class TrialKeysRecord(records.TrialKeys):
    """The trial's public HE context and the secret contexts sealed to each hospital (refs)."""


@with_config(_PASS_THROUGH)
class RoundRecord(records.Round):
    """One attempt of one round."""


@with_config(_PASS_THROUGH)
class UpdateRecord(records.Update):
    """A hospital's update commitment and reveal."""


@with_config(_PASS_THROUGH)
class VoteRecord(records.Vote):
    """A voter's commitment and revealed scores."""


@with_config(_PASS_THROUGH)
class AcceptanceRecord(records.Acceptance):
    """What the revealed votes decided, computed by the contract."""


@with_config(_PASS_THROUGH)
class AttestationRecord(records.Attestation):
    """A hospital's attestation of the round's model."""


@with_config(_PASS_THROUGH)
class PrivacyAccountRecord(records.PrivacyAccount):
    """A hospital's cumulative epsilon in a trial."""


@with_config(_PASS_THROUGH)
class RewardsRecord(records.Rewards):
    """Reward accounts and per-round rewards of a trial."""


@with_config(_PASS_THROUGH)
class LineageRecord(records.Lineage):
    """The trial's model lineage and rollbacks."""


@with_config(_PASS_THROUGH)
class DpScheduleRecord(records.DpSchedule):
    """Every enrolled hospital's public DP schedule, recorded when the trial started."""


@with_config(_PASS_THROUGH)
class DatasetRecord(records.Dataset):
    """A hospital's registered dataset: salted commitment, record count, lifetime epsilon, trials."""


@with_config(_PASS_THROUGH)
class DatasetBudgetRecord(records.DatasetBudget):
    """A dataset's lifetime budget: committed by the trials it joined, and what remains."""


@with_config(_PASS_THROUGH)
class HistoryRecord(records.HistoryEntry):
    """One value a ledger record had, with the transaction that wrote it."""


# ---------------------------------------------------------------------------------------------
# Responses: the coordinator's own answers
# ---------------------------------------------------------------------------------------------


class _Answer(BaseModel):
    model_config = _PASS_THROUGH


class Health(_Answer):
    status: str


class Caller(_Answer):
    """The authenticated caller, from its certificate."""

    msp_id: str
    name: str
    role: str
    organisation_kind: str | None
    role_honoured: bool


class EnrolmentRequest(_Answer):
    """A hospital's request to join a trial, kept by the coordinator until an admin decides."""

    trial_id: str
    msp_id: str
    encryption_public_key: str
    status: str
    requested_at: int
    requested_by: str
    decided_at: int | None
    decided_by: str | None
    reason: str | None
    tx_id: str | None


class TrialEvent(_Answer):
    block_number: int
    tx_id: str
    name: str
    payload: dict[str, Any]


class EventsPage(_Answer):
    """A page of a trial's ledger events; continue from ``next_block``."""

    trial_id: str
    since_block: int
    next_block: int
    height: int
    events: list[TrialEvent]


class LedgerInfo(_Answer):
    url_scheme: str
    height: int


class LedgerVerification(_Answer):
    """What re-verifying the whole chain found; ``problems`` is empty when everything verifies."""

    ok: bool
    blocks: int
    transactions: int
    problems: list[str]
    checks: list[str]


class SchedulerStep(_Answer):
    id: int
    trial_id: str
    round: int | None
    attempt: int | None
    step: str
    status: str
    tx_id: str | None
    block_number: int | None
    detail: dict[str, Any] | None
    started_at: float
    finished_at: float | None


class TrialProgress(_Answer):
    """Where a trial stands, whom it waits for and why (``coordinator.progress``)."""

    trial_id: str
    state: str
    code: str | None = Field(
        description="Why it ended: COMPLETED, HALTED_BY_ADMIN, TOO_FEW_HOSPITALS, RETRIES_EXHAUSTED, BUDGETS_SPENT"
    )
    round: int | None
    attempt: int | None
    phase: str | None
    deadline: int | None
    finalized: int
    final_round: int
    failed_attempts: int
    max_retries: int
    waiting_for: list[str]
    reason: str


class SchedulerStatus(_Answer):
    running: bool
    poll_interval: float
    ticks: int
    last_tick_at: float | None
    last_error: str | None
    ledger_height: int | None
    trials: dict[str, Any]
    recent_steps: list[SchedulerStep]
    settlement: dict[str, Any]


class StepOutcome(_Answer):
    """What one scheduler step did for one trial."""

    trial_id: str
    action: str
    status: str
    round: int | None
    attempt: int | None
    tx_id: str | None
    detail: dict[str, Any]
    at: float


class SchedulerRun(_Answer):
    outcomes: list[StepOutcome]


class SettlementSwitch(_Answer):
    trial_id: str
    enabled: bool
    changed_at: float
    changed_by: str
    reason: str | None
    halted: dict[str, Any] | None


class TrialSettlement(_Answer):
    """The trial's settlement switch, any halt, and (when configured) its rounds' settlements."""

    trial_id: str
    configured: bool
    enabled: bool
    switch: SettlementSwitch | None
    halted: dict[str, Any] | None


class AuditReport(_Answer):
    """A report of ``bcfl audit`` (coordinator.audit*): ``ok`` false when a check failed, every
    failed check a sentence in ``problems``; the rest of the report's keys pass through."""

    ok: bool
    checks: list[str]
    problems: list[str]


class AuditLogEntry(_Answer):
    id: int
    at: float
    msp_id: str | None
    name: str | None
    role: str | None
    method: str
    path: str
    status: int
    code: str | None
