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
    dataset_id = "hospital1-train"              # optional; default: derived from the file name

    [data.columns]                              # optional: local column name -> schema name
    "Patient Age" = "age"

    [privacy]
    epsilon_budget = 3.0                        # optional: this hospital's own limit (<= trial's)
    lifetime_epsilon = 10.0                     # the dataset's epsilon over all trials (default 10)

    [run]
    trials = ["heart-1"]                        # optional: only these trials (default: all enrolled)
    poll_seconds = 2.0

Relative paths are resolved against the config file's folder. Every key can be overridden by an
environment variable: ``BCFL_SILO_IDENTITY``, ``BCFL_SILO_STATE_DIR``, ``BCFL_SILO_LEDGER_URL``,
``BCFL_SILO_STORE_URL``, ``BCFL_SILO_COORDINATOR_URL``, ``BCFL_SILO_DATA_PATH``,
``BCFL_SILO_DATA_TEST_PATH``, ``BCFL_SILO_DATA_FORMAT``, ``BCFL_SILO_DATA_VALIDATION_FRACTION``,
``BCFL_SILO_DATA_DATASET_ID``, ``BCFL_SILO_PRIVACY_EPSILON_BUDGET``,
``BCFL_SILO_PRIVACY_LIFETIME_EPSILON``, ``BCFL_SILO_RUN_TRIALS`` (comma separated),
``BCFL_SILO_RUN_POLL_SECONDS``. Empty variables are ignored.

The file's schema is :class:`SiloSettings` (pydantic-settings: the TOML file is its lowest source,
the environment overrides it); :func:`load_config` turns it into a :class:`SiloConfig` with paths
resolved. A production silo has no attack switches: the red-team silos of demos and tests are
``python -m devnet.red_team``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import tomli_w
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    NoDecode,
    SettingsConfigDict,
)

from bcfl_common.errors import ConfigError
from bcfl_common.files import write_atomic
from bcfl_common.vocabulary import IDENTIFIER

ENV_PREFIX = "BCFL_SILO_"
# The epsilon a hospital lets one dataset spend over all the trials it joins, unless it says more.
DEFAULT_LIFETIME_EPSILON = 10.0
# The contract's bound on a dataset's lifetime epsilon (its MAX_EPSILON_MICRO, 10**12 micro).
MAX_LIFETIME_EPSILON = 1_000_000.0


def _not_bool(value: Any) -> Any:
    # pydantic's lax floats accept booleans; `poll_seconds = true` is a mistake, not 1.0 s.
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


Number = Annotated[float, BeforeValidator(_not_bool)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LedgerSection(_Section):
    url: str | None = None


class StoreSection(_Section):
    url: str | None = None


class CoordinatorSection(_Section):
    url: str = "http://127.0.0.1:8700"


class DataSection(_Section):
    path: str | None = None
    test_path: str | None = None
    format: str | None = None
    validation_fraction: Number = 0.2
    dataset_id: str | None = None
    columns: dict[str, str] = {}


class PrivacySection(_Section):
    epsilon_budget: Number | None = None
    lifetime_epsilon: Number = DEFAULT_LIFETIME_EPSILON


class RunSection(_Section):
    trials: Annotated[list[str] | None, NoDecode] = None
    poll_seconds: Number = 2.0

    @field_validator("trials", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


class SiloSettings(BaseSettings):
    """The silo TOML file's schema; ``BCFL_SILO_<SECTION>_<KEY>`` variables override its keys."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        env_ignore_empty=True,
        extra="forbid",
    )

    identity: str | None = None
    state_dir: str = ".bcfl-silo"
    ledger: LedgerSection = LedgerSection()
    store: StoreSection = StoreSection()
    coordinator: CoordinatorSection = CoordinatorSection()
    data: DataSection = DataSection()
    privacy: PrivacySection = PrivacySection()
    run: RunSection = RunSection()


_SECTIONS: dict[str, type[_Section]] = {
    name: info.annotation  # type: ignore[misc]
    for name, info in SiloSettings.model_fields.items()
    if isinstance(info.annotation, type) and issubclass(info.annotation, _Section)
}
_TOP_KEYS = sorted(name for name in SiloSettings.model_fields if name not in _SECTIONS)
_REMOVED_SECTIONS = {
    "attack": "attack switches were removed from the silo agent; a malicious silo for demos and "
    "tests is `python -m devnet.red_team --attack sign_flip --scale 10 <bcfl silo run arguments>`",
}


class _MappingEnvSource(EnvSettingsSource):
    """The environment source over a given mapping (``os.environ`` unless a caller passes one)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Case-insensitive and ignoring empty values, as the model config says.
        return {k.lower(): v for k, v in self._environ.items() if v != ""}


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
    dataset_id: str | None = None
    lifetime_epsilon: float = DEFAULT_LIFETIME_EPSILON
    trials: list[str] | None = None
    poll_seconds: float = 2.0
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
            "dataset_id": self.dataset_id,
            "lifetime_epsilon": self.lifetime_epsilon,
            "trials": self.trials,
        }


def env_name(section: str, key: str) -> str:
    """The environment variable overriding ``key`` of ``[section]`` ("" for the top level)."""
    return ENV_PREFIX + (f"{section}_{key}" if section else key).upper()


def _read_toml(source: Path) -> dict[str, Any]:
    if not source.is_file():
        raise ConfigError(
            f"config file {source} not found; expected a silo TOML file (see `bcfl silo --help`)"
        )
    try:
        return tomllib.loads(source.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {source}: not valid TOML ({exc})") from exc


def _check_names(raw: dict[str, Any], source: Path | None) -> None:
    """Unknown sections and keys, named with what is allowed (before any type is checked)."""
    for key, value in raw.items():
        if key in _REMOVED_SECTIONS:
            raise ConfigError(
                f"config file {source}: section [{key}] is not supported; {_REMOVED_SECTIONS[key]}"
            )
        if isinstance(value, dict):
            if key not in _SECTIONS:
                raise ConfigError(
                    f"config file {source}: unknown section [{key}], expected one of {sorted(_SECTIONS)}"
                )
            allowed = set(_SECTIONS[key].model_fields)
            unknown = set(value) - allowed
            if unknown:
                raise ConfigError(
                    f"config file {source}: unknown keys {sorted(unknown)} in [{key}], expected some of {sorted(allowed)}"
                )
        elif key not in _TOP_KEYS:
            raise ConfigError(
                f"config file {source}: unknown key {key!r}, expected one of {_TOP_KEYS} or a section"
            )


def _expected(section: str, key: str) -> str:
    if (section, key) == ("data", "columns"):
        return 'local column name = "schema name" string pairs'
    if section and key == "":
        return f"a [{section}] section"
    model = _SECTIONS[section] if section else SiloSettings
    annotation = str(model.model_fields[key].annotation)
    if "list" in annotation:
        return "a list of strings"
    return "float" if "float" in annotation else "str"


def _validation_error(exc: ValidationError, environ: Mapping[str, str]) -> ConfigError:
    lowered = {k.lower(): v for k, v in environ.items() if v != ""}
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"]]
    section, key = (loc[0], loc[1]) if loc[0] in _SECTIONS and len(loc) > 1 else ("", loc[0])
    if loc[0] in _SECTIONS and len(loc) == 1:
        section, key = loc[0], ""
    if (section, key) == ("data", "columns"):
        return ConfigError(f"[data.columns]: expected {_expected(section, key)}")
    where = f"{section}.{key}" if section else key
    name = env_name(section, key)
    if key and name.lower() in lowered:
        where = name
    expected = _expected(section, key)
    return ConfigError(
        f"{where}: got {err['input']!r}, expected {expected}",
        detail={"field": where, "value": str(err["input"]), "expected": expected},
    )


def _nest_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword overrides by flat name (``store_url``, ``run_poll_seconds``) as nested settings."""
    nested: dict[str, Any] = {}
    for flat, value in overrides.items():
        if value is None:
            continue
        if flat in _TOP_KEYS:
            nested[flat] = value
            continue
        section = next((s for s in _SECTIONS if flat.startswith(s + "_")), None)
        key = flat[len(section) + 1 :] if section else ""
        if section is None or key not in _SECTIONS[section].model_fields:
            raise ConfigError(f"override {flat!r}: not a silo config key")
        nested.setdefault(section, {})[key] = value
    return nested


def load_config(
    path: str | Path | None = None, *, environ: Mapping[str, str] | None = None, **overrides: Any
) -> SiloConfig:
    """Read ``path`` (TOML), apply ``BCFL_SILO_*`` variables, then keyword overrides."""
    environ = os.environ if environ is None else environ
    source = None if path is None else Path(path)
    raw = _read_toml(source) if source is not None else {}
    base = source.resolve().parent if source is not None else Path.cwd()
    _check_names(raw, source)
    sources = (
        InitSettingsSource(SiloSettings, init_kwargs=_nest_overrides(overrides)),
        _MappingEnvSource(SiloSettings, environ),
        InitSettingsSource(SiloSettings, init_kwargs=raw),
    )
    try:
        settings = SiloSettings(_build_sources=(sources, {}))
    except ValidationError as exc:
        raise _validation_error(exc, environ) from None

    for value, section, key in (
        (settings.identity, "", "identity"),
        (settings.ledger.url, "ledger", "url"),
        (settings.store.url, "store", "url"),
    ):
        if not value:
            name = f"[{section}] {key}" if section else key
            raise ConfigError(
                f"silo config {source or '(environment)'}: {name} is missing; expected it in the TOML file or {env_name(section, key)}"
            )
    data, privacy, run = settings.data, settings.privacy, settings.run
    if not 0 < data.validation_fraction < 1:
        raise ConfigError(
            f"[data] validation_fraction: got {data.validation_fraction}, expected a number in (0, 1)"
        )
    if privacy.epsilon_budget is not None and privacy.epsilon_budget <= 0:
        raise ConfigError(
            f"[privacy] epsilon_budget: got {privacy.epsilon_budget}, expected a number > 0"
        )

    if not 0 < privacy.lifetime_epsilon <= MAX_LIFETIME_EPSILON:
        raise ConfigError(
            f"[privacy] lifetime_epsilon: got {privacy.lifetime_epsilon}, expected a number in "
            f"(0, {MAX_LIFETIME_EPSILON:g}] (the dataset's epsilon over every trial it joins)",
            detail={"field": "privacy.lifetime_epsilon", "value": str(privacy.lifetime_epsilon)},
        )
    if data.dataset_id is not None and not IDENTIFIER.fullmatch(data.dataset_id):
        raise ConfigError(
            f"[data] dataset_id: got {data.dataset_id!r}, expected an identifier (letters, digits, "
            "'.', '_', '-'; starting with a letter or digit; at most 64 characters)",
            detail={"field": "data.dataset_id", "value": data.dataset_id},
        )

    def resolve(p: str | None) -> Path | None:
        if p is None:
            return None
        q = Path(p).expanduser()
        return q if q.is_absolute() else base / q

    return SiloConfig(
        identity=resolve(settings.identity),  # type: ignore[arg-type]
        state_dir=resolve(settings.state_dir),  # type: ignore[arg-type]
        ledger_url=settings.ledger.url,  # type: ignore[arg-type]
        store_url=settings.store.url,  # type: ignore[arg-type]
        coordinator_url=settings.coordinator.url,
        data_path=resolve(data.path),
        test_path=resolve(data.test_path),
        data_format=data.format,
        validation_fraction=data.validation_fraction,
        columns=dict(data.columns),
        epsilon_budget=privacy.epsilon_budget,
        dataset_id=data.dataset_id,
        lifetime_epsilon=privacy.lifetime_epsilon,
        trials=run.trials,
        poll_seconds=run.poll_seconds,
        source=source,
    )


def _plain(value: Any) -> Any:
    """TOML-ready values: paths as strings, tuples as arrays, unset (None) keys left out."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_config(path: str | Path, config: dict[str, Any]) -> Path:
    """Write a silo TOML file from ``{key: value, section: {key: value}}`` (for `bcfl demo`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, tomli_w.dumps(_plain(config)).encode())
    return path
