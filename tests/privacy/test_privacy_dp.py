"""DP-SGD for one local round: plan, persisted accountant, budget, model validation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bcfl_common.errors import PrivacyBudgetExceeded, PrivacyError
from privacy import dp


def _loader(n: int = 200, batch: int = 20) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g)
    return DataLoader(TensorDataset(x, (x[:, :1] > 0).float()), batch_size=batch)


def _policy(**kw) -> dp.DPPolicy:
    base = dict(target_epsilon=3.0, delta=1e-5, max_grad_norm=1.0, rounds=3, local_epochs=1)
    return dp.DPPolicy(**{**base, **kw})


def _train_round(policy: dp.DPPolicy, plan: dp.DPPlan, loader: DataLoader) -> dp.PrivateRound:
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    private = dp.make_private(
        model, opt, loader, policy=policy, plan=plan, criterion=nn.BCEWithLogitsLoss()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(policy.local_epochs):
            for xb, yb in private.data_loader:
                private.optimizer.zero_grad()
                private.criterion(private.model(xb), yb).backward()
                private.optimizer.step()
    return private


def test_micro_epsilon_conversion():
    assert dp.to_micro_epsilon(1.1) == 1_100_000
    assert dp.to_micro_epsilon(0.0000001) == 1  # spent epsilon rounds up
    assert dp.to_micro_epsilon(0.0000001, round_up=False) == 0  # a limit rounds down
    assert dp.from_micro_epsilon(2_500_000) == 2.5
    with pytest.raises(PrivacyError):
        dp.to_micro_epsilon(float("nan"))


def test_plan_spends_the_target_over_the_whole_trial():
    policy = _policy(rounds=5, local_epochs=2)
    plan = dp.plan_trial(policy, batches_per_epoch=10)
    assert plan.total_steps == 5 * 2 * 10 and plan.steps_per_round == 20
    acc = RDPAccountant()
    acc.history = [(plan.noise_multiplier, plan.sample_rate, plan.total_steps)]
    eps = acc.get_epsilon(policy.delta)
    assert policy.target_epsilon * 0.99 <= eps <= policy.target_epsilon


@pytest.mark.parametrize(("kind", "reference"), [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_accountant_matches_opacus_for_the_same_steps(tmp_path: Path, kind, reference):
    policy = _policy(accountant=kind, rounds=2, grad_sample_mode="hooks")
    loader = _loader()
    plan = dp.plan_trial(policy, batches_per_epoch=len(loader))
    acc = dp.PrivacyAccountant.create(tmp_path / "acc.json", trial_id="t", policy=policy, plan=plan)
    budget = dp.PrivacyBudget.from_epsilon(100.0)
    ref = reference()
    for r in range(2):
        private = _train_round(policy, plan, loader)
        assert private.steps == plan.steps_per_round
        acc.charge_round(r, budget=budget, steps=private.steps)
        for _ in range(private.steps):
            ref.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
        assert acc.epsilon() == pytest.approx(ref.get_epsilon(policy.delta), rel=1e-9)
    # Opacus' own engine reports the same for its (single) round.
    assert private.engine.get_epsilon(policy.delta) == pytest.approx(
        dp.epsilon_of(private.history, delta=policy.delta, accountant=kind), rel=1e-9
    )


def test_next_round_cost_is_the_difference(tmp_path: Path):
    policy = _policy()
    plan = dp.plan_trial(policy, batches_per_epoch=10)
    acc = dp.PrivacyAccountant.create(tmp_path / "a.json", trial_id="t", policy=policy, plan=plan)
    first = acc.cost_of_round()
    assert first.spent_micro == 0 and first.cost_micro == first.after_micro > 0
    acc.charge_round(0, budget=dp.PrivacyBudget.from_epsilon(10), steps=10)
    second = acc.cost_of_round()
    assert second.spent_micro == first.after_micro
    assert 0 < second.cost_micro < first.cost_micro  # composition is sub-additive


def test_budget_refuses_the_round_that_would_exceed_it_and_records_nothing(tmp_path: Path):
    policy = _policy(target_epsilon=3.0, rounds=3)
    plan = dp.plan_trial(policy, batches_per_epoch=10)
    path = tmp_path / "acc.json"
    acc = dp.PrivacyAccountant.create(path, trial_id="t", policy=policy, plan=plan)
    first = acc.cost_of_round()
    budget = dp.PrivacyBudget(first.after_micro)  # exactly one round fits
    acc.charge_round(0, budget=budget)
    before = path.read_bytes()
    with pytest.raises(PrivacyBudgetExceeded) as err:
        acc.charge_round(1, budget=budget)
    assert (
        "budget" in err.value.message
        and err.value.detail["budget_micro_epsilon"] == budget.limit_micro
    )
    assert err.value.code == "PRIVACY_BUDGET_EXCEEDED"
    assert path.read_bytes() == before
    assert len(dp.PrivacyAccountant.open(path).rounds) == 1
    with pytest.raises(PrivacyBudgetExceeded):
        acc.check_round(budget)


def test_accountant_survives_a_restart(tmp_path: Path):
    policy = _policy()
    plan = dp.plan_trial(policy, batches_per_epoch=10)
    path = tmp_path / "silo" / "trial.json"
    acc = dp.PrivacyAccountant.create(path, trial_id="t", policy=policy, plan=plan)
    acc.charge_round(0, budget=dp.PrivacyBudget.from_epsilon(5), steps=10)
    spent = acc.epsilon()
    reopened = dp.PrivacyAccountant.open_or_create(path, trial_id="t", policy=policy, plan=plan)
    assert reopened.epsilon() == spent and reopened.noise_multiplier == plan.noise_multiplier
    assert reopened.rounds[0]["round"] == 0
    assert json.loads(path.read_text())["history"] == [[plan.noise_multiplier, 0.1, 10]]
    with pytest.raises(PrivacyError, match="already exists"):
        dp.PrivacyAccountant.create(path, trial_id="t", policy=policy, plan=plan)
    with pytest.raises(PrivacyError, match="expected trial 'other'"):
        dp.PrivacyAccountant.open_or_create(path, trial_id="other", policy=policy, plan=plan)


def test_a_stale_accountant_object_cannot_double_spend(tmp_path: Path):
    policy = _policy()
    plan = dp.plan_trial(policy, batches_per_epoch=10)
    path = tmp_path / "acc.json"
    a = dp.PrivacyAccountant.create(path, trial_id="t", policy=policy, plan=plan)
    b = dp.PrivacyAccountant.open(path)
    budget = dp.PrivacyBudget(a.cost_of_round().after_micro)
    a.charge_round(0, budget=budget)
    with pytest.raises(PrivacyBudgetExceeded):
        b.charge_round(0, budget=budget)  # b re-reads the file under the lock


def test_policy_is_validated():
    with pytest.raises(PrivacyError, match="delta"):
        _policy(delta=2.0)
    with pytest.raises(PrivacyError, match="accountant"):
        _policy(accountant="moments")
    with pytest.raises(PrivacyError, match="too small"):
        dp.plan_trial(_policy(target_epsilon=1e-6), batches_per_epoch=10)


def _seeded_round(
    mode: str, *, fast_data: bool, own_generator: bool, n: int = 20, batch: int = 2, epochs: int = 3
) -> tuple[dp.PrivateRound, list[list[torch.Tensor]]]:
    """One round from fixed seeds (model, data sampling, noise); returns it and its batches.
    Without ``own_generator`` the sampling uses torch's global generator, as the silo does."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g)
    loader = DataLoader(
        TensorDataset(x, (x[:, :1] > 0).float()),
        batch_size=batch,
        generator=torch.Generator().manual_seed(11) if own_generator else None,
    )
    policy = _policy(grad_sample_mode=mode, local_epochs=epochs)
    plan = dp.plan_trial(policy, batches_per_epoch=len(loader))
    private = dp.make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loader,
        policy=policy,
        plan=plan,
        criterion=nn.BCEWithLogitsLoss(),
        noise_generator=torch.Generator().manual_seed(5),
        fast_data=fast_data,
    )
    batches = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(epochs):
            for xb, yb in private.data_loader:
                batches.append([xb, yb])
                private.optimizer.zero_grad()
                private.criterion(private.model(xb), yb).backward()
                private.optimizer.step()
    return private, batches


@pytest.mark.parametrize(("mode", "own_generator"), [("hooks", True), ("ghost", False)])
def test_fast_tensor_loader_gives_opacus_batches_and_the_same_model(mode, own_generator):
    fast, fast_batches = _seeded_round(mode, fast_data=True, own_generator=own_generator)
    slow, slow_batches = _seeded_round(mode, fast_data=False, own_generator=own_generator)
    assert isinstance(fast.data_loader, dp.PoissonTensorLoader)
    assert not isinstance(slow.data_loader, dp.PoissonTensorLoader)  # Opacus' DPDataLoader
    assert len(fast.data_loader) == len(slow.data_loader) == 10
    assert fast.data_loader.sample_rate == slow.data_loader.sample_rate == 0.1
    # The same Poisson draws, row for row, empty batches included (rate 0.1 of 20 rows).
    assert len(fast_batches) == len(slow_batches) == 30
    assert any(len(b[0]) == 0 for b in slow_batches)
    for (fx, fy), (sx, sy) in zip(fast_batches, slow_batches, strict=True):
        assert fx.shape == sx.shape and fy.shape == sy.shape and fx.dtype == sx.dtype
        assert torch.equal(fx, sx) and torch.equal(fy, sy)
    for a, b in zip(fast.model.parameters(), slow.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert fast.history == slow.history and fast.steps == 30


def test_other_datasets_keep_opacus_data_loader():
    class Rows(torch.utils.data.Dataset):
        def __init__(self, x: torch.Tensor):
            self.x = x

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int):
            return self.x[i], (self.x[i, :1] > 0).float()

    loader = DataLoader(Rows(torch.randn(40, 5)), batch_size=4)
    policy = _policy()
    plan = dp.plan_trial(policy, batches_per_epoch=len(loader))
    model = nn.Linear(5, 1)
    private = dp.make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loader,
        policy=policy,
        plan=plan,
        criterion=nn.BCEWithLogitsLoss(),
    )
    from opacus.data_loader import DPDataLoader

    assert isinstance(private.data_loader, DPDataLoader)


def test_loader_that_does_not_match_the_plan_is_refused():
    policy = _policy()
    plan = dp.plan_trial(policy, batches_per_epoch=7)
    model = nn.Linear(5, 1)
    with pytest.raises(PrivacyError, match="expected 7"):
        dp.make_private(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            _loader(),
            policy=policy,
            plan=plan,
            criterion=nn.BCEWithLogitsLoss(),
        )


def test_batchnorm_model_is_fixed():
    model = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
    with pytest.raises(PrivacyError, match="BatchNorm"):
        dp.validate_model(model)
    fixed = dp.fix_model(model)
    dp.validate_model(fixed)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in fixed.modules())
    policy = _policy()
    loader = _loader()
    plan = dp.plan_trial(policy, batches_per_epoch=len(loader))
    private = dp.make_private(
        fixed,
        torch.optim.SGD(fixed.parameters(), lr=0.1),
        loader,
        policy=policy,
        plan=plan,
        criterion=nn.BCEWithLogitsLoss(),
    )
    assert private.noise_multiplier == plan.noise_multiplier


class _RunningScale(nn.Module):
    """A trainable layer that keeps state across batches (leaks beyond the sample)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(5))
        self.register_buffer("running", torch.zeros(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def test_unfixable_model_gets_a_clear_message():
    model = nn.Sequential(_RunningScale(), nn.Linear(5, 1))
    with pytest.raises(PrivacyError, match="cannot be made DP-compatible.*buffers") as err:
        dp.fix_model(model)
    assert err.value.detail["problems"]
