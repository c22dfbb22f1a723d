"""The model registry: architectures named by the trial (never shipped as code), their checked
hyperparameters, and flat float32 parameter vectors.

A trial names its model as ``{"name": ..., "hyperparameters": {...}}``. The hyperparameters hold
both the architecture's (e.g. ``hidden``) and the local training's (``learning_rate``,
``local_epochs``, ``batch_size``, ...); every key is checked against what the model and the
trainer know, so a typo is an error rather than a silently ignored setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bcfl_common.errors import ConfigError, UpdateFormatError
from model_registry.data_schema import check_schema, feature_count, output_count

# The largest model a trial may name (its artifact and its CKKS update stay bounded).
MAX_MODEL_PARAMS = 1 << 25

# Local training settings every model accepts (defaults in model_registry.training_settings).
TRAINING_KEYS = {
    "learning_rate": (int, float),
    "local_epochs": (int,),
    "batch_size": (int,),
    "optimizer": (str,),
    "momentum": (int, float),
    "weight_decay": (int, float),
}


def model_error(message: str, **detail: Any) -> ConfigError:
    return ConfigError(message, code="MODEL_SPEC", detail=detail)


@dataclass(frozen=True)
class ModelKind:
    """A registry entry: its architecture hyperparameters (with defaults) and its builder."""

    name: str
    defaults: dict[str, Any]
    build: Callable[[dict[str, Any], dict[str, Any]], nn.Module]
    description: str


class LogisticRegression(nn.Module):
    def __init__(self, n_features: int, n_outputs: int):
        super().__init__()
        self.linear = nn.Linear(n_features, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class MLP(nn.Module):
    def __init__(self, n_features: int, n_outputs: int, hidden: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv blocks (GroupNorm, not BatchNorm: DP-SGD needs per-sample gradients) and a head."""

    def __init__(self, input_shape: list[int], n_outputs: int, channels: list[int], hidden: int):
        super().__init__()
        self.input_shape = tuple(input_shape)
        c, h, w = input_shape
        blocks: list[nn.Module] = []
        for out in channels:
            blocks += [
                nn.Conv2d(c, out, kernel_size=3, padding=1),
                nn.GroupNorm(min(4, out), out),
                nn.ReLU(),
            ]
            if h >= 2 and w >= 2:
                blocks.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(x.shape[0], *self.input_shape)))


def _int_list(value: Any, key: str, model: str) -> list[int]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in value)
    ):
        raise model_error(
            f"model {model!r} hyperparameter {key}: got {value!r}, expected a non-empty list of integers in [1, 4096]",
            field=key,
        )
    return value


def _build_logreg(hp: dict[str, Any], schema: dict[str, Any]) -> nn.Module:
    return LogisticRegression(feature_count(schema), output_count(schema))


def _build_mlp(hp: dict[str, Any], schema: dict[str, Any]) -> nn.Module:
    return MLP(
        feature_count(schema), output_count(schema), _int_list(hp["hidden"], "hidden", "mlp")
    )


def _build_cnn(hp: dict[str, Any], schema: dict[str, Any]) -> nn.Module:
    shape = schema.get("input_shape")
    if shape is None:
        raise model_error(
            "model 'small_cnn' needs the data schema's input_shape [channels, height, width]",
            field="input_shape",
        )
    hidden = hp["hidden"]
    if not isinstance(hidden, int) or isinstance(hidden, bool) or not 1 <= hidden <= 4096:
        raise model_error(
            f"model 'small_cnn' hyperparameter hidden: got {hidden!r}, expected an integer in [1, 4096]",
            field="hidden",
        )
    return SmallCNN(
        shape, output_count(schema), _int_list(hp["channels"], "channels", "small_cnn"), hidden
    )


REGISTRY: dict[str, ModelKind] = {
    "logistic_regression": ModelKind(
        "logistic_regression", {}, _build_logreg, "one linear layer (logistic/softmax regression)"
    ),
    "mlp": ModelKind("mlp", {"hidden": [32]}, _build_mlp, "fully connected ReLU network"),
    "small_cnn": ModelKind(
        "small_cnn",
        {"channels": [8, 16], "hidden": 32},
        _build_cnn,
        "two conv blocks for small images",
    ),
}
ALIASES = {"logreg": "logistic_regression", "logistic": "logistic_regression"}


def model_kind(name: str) -> ModelKind:
    kind = REGISTRY.get(ALIASES.get(name, name))
    if kind is None:
        raise model_error(
            f"model name: got {name!r}, expected one of {sorted(REGISTRY)}",
            field="name",
            value=name,
        )
    return kind


def check_hyperparameters(name: str, hyperparameters: dict[str, Any] | None) -> dict[str, Any]:
    """The model's architecture hyperparameters (defaults filled in), after checking every key."""
    kind = model_kind(name)
    hp = dict(hyperparameters or {})
    if not isinstance(hyperparameters or {}, dict):
        raise model_error(
            f"model hyperparameters: got {type(hyperparameters).__name__}, expected an object"
        )
    unknown = sorted(set(hp) - set(kind.defaults) - set(TRAINING_KEYS))
    if unknown:
        raise model_error(
            f"model {kind.name!r} hyperparameters: unknown keys {unknown}, expected some of "
            f"{sorted(set(kind.defaults) | set(TRAINING_KEYS))}",
            field="hyperparameters",
            unknown=unknown,
        )
    for key, types in TRAINING_KEYS.items():
        if key in hp and (not isinstance(hp[key], types) or isinstance(hp[key], bool)):
            raise model_error(
                f"model hyperparameter {key}: got {hp[key]!r}, expected {' or '.join(t.__name__ for t in types)}",
                field=key,
            )
    return {key: hp.get(key, default) for key, default in kind.defaults.items()}


def build_model(
    name: str, hyperparameters: dict[str, Any] | None, data_schema: dict[str, Any]
) -> nn.Module:
    """A fresh module of the named registry model for this data schema."""
    check_schema(data_schema)
    kind = model_kind(name)
    arch = check_hyperparameters(name, hyperparameters)
    model = kind.build(arch, data_schema)
    n = parameter_count(model)
    if n > MAX_MODEL_PARAMS:
        raise model_error(
            f"model {kind.name!r} has {n} parameters, expected at most {MAX_MODEL_PARAMS}"
        )
    return model


def build_from_spec(model_spec: dict[str, Any], data_schema: dict[str, Any]) -> nn.Module:
    return build_model(spec_name(model_spec), model_spec.get("hyperparameters") or {}, data_schema)


def spec_name(model_spec: dict[str, Any]) -> str:
    if not isinstance(model_spec, dict) or not isinstance(model_spec.get("name"), str):
        raise model_error(f"model spec: got {model_spec!r}, expected {{name, hyperparameters}}")
    return model_spec["name"]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Flat parameter vectors
# ---------------------------------------------------------------------------------------------


def flatten(model: nn.Module) -> np.ndarray:
    """The model's parameters as one float32 vector (``named_parameters`` order)."""
    with torch.no_grad():
        parts = [
            p.detach().reshape(-1).to(torch.float32).cpu().numpy()
            for _, p in named_parameters(model)
        ]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, dtype=np.float32)


def load_flat(model: nn.Module, flat: np.ndarray) -> nn.Module:
    """Set the model's parameters from a flat vector (checked for size and finiteness)."""
    values = np.asarray(flat)
    n = parameter_count(model)
    if values.ndim != 1 or values.size != n:
        raise UpdateFormatError(
            f"parameter vector: got shape {values.shape}, expected ({n},) for this model"
        )
    if not np.all(np.isfinite(values)):
        raise UpdateFormatError("parameter vector: contains NaN or Inf, expected finite numbers")
    offset = 0
    with torch.no_grad():
        for _, p in named_parameters(model):
            k = p.numel()
            p.copy_(
                torch.from_numpy(
                    np.ascontiguousarray(values[offset : offset + k], dtype=np.float32)
                ).reshape(p.shape)
            )
            offset += k
    return model


def named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    # Opacus wraps modules (GradSampleModule: "_module." prefixes) but keeps the order.
    return list(model.named_parameters())
