"""The trial's data schema: its form, its hash and the model input/output widths it implies.

The data schema is part of the trial record on the ledger (``data_schema``). Its format::

    {
      "version": 1,                                   # optional, 1 if absent
      "features": [                                   # in model input order
        {"name": "age", "type": "float",              # "float" | "int" | "bool" | "category"
         "min": 18, "max": 100,                       # allowed range (optional, inclusive)
         "mean": 53.1, "std": 9.4},                   # optional scaling, agreed by the consortium
        {"name": "cp", "type": "category", "categories": [1, 2, 3, 4]},
        ...
      ],
      "label": {"name": "num", "positive": [1, 2, 3, 4]}     # binary: values counted positive
            |  {"name": "y", "threshold": 0.5}               # binary: value > threshold
            |  {"name": "digit", "classes": [0, 1, ..., 9]}  # multi-class
      "input_shape": [1, 8, 8]                        # optional: image models (C, H, W)
    }
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from bcfl_common.canonical import canonical_json
from bcfl_common.errors import SchemaError

FEATURE_TYPES = ("float", "int", "bool", "category")


# ---------------------------------------------------------------------------------------------


def _schema_error(message: str, **detail: Any) -> SchemaError:
    return SchemaError(message, detail=detail)


def check_schema(schema: Any) -> dict[str, Any]:
    """Validate the schema's own form; returns it. Raises SchemaError naming the bad field."""
    if not isinstance(schema, dict):
        raise _schema_error(f"data schema: got {type(schema).__name__}, expected a JSON object")
    version = schema.get("version", 1)
    if version != 1:
        raise _schema_error(f"data schema version: got {version!r}, expected 1", field="version")
    unknown = set(schema) - {"version", "features", "label", "input_shape", "description"}
    if unknown:
        raise _schema_error(
            f"data schema: unknown fields {sorted(unknown)}, expected features, label, "
            "input_shape, version, description",
            fields=sorted(unknown),
        )
    features = schema.get("features")
    if not isinstance(features, list) or not features:
        raise _schema_error(
            "data schema features: expected a non-empty list of feature objects", field="features"
        )
    names: set[str] = set()
    for i, feature in enumerate(features):
        where = f"data schema features[{i}]"
        if (
            not isinstance(feature, dict)
            or not isinstance(feature.get("name"), str)
            or not feature["name"]
        ):
            raise _schema_error(
                f"{where}: expected an object with a non-empty string name", field=f"features[{i}]"
            )
        name = feature["name"]
        if name in names:
            raise _schema_error(
                f"{where}: feature {name!r} appears twice, expected each name once", field=name
            )
        names.add(name)
        kind = feature.get("type")
        if kind not in FEATURE_TYPES:
            raise _schema_error(
                f"{where} ({name}) type: got {kind!r}, expected one of {list(FEATURE_TYPES)}",
                field=name,
            )
        if kind == "category":
            cats = feature.get("categories")
            if (
                not isinstance(cats, list)
                or len(cats) < 2
                or len({str(c) for c in cats}) != len(cats)
            ):
                raise _schema_error(
                    f"{where} ({name}) categories: got {cats!r}, expected a list of at least 2 distinct values",
                    field=name,
                )
        for key in ("min", "max", "mean", "std"):
            value = feature.get(key)
            if value is not None and (not is_number(value) or not math.isfinite(value)):
                raise _schema_error(
                    f"{where} ({name}) {key}: got {value!r}, expected a finite number", field=name
                )
        if (
            feature.get("min") is not None
            and feature.get("max") is not None
            and feature["min"] > feature["max"]
        ):
            raise _schema_error(
                f"{where} ({name}): min {feature['min']} is above max {feature['max']}", field=name
            )
        if feature.get("std") is not None and feature["std"] <= 0:
            raise _schema_error(
                f"{where} ({name}) std: got {feature['std']}, expected a number > 0", field=name
            )
    label = schema.get("label")
    if not isinstance(label, dict) or not isinstance(label.get("name"), str) or not label["name"]:
        raise _schema_error(
            "data schema label: expected an object with a non-empty string name", field="label"
        )
    if label["name"] in names:
        raise _schema_error(
            f"data schema label: {label['name']!r} is also a feature", field="label"
        )
    modes = [k for k in ("positive", "threshold", "classes") if k in label]
    if len(modes) != 1:
        raise _schema_error(
            f"data schema label: got {modes or 'none'} of positive/threshold/classes, expected exactly one",
            field="label",
        )
    if "positive" in label and (not isinstance(label["positive"], list) or not label["positive"]):
        raise _schema_error(
            "data schema label positive: expected a non-empty list of values", field="label"
        )
    if "threshold" in label and not is_number(label["threshold"]):
        raise _schema_error("data schema label threshold: expected a number", field="label")
    if "classes" in label and (not isinstance(label["classes"], list) or len(label["classes"]) < 2):
        raise _schema_error(
            "data schema label classes: expected a list of at least 2 values", field="label"
        )
    shape = schema.get("input_shape")
    if shape is not None:
        if not (
            isinstance(shape, list)
            and len(shape) == 3
            and all(isinstance(s, int) and s > 0 for s in shape)
        ):
            raise _schema_error(
                f"data schema input_shape: got {shape!r}, expected [channels, height, width]",
                field="input_shape",
            )
        if math.prod(shape) != feature_count(schema, _checked=True):
            raise _schema_error(
                f"data schema input_shape: {shape} holds {math.prod(shape)} values, expected the "
                f"{feature_count(schema, _checked=True)} encoded features",
                field="input_shape",
            )
    return schema


def is_number(value: Any) -> bool:
    """A JSON number (int or float), not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def schema_sha256(schema: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(schema)).hexdigest()


def feature_count(schema: dict[str, Any], *, _checked: bool = False) -> int:
    """Width of the encoded feature vector (one-hot categories count one column each)."""
    if not _checked:
        check_schema(schema)
    return sum(len(f["categories"]) if f["type"] == "category" else 1 for f in schema["features"])


def output_count(schema: dict[str, Any]) -> int:
    """Model outputs: 1 logit for a binary label, one per class otherwise."""
    label = schema["label"]
    return len(label["classes"]) if "classes" in label else 1


def is_binary(schema: dict[str, Any]) -> bool:
    return "classes" not in schema["label"]
