"""Local data: schema validation errors name the column and rows; encoding; the local split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bcfl_common.errors import SchemaError
from model_registry.data_schema import check_schema, feature_count
from silo_agent.data import encode, load_data, split, validate

SCHEMA = {
    "features": [
        {"name": "age", "type": "int", "min": 18, "max": 100, "mean": 50, "std": 10},
        {"name": "bp", "type": "float", "min": 50, "max": 250},
        {"name": "cp", "type": "category", "categories": [1, 2, 3]},
        {"name": "smoker", "type": "bool"},
    ],
    "label": {"name": "disease", "positive": ["yes"]},
}


def frame(**changes: list) -> pd.DataFrame:
    data = {
        "age": [30, 40, 50, 60],
        "bp": [120.0, 130.5, 140.0, 150.0],
        "cp": [1, 2, 3, 1],
        "smoker": [0, 1, 0, 1],
        "disease": ["yes", "no", "no", "yes"],
    }
    data.update(changes)
    return pd.DataFrame(data)


def problems(df: pd.DataFrame) -> list[dict]:
    with pytest.raises(SchemaError) as info:
        validate(df, SCHEMA)
    assert "Nothing was sent" in info.value.message
    return info.value.detail["problems"]


def test_missing_column_is_named() -> None:
    (p,) = problems(frame().drop(columns=["bp"]))
    assert p["column"] == "bp" and p["problem"] == "missing column"


def test_wrong_type_names_column_and_rows() -> None:
    (p,) = problems(frame(bp=[120.0, "high", 140.0, "n/a"]))
    assert p["column"] == "bp" and "not a number" in p["problem"] and p["rows"] == [2, 4]


def test_non_integer_in_int_column() -> None:
    (p,) = problems(frame(age=[30, 40.5, 50, 60]))
    assert p["column"] == "age" and p["rows"] == [2]


def test_out_of_range_names_column_and_rows() -> None:
    found = problems(frame(age=[30, 17, 101, 60]))
    assert {(p["problem"], tuple(p["rows"])) for p in found} == {
        ("below the minimum 18", (2,)),
        ("above the maximum 100", (3,)),
    }
    assert all(p["column"] == "age" for p in found)


def test_bad_category_names_column_and_rows() -> None:
    (p,) = problems(frame(cp=[1, 2, 7, 1]))
    assert p["column"] == "cp" and p["rows"] == [3] and "categories" in p["problem"]


def test_missing_values_and_label() -> None:
    found = problems(frame(bp=[120.0, None, 140.0, 150.0], disease=["yes", None, "no", "yes"]))
    assert {(p["column"], tuple(p["rows"])) for p in found} == {("bp", (2,)), ("disease", (2,))}


def test_message_names_column_and_rows() -> None:
    with pytest.raises(SchemaError, match=r"column 'cp'.*rows \[3\]"):
        validate(frame(cp=[1, 2, 7, 1]), SCHEMA)


def test_encoding_uses_schema_scaling_and_one_hot() -> None:
    data = encode(frame(), SCHEMA)
    assert data.x.shape == (4, feature_count(SCHEMA)) == (4, 6)
    assert data.x[0, 0] == pytest.approx((30 - 50) / 10)
    assert data.x[0, 1] == pytest.approx(2 * (120 - 50) / 200 - 1)
    assert data.x[:, 2:5].tolist()[2] == [0, 0, 1]
    assert data.y.tolist() == [1, 0, 0, 1]


def test_column_mapping_and_parquet(tmp_path: Path) -> None:
    df = frame().rename(columns={"age": "Patient Age"})
    df.to_parquet(tmp_path / "d.parquet")
    data = load_data(tmp_path / "d.parquet", SCHEMA, columns={"Patient Age": "age"})
    assert len(data) == 4
    df.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(SchemaError, match="'age'"):
        load_data(tmp_path / "d.csv", SCHEMA)


def test_split_is_deterministic_and_per_silo() -> None:
    df = pd.concat([frame()] * 10, ignore_index=True)
    df["age"] = np.arange(len(df)) + 20
    data = encode(df, SCHEMA)
    a = split(data, trial_id="t", msp_id="H1MSP", validation_fraction=0.25)
    b = split(data, trial_id="t", msp_id="H1MSP", validation_fraction=0.25)
    c = split(data, trial_id="t", msp_id="H2MSP", validation_fraction=0.25)
    assert (
        np.array_equal(a.validation.x, b.validation.x)
        and len(a.validation) == 10
        and len(a.train) == 30
    )
    assert not np.array_equal(a.validation.x, c.validation.x)


def test_schema_form_is_checked() -> None:
    with pytest.raises(SchemaError, match="type"):
        check_schema(
            {"features": [{"name": "a", "type": "complex"}], "label": {"name": "y", "threshold": 0}}
        )
    with pytest.raises(SchemaError, match="exactly one"):
        check_schema({"features": [{"name": "a", "type": "float"}], "label": {"name": "y"}})
