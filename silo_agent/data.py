"""Local data: the trial's data schema, loading CSV/Parquet, validation, encoding, the local split.

The data schema (its form: ``model_registry.data_schema``) is part of the trial record on the
ledger (``data_schema``).

Encoding (identical on every silo, so one federated model means the same thing everywhere):
numeric features are scaled by the schema, never by local statistics: ``(x - mean) / std`` when
the schema declares ``mean`` and ``std``, otherwise ``2 (x - min) / (max - min) - 1`` when it
declares a range, otherwise as is; ``bool`` is 0/1; a ``category`` is one-hot over its declared
categories. Nothing computed here leaves the silo: only the protocol's encrypted update, sample
weight and scores do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bcfl_common.errors import SchemaError
from model_registry.data_schema import check_schema, is_number

MAX_ROWS_LISTED = 10
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


@dataclass(frozen=True)
class EncodedData:
    """Model inputs and targets (float32 features; float32 0/1 binary or int64 class targets)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: np.ndarray) -> EncodedData:
        return EncodedData(self.x[index], self.y[index])


@dataclass(frozen=True)
class LocalSplit:
    """The silo's deterministic train/validation split of its own data (never leaves the silo)."""

    train: EncodedData
    validation: EncodedData


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------


def read_table(path: str | Path, *, format: str | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file (format from the suffix unless given)."""
    path = Path(path)
    kind = (format or path.suffix.lstrip(".")).lower()
    if not path.is_file():
        raise SchemaError(
            f"data path: {path} does not exist, expected a CSV or Parquet file",
            detail={"path": str(path)},
        )
    try:
        if kind in ("parquet", "pq"):
            return pd.read_parquet(path)
        if kind in ("csv", "txt", ""):
            return pd.read_csv(path)
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise SchemaError(
            f"data path: {path} cannot be read as {kind} ({exc})", detail={"path": str(path)}
        ) from exc
    raise SchemaError(
        f"data format: got {kind!r} for {path}, expected csv or parquet", detail={"path": str(path)}
    )


def apply_column_mapping(frame: pd.DataFrame, mapping: dict[str, str] | None) -> pd.DataFrame:
    """Rename local column names to the schema's names (``{local: schema}``)."""
    if not mapping:
        return frame
    missing = sorted(set(mapping) - set(frame.columns))
    if missing:
        raise SchemaError(
            f"column mapping: local columns {missing} are not in the data (it has {list(frame.columns)})",
            detail={"columns": missing},
        )
    targets = list(mapping.values())
    if len(set(targets)) != len(targets):
        raise SchemaError(
            f"column mapping: two local columns map to the same schema name ({targets})"
        )
    return frame.rename(columns=mapping)


def _rows(mask: np.ndarray) -> list[int]:
    """1-based data row numbers (the header is not counted) of the True entries."""
    return [int(i) + 1 for i in np.flatnonzero(mask)]


def _numeric(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values as float64, mask of entries that are present but not numbers)."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    present = series.notna().to_numpy()
    return values, present & np.isnan(values)


def _category_index(series: pd.Series, categories: list[Any]) -> np.ndarray:
    """Index of each value in ``categories`` (-1 when absent); numbers compare numerically."""
    out = np.full(len(series), -1, dtype=np.int64)
    numeric_cats = all(is_number(c) for c in categories)
    if numeric_cats:
        values, _ = _numeric(series)
        for k, cat in enumerate(categories):
            out[np.isclose(values, float(cat), rtol=0, atol=1e-9)] = k
    else:
        text = series.astype(str).str.strip().to_numpy()
        for k, cat in enumerate(categories):
            out[text == str(cat)] = k
    out[series.isna().to_numpy()] = -1
    return out


def validate(frame: pd.DataFrame, schema: dict[str, Any]) -> None:
    """Check ``frame`` against ``schema``; raise one SchemaError listing every problem.

    Each problem names the column and the offending data rows (1-based, header not counted);
    ``detail["problems"]`` holds them as ``{column, problem, rows, count}``.
    """
    check_schema(schema)
    problems: list[dict[str, Any]] = []

    def problem(column: str, what: str, mask: np.ndarray) -> None:
        rows = _rows(mask)
        if rows:
            problems.append(
                {
                    "column": column,
                    "problem": what,
                    "rows": rows[:MAX_ROWS_LISTED],
                    "count": len(rows),
                }
            )

    required = [f["name"] for f in schema["features"]] + [schema["label"]["name"]]
    missing = [c for c in required if c not in frame.columns]
    for column in missing:
        problems.append({"column": column, "problem": "missing column", "rows": [], "count": 0})
    for feature in schema["features"]:
        name = feature["name"]
        if name in missing:
            continue
        series = frame[name]
        problem(name, "missing value", series.isna().to_numpy())
        kind = feature["type"]
        if kind in ("float", "int"):
            values, bad = _numeric(series)
            problem(name, f"not a number (type {kind})", bad)
            ok = ~np.isnan(values)
            if kind == "int":
                problem(
                    name,
                    "not an integer (type int)",
                    ok & (np.abs(values - np.round(values)) > 1e-9),
                )
            low, high = feature.get("min"), feature.get("max")
            if low is not None:
                problem(name, f"below the minimum {low}", ok & (values < low))
            if high is not None:
                problem(name, f"above the maximum {high}", ok & (values > high))
            problem(name, "not finite", ok & ~np.isfinite(values))
        elif kind == "bool":
            problem(
                name,
                "not a boolean (expected 0/1 or true/false)",
                series.notna().to_numpy() & np.isnan(_bool_values(series)),
            )
        else:
            index = _category_index(series, feature["categories"])
            problem(
                name,
                f"not one of the categories {feature['categories']}",
                series.notna().to_numpy() & (index < 0),
            )
    label = schema["label"]
    if label["name"] not in missing:
        series = frame[label["name"]]
        problem(label["name"], "missing label", series.isna().to_numpy())
        if "threshold" in label:
            values, bad = _numeric(series)
            problem(label["name"], "label is not a number", bad)
        elif "classes" in label:
            index = _category_index(series, label["classes"])
            problem(
                label["name"],
                f"label not one of the classes {label['classes']}",
                series.notna().to_numpy() & (index < 0),
            )
    if not len(frame):
        problems.append({"column": "*", "problem": "no rows", "rows": [], "count": 0})
    if problems:
        parts = []
        for p in problems[:8]:
            where = f" in rows {p['rows']}" + (
                f" and {p['count'] - len(p['rows'])} more" if p["count"] > len(p["rows"]) else ""
            )
            parts.append(f"column {p['column']!r}: {p['problem']}" + (where if p["rows"] else ""))
        more = f" (and {len(problems) - 8} more problems)" if len(problems) > 8 else ""
        raise SchemaError(
            "local data does not match the trial's data schema: "
            + "; ".join(parts)
            + more
            + ". Nothing was sent.",
            detail={"problems": problems},
        )


def _bool_values(series: pd.Series) -> np.ndarray:
    out = np.full(len(series), np.nan)
    for i, value in enumerate(series.to_numpy()):
        if isinstance(value, bool | np.bool_):
            out[i] = float(value)
        elif is_number(value) or isinstance(value, np.number):
            if float(value) in (0.0, 1.0):
                out[i] = float(value)
        elif isinstance(value, str):
            text = value.strip().lower()
            out[i] = 1.0 if text in _TRUE else 0.0 if text in _FALSE else np.nan
    return out


def encode(frame: pd.DataFrame, schema: dict[str, Any]) -> EncodedData:
    """Validate and encode a data frame into model inputs and targets."""
    validate(frame, schema)
    columns: list[np.ndarray] = []
    for feature in schema["features"]:
        series = frame[feature["name"]]
        kind = feature["type"]
        if kind == "category":
            index = _category_index(series, feature["categories"])
            columns.append(np.eye(len(feature["categories"]), dtype=np.float64)[index].T)
            continue
        values = _bool_values(series) if kind == "bool" else _numeric(series)[0]
        columns.append(scale_feature(values, feature)[None, :])
    x = np.concatenate(columns, axis=0).T.astype(np.float32)
    label = schema["label"]
    series = frame[label["name"]]
    if "classes" in label:
        y = _category_index(series, label["classes"]).astype(np.int64)
    elif "threshold" in label:
        y = (_numeric(series)[0] > float(label["threshold"])).astype(np.float32)
    else:
        y = (_category_index(series, label["positive"]) >= 0).astype(np.float32)
    return EncodedData(np.ascontiguousarray(x), y)


def scale_feature(values: np.ndarray, feature: dict[str, Any]) -> np.ndarray:
    if feature.get("mean") is not None and feature.get("std") is not None:
        return (values - float(feature["mean"])) / float(feature["std"])
    low, high = feature.get("min"), feature.get("max")
    if low is not None and high is not None and high > low:
        return 2.0 * (values - float(low)) / (float(high) - float(low)) - 1.0
    return values


def load_data(
    path: str | Path,
    schema: dict[str, Any],
    *,
    columns: dict[str, str] | None = None,
    format: str | None = None,
) -> EncodedData:
    """Read, map, validate and encode a local data file."""
    return encode(apply_column_mapping(read_table(path, format=format), columns), schema)


def split_seed(trial_id: str, msp_id: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"bcfl/split/{trial_id}/{msp_id}".encode()).digest()[:8], "little"
    )


def split(
    data: EncodedData, *, trial_id: str, msp_id: str, validation_fraction: float = 0.2
) -> LocalSplit:
    """Deterministic train/validation split seeded by (trial id, MSP id); at least one row each."""
    n = len(data)
    if n < 2:
        raise SchemaError(
            f"local data: {n} rows, expected at least 2 (one to train, one to validate)"
        )
    if not 0 < validation_fraction < 1:
        raise SchemaError(
            f"validation_fraction: got {validation_fraction}, expected a number in (0, 1)"
        )
    order = np.random.default_rng(split_seed(trial_id, msp_id)).permutation(n)
    n_val = min(n - 1, max(1, int(round(n * validation_fraction))))
    return LocalSplit(
        train=data.subset(np.sort(order[n_val:])), validation=data.subset(np.sort(order[:n_val]))
    )


def load_split(
    path: str | Path,
    schema: dict[str, Any],
    *,
    trial_id: str,
    msp_id: str,
    validation_fraction: float,
    columns: dict[str, str] | None = None,
    format: str | None = None,
) -> LocalSplit:
    """The split a silo trains and validates on in a trial: what enrolment counts as its
    ``training_records`` and what the agent uses, computed by this one function."""
    data = load_data(path, schema, columns=columns, format=format)
    return split(data, trial_id=trial_id, msp_id=msp_id, validation_fraction=validation_fraction)
