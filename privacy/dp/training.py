"""Make a model, optimizer and data loader private for one local round (Opacus DP-SGD)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, TensorDataset, default_collate

from bcfl_common.errors import PrivacyError
from privacy.dp.accountant import HistoryEntry
from privacy.dp.policy import DPPlan, DPPolicy


def model_problems(model: nn.Module) -> list[str]:
    """Why ``model`` cannot be trained with DP-SGD as it is (empty when it can)."""
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    problems = [str(e) for e in ModuleValidator.validate(model, strict=False)]
    problems += [str(e) for e in GradSampleModule.validate(model, strict=False)]
    if not any(p.requires_grad for p in model.parameters()):
        problems.append("the model has no trainable parameters")
    return problems


def validate_model(model: nn.Module) -> None:
    """Raise PrivacyError listing what stops DP training (suggesting :func:`fix_model`)."""
    problems = model_problems(model)
    if problems:
        raise PrivacyError(
            f"model: {len(problems)} problem(s) for DP training: {'; '.join(problems)}. "
            "Expected layers without per-batch state; privacy.dp.fix_model replaces BatchNorm "
            "by GroupNorm, LSTM/GRU/MultiheadAttention by their DP versions",
            detail={"problems": problems},
        )


def fix_model(model: nn.Module) -> nn.Module:
    """A DP-compatible copy of ``model`` (BatchNorm to GroupNorm, ...) in training mode; raises
    PrivacyError naming the layers when that is impossible."""
    from opacus.validators import ModuleValidator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fixed = ModuleValidator.fix(model)
        except Exception as exc:  # a fixer that cannot handle a layer's configuration
            raise PrivacyError(f"model: cannot be made DP-compatible ({exc})") from exc
    fixed.train()
    problems = model_problems(fixed)
    if problems:
        raise PrivacyError(
            f"model: cannot be made DP-compatible automatically: {'; '.join(problems)}. "
            "Expected every trainable layer to be stateless (no buffers); replace these layers "
            "in the model definition",
            detail={"problems": problems},
        )
    return fixed


class PoissonTensorLoader:
    """Opacus' Poisson batches of a :class:`TensorDataset`, gathered by one ``index_select`` per
    tensor instead of a ``DataLoader`` fetching rows one by one and collating them.

    The batches are drawn by the very sampler Opacus' ``DPDataLoader`` uses (its
    ``UniformWithReplacementSampler``: every row independently with probability ``sample_rate``,
    ``len(self)`` batches per pass, the same generator), so for the same generator state this
    yields exactly the batches ``DPDataLoader`` would, empty ones included (tensors with 0 rows),
    as the list ``default_collate`` makes, and leaves the generator in the same state.
    """

    def __init__(self, dataset: TensorDataset, batch_sampler: Iterable[list[int]]):
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.sample_rate = float(batch_sampler.sample_rate)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        # A DataLoader draws its workers' base seed from the same generator when an epoch starts;
        # drawing it too keeps the random stream, and so every batch, identical to DPDataLoader.
        generator = self.batch_sampler.generator  # type: ignore[attr-defined]
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        return self._batches()

    def _batches(self) -> Iterator[list[torch.Tensor]]:
        tensors = self.dataset.tensors
        for indices in self.batch_sampler:
            idx = torch.as_tensor(indices, dtype=torch.long)
            yield [t.index_select(0, idx.to(t.device)) for t in tensors]


def _tensor_fast_path(data_loader: DataLoader) -> bool:
    """Whether ``data_loader`` only stacks rows of a TensorDataset (what the fast path gathers)."""
    return (
        type(data_loader.dataset) is TensorDataset
        and data_loader.collate_fn is default_collate
        and data_loader.num_workers == 0
        and not data_loader.pin_memory
    )


@dataclass
class PrivateRound:
    """The private counterparts for one local round; train with ``criterion(model(x), y)``,
    ``loss.backward()``, ``optimizer.step()`` as usual, then charge ``steps`` to the accountant.

    ``data_loader`` is Opacus' Poisson ``DPDataLoader``, or for a plain TensorDataset loader the
    equivalent, faster :class:`PoissonTensorLoader`.
    """

    model: nn.Module
    optimizer: Optimizer
    data_loader: DataLoader | PoissonTensorLoader
    criterion: Callable[..., Any]
    engine: Any  # opacus.PrivacyEngine
    noise_multiplier: float
    sample_rate: float

    @property
    def history(self) -> list[HistoryEntry]:
        return [(float(s), float(q), int(n)) for s, q, n in self.engine.accountant.history]

    @property
    def steps(self) -> int:
        """Optimizer steps taken so far (what the accountant must be charged)."""
        return sum(n for _, _, n in self.history)


def make_private(
    model: nn.Module,
    optimizer: Optimizer,
    data_loader: DataLoader,
    *,
    policy: DPPolicy,
    plan: DPPlan,
    criterion: Callable[..., Any],
    noise_generator: Any = None,
    secure_mode: bool = False,
    fast_data: bool = True,
) -> PrivateRound:
    """Wrap the round's model, optimizer and loader with the trial's fixed noise multiplier.

    Sampling is Poisson (Opacus' default, what its accounting assumes). ``data_loader`` must have
    the number of batches the plan was made for; the plan is per trial, so a changed data set
    needs a new plan (and budget decision), not a silent change of the noise.

    ``secure_mode`` is Opacus' cryptographically strong noise (needs the ``torchcsprng`` package,
    which is not installed by default).

    With ``fast_data`` (default) a loader that only stacks rows of a ``TensorDataset`` is replaced
    by a :class:`PoissonTensorLoader` over Opacus' own Poisson sampler: the same batches, without
    the per-row fetching and collation that cost as much as a whole non-private step of a small
    model. ``fast_data=False`` keeps Opacus' ``DPDataLoader``.
    """
    from opacus import PrivacyEngine

    validate_model(model)
    batches = len(data_loader)
    expected = round(1.0 / plan.sample_rate)
    if batches != expected:
        raise PrivacyError(
            f"data loader: has {batches} batches per epoch, expected {expected} as planned for "
            "this trial (the data set or batch size changed since the plan)"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        try:
            engine = PrivacyEngine(accountant=policy.accountant, secure_mode=secure_mode)
        except ImportError as exc:
            raise PrivacyError(f"secure_mode: {exc}") from exc
        out = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=data_loader,
            criterion=criterion,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=policy.max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=policy.grad_sample_mode,
            noise_generator=noise_generator,
        )
    if policy.grad_sample_mode == "ghost":
        p_model, p_opt, p_crit, p_loader = out
    else:
        (p_model, p_opt, p_loader), p_crit = out, criterion
    if fast_data and _tensor_fast_path(data_loader):
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        if type(p_loader.batch_sampler) is UniformWithReplacementSampler:
            p_loader = PoissonTensorLoader(data_loader.dataset, p_loader.batch_sampler)
    return PrivateRound(
        p_model, p_opt, p_loader, p_crit, engine, plan.noise_multiplier, plan.sample_rate
    )
