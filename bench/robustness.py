"""Robustness of whole bcfl trials to a dishonest minority of hospitals (issue 14's attacks).

Every trial is what `bcfl demo` runs (devnet.demo.run_demo): a coordinator server and one silo
agent process per hospital on loopback, the embedded ledger, HE on; the last hospitals run one of
``devnet.red_team``'s attacks. Data: breast cancer over 5 hospitals (every row), and heart
disease's 4 centres (the single-attacker rows), DP off and on (the data set's epsilon), mean over
``--seeds`` initial-model seeds. Also honest heart disease trials at epsilon 1 and 0.3 per
hospital. Per row: the final model's accuracy on the pooled test data vs the honest row, the
backdoor trigger's success, the attackers' and honest hospitals' reward shares, honest updates
rejected, rounds finalized, the end state and `bcfl audit verify`; each target met or missed.

Each finished trial is written to the JSON at once, so an interrupted run resumes where it
stopped (same --rounds): ``--fresh`` starts over.

    .venv/bin/python bench/robustness.py [--seeds 3] [--rows honest,thief] [--quick]
    .venv/bin/python bench/robustness.py --report-only   # the table of what the JSON holds
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import RESULTS, machine, report  # noqa: E402
from rich.console import Console  # noqa: E402

from bcfl_common.errors import BcflError  # noqa: E402
from consortium.identity import Consortium  # noqa: E402
from consortium.ledger import open_ledger  # noqa: E402
from devnet.local_network import bcfl_command  # noqa: E402

HOSPITALS = {"breast-cancer": 5, "heart-disease": 4}
# The backdoor trigger per data set: an encoded feature column the honest model barely uses,
# set far outside the data's range (12 standard deviations).
TRIGGERS = {
    "breast-cancer": {"trigger_column": 16, "trigger_value": 12.0},
    "heart-disease": {"trigger_column": 13, "trigger_value": 12.0},
}


@dataclass(frozen=True)
class Row:
    """One attack configuration. ``free_rides_from``: the first round in which the attackers
    contribute nothing of their own (their update reward from then on must be 0)."""

    name: str
    attack: str | None = None
    malicious: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    free_rides_from: int | None = None
    only: str | None = None  # a data set, when the row needs 5 hospitals

    @property
    def single(self) -> bool:
        return self.malicious <= 1


ROWS = [
    Row("honest"),
    Row("sign flip x10", "sign_flip", 1, {"scale": 10.0}),
    Row("backdoor x5", "backdoor", 1, {"scale": 5.0}),
    Row("label flip 1", "label_flip", 1),
    Row("label flip 2 of 5", "label_flip", 2, only="breast-cancer"),
    Row("zero update", "zero", 1, free_rides_from=1),
    Row("inflated weight", "inflated_weight", 1, free_rides_from=1),
    Row("re-encrypted copy", "reencrypted_copy", 1, free_rides_from=2),
    Row("aggregate copy", "aggregate_copy", 1, free_rides_from=2),
    Row("aggregate re-encrypted", "aggregate_reencrypted", 1, free_rides_from=2),
    Row("theft", "thief", 1, free_rides_from=1),
    Row("2 of 5 vote down", "vote_down", 2, only="breast-cancer"),
    Row("wrong attestation", "wrong_attestation", 1),
]
EPSILON_ROWS = {"honest eps 1": 1.0, "honest eps 0.3": 0.3}
EPSILON_ROUNDS = 10


@dataclass(frozen=True)
class Config:
    """One cell of the bench: a row on a data set with DP off/on (or an epsilon)."""

    row: Row
    dataset: str
    dp: bool
    epsilon: float | None
    rounds: int
    label: str

    @property
    def key(self) -> str:
        return f"{self.dataset}|{self.label}|dp={'on' if self.dp else 'off'}|eps={self.epsilon}|r{self.rounds}"


def configs(args: argparse.Namespace) -> Iterator[Config]:
    wanted = set(args.rows) if args.rows else None
    for dataset in args.datasets:
        rounds = args.rounds or {"breast-cancer": 5, "heart-disease": 10}[dataset]
        for row in ROWS:
            if row.only not in (None, dataset) or (wanted and row.name not in wanted):
                continue
            for dp in args.dp:
                yield Config(row, dataset, dp, None, rounds, row.name)
    for label, epsilon in EPSILON_ROWS.items():  # honest heart disease trials at each epsilon
        if wanted is None or label in wanted:
            rounds = args.rounds if args.quick else EPSILON_ROUNDS
            yield Config(Row(label), "heart-disease", True, epsilon, rounds, label)


# ---------------------------------------------------------------------------------------------
# One trial
# ---------------------------------------------------------------------------------------------


def run_trial(
    config: Config, seed: int, workdir: Path, data_dir: Path | None = None
) -> dict[str, Any]:
    """Run one trial as the demo does and measure it; a trial that fails is a result too.
    ``data_dir``: the UCI heart disease files (default: silo_agent.datasets' folder)."""
    from devnet.demo import run_demo

    row = config.row
    options = dict(row.options)
    if row.attack == "backdoor":
        options.update(TRIGGERS[config.dataset])
    started = time.monotonic()
    try:
        summary = run_demo(
            workdir=workdir,
            dataset_name=config.dataset,
            data_dir=data_dir if config.dataset == "heart-disease" else None,
            hospitals=HOSPITALS[config.dataset],
            rounds=config.rounds,
            malicious=row.malicious,
            attack=row.attack or "sign_flip",
            attack_options=options,
            dp=config.dp,
            epsilon=config.epsilon,
            seed=seed,
            fresh=True,
            timeout=3600,
            console=Console(file=io.StringIO(), width=160),
        )
    except BcflError as exc:
        return {"seed": seed, "state": f"ERROR {exc.code}", "error": exc.message[-2000:]}
    result = {"seed": seed, "seconds": round(time.monotonic() - started, 1)}
    result.update(measure(config, summary, data_dir))
    return result


def measure(config: Config, summary: dict[str, Any], data_dir: Path | None) -> dict[str, Any]:
    """Accuracy and trigger success of the final model, rewards and rejections from the ledger."""
    root = Path(summary["workdir"])
    trial_id = summary["trial_id"]
    bad = set(summary["malicious"])
    out: dict[str, Any] = {"state": summary["state"], "malicious": sorted(bad)}
    out.update(
        final_model_metrics(root, trial_id, config.dataset, TRIGGERS[config.dataset], data_dir)
    )
    out.update(ledger_outcome(root, trial_id, bad, config.row.free_rides_from))
    verify = subprocess.run(
        bcfl_command(
            "audit",
            "verify",
            "--ledger",
            f"embedded://{root / 'ledger' / 'ledger.db'}",
            "--consortium",
            str(root / "consortium"),
            "--as",
            "auditor",
            "--store",
            f"file://{root / 'store'}",
            trial_id,
            "--json",
        ),
        capture_output=True,
        text=True,
    )
    out["audit_verify"] = verify.returncode == 0
    if verify.returncode != 0:
        out["audit_problems"] = (verify.stdout + verify.stderr)[-2000:]
    return out


def final_model_metrics(
    root: Path, trial_id: str, dataset_name: str, trigger: dict[str, Any], data_dir: Path | None
) -> dict[str, Any]:
    """The trial's head model, rebuilt by hospital1's (honest) agent, on the pooled test rows;
    trigger success = share of triggered test rows whose true label is 0 predicted 1."""
    import numpy as np

    from devnet.red_team import apply_trigger
    from model_registry.artifact import decode_model
    from silo_agent.agent import SiloAgent
    from silo_agent.config import load_config
    from silo_agent.data import EncodedData, encode
    from silo_agent.datasets import load_demo_dataset
    from silo_agent.training import evaluate

    agent = SiloAgent(load_config(root / "silos" / "hospital1" / "silo.toml"))
    try:
        trial = agent.ledger.evaluate("get_trial", {"trial_id": trial_id})
        params = decode_model(
            agent.final_model(trial_id),
            model_spec=trial["model"],
            data_schema=trial["data_schema"],
        ).params
    finally:
        agent.close()
    dataset = load_demo_dataset(
        dataset_name,
        hospitals=HOSPITALS[dataset_name],
        data_dir=data_dir if dataset_name == "heart-disease" else None,
    )
    test = encode(dataset.pooled_test(), dataset.schema)
    negative = test.y == 0
    triggered = EncodedData(
        apply_trigger(test.x[negative], trigger["trigger_column"], trigger["trigger_value"]),
        np.ones_like(test.y[negative]),
    )
    spec, schema = trial["model"], trial["data_schema"]
    return {
        "accuracy": evaluate(spec, schema, params, test)["accuracy"],
        "trigger_success": evaluate(spec, schema, params, triggered)["accuracy"],
        "head_round": trial["head"]["round"],
        "rounds": trial["rounds"],
    }


def ledger_outcome(
    root: Path, trial_id: str, bad: set[str], free_rides_from: int | None
) -> dict[str, Any]:
    """Rewards (update and voter parts), honest candidates rejected, disputes, from the ledger."""
    consortium = Consortium.load(root / "consortium")
    ledger = open_ledger(
        f"embedded://{root / 'ledger' / 'ledger.db'}", consortium.identity("auditor")
    )
    totals: dict[str, int] = {}
    free_ride_reward = 0
    honest_candidates = honest_rejected = disputes = attacker_accepted = 0
    reasons: dict[str, int] = {}
    try:
        enrolled = sorted(
            e["msp_id"] for e in ledger.evaluate("get_enrolments", {"trial_id": trial_id})
        )
        for rnd in ledger.evaluate("list_rounds", {"trial_id": trial_id}):
            disputes += len(rnd.get("disputes") or [])
            excluded = rnd.get("excluded") or {}
            honest_candidates += sum(1 for m in excluded if m not in bad)
            honest_rejected += sum(1 for m in excluded if m not in bad)
            if rnd["phase"] not in ("AGGREGATE", "ATTEST", "FINALIZED"):
                continue
            acceptance = ledger.evaluate(
                "get_acceptance",
                {"trial_id": trial_id, "round": rnd["round"], "attempt": rnd["attempt"]},
            )
            for msp, reward in acceptance["rewards"].items():
                totals[msp] = totals.get(msp, 0) + int(reward)
            for msp, decision in acceptance["candidates"].items():
                if msp in bad:
                    attacker_accepted += bool(decision["accepted"])
                    if free_rides_from is not None and rnd["round"] >= free_rides_from:
                        free_ride_reward += int(decision["reward"])
                    continue
                honest_candidates += 1
                if not decision["accepted"]:
                    honest_rejected += 1
                    reasons[decision["reason"]] = reasons.get(decision["reason"], 0) + 1
    finally:
        ledger.close()
    paid = sum(totals.values())
    share = {m: (totals.get(m, 0) / paid if paid else 0.0) for m in enrolled}
    honest = [share[m] for m in enrolled if m not in bad]
    return {
        "rewards": {m: totals.get(m, 0) for m in enrolled},
        "attacker_share": sum(share[m] for m in bad),
        "attacker_max_share": max((share[m] for m in bad), default=0.0),
        "honest_mean_share": statistics.mean(honest) if honest else 0.0,
        "free_ride_update_reward": free_ride_reward,
        "attacker_accepted": attacker_accepted,
        "honest_candidates": honest_candidates,
        "honest_rejected": honest_rejected,
        "honest_rejected_reasons": reasons,
        "disputes": disputes,
    }


# ---------------------------------------------------------------------------------------------
# Rows and targets
# ---------------------------------------------------------------------------------------------


def share_of(rewards: dict[str, int], members: list[str]) -> float:
    paid = sum(rewards.values())
    return sum(rewards.get(m, 0) for m in members) / paid if paid else 0.0


def attacker_within_honest(run: dict[str, Any], honest_run: dict[str, Any] | None) -> bool:
    rewards = run.get("rewards")
    if not rewards or not run.get("malicious"):
        return run.get("attacker_max_share", 1.0) <= run.get("honest_mean_share", 0.0)
    for msp in run["malicious"]:
        own = share_of(rewards, [msp])
        if_honest = (
            share_of(honest_run["rewards"], [msp])
            if honest_run and honest_run.get("rewards")
            else 0.0
        )
        if own > max(run.get("honest_mean_share", 0.0), if_honest) + 0.02:
            return False
    return True


def _mean(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.mean(values) if values else None


def summarise(config: Config, runs: list[dict[str, Any]], honest: list[dict[str, Any]]) -> dict:
    """The table row of ``config`` (mean over seeds) and its targets, met or missed."""
    row = config.row
    accuracy = _mean(runs, "accuracy")
    honest_accuracy = _mean(honest, "accuracy")
    candidates = sum(r.get("honest_candidates", 0) for r in runs)
    rejected = sum(r.get("honest_rejected", 0) for r in runs)
    states = sorted({r["state"] for r in runs})
    by_seed = {h["seed"]: h for h in honest}
    # what the same hospitals earned in the honest trial of the same seed (data sizes differ)
    if_honest = [
        share_of(by_seed[r["seed"]]["rewards"], r["malicious"])
        for r in runs
        if r.get("malicious") and r["seed"] in by_seed and "rewards" in by_seed[r["seed"]]
    ]
    d_acc = (
        None
        if accuracy is None or honest_accuracy is None or row.attack is None
        else accuracy - honest_accuracy
    )
    trigger = _mean(runs, "trigger_success") if row.attack in (None, "backdoor") else None
    atk_share = _mean(runs, "attacker_share") if row.attack else None
    atk_if_honest = statistics.mean(if_honest) if if_honest else None
    rej_pct = 100.0 * rejected / candidates if candidates else None
    audit_ok = all(r.get("audit_verify") for r in runs)
    out: dict[str, Any] = {
        "row": config.label,
        "dataset": config.dataset,
        "dp": f"eps {config.epsilon:g}" if config.epsilon else ("on" if config.dp else "off"),
        "seeds": len(runs),
        "acc": accuracy,
        "d_acc": d_acc,
        "trigger": trigger,
        "atk_share": atk_share,
        "atk_if_honest": atk_if_honest,
        "honest_share": _mean(runs, "honest_mean_share"),
        "rej": rejected,
        "rej_pct": rej_pct,
        "rounds": " ".join(
            f"{r.get('head_round', '?')}/{r.get('rounds', config.rounds)}" for r in runs
        ),
        "state": ",".join(states),
        "audit": "ok" if audit_ok else "FAILED",
        "secs": _mean(runs, "seconds"),
    }
    targets: dict[str, bool] = {"COMPLETED": states == ["COMPLETED"]}
    if row.attack is not None:
        if d_acc is not None:
            targets["accuracy within 0.02"] = d_acc >= -0.02
        # "no larger than an honest hospital's": each attacker's share is at most the honest
        # hospitals' mean, or what the same hospital earned in the honest trial of the same seed
        # (a large hospital earns more than the mean by its capped weight), + 0.02 of seed noise.
        targets["each attacker <= honest mean or its honest-run share"] = all(
            attacker_within_honest(r, by_seed.get(r["seed"])) for r in runs
        )
        if atk_if_honest is not None and atk_share is not None:
            targets["no gain vs honest run (+0.02)"] = atk_share <= atk_if_honest + 0.02
        if row.free_rides_from is not None:
            targets["free ride unpaid"] = all(
                r.get("free_ride_update_reward", 1) == 0 for r in runs
            )
        if row.attack == "backdoor":
            # The honest row's model holds the attacker's clean data, the backdoor row's model
            # (when the attacker is rejected every round) none of it: its trigger rate is the
            # honest hospitals' model's own, whatever it is.
            base = _mean(honest, "trigger_success")
            if base is not None and trigger is not None:
                targets["trigger <= honest + 0.05 (or never accepted)"] = (
                    trigger <= base + 0.05 or all(r.get("attacker_accepted", 1) == 0 for r in runs)
                )
    if config.epsilon == 1.0 and rej_pct is not None:
        targets["rejected <= 5%"] = rej_pct <= 5.0
    if config.epsilon == 0.3 and accuracy is not None:
        targets["accuracy >= 0.78"] = accuracy >= 0.78
    targets["audit verify"] = audit_ok
    out["targets"] = targets
    missed = [name for name, ok in targets.items() if not ok]
    out["result"] = "met" if not missed else "missed: " + "; ".join(missed)
    return out


COLUMNS = [
    ("row", ""),
    ("dataset", ""),
    ("dp", ""),
    ("seeds", "count"),
    ("acc", "fraction"),
    ("d_acc", "fraction"),
    ("trigger", "fraction"),
    ("atk_share", "fraction"),
    ("atk_if_honest", "fraction"),
    ("honest_share", "fraction"),
    ("rej", "count"),
    ("rej_pct", "%"),
    ("rounds", "finalized/planned"),
    ("state", ""),
    ("audit", ""),
    ("secs", "s"),
    ("result", ""),
]


# ---------------------------------------------------------------------------------------------
# The run: resumable, one JSON write per finished trial
# ---------------------------------------------------------------------------------------------


def load_trials(path: Path, fresh: bool) -> dict[str, dict[str, Any]]:
    if fresh or not path.exists():
        return {}
    document = json.loads(path.read_text())
    return dict((document.get("extra") or {}).get("trials", {}))


def save_partial(path: Path, parameters: dict[str, Any], trials: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": path.stem,
        "complete": False,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "parameters": parameters,
        "rows": [],
        "extra": {"trials": trials},
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--rows",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=None,
        help=f"comma-separated row names (default all): {[r.name for r in ROWS] + list(EPSILON_ROWS)}",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=list(HOSPITALS),
        default=None,
        help="data sets of the attack rows (default both; --quick: breast-cancer); the epsilon "
        "rows are heart disease's and run unless --rows leaves them out",
    )
    parser.add_argument("--dp", choices=["off", "on", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=None, help="default: the data set's")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 seed, 3 rounds, DP off, the attack rows on breast cancer only (and the "
        "epsilon rows, also at 3 rounds); written to robustness-quick.json",
    )
    parser.add_argument("--fresh", action="store_true", help="ignore finished trials in the JSON")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run no trial: write the table of the trials the JSON holds (rows without any "
        "are left out; a row's seeds column says how many it has)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the four UCI heart disease files (default: silo_agent.datasets' folder)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep every trial's directory (ledger, store, logs) under this folder",
    )
    args = parser.parse_args(argv)
    if args.rows:
        known = {r.name for r in ROWS} | set(EPSILON_ROWS)
        unknown = sorted(set(args.rows) - known)
        if unknown:
            parser.error(f"--rows: unknown {unknown}; expected names among {sorted(known)}")
    if args.quick:
        args.seeds, args.rounds, args.dp = 1, args.rounds or 3, "off"
    if args.datasets is None:
        args.datasets = ["breast-cancer"] if args.quick else list(HOSPITALS)
    args.dp = {"off": [False], "on": [True], "both": [False, True]}[args.dp]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    name = "robustness-quick" if args.quick else "robustness"
    path = RESULTS / f"{name}.json"
    parameters = {
        "datasets": {d: f"{HOSPITALS[d]} hospitals" for d in args.datasets},
        "seeds": args.seeds,
        "rounds": args.rounds or "data set default (breast cancer 5, heart disease 10)",
        "dp": args.dp,
        "quick": args.quick,
        "triggers": TRIGGERS,
    }
    trials = load_trials(path, args.fresh)
    cells = list(configs(args))
    total = len(cells) * args.seeds
    done = 0
    for config in [] if args.report_only else cells:
        for seed in range(args.seeds):
            done += 1
            finished = trials.setdefault(config.key, {})
            if not str(finished.get(str(seed), {}).get("state", "ERROR")).startswith("ERROR"):
                continue  # done in an earlier run (a trial that failed is tried again)
            if args.keep is not None:
                slug = "".join(c if c.isalnum() else "-" for c in config.key)
                result = run_trial(
                    config, seed, args.keep.resolve() / f"{slug}-s{seed}", args.data_dir
                )
            else:
                workdir = Path(tempfile.mkdtemp(prefix="bcfl-robustness-"))
                try:
                    result = run_trial(config, seed, workdir / "trial", args.data_dir)
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
            finished[str(seed)] = result
            save_partial(path, parameters, trials)
            accuracy = result.get("accuracy")
            print(
                f"[{done}/{total}] {config.key} seed {seed}: {result['state']}, accuracy "
                f"{'-' if accuracy is None else f'{accuracy:.3f}'}, {result.get('seconds', '-')} s",
                flush=True,
            )
    rows = []
    for config in cells:
        measured = trials.get(config.key, {})
        runs = [measured[str(s)] for s in range(args.seeds) if str(s) in measured]
        if not runs:  # --report-only: never measured
            continue
        honest_key = Config(ROWS[0], config.dataset, config.dp, None, config.rounds, "honest").key
        honest = [trials.get(honest_key, {}).get(str(s)) for s in range(args.seeds)]
        rows.append(summarise(config, runs, [h for h in honest if h is not None]))
    seconds = [r["seconds"] for t in trials.values() for r in t.values() if r.get("seconds")]
    report(
        name,
        title="Trials under attack: a dishonest minority of hospitals (mean over seeds)",
        parameters=parameters,
        columns=COLUMNS,
        rows=rows,
        notes=[
            "acc: the final (head) model's accuracy on the pooled test rows of every hospital; "
            "d_acc: minus the honest row's (same data set and DP setting); trigger: the backdoor "
            "trigger's success on triggered test rows whose true label is 0",
            "atk_share: the attackers' part of every reward paid (update and voter parts); "
            "free riders must earn no update reward from the round they stop contributing; "
            "atk_if_honest: what the same hospitals earned in the honest trial of the same seed "
            "(rewards follow capped sample weights, so a large hospital earns more than the mean)",
            "targets: each attacker's share at most the honest mean or its own share in the "
            "honest trial of the same seed (+0.02); the backdoor's trigger at most the honest "
            "row's + 0.05, or the attacker rejected in every round (the final model then holds "
            "none of its updates: the honest row's model also holds its clean data)",
            "honest_share: an honest hospital's mean share; rej: honest candidates not accepted "
            "(and honest updates excluded as duplicate content), over every round and seed",
            f"one trial takes {statistics.mean(seconds):.0f} s on average here"
            if seconds
            else "no trial timed",
        ],
        extra={"trials": trials},
    )


if __name__ == "__main__":
    main()
