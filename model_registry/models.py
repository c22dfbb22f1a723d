"""The registry and the artifact format under one name (``model_registry.models``), as before the
split into :mod:`model_registry.registry` (architectures, hyperparameters, flat parameter vectors)
and :mod:`model_registry.artifact` (the ``BCFM`` format and the round-0 model)."""

from __future__ import annotations

from model_registry.artifact import (
    ARTIFACT_FORMAT,
    ARTIFACT_VERSION,
    DTYPE,
    MAGIC,
    MAX_HEADER_BYTES,
    ModelArtifact,
    artifact_for,
    decode_model,
    encode_model,
    initial_model,
    model_from_artifact,
)
from model_registry.registry import (
    ALIASES,
    MAX_MODEL_PARAMS,
    MLP,
    REGISTRY,
    TRAINING_KEYS,
    LogisticRegression,
    ModelKind,
    SmallCNN,
    build_from_spec,
    build_model,
    check_hyperparameters,
    flatten,
    load_flat,
    model_kind,
    parameter_count,
)

__all__ = [
    "ALIASES",
    "ARTIFACT_FORMAT",
    "ARTIFACT_VERSION",
    "DTYPE",
    "MAGIC",
    "MAX_HEADER_BYTES",
    "MAX_MODEL_PARAMS",
    "MLP",
    "REGISTRY",
    "TRAINING_KEYS",
    "LogisticRegression",
    "ModelArtifact",
    "ModelKind",
    "SmallCNN",
    "artifact_for",
    "build_from_spec",
    "build_model",
    "check_hyperparameters",
    "decode_model",
    "encode_model",
    "flatten",
    "initial_model",
    "load_flat",
    "model_from_artifact",
    "model_kind",
    "parameter_count",
]
