"""The parts of SUBMIT and enrolment that need no ledger: the schedule check, the training-records
check, the kept update and delta cache of the state directory, the dataset commitment."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bcfl_common.errors import ConfigError, PrivacyError
from model_registry.training_settings import training_inputs
from privacy import dp
from silo_agent.config import load_config
from silo_agent.datasets import load_demo_dataset
from silo_agent.enrolment import dataset_commitment, default_dataset_id
from silo_agent.state import SiloState
from silo_agent.submission import check_schedule_entry, check_training_records


@pytest.fixture(scope="module")
def trial() -> dict[str, Any]:
    ds = load_demo_dataset("breast-cancer", hospitals=4)
    return {
        "trial_id": "t",
        "rounds": 3,
        "model": ds.model,
        "data_schema": ds.schema,
        "dp": dict(ds.dp, enabled=True, noise_multiplier_milli=None),
    }


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_own_schedule_entry_is_accepted_and_a_changed_one_refused(trial: dict) -> None:
    entry = dp.schedule_entry(trial, training_records=80, **training_inputs(trial))
    check_schedule_entry("t", "H1MSP", entry, entry)  # what the silo computes itself
    # A coordinator that understates the epsilon charged per round (the hospital would spend
    # more than the ledger says) or inflates the norm bound: refused, naming the fields.
    understated = {**entry, "epsilon_micro": [e // 2 for e in entry["epsilon_micro"]]}
    with pytest.raises(PrivacyError) as info:
        check_schedule_entry("t", "H1MSP", understated, entry)
    assert info.value.code == "SCHEDULE_MISMATCH"
    assert "epsilon_micro" in info.value.message and "H1MSP" in info.value.message
    assert info.value.detail["fields"] == ["epsilon_micro"]
    loose = {**entry, "max_update_norm_milli": 10**9, "training_records": 81}
    with pytest.raises(PrivacyError) as info:
        check_schedule_entry("t", "H1MSP", loose, entry)
    assert set(info.value.detail["fields"]) == {"training_records", "max_update_norm_milli"}
    with pytest.raises(PrivacyError, match="no entry for H1MSP") as info:
        check_schedule_entry("t", "H1MSP", None, entry)
    assert info.value.code == "SCHEDULE_MISMATCH"


def test_training_split_must_be_the_registered_size() -> None:
    check_training_records("t", "H1MSP", 80, 80)
    with pytest.raises(PrivacyError) as info:
        check_training_records("t", "H1MSP", 80, 81)
    assert info.value.code == "TRAINING_RECORDS_MISMATCH"
    assert "81" in info.value.message and "training_records = 80" in info.value.message


def test_kept_update_is_private_and_checked(tmp_path: Path) -> None:
    state = SiloState(tmp_path)
    blob = b"BCFU" + bytes(range(200))
    sha = state.save_update("t", blob)
    assert sha == hashlib.sha256(blob).hexdigest()
    path = state.update_path("t", sha)
    assert mode(path) == 0o600 and state.load_update("t", sha) == blob
    path.write_bytes(blob + b"x")  # changed bytes are not the committed update
    assert state.load_update("t", sha) is None
    assert state.load_update("t", "a" * 64) is None
    with pytest.raises(ConfigError, match="64 lowercase hex"):
        state.update_path("t", "../../etc/passwd")


def test_delta_cache_round_trips(tmp_path: Path) -> None:
    state = SiloState(tmp_path)
    delta = np.linspace(-1, 1, 31)
    state.save_delta("t", "b" * 64, delta)
    np.testing.assert_array_equal(state.load_delta("t", "b" * 64), delta)
    assert mode(state.delta_path("t", "b" * 64)) == 0o600
    state.delta_path("t", "b" * 64).write_bytes(b"damaged")
    assert state.load_delta("t", "b" * 64) is None  # decrypted again by the agent


def test_dataset_commitment_is_salted_and_stable(tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    data.write_bytes(b"a,b\n1,2\n")
    state = SiloState(tmp_path / "state")
    salt = state.dataset_salt("train.csv")
    assert state.dataset_salt("train.csv") == salt  # drawn once
    assert mode(tmp_path / "state" / "datasets" / "train.csv.salt") == 0o600
    assert state.dataset_salt("other") != salt
    commitment = dataset_commitment(salt, data)
    file_hash = hashlib.sha256(data.read_bytes()).hexdigest()
    assert commitment == hashlib.sha256(f"{salt}:{file_hash}".encode()).hexdigest()
    assert commitment != file_hash  # the ledger holds no fingerprint of the records
    data.write_bytes(b"a,b\n1,3\n")
    assert dataset_commitment(salt, data) != commitment
    (tmp_path / "state" / "datasets" / "train.csv.salt").write_text("short")
    with pytest.raises(ConfigError, match="cannot be re-created"):
        state.dataset_salt("train.csv")


def test_default_dataset_id_is_a_readable_identifier() -> None:
    assert default_dataset_id(Path("/data/hospital1/train.csv")) == "train.csv"
    assert default_dataset_id(Path("/data/Patients 2024 (v2).parquet")) == (
        "Patients-2024-v2-.parquet"
    )
    assert default_dataset_id(Path("/data/.hidden")) == "hidden"


def _write(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "silo.toml"
    path.write_text(
        'identity = "id"\n[ledger]\nurl = "embedded:///x"\n[store]\nurl = "file:///s"\n' + extra
    )
    return path


def test_config_dataset_id_and_lifetime_epsilon(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path), environ={})
    assert config.dataset_id is None and config.lifetime_epsilon == 10.0
    config = load_config(
        _write(tmp_path, '[data]\ndataset_id = "cohort-2024"\n[privacy]\nlifetime_epsilon = 4\n'),
        environ={"BCFL_SILO_PRIVACY_LIFETIME_EPSILON": "6.5"},
    )
    assert config.dataset_id == "cohort-2024" and config.lifetime_epsilon == 6.5
    config = load_config(_write(tmp_path), environ={"BCFL_SILO_DATA_DATASET_ID": "env-set"})
    assert config.dataset_id == "env-set"
    with pytest.raises(ConfigError, match="lifetime_epsilon: got 0.0"):
        load_config(_write(tmp_path, "[privacy]\nlifetime_epsilon = 0\n"), environ={})
    with pytest.raises(ConfigError, match="BCFL_SILO_PRIVACY_LIFETIME_EPSILON: got .lots."):
        load_config(_write(tmp_path), environ={"BCFL_SILO_PRIVACY_LIFETIME_EPSILON": "lots"})
    with pytest.raises(ConfigError, match="dataset_id: got 'my data'"):
        load_config(_write(tmp_path, '[data]\ndataset_id = "my data"\n'), environ={})
