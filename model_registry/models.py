"""The model registry (named by the trial, never shipped as code) and the one model artifact format.

A trial names its model as ``{"name": ..., "hyperparameters": {...}}``. The hyperparameters hold
both the architecture's (e.g. ``hidden``) and the local training's (``learning_rate``,
``local_epochs``, ``batch_size``, ...); every key is checked against what the model and the
trainer know, so a typo is an error rather than a silently ignored setting.

Model artifact (``BCFM`` version 1), the one byte format of a model everywhere::

    magic    4s   b"BCFM"
    version  u16  1 (little endian)
    hlen     u32  length of the header
    header        canonical JSON: {"format": "bcfl-model/1", "model": name, "hyperparameters",
                  "data_schema_sha256", "n_params", "dtype": "float32"}
    params        n_params little-endian float32 values (the model's parameters, flattened in
                  ``named_parameters`` order)
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bcfl_common.canonical import canonical_json
from bcfl_common.errors import ConfigError, UpdateFormatError
from model_registry.data_schema import check_schema, feature_count, output_count, schema_sha256

MAGIC = b"BCFM"
ARTIFACT_VERSION = 1
ARTIFACT_FORMAT = "bcfl-model/1"
_PREFIX = struct.Struct("<4sHI")
MAX_HEADER_BYTES = 64 * 1024
MAX_MODEL_PARAMS = 1 << 25
DTYPE = "float32"

# Local training settings every model accepts (defaults in silo_agent.training.TrainingSettings).
TRAINING_KEYS = {
    "learning_rate": (int, float),
    "local_epochs": (int,),
    "batch_size": (int,),
    "optimizer": (str,),
    "momentum": (int, float),
    "weight_decay": (int, float),
}


def _model_error(message: str, **detail: Any) -> ConfigError:
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
        raise _model_error(
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
        raise _model_error(
            "model 'small_cnn' needs the data schema's input_shape [channels, height, width]",
            field="input_shape",
        )
    hidden = hp["hidden"]
    if not isinstance(hidden, int) or isinstance(hidden, bool) or not 1 <= hidden <= 4096:
        raise _model_error(
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
        raise _model_error(
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
        raise _model_error(
            f"model hyperparameters: got {type(hyperparameters).__name__}, expected an object"
        )
    unknown = sorted(set(hp) - set(kind.defaults) - set(TRAINING_KEYS))
    if unknown:
        raise _model_error(
            f"model {kind.name!r} hyperparameters: unknown keys {unknown}, expected some of "
            f"{sorted(set(kind.defaults) | set(TRAINING_KEYS))}",
            field="hyperparameters",
            unknown=unknown,
        )
    for key, types in TRAINING_KEYS.items():
        if key in hp and (not isinstance(hp[key], types) or isinstance(hp[key], bool)):
            raise _model_error(
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
        raise _model_error(
            f"model {kind.name!r} has {n} parameters, expected at most {MAX_MODEL_PARAMS}"
        )
    return model


def build_from_spec(model_spec: dict[str, Any], data_schema: dict[str, Any]) -> nn.Module:
    return build_model(_spec_name(model_spec), model_spec.get("hyperparameters") or {}, data_schema)


def _spec_name(model_spec: dict[str, Any]) -> str:
    if not isinstance(model_spec, dict) or not isinstance(model_spec.get("name"), str):
        raise _model_error(f"model spec: got {model_spec!r}, expected {{name, hyperparameters}}")
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
            for _, p in _named_parameters(model)
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
        for _, p in _named_parameters(model):
            k = p.numel()
            p.copy_(
                torch.from_numpy(
                    np.ascontiguousarray(values[offset : offset + k], dtype=np.float32)
                ).reshape(p.shape)
            )
            offset += k
    return model


def _named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    # Opacus wraps modules (GradSampleModule: "_module." prefixes) but keeps the order.
    return list(model.named_parameters())


# ---------------------------------------------------------------------------------------------
# The artifact
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelArtifact:
    name: str
    hyperparameters: dict[str, Any]
    data_schema_sha256: str
    params: np.ndarray  # float32

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.encode()).hexdigest()

    def header(self) -> dict[str, Any]:
        return {
            "format": ARTIFACT_FORMAT,
            "model": self.name,
            "hyperparameters": self.hyperparameters,
            "data_schema_sha256": self.data_schema_sha256,
            "n_params": int(self.params.size),
            "dtype": DTYPE,
        }

    def encode(self) -> bytes:
        return encode_model(self.name, self.hyperparameters, self.data_schema_sha256, self.params)


def encode_model(
    name: str, hyperparameters: dict[str, Any], data_schema_sha256: str, params: np.ndarray
) -> bytes:
    values = np.asarray(params)
    if values.ndim != 1 or not 1 <= values.size <= MAX_MODEL_PARAMS:
        raise UpdateFormatError(
            f"model parameters: got shape {values.shape}, expected a flat vector of 1 to {MAX_MODEL_PARAMS} values"
        )
    values = values.astype("<f4")
    if not np.all(np.isfinite(values)):
        raise UpdateFormatError("model parameters: contain NaN or Inf, expected finite numbers")
    header = canonical_json(
        {
            "format": ARTIFACT_FORMAT,
            "model": name,
            "hyperparameters": hyperparameters,
            "data_schema_sha256": data_schema_sha256,
            "n_params": int(values.size),
            "dtype": DTYPE,
        }
    )
    return _PREFIX.pack(MAGIC, ARTIFACT_VERSION, len(header)) + header + values.tobytes()


def _artifact_error(field: str, got: Any, expected: str) -> UpdateFormatError:
    return UpdateFormatError(
        f"model artifact {field}: got {got}, expected {expected}",
        detail={"field": field, "value": str(got)},
    )


def decode_model(
    data: bytes,
    *,
    model_spec: dict[str, Any] | None = None,
    data_schema: dict[str, Any] | None = None,
) -> ModelArtifact:
    """Parse and check a model artifact strictly; with ``model_spec``/``data_schema`` also check it
    is that trial's model (name, hyperparameters, schema hash, parameter count)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _artifact_error("type", type(data).__name__, "bytes")
    data = bytes(data)
    if len(data) < _PREFIX.size:
        raise _artifact_error("length", len(data), f"at least {_PREFIX.size} bytes")
    magic, version, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise _artifact_error("magic", magic, repr(MAGIC))
    if version != ARTIFACT_VERSION:
        raise _artifact_error("version", version, str(ARTIFACT_VERSION))
    if not 2 <= hlen <= MAX_HEADER_BYTES or _PREFIX.size + hlen > len(data):
        raise _artifact_error(
            "header length", hlen, f"2 to {MAX_HEADER_BYTES} bytes inside the artifact"
        )
    raw = data[_PREFIX.size : _PREFIX.size + hlen]
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _artifact_error("header", f"invalid JSON ({exc})", "canonical JSON") from exc
    if not isinstance(header, dict):
        raise _artifact_error("header", type(header).__name__, "a JSON object")
    expected_keys = {
        "format",
        "model",
        "hyperparameters",
        "data_schema_sha256",
        "n_params",
        "dtype",
    }
    if set(header) != expected_keys:
        raise _artifact_error("header keys", sorted(header), str(sorted(expected_keys)))
    if canonical_json(header) != raw:
        raise _artifact_error(
            "header", "non-canonical JSON", "canonical JSON (sorted keys, no spaces)"
        )
    if header["format"] != ARTIFACT_FORMAT:
        raise _artifact_error("format", header["format"], ARTIFACT_FORMAT)
    if header["dtype"] != DTYPE:
        raise _artifact_error("dtype", header["dtype"], DTYPE)
    n = header["n_params"]
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_MODEL_PARAMS:
        raise _artifact_error("n_params", n, f"an integer in [1, {MAX_MODEL_PARAMS}]")
    body = len(data) - _PREFIX.size - hlen
    if body != 4 * n:
        raise _artifact_error(
            "length", f"{body} parameter bytes", f"exactly {4 * n} ({n} float32 values)"
        )
    if not isinstance(header["model"], str) or not isinstance(header["hyperparameters"], dict):
        raise _artifact_error("model", header["model"], "a model name and a hyperparameters object")
    params = np.frombuffer(data, dtype="<f4", offset=_PREFIX.size + hlen, count=n).astype(
        np.float32
    )
    if not np.all(np.isfinite(params)):
        raise _artifact_error("parameters", "NaN or Inf", "finite numbers")
    artifact = ModelArtifact(
        header["model"], header["hyperparameters"], header["data_schema_sha256"], params
    )
    if model_spec is not None:
        name = _spec_name(model_spec)
        hp = model_spec.get("hyperparameters") or {}
        if artifact.name != name:
            raise _artifact_error("model", repr(artifact.name), repr(name) + " (the trial's model)")
        if canonical_json(artifact.hyperparameters) != canonical_json(hp):
            raise _artifact_error(
                "hyperparameters", artifact.hyperparameters, f"{hp} (the trial's)"
            )
        if data_schema is not None:
            if artifact.data_schema_sha256 != schema_sha256(data_schema):
                raise _artifact_error(
                    "data_schema_sha256",
                    artifact.data_schema_sha256,
                    schema_sha256(data_schema) + " (the trial's schema)",
                )
            expected_n = parameter_count(build_from_spec(model_spec, data_schema))
            if n != expected_n:
                raise _artifact_error(
                    "n_params", n, f"{expected_n} (parameters of {name} for this schema)"
                )
    return artifact


def artifact_for(
    model: nn.Module, model_spec: dict[str, Any], data_schema: dict[str, Any]
) -> bytes:
    """Encode a module as the trial's model artifact."""
    return encode_model(
        _spec_name(model_spec),
        model_spec.get("hyperparameters") or {},
        schema_sha256(data_schema),
        flatten(model),
    )


def model_from_artifact(
    data: bytes, model_spec: dict[str, Any], data_schema: dict[str, Any]
) -> nn.Module:
    artifact = decode_model(data, model_spec=model_spec, data_schema=data_schema)
    return load_flat(build_from_spec(model_spec, data_schema), artifact.params)


def initial_model(model_spec: dict[str, Any], data_schema: dict[str, Any], seed: int) -> bytes:
    """The trial's round-0 model artifact: the same bytes for the same inputs, on any machine.

    Weights are drawn from NumPy's PCG64 (platform independent), uniform in
    +-1/sqrt(fan_in) as PyTorch's default; biases and normalisation shifts start at 0,
    normalisation scales at 1. Logistic regression starts at 0 (its loss is convex).
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise _model_error(f"seed: got {seed!r}, expected an integer >= 0")
    model = build_from_spec(model_spec, data_schema)
    rng = np.random.default_rng(seed)
    zero = isinstance(model, LogisticRegression)
    values = []
    for name, p in _named_parameters(model):
        shape = tuple(p.shape)
        if zero or name.endswith("bias"):
            v = np.zeros(shape)
        elif len(shape) == 1:  # GroupNorm weight
            v = np.ones(shape)
        else:
            fan_in = math.prod(shape[1:])
            bound = 1.0 / math.sqrt(fan_in)
            v = rng.uniform(-bound, bound, size=shape)
        values.append(v.astype(np.float32).reshape(-1))
    return encode_model(
        _spec_name(model_spec),
        model_spec.get("hyperparameters") or {},
        schema_sha256(data_schema),
        np.concatenate(values),
    )
