"""Joining a trial: the hospital registers its dataset and its own encryption key on the ledger,
then asks the coordinator.

The dataset record bounds what the hospital can claim: ``records`` (the rows of its data file)
bounds the ``training_records`` of every key registration, which bounds every sample weight it
reveals, and ``lifetime_epsilon_micro`` bounds the epsilon the dataset spends over all trials.
Its ``commitment`` is ``sha256(salt + ":" + sha256(data file))`` with a random salt kept in the
state directory: it pins the file without giving the ledger a fingerprint of the records.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from bcfl_common.errors import ConfigError, ContractError
from consortium.identity import Identity
from consortium.ledger import Ledger
from privacy import dp
from silo_agent.config import SiloConfig
from silo_agent.data import load_split, read_table
from silo_agent.state import SiloState


def default_dataset_id(data_path: Path) -> str:
    """A readable identifier from the data file's name (``train.csv`` -> ``train.csv``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", data_path.name).lstrip("._-")[:64]
    return name or "dataset"


def dataset_id_of(config: SiloConfig) -> str:
    return config.dataset_id or default_dataset_id(_data_path(config))


def dataset_commitment(salt: str, data_path: Path) -> str:
    """``sha256(salt + ":" + sha256 of the file's bytes)``, hex."""
    digest = hashlib.sha256()
    with open(data_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return hashlib.sha256(f"{salt}:{digest.hexdigest()}".encode()).hexdigest()


def _data_path(config: SiloConfig) -> Path:
    if config.data_path is None:
        raise ConfigError("[data] path is not set; expected the hospital's CSV or Parquet file")
    return config.data_path


def find_dataset(ledger: Ledger, msp_id: str, dataset_id: str) -> dict[str, Any] | None:
    for record in ledger.evaluate("get_datasets", {"msp_id": msp_id}):
        if record["dataset_id"] == dataset_id:
            return dict(record)
    return None


def register_dataset(ledger: Ledger, identity: Identity, config: SiloConfig) -> dict[str, Any]:
    """The hospital's Dataset record for its data file, registered now if it is not yet.

    A dataset already registered under this id must still have the local file's commitment: a
    changed file is a new dataset (a new ``[data] dataset_id``), never a silent re-count.
    """
    path = _data_path(config)
    dataset_id = dataset_id_of(config)
    salt = SiloState(config.state_dir).dataset_salt(dataset_id)
    commitment = dataset_commitment(salt, path)
    existing = find_dataset(ledger, identity.msp_id, dataset_id)
    if existing is None:
        args = {
            "dataset_id": dataset_id,
            "commitment": commitment,
            "records": len(read_table(path, format=config.data_format)),
            "lifetime_epsilon_micro": dp.to_micro_epsilon(config.lifetime_epsilon, round_up=False),
        }
        try:
            ledger.submit("register_dataset", args)
        except ContractError as exc:
            if exc.code != "ALREADY_EXISTS":
                raise
        existing = find_dataset(ledger, identity.msp_id, dataset_id)
        assert existing is not None, "register_dataset succeeded but get_datasets does not list it"
    if existing["commitment"] != commitment:
        raise ConfigError(
            f"[data] dataset_id {dataset_id!r}: the ledger's commitment {existing['commitment']} "
            f"does not match the data file {path} ({commitment}); the file changed since the "
            "dataset was registered (or the state directory's salt was lost): expected a new "
            "[data] dataset_id for new data",
            detail={"field": "data.dataset_id", "value": dataset_id},
        )
    return existing


def training_records(config: SiloConfig, trial: dict[str, Any], msp_id: str) -> int:
    """The size of the training split this hospital will train on in ``trial``."""
    local = load_split(
        _data_path(config),
        trial["data_schema"],
        trial_id=trial["trial_id"],
        msp_id=msp_id,
        validation_fraction=config.validation_fraction,
        columns=config.columns,
        format=config.data_format,
    )
    return len(local.train)


def register_encryption_key(
    ledger: Ledger,
    identity: Identity,
    trial_id: str,
    *,
    dataset_id: str,
    training_records: int,
) -> dict[str, Any]:
    """Record this hospital's X25519 key for ``trial_id`` in a transaction it signs itself, with
    the dataset it trains on and the size of its training split.

    The contract enrols a hospital only with the key the hospital registered, so an operator
    cannot slip in a key of its own and receive the trial's secret context.
    """
    args = {
        "trial_id": trial_id,
        "encryption_public_key": identity.encryption_public_key_pem().decode(),
        "dataset_id": dataset_id,
        "training_records": training_records,
    }
    return ledger.submit("register_encryption_key", args).result


def enrol(
    ledger: Ledger,
    identity: Identity,
    config: SiloConfig,
    trial_id: str,
    *,
    claimed_training_records: int | None = None,
) -> dict[str, Any]:
    """Register the dataset (once) and the key with the training split's size for ``trial_id``.

    ``claimed_training_records`` replaces the counted size; only ``devnet.red_team`` sets it
    (to show the contract bounds a claim by the dataset). Returns the key registration.
    """
    trial = ledger.evaluate("get_trial", {"trial_id": trial_id})
    dataset = register_dataset(ledger, identity, config)
    count = training_records(config, trial, identity.msp_id)
    return register_encryption_key(
        ledger,
        identity,
        trial_id,
        dataset_id=dataset["dataset_id"],
        training_records=count if claimed_training_records is None else claimed_training_records,
    )


def request_enrolment(
    ledger: Ledger,
    coordinator: Any,
    identity: Identity,
    config: SiloConfig,
    trial_id: str,
    *,
    claimed_training_records: int | None = None,
) -> dict[str, Any]:
    """:func:`enrol` on the ledger, then send the enrolment request to the coordinator."""
    enrol(ledger, identity, config, trial_id, claimed_training_records=claimed_training_records)
    return coordinator.request_enrolment(trial_id, identity.encryption_public_key_pem())
