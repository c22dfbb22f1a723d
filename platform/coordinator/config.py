"""Coordinator configuration: a TOML file (``coordinator.toml``), every key overridable by ``BCFL_COORDINATOR_<KEY>``.

Example (all keys; only ``consortium`` is required)::

    [coordinator]
    consortium = "consortium"                    # consortium directory (bcfl consortium init)
    admin_identity = "consortium/members/admin"  # default: <consortium>/members/admin
    coordinator_identity = "consortium/members/coordinator"
    state_dir = "coordinator-state"              # default: ~/.local/share/bcfl/coordinator
    ledger_url = "embedded:///var/bcfl/ledger.db" # default: embedded://<state_dir>/ledger.db
    store_url = "file:///var/bcfl/store"         # default: file://<state_dir>/store
    database_url = "sqlite:////var/bcfl/coordinator.db"  # default: sqlite in state_dir
    host = "127.0.0.1"
    port = 8700
    scheduler = true                             # run the round scheduler inside `serve`
    poll_interval = 2.0                          # seconds between scheduler passes
    max_body_bytes = 1048576                     # larger request bodies get 413
    max_clock_skew = 300                         # seconds a signed request's timestamp may be off

    [settlement]                                 # optional Ethereum settlement (coordinator.settlement_step)
    url = "eth://127.0.0.1:8545?deployment=deployment.json&key=settler.key"
    payees = "payees.toml"                       # [payees] MSP id -> Ethereum address

Relative paths in a file are relative to the file's directory; in the environment, to the
working directory. The top-level table may be ``[coordinator]`` or the file's root. The
``[settlement]`` keys are also ``settlement_url`` / ``settlement_payees`` (environment
``BCFL_COORDINATOR_SETTLEMENT_URL`` / ``BCFL_COORDINATOR_SETTLEMENT_PAYEES``); give both or
neither. Settlement is then available; each trial still opts in (admin API, coordinator database).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from bcfl_common.errors import ConfigError

ENV_PREFIX = "BCFL_COORDINATOR_"
DEFAULT_PORT = 8700
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_STATE_DIR = Path("~/.local/share/bcfl/coordinator")


@dataclass(frozen=True)
class CoordinatorConfig:
    consortium: Path
    admin_identity: Path
    coordinator_identity: Path
    state_dir: Path
    ledger_url: str
    store_url: str
    database_url: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    scheduler: bool = True
    poll_interval: float = 2.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_clock_skew: int = 300
    settlement_url: str | None = None
    settlement_payees: Path | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def with_overrides(self, **changes: Any) -> CoordinatorConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: str(getattr(self, f.name))
            if isinstance(getattr(self, f.name), Path)
            else getattr(self, f.name)
            for f in fields(self)
        }


KEYS = tuple(f.name for f in fields(CoordinatorConfig))
_PATH_KEYS = (
    "consortium",
    "admin_identity",
    "coordinator_identity",
    "state_dir",
    "settlement_payees",
)
# [settlement] table key -> configuration key
SETTLEMENT_TABLE_KEYS = {"url": "settlement_url", "payees": "settlement_payees"}


def _convert(key: str, value: Any, source: str, base: Path) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(
            f"{source}: {key} = {value!r}; expected {expected}",
            detail={"key": key, "value": str(value)},
        )

    if key in _PATH_KEYS:
        if not isinstance(value, str | Path) or not str(value):
            raise bad("a path")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path)
    if key in ("ledger_url", "store_url", "database_url", "host", "settlement_url"):
        if not isinstance(value, str) or not value:
            raise bad("a non-empty string")
        return value
    if key in ("port", "max_body_bytes", "max_clock_skew"):
        try:
            number = int(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        low, high = {
            "port": (0, 65535),
            "max_body_bytes": (1024, 1 << 30),
            "max_clock_skew": (1, 86400),
        }[key]
        if number is None or not low <= number <= high:
            raise bad(f"an integer in [{low}, {high}]")
        return number
    if key == "poll_interval":
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not 0.05 <= number <= 3600:
            raise bad("a number of seconds in [0.05, 3600]")
        return number
    if key == "scheduler":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return value.lower() in ("1", "true", "yes", "on")
        raise bad("true or false")
    raise AssertionError(key)


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> CoordinatorConfig:
    """Read ``path`` (optional), then ``BCFL_COORDINATOR_*`` variables, then ``overrides``; fill defaults."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file {path} not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
        table = data.get("coordinator", data)
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [coordinator] must be a table")
        unknown = sorted(
            set(table) - set(KEYS) - ({"coordinator", "settlement"} if table is data else set())
        )
        if unknown:
            raise ConfigError(
                f"{path}: unknown keys {unknown}; expected some of {list(KEYS)}",
                detail={"unknown": unknown},
            )
        base = path.resolve().parent
        for key, value in table.items():
            if key in KEYS:
                values[key] = _convert(key, value, str(path), base)
        settlement = data.get("settlement", {})
        if not isinstance(settlement, dict):
            raise ConfigError(f"{path}: [settlement] must be a table")
        unknown = sorted(set(settlement) - set(SETTLEMENT_TABLE_KEYS))
        if unknown:
            raise ConfigError(
                f"{path}: unknown [settlement] keys {unknown}; expected some of {sorted(SETTLEMENT_TABLE_KEYS)}",
                detail={"unknown": unknown},
            )
        for key, value in settlement.items():
            name = SETTLEMENT_TABLE_KEYS[key]
            values[name] = _convert(name, value, f"{path} [settlement] {key}", base)
    cwd = Path.cwd()
    for key in KEYS:
        name = ENV_PREFIX + key.upper()
        if env.get(name):
            values[key] = _convert(key, env[name], f"environment {name}", cwd)
    for key, value in (overrides or {}).items():
        if key not in KEYS:
            raise ConfigError(f"unknown configuration key {key!r}; expected one of {list(KEYS)}")
        if value is not None:
            values[key] = _convert(key, value, "command line", cwd)
    if "consortium" not in values:
        raise ConfigError(
            "no consortium directory configured: set `consortium` in coordinator.toml or "
            f"{ENV_PREFIX}CONSORTIUM (a directory made by `bcfl consortium init`)",
            detail={"key": "consortium"},
        )
    if ("settlement_url" in values) != ("settlement_payees" in values):
        missing = "payees" if "settlement_url" in values else "url"
        raise ConfigError(
            f"settlement: {missing} is missing; expected both [settlement] url (eth://...) and payees "
            "(a TOML/JSON map MSP id -> Ethereum address), or neither (settlement off)",
            detail={"key": f"settlement_{missing}"},
        )
    consortium: Path = values["consortium"]
    state_dir: Path = values.get("state_dir") or DEFAULT_STATE_DIR.expanduser()
    values.setdefault("state_dir", state_dir)
    values.setdefault("admin_identity", consortium / "members" / "admin")
    values.setdefault("coordinator_identity", consortium / "members" / "coordinator")
    values.setdefault("ledger_url", f"embedded://{state_dir.resolve() / 'ledger.db'}")
    values.setdefault("store_url", (state_dir.resolve() / "store").as_uri())
    values.setdefault("database_url", f"sqlite:///{state_dir.resolve() / 'coordinator.db'}")
    return CoordinatorConfig(**values)
