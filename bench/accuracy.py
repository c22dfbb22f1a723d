"""Heart disease accuracy of whole bcfl trials (real processes, HE on) beside FLamby's published numbers.

Each run is `bcfl demo --dataset heart-disease` in-process: a coordinator server and four silo
agent processes on loopback, logistic regression, 10 rounds, accuracy of the final model on the
union of the four centres' test sets. Configurations: HE on with DP off; HE on with DP on
(epsilon 3 per hospital for the whole trial, delta = 1/(10 n) of the largest hospital, so at most
1/(10 n) for every hospital); and HE on, DP off, with one of four hospitals malicious (the V.A.
centre sends sign-flipped updates scaled by 10), compared with the honest run of the same seeds.
Also reported: the round overhead, i.e. the share of a round's wall time not spent in local
training (ledger, store, HE, votes, waiting), from the silos' journals and the ledger's records.

    .venv/bin/python bench/accuracy.py [--seeds 5] [--rounds 10] [--data-dir ../shared/data/heart_disease]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import report  # noqa: E402
from rich.console import Console  # noqa: E402

from consortium.identity import Consortium  # noqa: E402
from consortium.ledger import open_ledger  # noqa: E402
from devnet.demo import pooled_accuracy, run_demo  # noqa: E402

FLAMBY = {"pooled (centralised)": 0.795, "FedAvg": 0.748, "FedAdam": 0.779}
CONFIGS = {
    "HE on, DP off": {"dp": False, "malicious": 0},
    "HE on, DP on (eps 3)": {"dp": True, "malicious": 0},
    "HE on, DP off, 1 of 4 malicious": {"dp": False, "malicious": 1},
}
TARGETS = {"HE on, DP off": 0.79, "HE on, DP on (eps 3)": 0.75}


def round_timing(summary: dict[str, Any]) -> dict[str, float]:
    """Mean round wall time (ledger timestamps) and mean slowest-silo training time per round."""
    root = Path(summary["workdir"])
    consortium = Consortium.load(root / "consortium")
    ledger = open_ledger(
        f"embedded://{root / 'ledger' / 'ledger.db'}", consortium.identity("auditor")
    )
    try:
        rounds = [
            r
            for r in ledger.evaluate("list_rounds", {"trial_id": summary["trial_id"]})
            if r["phase"] == "FINALIZED"
        ]
    finally:
        ledger.close()
    if not rounds:
        return {}
    first, last = min(r["opened_at"] for r in rounds), max(r["finalized_at"] for r in rounds)
    round_seconds = (last - first) / len(rounds)
    slowest = []
    for r in rounds:
        times = []
        for journal in (root / "silos").glob(f"*/state/trials/{summary['trial_id']}/journal.json"):
            entry = json.loads(journal.read_text())["rounds"].get(
                f"{r['round']}.{r['attempt']}", {}
            )
            seconds = (entry.get("update") or {}).get("train_seconds")
            if seconds is not None:
                times.append(seconds)
        if times:
            slowest.append(max(times))
    train = statistics.mean(slowest) if slowest else 0.0
    return {
        "round_seconds": round_seconds,
        "train_seconds": train,
        "overhead_share": max(0.0, 1 - train / round_seconds) if round_seconds else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "heart_disease",
    )
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    quiet = Console(file=io.StringIO(), width=160)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in args.configs}
    with tempfile.TemporaryDirectory(prefix="bcfl-accuracy-") as tmp:
        for name in args.configs:
            config = CONFIGS[name]
            for seed in range(args.seeds):
                summary = run_demo(
                    workdir=Path(tmp)
                    / f"{len(results[name])}-{seed}-{config['dp']}-{config['malicious']}",
                    dataset_name="heart-disease",
                    data_dir=args.data_dir,
                    hospitals=4,
                    rounds=args.rounds,
                    malicious=config["malicious"],
                    dp=config["dp"],
                    epsilon=3.0 if config["dp"] else None,
                    seed=seed,
                    fresh=True,
                    timeout=3600,
                    console=quiet,
                )
                last = summary["round_results"][-1]
                accuracy = pooled_accuracy(
                    [last["hospitals"][m]["test"] for m in sorted(last["hospitals"])]
                )
                run = {
                    "seed": seed,
                    "accuracy": accuracy,
                    "state": summary["state"],
                    "epsilon": {m: p["spent"] for m, p in summary["privacy"].items()},
                    "malicious_accepted": sum(
                        1
                        for r in summary["round_results"]
                        for m in summary["malicious"]
                        if m in r["accepted"]
                    ),
                    **round_timing(summary),
                }
                results[name].append(run)
                shown = "n/a" if accuracy is None else f"{accuracy:.3f}"
                print(
                    f"{name} seed {seed}: accuracy {shown}, round {run.get('round_seconds', 0):.2f} s, "
                    f"overhead {run.get('overhead_share', 0):.0%}",
                    flush=True,
                )
    rows = []
    honest = results.get("HE on, DP off")
    for name, runs in results.items():
        accuracies = [r["accuracy"] for r in runs if r["accuracy"] is not None]
        mean = statistics.mean(accuracies)
        row = {
            "configuration": name,
            "mean_accuracy": round(mean, 4),
            "std": round(statistics.pstdev(accuracies), 4),
            "target": TARGETS.get(name),
            "vs_honest": round(mean - statistics.mean(r["accuracy"] for r in honest), 4)
            if honest and "malicious" in name
            else None,
            "max_epsilon": round(max(max(r["epsilon"].values()) for r in runs), 4),
            "round_seconds": round(statistics.mean(r.get("round_seconds", 0) for r in runs), 3),
            "train_seconds": round(statistics.mean(r.get("train_seconds", 0) for r in runs), 3),
            "overhead_share": round(statistics.mean(r.get("overhead_share", 0) for r in runs), 3),
            "poisoned_updates_accepted": sum(r["malicious_accepted"] for r in runs),
        }
        rows.append(row)
    for label, value in FLAMBY.items():
        rows.append({"configuration": f"FLamby {label} (published)", "mean_accuracy": value})
    report(
        "accuracy",
        title=f"Heart disease, logistic regression, {args.rounds} rounds, mean of {args.seeds} seeds",
        parameters={
            "dataset": "UCI heart disease, 4 centres (FLamby cleaning)",
            "rounds": args.rounds,
            "seeds": args.seeds,
            "model": "logistic_regression",
            "epsilon": 3.0,
            "malicious": "V.A. centre (Hospital4MSP), sign flip x10",
        },
        columns=[
            ("configuration", ""),
            ("mean_accuracy", "accuracy"),
            ("std", "accuracy"),
            ("target", "accuracy"),
            ("vs_honest", "accuracy"),
            ("max_epsilon", "epsilon"),
            ("round_seconds", "s"),
            ("train_seconds", "s"),
            ("overhead_share", "fraction"),
            ("poisoned_updates_accepted", "count"),
        ],
        rows=rows,
        notes=[
            "accuracy on the union of the four centres' test sets, final model",
            "round_seconds from the ledger's round records (1 s resolution over all rounds); train_seconds: "
            "the slowest silo's local training per round; overhead_share = 1 - train/round",
        ],
        extra={"runs": results},
    )


if __name__ == "__main__":
    main()
