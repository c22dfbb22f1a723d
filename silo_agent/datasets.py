"""Demo data sets for `bcfl demo` and the benchmarks, split over hospitals deterministically.

* ``breast-cancer`` (default): scikit-learn's Wisconsin diagnostic breast cancer data (569 rows,
  30 features, shipped inside scikit-learn), split non-IID over N hospitals by a Dirichlet label
  skew with a fixed seed, then 75/25 train/test inside each hospital.
* ``heart-disease``: the four UCI centres (the natural cross-silo split, FLamby's
  Fed-Heart-Disease): slope, ca and thal dropped, incomplete rows dropped (740 rows), label
  ``num > 0``, per-centre train/test sizes 199/104, 172/89, 30/16, 85/45 (train = floor(0.66 n),
  a seeded permutation per centre).

Every data set comes with its data schema (ranges and the consortium-agreed mean/std that every
silo scales by) and a recommended model, hyperparameters, rounds, DP and evaluation policy, in
the argument shapes of the contract's ``create_trial``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bcfl_common.errors import ConfigError

DATASETS = ("breast-cancer", "heart-disease")
DEFAULT_DATASET = "breast-cancer"
HEART_FILES = ("cleveland", "hungarian", "switzerland", "va")
HEART_COLUMNS = [
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalach",
    "exang",
    "oldpeak",
    "slope",
    "ca",
    "thal",
    "num",
]
HEART_TRAIN_FRACTION = 0.66
DEFAULT_HEART_DIR = Path("/work/shared/data/heart_disease")


@dataclass(frozen=True)
class HospitalData:
    name: str
    train: pd.DataFrame
    test: pd.DataFrame


@dataclass(frozen=True)
class DemoDataset:
    """A data set split over hospitals, with its schema and recommended trial settings."""

    name: str
    schema: dict[str, Any]
    hospitals: list[HospitalData]
    model: dict[str, Any]  # {"name", "hyperparameters"}
    rounds: int
    dp: dict[str, Any] = field(default_factory=dict)  # create_trial's dp argument
    evaluation: dict[str, Any] = field(default_factory=dict)  # create_trial's evaluation argument

    @property
    def label(self) -> str:
        return str(self.schema["label"]["name"])

    def pooled_test(self) -> pd.DataFrame:
        return pd.concat([h.test for h in self.hospitals], ignore_index=True)


def load_demo_dataset(
    name: str = DEFAULT_DATASET, hospitals: int = 4, data_dir: str | Path | None = None
) -> DemoDataset:
    """Load a demo data set split over ``hospitals`` (heart-disease is always its 4 centres)."""
    if name == "breast-cancer":
        return _breast_cancer(hospitals)
    if name == "heart-disease":
        if hospitals != 4:
            raise ConfigError(
                f"hospitals: got {hospitals} for heart-disease, expected 4 (its four real centres)"
            )
        return _heart_disease(Path(data_dir) if data_dir is not None else DEFAULT_HEART_DIR)
    raise ConfigError(f"data set: got {name!r}, expected one of {list(DATASETS)}")


def write_demo_dataset(dataset: DemoDataset, directory: str | Path) -> list[dict[str, Path]]:
    """Write ``hospitalN/train.csv`` and ``hospitalN/test.csv`` for every hospital and
    ``schema.json``; returns ``[{"train": path, "test": path}]`` in hospital order."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "schema.json").write_text(json.dumps(dataset.schema, indent=2) + "\n")
    out = []
    for i, hospital in enumerate(dataset.hospitals, start=1):
        folder = directory / f"hospital{i}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"train": folder / "train.csv", "test": folder / "test.csv"}
        hospital.train.to_csv(paths["train"], index=False)
        hospital.test.to_csv(paths["test"], index=False)
        out.append(paths)
    return out


# ---------------------------------------------------------------------------------------------
# Heart disease
# ---------------------------------------------------------------------------------------------


def _feature(name: str, low: float, high: float, mean: float, std: float) -> dict[str, Any]:
    return {"name": name, "type": "float", "min": low, "max": high, "mean": mean, "std": std}


def _category(name: str, categories: list[int]) -> dict[str, Any]:
    return {"name": name, "type": "category", "categories": categories}


HEART_SCHEMA: dict[str, Any] = {
    "version": 1,
    "description": "UCI heart disease (4 centres), FLamby cleaning; label num > 0",
    "features": [
        _feature("age", 18, 100, 53.1, 9.4),
        _category("sex", [0, 1]),
        _category("cp", [1, 2, 3, 4]),
        _feature("trestbps", 0, 250, 132.8, 18.6),
        _feature("chol", 0, 700, 220.1, 93.6),
        _category("fbs", [0, 1]),
        _category("restecg", [0, 1, 2]),
        _feature("thalach", 50, 220, 138.7, 25.8),
        _category("exang", [0, 1]),
        _feature("oldpeak", -3, 7, 0.89, 1.09),
    ],
    "label": {"name": "num", "positive": [1, 2, 3, 4]},
}


def _heart_disease(data_dir: Path) -> DemoDataset:
    hospitals = []
    for i, centre in enumerate(HEART_FILES):
        path = data_dir / f"processed.{centre}.data"
        if not path.is_file():
            raise ConfigError(
                f"heart-disease data: {path} not found; expected a directory holding the four UCI "
                f"files processed.{{{','.join(HEART_FILES)}}}.data"
            )
        frame = pd.read_csv(path, header=None, names=HEART_COLUMNS, na_values=["?", "NaN"])
        frame = frame.drop(columns=["slope", "ca", "thal"]).dropna().reset_index(drop=True)
        for column in ("age", "sex", "cp", "fbs", "restecg", "exang", "num"):
            frame[column] = frame[column].astype(int)
        order = np.random.default_rng(42 + i).permutation(len(frame))
        n_train = math.floor(HEART_TRAIN_FRACTION * len(frame))
        train = frame.iloc[np.sort(order[:n_train])].reset_index(drop=True)
        test = frame.iloc[np.sort(order[n_train:])].reset_index(drop=True)
        hospitals.append(HospitalData(centre, train, test))
    largest = max(len(h.train) for h in hospitals)
    return DemoDataset(
        name="heart-disease",
        schema=HEART_SCHEMA,
        hospitals=hospitals,
        model={
            "name": "logistic_regression",
            "hyperparameters": {"learning_rate": 0.1, "local_epochs": 2, "batch_size": 16},
        },
        rounds=10,
        # epsilon 3 for the whole trial; delta = 1/(10 n) for the largest hospital, which is
        # <= 1/(10 n) for every hospital.
        dp={
            "enabled": True,
            "target_epsilon_micro": 3_000_000,
            "delta": f"1/{10 * largest}",
            "max_grad_norm_milli": 1000,
            "accountant": "rdp",
        },
        # Scores are validation log-loss improvements (silo_agent.agent.score_candidates): a
        # tolerance of 0.03 keeps honest DP-noised, non-IID updates and rejects sign-flipped ones.
        evaluation={
            "acceptance_threshold_micro": 30_000,
            "min_voters": 2,
            "reward_per_round": 1000,
        },
    )


# ---------------------------------------------------------------------------------------------
# Breast cancer
# ---------------------------------------------------------------------------------------------


def _breast_cancer(hospitals: int) -> DemoDataset:
    from sklearn.datasets import load_breast_cancer

    if not 2 <= hospitals <= 16:
        raise ConfigError(f"hospitals: got {hospitals} for breast-cancer, expected 2 to 16")
    raw = load_breast_cancer()
    names = [n.replace(" ", "_") for n in raw.feature_names]
    frame = pd.DataFrame(raw.data, columns=names)
    frame["diagnosis"] = np.where(raw.target == 0, "malignant", "benign")
    features = []
    for column in names:
        values = frame[column].to_numpy()
        features.append(
            _feature(
                column,
                0.0,
                float(_round_sig(values.max() * 2)),
                float(_round_sig(values.mean())),
                float(_round_sig(values.std())),
            )
        )
    schema = {
        "version": 1,
        "description": "Wisconsin diagnostic breast cancer (scikit-learn); label diagnosis = malignant",
        "features": features,
        "label": {"name": "diagnosis", "positive": ["malignant"]},
    }
    parts = _dirichlet_split(raw.target, hospitals, alpha=2.0, seed=7, minimum=24)
    out = []
    for i, index in enumerate(parts):
        order = np.random.default_rng(100 + i).permutation(index)
        n_train = math.floor(0.75 * len(order))
        out.append(
            HospitalData(
                f"hospital{i + 1}",
                frame.iloc[np.sort(order[:n_train])].reset_index(drop=True),
                frame.iloc[np.sort(order[n_train:])].reset_index(drop=True),
            )
        )
    return DemoDataset(
        name="breast-cancer",
        schema=schema,
        hospitals=out,
        model={
            "name": "logistic_regression",
            "hyperparameters": {"learning_rate": 0.1, "local_epochs": 1, "batch_size": 16},
        },
        rounds=5,
        dp={
            "enabled": True,
            "target_epsilon_micro": 3_000_000,
            "delta": "1/1000",
            "max_grad_norm_milli": 1000,
            "accountant": "rdp",
        },
        evaluation={
            "acceptance_threshold_micro": 50_000,
            "min_voters": 2,
            "reward_per_round": 1000,
        },
    )


def _round_sig(value: float, digits: int = 4) -> float:
    if value == 0:
        return 0.0
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


def _dirichlet_split(
    labels: np.ndarray, parts: int, *, alpha: float, seed: int, minimum: int
) -> list[np.ndarray]:
    """Label-skewed partition: each class is spread over the parts by Dirichlet(alpha) shares.
    Deterministic: the first seed (from ``seed`` up) whose parts all have ``minimum`` rows."""
    for attempt in range(1000):
        rng = np.random.default_rng(seed + attempt)
        buckets: list[list[int]] = [[] for _ in range(parts)]
        for cls in np.unique(labels):
            index = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet([alpha] * parts)
            cuts = (np.cumsum(shares)[:-1] * len(index)).astype(int)
            for k, chunk in enumerate(np.split(index, cuts)):
                buckets[k].extend(chunk.tolist())
        if min(len(b) for b in buckets) >= minimum:
            return [np.sort(np.array(b)) for b in buckets]
    raise ConfigError(f"cannot split into {parts} parts of at least {minimum} rows")
