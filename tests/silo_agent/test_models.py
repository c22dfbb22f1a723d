"""The model registry, the artifact format's strict checks, and the deterministic initial model."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from bcfl_common.errors import ConfigError, UpdateFormatError
from model_registry import artifact, models, registry
from model_registry.artifact import decode_model, encode_model, initial_model, model_from_artifact
from model_registry.registry import REGISTRY, build_model, flatten, load_flat, parameter_count

TABULAR = {
    "features": [{"name": f"f{i}", "type": "float"} for i in range(5)],
    "label": {"name": "y", "threshold": 0.5},
}
IMAGES = {
    "features": [{"name": f"p{i}", "type": "float", "min": 0, "max": 16} for i in range(64)],
    "label": {"name": "digit", "classes": list(range(10))},
    "input_shape": [1, 8, 8],
}
LOGREG = {"name": "logistic_regression", "hyperparameters": {"learning_rate": 0.1}}


def test_registry_builds_every_model() -> None:
    assert set(REGISTRY) == {"logistic_regression", "mlp", "small_cnn"}
    assert parameter_count(build_model("logistic_regression", {}, TABULAR)) == 6
    assert parameter_count(build_model("mlp", {"hidden": [4]}, TABULAR)) == 5 * 4 + 4 + 4 + 1
    cnn = build_model("small_cnn", {"channels": [4, 8], "hidden": 16}, IMAGES)
    assert cnn(torch.zeros(2, 64)).shape == (2, 10)


def test_registry_refuses_unknown_names_and_keys() -> None:
    with pytest.raises(ConfigError, match="expected one of"):
        build_model("resnet152", {}, TABULAR)
    with pytest.raises(ConfigError, match="unknown keys"):
        build_model("mlp", {"hiden": [4]}, TABULAR)
    with pytest.raises(ConfigError, match="input_shape"):
        build_model("small_cnn", {}, TABULAR)


def test_initial_model_is_deterministic() -> None:
    spec = {"name": "mlp", "hyperparameters": {"hidden": [8]}}
    a = initial_model(spec, TABULAR, seed=3)
    assert a == initial_model(spec, TABULAR, seed=3)
    assert a != initial_model(spec, TABULAR, seed=4)
    artifact = decode_model(a, model_spec=spec, data_schema=TABULAR)
    assert artifact.params.size == parameter_count(build_model("mlp", {"hidden": [8]}, TABULAR))


def test_artifact_round_trip_and_flatten() -> None:
    model = build_model("logistic_regression", {}, TABULAR)
    flat = np.arange(6, dtype=np.float32) / 10
    load_flat(model, flat)
    assert np.array_equal(flatten(model), flat)
    data = initial_model(LOGREG, TABULAR, seed=0)
    rebuilt = model_from_artifact(data, LOGREG, TABULAR)
    assert np.array_equal(flatten(rebuilt), np.zeros(6, dtype=np.float32))


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: b"XXXX" + d[4:], "magic"),
        (lambda d: d[:4] + struct.pack("<H", 2) + d[6:], "version"),
        (lambda d: d[:-1], "length"),
        (lambda d: d + b"\x00\x00\x00\x00", "length"),
        (lambda d: d[:-4] + np.float32(np.nan).tobytes(), "parameters"),
    ],
)
def test_artifact_strict_checks(mutate, field: str) -> None:
    data = initial_model(LOGREG, TABULAR, seed=0)
    with pytest.raises(UpdateFormatError, match=field):
        decode_model(mutate(data))


def test_artifact_must_be_the_trials_model() -> None:
    data = initial_model(LOGREG, TABULAR, seed=0)
    with pytest.raises(UpdateFormatError, match="hyperparameters"):
        decode_model(
            data,
            model_spec={"name": "logistic_regression", "hyperparameters": {}},
            data_schema=TABULAR,
        )
    other = dict(TABULAR, features=TABULAR["features"][:4])
    with pytest.raises(UpdateFormatError, match="data_schema_sha256"):
        decode_model(data, model_spec=LOGREG, data_schema=other)
    with pytest.raises(UpdateFormatError, match="NaN"):
        encode_model("logistic_regression", {}, "0" * 64, np.array([np.inf], dtype=np.float32))


def test_models_keeps_every_name_of_the_registry_and_the_artifact() -> None:
    """model_registry.models is the two modules under one name (coordinator.service uses it)."""
    for name in models.__all__:
        origin = artifact if hasattr(artifact, name) and name not in registry.__dict__ else registry
        assert getattr(models, name) is getattr(origin, name), name
    assert models.initial_model is artifact.initial_model
    assert models.build_from_spec is registry.build_from_spec
