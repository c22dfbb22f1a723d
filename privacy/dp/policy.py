"""A trial's DP policy, its plan (noise multiplier once per trial), and micro-epsilon units."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from bcfl_common.errors import PrivacyError

MICRO = 1_000_000
ACCOUNTANTS = ("rdp", "prv")
GRAD_SAMPLE_MODES = ("ghost", "hooks")


def to_micro_epsilon(epsilon: float, *, round_up: bool = True) -> int:
    """Epsilon as the integer micro-epsilon the ledger stores. Spent epsilon rounds up (never
    under-report a cost); pass ``round_up=False`` for a budget limit (never over-grant)."""
    if not isinstance(epsilon, int | float) or not math.isfinite(epsilon) or epsilon < 0:
        raise PrivacyError(f"epsilon: got {epsilon!r}, expected a finite number >= 0")
    scaled = epsilon * MICRO
    # Absorb binary floating point noise (1.1 * 1e6 = 1100000.0000000002) before rounding.
    nearest = round(scaled)
    if abs(scaled - nearest) < 1e-6:
        return int(nearest)
    return int(math.ceil(scaled) if round_up else math.floor(scaled))


def from_micro_epsilon(micro: int) -> float:
    """Micro-epsilon (ledger integer) to epsilon."""
    if not isinstance(micro, int) or isinstance(micro, bool) or micro < 0:
        raise PrivacyError(f"micro-epsilon: got {micro!r}, expected an integer >= 0")
    return micro / MICRO


@dataclass(frozen=True)
class DPPolicy:
    """The trial's DP policy, as the admin sets it when creating the trial.

    ``target_epsilon`` is for the whole trial (all ``rounds`` of ``local_epochs`` each) at
    ``delta``; a hospital's own budget, possibly smaller, is a :class:`PrivacyBudget`.
    """

    target_epsilon: float
    delta: float
    max_grad_norm: float
    rounds: int
    local_epochs: int = 1
    accountant: str = "rdp"
    grad_sample_mode: str = "ghost"

    def __post_init__(self) -> None:
        def bad(field: str, expected: str) -> PrivacyError:
            return PrivacyError(
                f"DP policy {field}: got {getattr(self, field)!r}, expected {expected}",
                detail={"field": field, "value": str(getattr(self, field))},
            )

        if not _positive(self.target_epsilon):
            raise bad("target_epsilon", "a finite number > 0")
        if not (_positive(self.delta) and self.delta < 1):
            raise bad("delta", "a number in (0, 1)")
        if not _positive(self.max_grad_norm):
            raise bad("max_grad_norm", "a finite number > 0")
        for field in ("rounds", "local_epochs"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(field, "an integer >= 1")
        if self.accountant not in ACCOUNTANTS:
            raise bad("accountant", f"one of {ACCOUNTANTS}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise bad("grad_sample_mode", f"one of {GRAD_SAMPLE_MODES}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DPPolicy:
        known = set(cls.__dataclass_fields__)
        extra = set(data) - known
        if extra:
            raise PrivacyError(
                f"DP policy: unknown fields {sorted(extra)}, expected {sorted(known)}"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise PrivacyError(f"DP policy: {exc}") from exc


def _positive(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@dataclass(frozen=True)
class DPPlan:
    """One silo's plan for a trial: its sampling rate, steps, and the noise multiplier that makes
    the whole plan spend exactly the trial's target epsilon. Computed once per trial."""

    sample_rate: float
    steps_per_round: int
    total_steps: int
    noise_multiplier: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_trial(policy: DPPolicy, *, batches_per_epoch: int) -> DPPlan:
    """Noise multiplier for the whole trial: ``rounds * local_epochs * batches_per_epoch`` steps
    with Poisson sampling at rate ``1 / batches_per_epoch`` (Opacus' DPDataLoader)."""
    if not isinstance(batches_per_epoch, int) or batches_per_epoch < 1:
        raise PrivacyError(
            f"batches_per_epoch: got {batches_per_epoch!r}, expected an integer >= 1"
        )
    from opacus.accountants.utils import get_noise_multiplier

    sample_rate = 1.0 / batches_per_epoch
    steps_per_round = policy.local_epochs * batches_per_epoch
    total = policy.rounds * steps_per_round
    try:
        sigma = get_noise_multiplier(
            target_epsilon=policy.target_epsilon,
            target_delta=policy.delta,
            sample_rate=sample_rate,
            steps=total,
            accountant=policy.accountant,
            epsilon_tolerance=0.001 * policy.target_epsilon,
        )
    except ValueError as exc:
        raise PrivacyError(
            f"DP policy target_epsilon: {policy.target_epsilon} is too small for {total} steps "
            f"at sampling rate {sample_rate:.4g} ({exc})"
        ) from exc
    return DPPlan(sample_rate, steps_per_round, total, float(sigma))
