"""Local training (DP-SGD through privacy.dp unless the trial switches DP off) and evaluation."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bcfl_common.errors import ConfigError, PrivacyError
from model_registry.data_schema import is_binary
from model_registry.registry import build_from_spec, flatten, load_flat
from privacy import dp
from silo_agent.data import EncodedData

log = logging.getLogger(__name__)

# Defaults chosen for small tabular data (heart disease, breast cancer) with logistic regression.
DEFAULT_TRAINING = {
    "learning_rate": 0.1,
    "local_epochs": 1,
    "batch_size": 32,
    "optimizer": "sgd",
    "momentum": 0.0,
    "weight_decay": 0.0,
}
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainingSettings:
    learning_rate: float
    local_epochs: int
    batch_size: int
    optimizer: str
    momentum: float
    weight_decay: float

    @classmethod
    def from_hyperparameters(cls, hyperparameters: dict[str, Any] | None) -> TrainingSettings:
        hp = {
            **DEFAULT_TRAINING,
            **{k: v for k, v in (hyperparameters or {}).items() if k in DEFAULT_TRAINING},
        }
        settings = cls(
            learning_rate=float(hp["learning_rate"]),
            local_epochs=int(hp["local_epochs"]),
            batch_size=int(hp["batch_size"]),
            optimizer=str(hp["optimizer"]),
            momentum=float(hp["momentum"]),
            weight_decay=float(hp["weight_decay"]),
        )
        if not (math.isfinite(settings.learning_rate) and settings.learning_rate > 0):
            raise ConfigError(
                f"hyperparameter learning_rate: got {settings.learning_rate}, expected a number > 0",
                code="MODEL_SPEC",
            )
        if not 1 <= settings.local_epochs <= 1000:
            raise ConfigError(
                f"hyperparameter local_epochs: got {settings.local_epochs}, expected 1 to 1000",
                code="MODEL_SPEC",
            )
        if not 1 <= settings.batch_size <= 1_000_000:
            raise ConfigError(
                f"hyperparameter batch_size: got {settings.batch_size}, expected 1 to 1000000",
                code="MODEL_SPEC",
            )
        if settings.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"hyperparameter optimizer: got {settings.optimizer!r}, expected one of {list(OPTIMIZERS)}",
                code="MODEL_SPEC",
            )
        return settings

    def batches_per_epoch(self, n_train: int) -> int:
        return max(1, math.ceil(n_train / self.batch_size))


@dataclass(frozen=True)
class TrainResult:
    params: np.ndarray  # float32, the locally trained model
    steps: int
    train_loss: float


def criterion_for(schema: dict[str, Any]) -> nn.Module:
    return nn.BCEWithLogitsLoss() if is_binary(schema) else nn.CrossEntropyLoss()


def _targets(y: np.ndarray, schema: dict[str, Any]) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(y))
    return t.float().reshape(-1, 1) if is_binary(schema) else t.long()


def _optimizer(model: nn.Module, settings: TrainingSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
    return torch.optim.SGD(
        model.parameters(),
        lr=settings.learning_rate,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )


# ---------------------------------------------------------------------------------------------
# DP: the trial's policy on the ledger -> privacy.dp objects
# ---------------------------------------------------------------------------------------------


def dp_policy(trial: dict[str, Any], settings: TrainingSettings) -> dp.DPPolicy | None:
    """The trial's DP policy (None when the trial records ``dp.enabled = false``)."""
    record = trial["dp"]
    if not record.get("enabled", True):
        return None
    accountant = record.get("accountant", "rdp")
    if accountant not in ("rdp", "prv"):
        raise PrivacyError(
            f"trial {trial['trial_id']!r} dp.accountant: got {accountant!r}, expected rdp or prv "
            "(the accountants privacy.dp implements)"
        )
    delta = record["delta"]
    delta_value = (
        float(Fraction(delta[0], delta[1]))
        if isinstance(delta, list)
        else float(Fraction(str(delta)))
    )
    return dp.DPPolicy(
        target_epsilon=record["target_epsilon_micro"] / dp.MICRO,
        delta=delta_value,
        max_grad_norm=record["max_grad_norm_milli"] / 1000.0,
        rounds=int(trial["rounds"]),
        local_epochs=settings.local_epochs,
        accountant=accountant,
        grad_sample_mode="hooks",
    )


def dp_plan(
    trial: dict[str, Any], policy: dp.DPPolicy, settings: TrainingSettings, n_train: int
) -> dp.DPPlan:
    """The silo's plan for the whole trial; a noise multiplier fixed by the trial wins."""
    batches = settings.batches_per_epoch(n_train)
    fixed = trial["dp"].get("noise_multiplier_milli")
    if fixed:
        steps = policy.local_epochs * batches
        return dp.DPPlan(1.0 / batches, steps, policy.rounds * steps, fixed / 1000.0)
    return dp.plan_trial(policy, batches_per_epoch=batches)


def open_accountant(
    path: Path, trial: dict[str, Any], settings: TrainingSettings, n_train: int
) -> dp.PrivacyAccountant | None:
    policy = dp_policy(trial, settings)
    if policy is None:
        return None
    if path.exists():
        return dp.PrivacyAccountant.open_or_create(
            path,
            trial_id=trial["trial_id"],
            policy=policy,
            plan=dp.PrivacyAccountant.open(path).plan,
        )
    plan = dp_plan(trial, policy, settings, n_train)
    return dp.PrivacyAccountant.open_or_create(
        path, trial_id=trial["trial_id"], policy=policy, plan=plan
    )


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------


def train_local(
    model_spec: dict[str, Any],
    data_schema: dict[str, Any],
    base_params: np.ndarray,
    data: EncodedData,
    *,
    accountant: dp.PrivacyAccountant | None = None,
    seed: int | None = None,
) -> TrainResult:
    """Train from ``base_params`` on ``data``; DP-SGD with the accountant's policy and plan when an
    accountant is given (the caller charges it), plain SGD otherwise."""
    settings = TrainingSettings.from_hyperparameters(model_spec.get("hyperparameters"))
    if seed is not None:
        torch.manual_seed(seed)
    model = load_flat(build_from_spec(model_spec, data_schema), base_params)
    model.train()
    criterion = criterion_for(data_schema)
    dataset = TensorDataset(torch.from_numpy(data.x), _targets(data.y, data_schema))
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True)
    optimizer = _optimizer(model, settings)
    losses: list[float] = []
    with warnings.catch_warnings():
        # Opacus' hooks on a first layer without input gradients, and RDP's alpha-range hint.
        warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
        warnings.filterwarnings("ignore", message=".*Optimal order is the largest alpha.*")
        params, steps = _train(model, settings, loader, criterion, optimizer, accountant, losses)
    return TrainResult(
        params=params, steps=steps, train_loss=float(np.mean(losses)) if losses else float("nan")
    )


def _train(
    model: nn.Module,
    settings: TrainingSettings,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    accountant: dp.PrivacyAccountant | None,
    losses: list[float],
) -> tuple[np.ndarray, int]:
    if accountant is None:
        steps = 0
        for _ in range(settings.local_epochs):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
                steps += 1
                losses.append(float(loss.detach()))
        params = flatten(model)
    else:
        private = dp.make_private(
            model,
            optimizer,
            loader,
            policy=accountant.policy,
            plan=accountant.plan,
            criterion=criterion,
        )
        for _ in range(settings.local_epochs):
            for xb, yb in private.data_loader:
                private.optimizer.zero_grad()
                # An empty Poisson batch still takes its (noise-only) step, as the accounting
                # assumes; Opacus gives it zero per-sample gradients, its NaN loss is not kept.
                loss = private.criterion(private.model(xb), yb)
                loss.backward()
                private.optimizer.step()
                if xb.shape[0]:
                    losses.append(float(loss.detach()))
        steps = private.steps
        params = flatten(private.model)
    return params, steps


def evaluate(
    model_spec: dict[str, Any], data_schema: dict[str, Any], params: np.ndarray, data: EncodedData
) -> dict[str, float]:
    """Mean log-loss and accuracy of the model ``params`` on ``data``."""
    model = load_flat(
        build_from_spec(model_spec, data_schema), np.asarray(params, dtype=np.float32)
    )
    return evaluate_module(model, data_schema, data)


def evaluate_module(
    model: nn.Module, data_schema: dict[str, Any], data: EncodedData
) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(data.x)
        logits = model(x)
        y = _targets(data.y, data_schema)
        loss = float(criterion_for(data_schema)(logits, y))
        if is_binary(data_schema):
            predicted = (logits.reshape(-1) > 0).float()
            accuracy = float((predicted == y.reshape(-1)).float().mean())
        else:
            accuracy = float((logits.argmax(dim=1) == y).float().mean())
    if not math.isfinite(loss):
        loss = float("inf")
    return {"loss": loss, "accuracy": accuracy, "n": len(data)}
