"""The silo's TOML configuration, with ``BCFL_SILO_*`` environment overrides and laptop defaults.

Example ``silo.toml``::

    identity = "consortium/members/hospital1"   # member folder (msp/, encryption/, member.json)
    state_dir = "state/hospital1"               # journal, accountants, models, metrics

    [ledger]
    url = "embedded:///abs/path/ledger.db"

    [store]
    url = "file:///abs/path/store"

    [coordinator]
    url = "http://127.0.0.1:8700"

    [data]
    path = "data/hospital1/train.csv"           # CSV or Parquet
    test_path = "data/hospital1/test.csv"       # optional held-out data, for local metrics only
    format = "csv"                              # optional; from the suffix otherwise
    validation_fraction = 0.2

    [data.columns]                              # optional: local column name -> schema name
    "Patient Age" = "age"

    [privacy]
    epsilon_budget = 3.0                        # optional: this hospital's own limit (<= trial's)

    [run]
    trials = ["heart-1"]                        # optional: only these trials (default: all enrolled)
    poll_seconds = 2.0

    [attack]                                    # demos and tests only: a poisoned (still encrypted,
    kind = "none"                               # protocol-following) update: "none" | "sign_flip"
    scale = 10.0

Relative paths are resolved against the config file's folder. Every key can be overridden by an
environment variable: ``BCFL_SILO_IDENTITY``, ``BCFL_SILO_STATE_DIR``, ``BCFL_SILO_LEDGER_URL``,
``BCFL_SILO_STORE_URL``, ``BCFL_SILO_COORDINATOR_URL``, ``BCFL_SILO_DATA_PATH``,
``BCFL_SILO_DATA_TEST_PATH``, ``BCFL_SILO_DATA_FORMAT``, ``BCFL_SILO_DATA_VALIDATION_FRACTION``,
``BCFL_SILO_PRIVACY_EPSILON_BUDGET``, ``BCFL_SILO_RUN_TRIALS`` (comma separated),
``BCFL_SILO_RUN_POLL_SECONDS``, ``BCFL_SILO_ATTACK_KIND``, ``BCFL_SILO_ATTACK_SCALE``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcfl_common.errors import ConfigError

ENV_PREFIX = "BCFL_SILO_"
ATTACKS = ("none", "sign_flip")

# (section or "" for top level, key) -> (type, default)
_KEYS: dict[tuple[str, str], tuple[type, Any]] = {
    ("", "identity"): (str, None),
    ("", "state_dir"): (str, ".bcfl-silo"),
    ("ledger", "url"): (str, None),
    ("store", "url"): (str, None),
    ("coordinator", "url"): (str, "http://127.0.0.1:8700"),
    ("data", "path"): (str, None),
    ("data", "test_path"): (str, None),
    ("data", "format"): (str, None),
    ("data", "validation_fraction"): (float, 0.2),
    ("privacy", "epsilon_budget"): (float, None),
    ("run", "trials"): (list, None),
    ("run", "poll_seconds"): (float, 2.0),
    ("attack", "kind"): (str, "none"),
    ("attack", "scale"): (float, 10.0),
}


@dataclass
class SiloConfig:
    identity: Path
    state_dir: Path
    ledger_url: str
    store_url: str
    data_path: Path | None
    coordinator_url: str = "http://127.0.0.1:8700"
    test_path: Path | None = None
    data_format: str | None = None
    validation_fraction: float = 0.2
    columns: dict[str, str] = field(default_factory=dict)
    epsilon_budget: float | None = None
    trials: list[str] | None = None
    poll_seconds: float = 2.0
    attack_kind: str = "none"
    attack_scale: float = 10.0
    source: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity": str(self.identity),
            "state_dir": str(self.state_dir),
            "ledger_url": self.ledger_url,
            "store_url": self.store_url,
            "coordinator_url": self.coordinator_url,
            "data_path": None if self.data_path is None else str(self.data_path),
            "test_path": None if self.test_path is None else str(self.test_path),
            "validation_fraction": self.validation_fraction,
            "epsilon_budget": self.epsilon_budget,
            "trials": self.trials,
            "attack": {"kind": self.attack_kind, "scale": self.attack_scale},
        }


def _env_name(section: str, key: str) -> str:
    return ENV_PREFIX + (f"{section}_{key}" if section and section not in ("",) else key).upper()


def _coerce(value: Any, kind: type, where: str) -> Any:
    if value is None:
        return None
    try:
        if kind is list:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
            raise ValueError
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except ValueError:
        pass
    raise ConfigError(
        f"{where}: got {value!r}, expected {'a list of strings' if kind is list else kind.__name__}"
    )


def load_config(
    path: str | Path | None = None, *, environ: Mapping[str, str] | None = None, **overrides: Any
) -> SiloConfig:
    """Read ``path`` (TOML), apply ``BCFL_SILO_*`` variables, then keyword overrides."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    base = Path.cwd()
    source = None
    if path is not None:
        source = Path(path)
        if not source.is_file():
            raise ConfigError(
                f"config file {source} not found; expected a silo TOML file (see `bcfl silo --help`)"
            )
        try:
            raw = tomllib.loads(source.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {source}: not valid TOML ({exc})") from exc
        base = source.resolve().parent
    known_sections = {s for s, _ in _KEYS if s}
    for key, value in raw.items():
        if isinstance(value, dict):
            if key not in known_sections:
                raise ConfigError(
                    f"config file {source}: unknown section [{key}], expected one of {sorted(known_sections)}"
                )
            allowed = {k for s, k in _KEYS if s == key} | ({"columns"} if key == "data" else set())
            unknown = set(value) - allowed
            if unknown:
                raise ConfigError(
                    f"config file {source}: unknown keys {sorted(unknown)} in [{key}], expected some of {sorted(allowed)}"
                )
        elif ("", key) not in _KEYS:
            raise ConfigError(
                f"config file {source}: unknown key {key!r}, expected one of {sorted(k for s, k in _KEYS if not s)} or a section"
            )
    values: dict[str, Any] = {}
    for (section, key), (kind, default) in _KEYS.items():
        name = f"{section}.{key}" if section else key
        value = raw.get(section, {}).get(key) if section else raw.get(key)
        env = environ.get(_env_name(section, key))
        if env is not None and env != "":
            value = env
            name = _env_name(section, key)
        values[f"{section}_{key}" if section else key] = _coerce(
            value if value is not None else default, kind, name
        )
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    columns = raw.get("data", {}).get("columns", {}) or {}
    if not isinstance(columns, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in columns.items()
    ):
        raise ConfigError('[data.columns]: expected local column name = "schema name" string pairs')

    def resolve(p: str | None) -> Path | None:
        if p is None:
            return None
        q = Path(p).expanduser()
        return q if q.is_absolute() else base / q

    for required, name in (
        ("identity", "identity"),
        ("ledger_url", "[ledger] url"),
        ("store_url", "[store] url"),
    ):
        if not values.get(required):
            raise ConfigError(
                f"silo config {source or '(environment)'}: {name} is missing; expected it in the TOML file or {_env_name(*_split(required))}"
            )
    attack = values["attack_kind"]
    if attack not in ATTACKS:
        raise ConfigError(f"[attack] kind: got {attack!r}, expected one of {list(ATTACKS)}")
    fraction = values["data_validation_fraction"]
    if not 0 < fraction < 1:
        raise ConfigError(
            f"[data] validation_fraction: got {fraction}, expected a number in (0, 1)"
        )
    budget = values["privacy_epsilon_budget"]
    if budget is not None and budget <= 0:
        raise ConfigError(f"[privacy] epsilon_budget: got {budget}, expected a number > 0")
    return SiloConfig(
        identity=resolve(values["identity"]),  # type: ignore[arg-type]
        state_dir=resolve(values["state_dir"]),  # type: ignore[arg-type]
        ledger_url=values["ledger_url"],
        store_url=values["store_url"],
        coordinator_url=values["coordinator_url"],
        data_path=resolve(values["data_path"]),
        test_path=resolve(values["data_test_path"]),
        data_format=values["data_format"],
        validation_fraction=fraction,
        columns=dict(columns),
        epsilon_budget=budget,
        trials=values["run_trials"],
        poll_seconds=values["run_poll_seconds"],
        attack_kind=attack,
        attack_scale=values["attack_scale"],
        source=source,
    )


def _split(flat: str) -> tuple[str, str]:
    for section, key in _KEYS:
        if (f"{section}_{key}" if section else key) == flat:
            return section, key
    return "", flat


def write_config(path: str | Path, config: dict[str, Any]) -> Path:
    """Write a silo TOML file from ``{key: value, section: {key: value}}`` (for `bcfl demo`)."""
    lines: list[str] = []
    sections = {k: v for k, v in config.items() if isinstance(v, dict)}
    for key, value in config.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {_toml_value(value)}")
    for name, body in sections.items():
        nested = {k: v for k, v in body.items() if isinstance(v, dict)}
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in body.items() if not isinstance(v, dict)]
        for sub, sub_body in nested.items():
            lines.append(f"\n[{name}.{sub}]")
            lines += [f"{_toml_value(k)} = {_toml_value(v)}" for k, v in sub_body.items()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))
