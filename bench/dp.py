"""Benchmark DP-SGD cost: local training time with and without Opacus on the same data."""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import report, timed  # noqa: E402

from privacy import dp  # noqa: E402

DATA = Path(os.environ.get("BCFL_HEART_DATA", "/work/shared/data/heart_disease"))
COLUMNS = "age sex cp trestbps chol fbs restecg thalach exang oldpeak slope ca thal num".split()
EPOCHS = 20


def load_heart() -> tuple[torch.Tensor, torch.Tensor]:
    """The four UCI centres pooled: drop slope/ca/thal, drop incomplete rows, label num > 0,
    standardise. (The silo agent owns real data loading; this is the benchmark's copy.)"""
    import pandas as pd

    frames = [
        pd.read_csv(path, header=None, names=COLUMNS, na_values=["?", "NaN"])
        for path in sorted(DATA.glob("processed.*.data"))
    ]
    df = pd.concat(frames).drop(columns=["slope", "ca", "thal"]).dropna()
    x = df.drop(columns="num").to_numpy(np.float32)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    y = (df["num"].to_numpy() > 0).astype(np.float32)[:, None]
    return torch.from_numpy(x), torch.from_numpy(y)


def make_model(kind: str, features: int) -> nn.Module:
    torch.manual_seed(0)
    if kind == "logistic":
        return nn.Linear(features, 1)
    return nn.Sequential(  # 102,401 parameters for 10 features
        nn.Linear(features, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 1),
    )


def train(kind: str, data: TensorDataset, batch: int, mode: str | None) -> float:
    """Seconds for EPOCHS local epochs; ``mode`` None is the non-private baseline."""
    model = make_model(kind, data.tensors[0].shape[1])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = DataLoader(data, batch_size=batch, shuffle=mode is None)
    criterion: nn.Module = nn.BCEWithLogitsLoss()
    if mode is not None:
        policy = dp.DPPolicy(
            target_epsilon=3.0,
            delta=1e-5,
            max_grad_norm=1.0,
            rounds=10,
            local_epochs=EPOCHS,
            grad_sample_mode=mode,
        )
        plan = PLANS.setdefault((batch, mode), dp.plan_trial(policy, batches_per_epoch=len(loader)))
        private = dp.make_private(model, opt, loader, policy=policy, plan=plan, criterion=criterion)
        model, opt, loader, criterion = (
            private.model,
            private.optimizer,
            private.data_loader,
            private.criterion,
        )
    start = time.perf_counter()
    for _ in range(EPOCHS):
        for xb, yb in loader:
            opt.zero_grad()
            criterion(model(xb), yb).backward()
            opt.step()
    return time.perf_counter() - start


PLANS: dict[tuple[int, str], dp.DPPlan] = {}


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)  # one core for both, as the HE benchmark
    x, y = load_heart()
    data = TensorDataset(x, y)
    rows = []
    for kind in ("logistic", "mlp"):
        params = sum(p.numel() for p in make_model(kind, x.shape[1]).parameters())
        for batch in (64, 256):
            base = timed(lambda k=kind, b=batch: train(k, data, b, None))
            for mode in ("ghost", "hooks"):
                private = timed(lambda k=kind, b=batch, m=mode: train(k, data, b, m))
                rows.append(
                    {
                        "model": kind,
                        "params": params,
                        "batch": batch,
                        "mode": mode,
                        "plain_s": base,
                        "dp_s": private,
                        "ratio": private / base,
                    }
                )
    report(
        "dp",
        title=f"DP-SGD local training, {EPOCHS} epochs, heart disease ({len(data)} rows)",
        parameters={
            "rows": len(data),
            "features": int(x.shape[1]),
            "epochs": EPOCHS,
            "optimizer": "SGD lr=0.05",
            "dp": "Opacus, Poisson sampling, max_grad_norm 1.0, noise for eps=3 over 10 rounds",
            "threads": "torch.set_num_threads(1)",
            "timing": "best of 3 runs, training loop only (model wrapping excluded)",
        },
        columns=[
            ("model", ""),
            ("params", "count"),
            ("batch", "rows"),
            ("mode", "Opacus grad_sample_mode"),
            ("plain_s", "s"),
            ("dp_s", "s"),
            ("ratio", "dp/plain"),
        ],
        rows=rows,
    )


if __name__ == "__main__":
    main()
