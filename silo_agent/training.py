"""Local training (DP-SGD through privacy.dp unless the trial switches DP off) and evaluation."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from model_registry.data_schema import is_binary
from model_registry.registry import build_from_spec, flatten, load_flat
from model_registry.training_settings import TrainingSettings
from privacy import dp
from silo_agent.data import EncodedData

log = logging.getLogger(__name__)


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
    return dp.trial_policy(trial, local_epochs=settings.local_epochs)


def dp_plan(
    trial: dict[str, Any], policy: dp.DPPolicy, settings: TrainingSettings, n_train: int
) -> dp.DPPlan:
    """The silo's plan for the whole trial: the one its public DP schedule entry is made of."""
    return dp.trial_plan(trial, policy, batches_per_epoch=settings.batches_per_epoch(n_train))


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


def row_losses(
    model_spec: dict[str, Any], data_schema: dict[str, Any], params: np.ndarray, data: EncodedData
) -> np.ndarray:
    """Each row's log-loss (cross-entropy) under the model ``params``, float64; ``evaluate``'s
    loss is their mean."""
    model = load_flat(
        build_from_spec(model_spec, data_schema), np.asarray(params, dtype=np.float32)
    )
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(data.x))
        y = _targets(data.y, data_schema)
        if is_binary(data_schema):
            rows = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        else:
            rows = nn.functional.cross_entropy(logits, y, reduction="none")
    return rows.reshape(-1).double().numpy()


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
