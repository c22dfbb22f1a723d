"""The one model artifact format (``BCFM`` version 1), the byte format of a model everywhere::

    magic    4s   b"BCFM"
    version  u16  1 (little endian)
    hlen     u32  length of the header
    header        canonical JSON: {"format": "bcfl-model/1", "model": name, "hyperparameters",
                  "data_schema_sha256", "n_params", "dtype": "float32"}
    params        n_params little-endian float32 values (the model's parameters, flattened in
                  ``named_parameters`` order)

and the trial's deterministic round-0 model.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from bcfl_common.canonical import canonical_json
from bcfl_common.errors import UpdateFormatError
from model_registry.data_schema import schema_sha256
from model_registry.registry import (
    MAX_MODEL_PARAMS,
    LogisticRegression,
    build_from_spec,
    flatten,
    load_flat,
    model_error,
    named_parameters,
    parameter_count,
    spec_name,
)

MAGIC = b"BCFM"
ARTIFACT_VERSION = 1
ARTIFACT_FORMAT = "bcfl-model/1"
_PREFIX = struct.Struct("<4sHI")
MAX_HEADER_BYTES = 64 * 1024
DTYPE = "float32"


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
        name = spec_name(model_spec)
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
        spec_name(model_spec),
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
        raise model_error(f"seed: got {seed!r}, expected an integer >= 0")
    model = build_from_spec(model_spec, data_schema)
    rng = np.random.default_rng(seed)
    zero = isinstance(model, LogisticRegression)
    values = []
    for name, p in named_parameters(model):
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
        spec_name(model_spec),
        model_spec.get("hyperparameters") or {},
        schema_sha256(data_schema),
        np.concatenate(values),
    )
