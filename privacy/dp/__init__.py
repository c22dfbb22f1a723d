"""Differential privacy for local training: policy and plan, persisted accountant, budget."""

from __future__ import annotations

from privacy.dp.accountant import (
    PrivacyAccountant,
    PrivacyBudget,
    RoundCost,
    epsilon_of,
)
from privacy.dp.policy import (
    MICRO,
    DPPlan,
    DPPolicy,
    from_micro_epsilon,
    plan_trial,
    to_micro_epsilon,
)
from privacy.dp.schedule import (
    dp_schedule,
    schedule_differences,
    schedule_entry,
    trial_plan,
    trial_policy,
    update_norm_bound,
)
from privacy.dp.training import (
    PoissonTensorLoader,
    PrivateRound,
    fix_model,
    make_private,
    model_problems,
    validate_model,
)

__all__ = [
    "MICRO",
    "DPPlan",
    "DPPolicy",
    "PoissonTensorLoader",
    "PrivacyAccountant",
    "PrivacyBudget",
    "PrivateRound",
    "RoundCost",
    "dp_schedule",
    "epsilon_of",
    "fix_model",
    "from_micro_epsilon",
    "make_private",
    "model_problems",
    "plan_trial",
    "schedule_differences",
    "schedule_entry",
    "to_micro_epsilon",
    "trial_plan",
    "trial_policy",
    "update_norm_bound",
    "validate_model",
]
