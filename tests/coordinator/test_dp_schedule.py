"""The DP schedule the coordinator computes when a trial starts is exactly privacy.dp's (Opacus)."""

from __future__ import annotations

from typing import Any

import pytest

from bcfl_common.errors import ContractError
from coordinator.dp_schedule import enrolled_training_records, start_trial_schedule
from model_registry.training_settings import training_inputs
from privacy.dp import dp_schedule

TRIAL: dict[str, Any] = {
    "trial_id": "trial-dp",
    "rounds": 2,
    "dp": {
        "enabled": True,
        "target_epsilon_micro": 1_000_000,
        "delta": [1, 100_000],
        "max_grad_norm_milli": 1000,
        "local_epochs": 1,
        "accountant": "rdp",
        "grad_sample_mode": "hooks",
    },
    "model": {"name": "logistic_regression", "hyperparameters": {}},
    "data_schema": {
        "features": [{"name": "age", "type": "float"}],
        "label": {"name": "y", "positive": [1]},
    },
}


def enrolment(msp_id: str, records: Any, status: str = "enrolled") -> dict[str, Any]:
    return {"msp_id": msp_id, "status": status, "training_records": records, "dataset_id": "d"}


def test_the_schedule_equals_a_direct_privacy_dp_computation() -> None:
    enrolments = [
        enrolment("Hospital1MSP", 100),
        enrolment("Hospital2MSP", 300),
        enrolment("Hospital3MSP", 100),  # same count: computed once, same entry
        enrolment("Hospital4MSP", 50, status="removed"),
    ]
    seen: list[tuple[list[str], int, int]] = []
    schedule = start_trial_schedule(
        TRIAL, enrolments, progress=lambda m, done, total: seen.append((m, done, total))
    )
    direct = dp_schedule(
        TRIAL,
        {"Hospital1MSP": 100, "Hospital2MSP": 300, "Hospital3MSP": 100},
        training_inputs(TRIAL),
    )
    assert schedule == direct
    assert sorted(schedule) == ["Hospital1MSP", "Hospital2MSP", "Hospital3MSP"]  # removed: none
    entry = schedule["Hospital2MSP"]
    assert len(entry["epsilon_micro"]) == TRIAL["rounds"]
    assert entry["epsilon_micro"] == sorted(entry["epsilon_micro"])
    assert entry["epsilon_micro"][-1] <= TRIAL["dp"]["target_epsilon_micro"]
    # A larger dataset needs less noise for the same target.
    assert entry["noise_multiplier_micro"] < schedule["Hospital1MSP"]["noise_multiplier_micro"]
    assert seen == [(["Hospital1MSP", "Hospital3MSP"], 0, 2), (["Hospital2MSP"], 1, 2), ([], 2, 2)]


def test_dp_off_has_no_schedule() -> None:
    trial = dict(TRIAL, dp={"enabled": False, "reason": "synthetic data"})
    assert start_trial_schedule(trial, [enrolment("Hospital1MSP", 100)]) is None


@pytest.mark.parametrize("records", [None, 0, True, "100"])
def test_an_enrolment_without_registered_records_is_refused_by_name(records: Any) -> None:
    with pytest.raises(ContractError) as caught:
        enrolled_training_records([enrolment("Hospital1MSP", records)])
    assert caught.value.code == "INVALID_ARGUMENT"
    assert "Hospital1MSP" in caught.value.message and "training_records" in caught.value.message
    assert repr(records) in caught.value.message
