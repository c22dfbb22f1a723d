"""A hospital's public DP schedule for a trial, and the bound on the norm of its updates.

The schedule is what the contract charges instead of trusting a hospital's word: from the trial's
DP policy (on the ledger), the trial's local-training settings (its hyperparameters) and the
number of training records the hospital registered, anyone can recompute with Opacus

* the hospital's plan (sampling rate ``1 / batches_per_epoch``, steps per round, and the noise
  multiplier that makes ``rounds`` rounds spend exactly the trial's target epsilon),
* its cumulative epsilon after 1, 2, ..., ``rounds`` disclosed updates (integer micro-epsilon,
  rounded up), and
* the L2 norm that an honestly clipped and noised update cannot exceed (except with probability
  below about 1e-8): :func:`update_norm_bound`.

The coordinator records it when the trial starts, each silo checks its own entry before it trains
(and plans its training with the same functions), and ``bcfl audit verify`` recomputes every entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from bcfl_common.errors import PrivacyError
from privacy.dp.accountant import epsilon_of
from privacy.dp.policy import DPPlan, DPPolicy, plan_trial, to_micro_epsilon

# Opacus' grad-sample mode the silo agent trains with (its models are small; hooks is exact).
SILO_GRAD_SAMPLE_MODE = "hooks"
# Tail allowances of the norm bound: Poisson batch sizes (standard deviations of the number of
# samples drawn in a round) and the Gaussian noise's norm (its concentration, t in
# P(|z| > sigma C (sqrt(d T) + t)) <= exp(-t^2 / 2)).
BATCH_TAIL_STDS = 6.0
NOISE_TAIL = 6.0
# Adam's step per coordinate is at most about lr * (1 - beta1) / sqrt(1 - beta2) ~ 3.16 lr
# (torch's defaults beta1 = 0.9, beta2 = 0.999), whatever the gradient.
ADAM_STEP_FACTOR = 3.2


def delta_of(record: Mapping[str, Any]) -> float:
    """The trial's delta: the ledger stores a reduced fraction [num, den] (or a string)."""
    delta = record["delta"]
    if isinstance(delta, list | tuple):
        return float(Fraction(int(delta[0]), int(delta[1])))
    return float(Fraction(str(delta)))


def trial_policy(trial: Mapping[str, Any], *, local_epochs: int) -> DPPolicy | None:
    """The trial's DP policy as ``privacy.dp`` objects (None when the trial records DP off)."""
    record = trial["dp"]
    if not record.get("enabled", True):
        return None
    accountant = record.get("accountant", "rdp")
    if accountant not in ("rdp", "prv"):
        raise PrivacyError(
            f"trial {trial['trial_id']!r} dp.accountant: got {accountant!r}, expected rdp or prv "
            "(the accountants privacy.dp implements)"
        )
    return DPPolicy(
        target_epsilon=record["target_epsilon_micro"] / 1_000_000,
        delta=delta_of(record),
        max_grad_norm=record["max_grad_norm_milli"] / 1000.0,
        rounds=int(trial["rounds"]),
        local_epochs=local_epochs,
        accountant=accountant,
        grad_sample_mode=SILO_GRAD_SAMPLE_MODE,
    )


def trial_plan(trial: Mapping[str, Any], policy: DPPolicy, *, batches_per_epoch: int) -> DPPlan:
    """The hospital's plan for the whole trial; a noise multiplier fixed by the trial wins."""
    fixed = trial["dp"].get("noise_multiplier_milli")
    if fixed:
        steps = policy.local_epochs * batches_per_epoch
        return DPPlan(1.0 / batches_per_epoch, steps, policy.rounds * steps, fixed / 1000.0)
    return plan_trial(policy, batches_per_epoch=batches_per_epoch)


def batches_per_epoch(training_records: int, batch_size: int) -> int:
    return max(1, math.ceil(training_records / batch_size))


def update_norm_bound(
    plan: DPPlan | None,
    *,
    training_records: int,
    n_params: int,
    max_grad_norm: float | None,
    learning_rate: float,
    optimizer: str,
    momentum: float,
    weight_decay: float,
) -> float | None:
    """The L2 norm that one round's parameter delta of an honest hospital stays below.

    DP-SGD (Opacus, ``mean`` reduction over the expected batch size B = q N): each step moves the
    parameters by ``lr * (sum of the batch's clipped per-sample gradients + z) / B`` with every
    clipped gradient of norm <= C and ``z ~ N(0, (sigma C)^2 I_d)``. Over the round's T steps the
    clipped part sums to at most ``lr C S / B`` where S, the number of samples drawn, is Poisson-
    binomial with mean T B (allowed BATCH_TAIL_STDS standard deviations above it), and the noise,
    independent between steps, to a Gaussian of norm at most ``lr sigma C (sqrt(d T) + t) / B``.
    SGD momentum m multiplies both by at most 1 / (1 - m). Adam moves each coordinate by at most
    about ADAM_STEP_FACTOR * lr per step, whatever it is fed. Weight decay adds a term that grows
    with the weights themselves, and plain SGD without DP clips nothing: in those cases no bound
    follows from the policy and None is returned (the trial may set an explicit one).
    """
    if plan is None or max_grad_norm is None:
        return None
    steps = plan.steps_per_round
    if optimizer == "adam":
        return ADAM_STEP_FACTOR * learning_rate * steps * math.sqrt(n_params)
    if weight_decay != 0.0 or not 0.0 <= momentum < 1.0:
        return None
    expected_batch = plan.sample_rate * training_records
    drawn = steps * expected_batch
    drawn_bound = drawn + BATCH_TAIL_STDS * math.sqrt(drawn) + BATCH_TAIL_STDS
    clipped = max_grad_norm * drawn_bound / expected_batch
    noise = (
        plan.noise_multiplier * max_grad_norm * (math.sqrt(n_params * steps) + NOISE_TAIL)
    ) / expected_batch
    return learning_rate * (clipped + noise) / (1.0 - momentum)


def schedule_entry(
    trial: Mapping[str, Any],
    *,
    training_records: int,
    n_params: int,
    learning_rate: float,
    batch_size: int,
    local_epochs: int,
    optimizer: str,
    momentum: float,
    weight_decay: float,
) -> dict[str, Any]:
    """One hospital's ``ScheduleEntry`` (``bcfl_common.records``) for a trial with DP on.

    ``epsilon_micro[k-1]`` is the cumulative epsilon after k disclosed updates of
    ``steps_per_round`` steps each (Opacus, the trial's accountant, rounded up to micro-epsilon);
    ``max_update_norm_milli`` is :func:`update_norm_bound` rounded up to milli-units.
    """
    if not isinstance(training_records, int) or training_records < 1:
        raise PrivacyError(f"training_records: got {training_records!r}, expected an integer >= 1")
    policy = trial_policy(trial, local_epochs=local_epochs)
    if policy is None:
        raise PrivacyError(f"trial {trial['trial_id']!r} has DP off: it has no DP schedule")
    batches = batches_per_epoch(training_records, batch_size)
    plan = trial_plan(trial, policy, batches_per_epoch=batches)
    epsilons = [
        to_micro_epsilon(
            epsilon_of(
                [(plan.noise_multiplier, plan.sample_rate, k * plan.steps_per_round)],
                delta=policy.delta,
                accountant=policy.accountant,
            )
        )
        for k in range(1, policy.rounds + 1)
    ]
    bound = update_norm_bound(
        plan,
        training_records=training_records,
        n_params=n_params,
        max_grad_norm=policy.max_grad_norm,
        learning_rate=learning_rate,
        optimizer=optimizer,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    return {
        "training_records": training_records,
        "batches_per_epoch": batches,
        "steps_per_round": plan.steps_per_round,
        "noise_multiplier_micro": round(plan.noise_multiplier * 1_000_000),
        "epsilon_micro": epsilons,
        # No bound follows from the policy (weight decay): the contract then checks none for
        # this hospital unless the trial sets max_update_norm_milli explicitly.
        "max_update_norm_milli": None if bound is None else max(1, math.ceil(bound * 1000)),
    }


def dp_schedule(
    trial: Mapping[str, Any],
    training_records: Mapping[str, int],
    training: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """Every enrolled hospital's entry: ``training_records`` is {msp_id: registered count},
    ``training`` the trial's ``model_registry.training_settings.training_inputs``."""
    return {
        msp_id: schedule_entry(trial, training_records=count, **training)
        for msp_id, count in sorted(training_records.items())
    }


def schedule_differences(recorded: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """What differs between a recorded ScheduleEntry and the recomputed one, field by field."""
    return [
        f"{name}: recorded {recorded.get(name)!r}, recomputed {expected[name]!r}"
        for name in expected
        if recorded.get(name) != expected[name]
    ]
