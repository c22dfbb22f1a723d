"""Local training settings: the part of a trial's hyperparameters that says how each hospital trains.

Shared by the silo agent (which trains with them) and the coordinator and auditor (which compute
every hospital's DP schedule and update-norm bound from them), so all three read the same
defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bcfl_common.errors import ConfigError
from model_registry.registry import build_from_spec, parameter_count

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


def training_inputs(trial: dict[str, Any]) -> dict[str, Any]:
    """What ``privacy.dp.schedule_entry`` needs to know about a trial's model and local training:
    the parameter count and the optimiser settings (the trial's hyperparameters over the defaults)."""
    settings = TrainingSettings.from_hyperparameters(trial["model"].get("hyperparameters"))
    n_params = parameter_count(build_from_spec(trial["model"], trial["data_schema"]))
    return {
        "n_params": n_params,
        "learning_rate": settings.learning_rate,
        "batch_size": settings.batch_size,
        "local_epochs": settings.local_epochs,
        "optimizer": settings.optimizer,
        "momentum": settings.momentum,
        "weight_decay": settings.weight_decay,
    }
