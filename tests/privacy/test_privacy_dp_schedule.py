"""The public DP schedule: what the contract charges equals what the silo's own accountant spends,
and an honest DP update stays under the norm bound derived from the policy."""

from __future__ import annotations

import numpy as np
import pytest

from bcfl_common.errors import PrivacyError
from model_registry.registry import build_from_spec, flatten
from model_registry.training_settings import TrainingSettings, training_inputs
from privacy import dp
from silo_agent.data import load_data, split
from silo_agent.datasets import load_demo_dataset, write_demo_dataset
from silo_agent.training import open_accountant, train_local


def _trial(dataset: str = "breast-cancer", **dp_overrides: object) -> dict:
    data = load_demo_dataset(dataset)
    return {
        "trial_id": "schedule-trial",
        "rounds": 4,
        "dp": {
            "enabled": True,
            "target_epsilon_micro": 1_000_000,
            "delta": [1, 100000],
            "max_grad_norm_milli": 1000,
            "local_epochs": 1,
            "accountant": "rdp",
            "grad_sample_mode": "ghost",
            **dp_overrides,
        },
        "model": data.model,
        "data_schema": data.schema,
    }


def test_schedule_equals_the_silos_own_accountant(tmp_path):
    trial = _trial()
    settings = TrainingSettings.from_hyperparameters(trial["model"]["hyperparameters"])
    n_train = 120
    entry = dp.schedule_entry(trial, training_records=n_train, **training_inputs(trial))
    accountant = open_accountant(tmp_path / "acc.json", trial, settings, n_train)
    assert accountant is not None
    assert entry["steps_per_round"] == accountant.plan.steps_per_round
    assert entry["noise_multiplier_micro"] == round(accountant.plan.noise_multiplier * 1e6)
    budget = dp.PrivacyBudget(10**9)
    spent = []
    for k in range(1, trial["rounds"] + 1):
        accountant.charge_round(k, budget=budget)
        spent.append(accountant.spent_micro())
    assert spent == entry["epsilon_micro"]
    assert spent == sorted(spent) and spent[-1] <= trial["dp"]["target_epsilon_micro"]


def test_schedule_is_deterministic_and_differences_are_named():
    trial = _trial()
    training = training_inputs(trial)
    first = dp.dp_schedule(trial, {"B": 80, "A": 200}, training)
    again = dp.dp_schedule(trial, {"A": 200, "B": 80}, training)
    assert first == again and list(first) == ["A", "B"]
    forged = {**first["A"], "epsilon_micro": [e // 2 for e in first["A"]["epsilon_micro"]]}
    problems = dp.schedule_differences(forged, first["A"])
    assert len(problems) == 1 and problems[0].startswith("epsilon_micro: recorded")
    assert dp.schedule_differences(first["A"], first["A"]) == []


def test_honest_dp_updates_stay_under_the_norm_bound(tmp_path):
    """Real DP-SGD rounds on the demo data: every update's norm is below the bound (which is
    what lets voters reject a boosted update as norm_exceeded without rejecting honest ones)."""
    data = load_demo_dataset("breast-cancer")
    trial = _trial()
    paths = write_demo_dataset(data, tmp_path / "data")
    encoded = split(
        load_data(paths[0]["train"], data.schema),
        trial_id=trial["trial_id"],
        msp_id="Hospital1MSP",
    )
    n_train = len(encoded.train)
    entry = dp.schedule_entry(trial, training_records=n_train, **training_inputs(trial))
    bound = entry["max_update_norm_milli"] / 1000
    settings = TrainingSettings.from_hyperparameters(trial["model"]["hyperparameters"])
    accountant = open_accountant(tmp_path / "acc.json", trial, settings, n_train)
    base = flatten(build_from_spec(trial["model"], trial["data_schema"]))
    norms = []
    for _ in range(trial["rounds"]):
        result = train_local(
            trial["model"], trial["data_schema"], base, encoded.train, accountant=accountant
        )
        delta = result.params.astype(np.float64) - base
        norms.append(float(np.linalg.norm(delta)))
        base = result.params
    assert max(norms) <= bound, (norms, bound)
    # A boost of 5 of the largest honest update goes over it here.
    assert 5 * max(norms) > bound, (norms, bound)


def test_no_bound_without_a_policy_that_implies_one():
    trial = _trial()
    training = training_inputs(trial)
    with_decay = dp.schedule_entry(
        trial, training_records=100, **{**training, "weight_decay": 0.01}
    )
    assert with_decay["max_update_norm_milli"] is None
    adam = dp.schedule_entry(trial, training_records=100, **{**training, "optimizer": "adam"})
    steps = adam["steps_per_round"]
    assert adam["max_update_norm_milli"] == pytest.approx(
        1000 * 3.2 * training["learning_rate"] * steps * np.sqrt(training["n_params"]), rel=1e-3
    )
    off = {**trial, "dp": {"enabled": False, "reason": "test"}}
    with pytest.raises(PrivacyError, match="DP off"):
        dp.schedule_entry(off, training_records=100, **training)
    with pytest.raises(PrivacyError, match="training_records"):
        dp.schedule_entry(trial, training_records=0, **training)


def test_a_fixed_noise_multiplier_is_the_schedules():
    trial = _trial(noise_multiplier_milli=1500)
    entry = dp.schedule_entry(trial, training_records=64, **training_inputs(trial))
    assert entry["noise_multiplier_micro"] == 1_500_000
