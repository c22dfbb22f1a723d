"""Demo data sets and local training with and without DP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_registry.artifact import decode_model, initial_model
from silo_agent.data import encode, split
from silo_agent.datasets import DEFAULT_HEART_DIR, load_demo_dataset, write_demo_dataset
from silo_agent.training import TrainingSettings, evaluate, open_accountant, train_local

needs_heart = pytest.mark.skipif(
    not DEFAULT_HEART_DIR.is_dir(), reason="UCI heart disease files not present"
)


@needs_heart
def test_heart_disease_counts_and_split_sizes() -> None:
    ds = load_demo_dataset("heart-disease")
    assert sum(len(h.train) + len(h.test) for h in ds.hospitals) == 740
    assert [(len(h.train), len(h.test)) for h in ds.hospitals] == [
        (199, 104),
        (172, 89),
        (30, 16),
        (85, 45),
    ]
    again = load_demo_dataset("heart-disease")
    assert all(a.test.equals(b.test) for a, b in zip(ds.hospitals, again.hospitals, strict=True))
    for h in ds.hospitals:
        assert len(encode(h.train, ds.schema)) == len(h.train)  # every row passes the schema


def test_breast_cancer_split_is_deterministic_and_non_iid(tmp_path: Path) -> None:
    ds = load_demo_dataset("breast-cancer", hospitals=4)
    assert sum(len(h.train) + len(h.test) for h in ds.hospitals) == 569
    rates = [(h.train["diagnosis"] == "malignant").mean() for h in ds.hospitals]
    assert max(rates) - min(rates) > 0.1
    paths = write_demo_dataset(ds, tmp_path)
    assert len(paths) == 4 and all(p["train"].is_file() and p["test"].is_file() for p in paths)
    assert (tmp_path / "schema.json").is_file()
    again = load_demo_dataset("breast-cancer", hospitals=4)
    assert all(a.train.equals(b.train) for a, b in zip(ds.hospitals, again.hospitals, strict=True))


def _setup(dp: bool, tmp_path: Path):
    ds = load_demo_dataset("breast-cancer", hospitals=2)
    spec = ds.model
    local = split(
        encode(ds.hospitals[0].train, ds.schema), trial_id="t", msp_id="H1", validation_fraction=0.2
    )
    trial = {"trial_id": "t", "rounds": 3, "dp": {"enabled": False}}
    if dp:
        trial["dp"] = {
            "enabled": True,
            "target_epsilon_micro": 3_000_000,
            "delta": [1, 1000],
            "max_grad_norm_milli": 1000,
            "noise_multiplier_milli": None,
            "accountant": "rdp",
        }
    settings = TrainingSettings.from_hyperparameters(spec["hyperparameters"])
    accountant = open_accountant(tmp_path / "acc.json", trial, settings, len(local.train))
    base = decode_model(initial_model(spec, ds.schema, 0)).params
    return ds, spec, local, accountant, base


def test_training_without_dp_improves_validation_loss(tmp_path: Path) -> None:
    ds, spec, local, accountant, base = _setup(False, tmp_path)
    assert accountant is None
    result = train_local(spec, ds.schema, base, local.train)
    before = evaluate(spec, ds.schema, base, local.validation)
    after = evaluate(spec, ds.schema, result.params, local.validation)
    assert after["loss"] < before["loss"] and after["accuracy"] > 0.8


def test_training_with_dp_uses_the_plan_and_charges_once(tmp_path: Path) -> None:
    ds, spec, local, accountant, base = _setup(True, tmp_path)
    assert accountant is not None
    settings = TrainingSettings.from_hyperparameters(spec["hyperparameters"])
    assert accountant.plan.steps_per_round == settings.batches_per_epoch(len(local.train))
    result = train_local(spec, ds.schema, base, local.train, accountant=accountant)
    assert result.steps == accountant.plan.steps_per_round
    assert np.all(np.isfinite(result.params)) and not np.array_equal(result.params, base)
    from privacy.dp import PrivacyBudget

    cost = accountant.charge_round(1, budget=PrivacyBudget(3_000_000), steps=result.steps)
    assert 0 < cost.after_micro <= 3_000_000
    # Three rounds of the plan spend the trial's whole target, not more.
    for r in (2, 3):
        accountant.charge_round(r, budget=PrivacyBudget(3_000_000), steps=result.steps)
    assert accountant.epsilon() <= 3.0
    reopened = open_accountant(
        tmp_path / "acc.json",
        {"trial_id": "t", "rounds": 3, "dp": accountant_trial_dp()},
        settings,
        len(local.train),
    )
    assert reopened is not None and len(reopened.rounds) == 3


def accountant_trial_dp() -> dict:
    return {
        "enabled": True,
        "target_epsilon_micro": 3_000_000,
        "delta": [1, 1000],
        "max_grad_norm_milli": 1000,
        "noise_multiplier_milli": None,
        "accountant": "rdp",
    }
