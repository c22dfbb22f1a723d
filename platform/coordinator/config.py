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
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bcfl_common.errors import ConfigError

ENV_PREFIX = "BCFL_COORDINATOR_"
DEFAULT_PORT = 8700
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_STATE_DIR = Path("~/.local/share/bcfl/coordinator")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


def _switch(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    if not isinstance(value, bool):
        raise ValueError("not a boolean")
    return value


def _path(value: Any) -> Any:
    if not isinstance(value, str | Path) or not str(value):
        raise ValueError("not a path")
    return Path(value).expanduser()


Number = BeforeValidator(_no_bool)
PathValue = Annotated[Path, BeforeValidator(_path)]
Text = Annotated[str, Field(min_length=1)]


class CoordinatorConfig(BaseSettings):
    """The coordinator's configuration (frozen). Build it with :func:`load_config`; constructed
    directly it reads nothing from the environment."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    consortium: PathValue
    admin_identity: PathValue
    coordinator_identity: PathValue
    state_dir: PathValue
    ledger_url: Text
    store_url: Text
    database_url: Text
    host: Text = "127.0.0.1"
    port: Annotated[int, Number, Field(ge=0, le=65535)] = DEFAULT_PORT
    scheduler: Annotated[bool, BeforeValidator(_switch)] = True
    poll_interval: Annotated[float, Number, Field(ge=0.05, le=3600)] = 2.0
    max_body_bytes: Annotated[int, Number, Field(ge=1024, le=1 << 30)] = DEFAULT_MAX_BODY_BYTES
    max_clock_skew: Annotated[int, Number, Field(ge=1, le=86400)] = 300
    settlement_url: Text | None = None
    settlement_payees: PathValue | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_config layers the file and the environment itself (each value checked against its
        # own source, so an error names it); the model only validates what it is given.
        return (init_settings,)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def with_overrides(self, **changes: Any) -> CoordinatorConfig:
        return self.model_copy(update={k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return {
            name: str(value) if isinstance(value, Path) else value
            for name, value in self.model_dump().items()
        }


KEYS = tuple(CoordinatorConfig.model_fields)
_PATH_KEYS = tuple(
    name for name in KEYS if "Path" in str(CoordinatorConfig.model_fields[name].annotation)
)
# [settlement] table key -> configuration key
SETTLEMENT_TABLE_KEYS = {"url": "settlement_url", "payees": "settlement_payees"}
_EXPECTED = {
    "port": "an integer in [0, 65535]",
    "max_body_bytes": f"an integer in [1024, {1 << 30}]",
    "max_clock_skew": "an integer in [1, 86400]",
    "poll_interval": "a number of seconds in [0.05, 3600]",
    "scheduler": "true or false",
} | {key: "a path" for key in _PATH_KEYS}
_ADAPTERS: dict[str, TypeAdapter[Any]] = {}


def _convert(key: str, value: Any, source: str, base: Path) -> Any:
    """``value`` checked (and converted) as the field ``key``; relative paths are under ``base``."""
    field = CoordinatorConfig.model_fields[key]
    adapter = _ADAPTERS.get(key)
    if adapter is None:
        annotation = field.annotation
        if field.metadata:
            annotation = Annotated[annotation, *field.metadata]
        adapter = _ADAPTERS[key] = TypeAdapter(annotation)
    try:
        converted = adapter.validate_python(value)
    except ValidationError:
        raise ConfigError(
            f"{source}: {key} = {value!r}; expected {_EXPECTED.get(key, 'a non-empty string')}",
            detail={"key": key, "value": str(value)},
        ) from None
    if isinstance(converted, Path) and not converted.is_absolute():
        converted = base / converted
    return converted


class TomlFileSource(PydanticBaseSettingsSource):
    """coordinator.toml: ``[coordinator]`` (or the root table) and ``[settlement]``."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path):
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self().get(field_name), field_name, False

    def _table(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        table = data.get(name, data if name == "coordinator" else {})
        if not isinstance(table, dict):
            raise ConfigError(f"{self.path}: [{name}] must be a table")
        return table

    def __call__(self) -> dict[str, Any]:
        path = self.path
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file {path} not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
        table = self._table(data, "coordinator")
        tables = {"coordinator", "settlement"} if table is data else set()
        unknown = sorted(set(table) - set(KEYS) - tables)
        if unknown:
            raise ConfigError(
                f"{path}: unknown keys {unknown}; expected some of {list(KEYS)}",
                detail={"unknown": unknown},
            )
        base = path.resolve().parent
        values = {
            key: _convert(key, value, str(path), base)
            for key, value in table.items()
            if key in KEYS
        }
        settlement = self._table(data, "settlement")
        unknown = sorted(set(settlement) - set(SETTLEMENT_TABLE_KEYS))
        if unknown:
            raise ConfigError(
                f"{path}: unknown [settlement] keys {unknown}; expected some of {sorted(SETTLEMENT_TABLE_KEYS)}",
                detail={"unknown": unknown},
            )
        for key, value in settlement.items():
            name = SETTLEMENT_TABLE_KEYS[key]
            values[name] = _convert(name, value, f"{path} [settlement] {key}", base)
        return values


class EnvironmentSource(PydanticBaseSettingsSource):
    """``BCFL_COORDINATOR_<KEY>`` variables (empty ones are ignored); paths relative to the cwd."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]):
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.env.get(ENV_PREFIX + field_name.upper()), field_name, False

    def __call__(self) -> dict[str, Any]:
        cwd = Path.cwd()
        values = {}
        for key in KEYS:
            name = ENV_PREFIX + key.upper()
            if self.env.get(name):
                values[key] = _convert(key, self.env[name], f"environment {name}", cwd)
        return values


def _overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    values = {}
    for key, value in overrides.items():
        if key not in KEYS:
            raise ConfigError(f"unknown configuration key {key!r}; expected one of {list(KEYS)}")
        if value is not None:
            values[key] = _convert(key, value, "command line", Path.cwd())
    return values


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> CoordinatorConfig:
    """Read ``path`` (optional), then ``BCFL_COORDINATOR_*`` variables, then ``overrides``; fill defaults."""
    values: dict[str, Any] = {}
    if path is not None:
        values |= TomlFileSource(CoordinatorConfig, Path(path))()
    values |= EnvironmentSource(CoordinatorConfig, os.environ if env is None else env)()
    values |= _overrides(overrides or {})
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
    state_dir: Path = values.setdefault("state_dir", DEFAULT_STATE_DIR.expanduser())
    values.setdefault("admin_identity", consortium / "members" / "admin")
    values.setdefault("coordinator_identity", consortium / "members" / "coordinator")
    values.setdefault("ledger_url", f"embedded://{state_dir.resolve() / 'ledger.db'}")
    values.setdefault("store_url", (state_dir.resolve() / "store").as_uri())
    values.setdefault("database_url", f"sqlite:///{state_dir.resolve() / 'coordinator.db'}")
    return CoordinatorConfig(**values)


def write_config(config: CoordinatorConfig, path: str | Path) -> Path:
    """Write ``config`` as a coordinator.toml that :func:`load_config` reads back to the same values."""
    import tomli_w

    from bcfl_common.files import write_atomic

    values = {k: v for k, v in config.to_dict().items() if v is not None}
    settlement = {
        table_key: values.pop(name)
        for table_key, name in SETTLEMENT_TABLE_KEYS.items()
        if name in values
    }
    document: dict[str, Any] = {"coordinator": values}
    if settlement:
        document["settlement"] = settlement
    path = Path(path)
    write_atomic(path, tomli_w.dumps(document).encode())
    return path
