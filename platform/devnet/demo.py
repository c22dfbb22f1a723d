"""`bcfl demo`: from nothing, a consortium of hospitals runs a private, encrypted, voted trial on loopback."""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from bcfl_common.errors import BcflError, ConfigError
from devnet.local_network import LocalNetwork, bcfl_command, write_toml
from devnet.supervisor import exit_on_sigterm

PHASE_ORDER = ("SUBMIT", "REVEAL", "VOTE_COMMIT", "VOTE_REVEAL", "AGGREGATE", "ATTEST", "FINALIZED")
DEMO_PHASE_SECONDS = {"submit": 300, "reveal": 120, "vote_commit": 300, "vote_reveal": 120}


def trial_spec(
    dataset: Any,
    *,
    trial_id: str,
    rounds: int,
    hospitals: int,
    dp: bool,
    epsilon: float | None,
    seed: int,
) -> dict[str, Any]:
    """The trial the demo opens: the data set's recommended model and policies, DP and HE on."""
    if dp:
        dp_policy = dict(dataset.dp)
        if epsilon is not None:
            dp_policy["target_epsilon_micro"] = int(round(epsilon * 1_000_000))
    else:
        dp_policy = {"enabled": False, "reason": "demo run with --no-dp"}
    return {
        "trial_id": trial_id,
        "task": "binary_classification",
        "data_schema": dataset.schema,
        "model": dataset.model,
        "rounds": rounds,
        "min_silos": min(hospitals, 2) if hospitals < 2 else 2,
        "dp": dp_policy,
        "he": {"enabled": True},
        "evaluation": dataset.evaluation,
        "phase_seconds": DEMO_PHASE_SECONDS,
        "initial_model_seed": seed,
    }


def red_team_flags(
    attack: str, options: dict[str, Any] | None, malicious_msp_ids: list[str]
) -> list[str]:
    """The ``devnet.red_team`` options of the demo's attackers (colluders learn the ring)."""
    from devnet.red_team import OPTION_FLAGS, attack_class

    values = dict(options or {})
    if "colluders" in attack_class(attack).OPTIONS and "colluders" not in values:
        values["colluders"] = ",".join(malicious_msp_ids)
    flags: list[str] = []
    for name, value in values.items():
        if value is not None:
            flags += [
                OPTION_FLAGS[name][0],
                f"{value:g}" if isinstance(value, float) else str(value),
            ]
    return flags


def run_demo(
    *,
    workdir: Path,
    dataset_name: str,
    data_dir: Path | None,
    hospitals: int,
    rounds: int | None,
    malicious: int,
    dp: bool,
    epsilon: float | None,
    seed: int,
    fresh: bool,
    timeout: float,
    console: Console,
    ledger: str = "embedded",
    settlement: str = "none",
    attack: str = "sign_flip",
    attack_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the whole demo; return the summary (also written to WORKDIR/summary.json).

    The last ``malicious`` hospitals run ``devnet.red_team``'s ``attack`` with ``attack_options``
    (its own options, e.g. ``{"scale": 10}``); a ring of colluders (``vote_down``) is told who
    its members are."""
    from silo_agent.datasets import load_demo_dataset, write_demo_dataset

    if malicious < 0 or malicious >= hospitals:
        raise ConfigError(
            f"--malicious={malicious}: expected 0 to {hospitals - 1} (at least one honest hospital)"
        )
    if malicious:
        from devnet.red_team import attacker

        attacker(attack, **(attack_options or {}))  # refuses an unknown attack or option now
    dataset = load_demo_dataset(dataset_name, hospitals=hospitals, data_dir=data_dir)
    rounds = rounds or dataset.rounds
    trial_id = f"demo-{dataset_name}"
    console.rule(
        f"[bold]bcfl demo[/bold]: {dataset.name}, {hospitals} hospitals, {rounds} rounds, "
        f"DP {'on' if dp else 'OFF'}, HE on, {malicious} malicious"
        + (f" ({attack})" if malicious else "")
    )
    net = LocalNetwork.create(
        workdir,
        hospitals,
        fresh=fresh,
        ledger=ledger,
        report=lambda step: console.print(f"  fabric: {step}"),
    )
    summary: dict[str, Any] = {
        "workdir": str(net.root),
        "trial_id": trial_id,
        "dataset": dataset.name,
        "hospitals": hospitals,
        "rounds": rounds,
        "malicious": [],
        "attack": attack if malicious else None,
        "dp": dp,
        "ledger": ledger,
        "settlement": settlement,
    }
    stack = ExitStack()
    try:
        stack.enter_context(exit_on_sigterm())  # a `kill` of the demo stops its processes too
        chain = None
        coordinator_extra: dict[str, dict[str, Any]] = {}
        if settlement == "ethereum":
            chain = _start_local_chain(net, stack, console)
            coordinator_extra["settlement"] = {
                "url": chain["url"],
                "payees": str(chain["payees_path"]),
            }
        console.print(
            f"consortium, {ledger} ledger and store created under [cyan]{net.root}[/cyan]"
        )
        files = write_demo_dataset(dataset, net.root / "data")
        bad = set(net.hospital_names()[hospitals - malicious :])
        summary["malicious"] = sorted(net.msp_id(h) for h in bad)
        flags = red_team_flags(attack, attack_options, summary["malicious"]) if bad else []
        for hospital, paths in zip(net.hospital_names(), files, strict=True):
            net.write_silo_config(
                hospital,
                {"path": paths["train"], "test_path": paths["test"]},
                attack=attack if hospital in bad else "none",
                attack_options=flags,
            )
        net.write_coordinator_config(coordinator_extra)
        net.start_coordinator()
        console.print(
            f"coordinator serving on [cyan]{net.base_url}[/cyan] (API docs {net.base_url}/docs)"
        )
        spec = trial_spec(
            dataset,
            trial_id=trial_id,
            rounds=rounds,
            hospitals=hospitals,
            dp=dp,
            epsilon=epsilon,
            seed=seed,
        )
        with net.client("admin") as admin:
            admin.create_trial(spec)
            for hospital in net.hospital_names():
                net.request_enrolment(hospital, trial_id)
                admin.enrol(trial_id, net.msp_id(hospital))
            if chain is not None:
                admin.set_trial_settlement(
                    trial_id, True, reason="demo: rewards paid on the local chain"
                )
            admin.start_trial(trial_id)
        console.print(
            f"trial [bold]{trial_id}[/bold] created, {hospitals} hospitals enrolled, started"
            + (", rewards settled on Ethereum" if chain is not None else "")
        )
        for hospital in net.hospital_names():
            net.start_silo(hospital, trial_id=trial_id)
        console.print(f"{hospitals} silo agents running (logs in {net.root / 'logs'})")
        final = _follow(net, trial_id, rounds, timeout, console)
        summary["state"] = final["state"]
        # Each silo records its last model's metrics on its final tick, then exits by itself.
        deadline = time.monotonic() + 120
        while (
            any(net.processes[h].running for h in net.hospital_names())
            and time.monotonic() < deadline
        ):
            time.sleep(0.3)
        if chain is not None:
            summary["settlement_balances"] = _wait_for_settlement(net, trial_id, chain, console)
        summary.update(collect_results(net, trial_id))
        verify_args = [
            "ledger",
            "verify",
            net.ledger_url,
            "--consortium",
            str(net.consortium.directory),
            "--as",
            "auditor",
            "--json",
        ]
        verify = subprocess.run(
            bcfl_command(*verify_args, *(["--replay"] if ledger == "embedded" else [])),
            capture_output=True,
            text=True,
        )
        summary["ledger_verify_replayed"] = ledger == "embedded"
        summary["ledger_verify"] = (
            json.loads(verify.stdout)
            if verify.stdout.strip()
            else {"ok": False, "problems": [verify.stderr]}
        )
    finally:
        net.stop_all()
        stack.close()
    (net.root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if summary.get("round_results"):
        summary["plot"] = str(plot_summary(summary, net.root / "accuracy.png"))
    print_summary(summary, console)
    return summary


def plot_summary(summary: dict[str, Any], path: Path) -> Path:
    """Accuracy per round on each hospital's held-out data and pooled, and epsilon spent, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    msps = sorted(summary["privacy"])
    bad = set(summary.get("malicious", []))
    finalized = [r for r in summary["round_results"] if r["phase"] == "FINALIZED"]
    xs = [0] + [r["round"] for r in finalized]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    for msp in msps:
        ys = [(summary["initial_test"].get(msp) or {}).get("accuracy")]
        ys += [(r["hospitals"][msp].get("test") or {}).get("accuracy") for r in finalized]
        left.plot(
            xs,
            ys,
            marker="o",
            linestyle="--" if msp in bad else "-",
            label=_short(msp) + (" (malicious)" if msp in bad else ""),
        )
    pooled = [pooled_accuracy([summary["initial_test"].get(m) for m in msps])]
    pooled += [pooled_accuracy([r["hospitals"][m].get("test") for m in msps]) for r in finalized]
    left.plot(xs, pooled, color="black", linewidth=2.5, marker="s", label="pooled")
    left.set(
        xlabel="round",
        ylabel="accuracy on held-out data",
        title=f"{summary['dataset']}: global model per round",
    )
    left.set_xticks(xs)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    spent = [summary["privacy"][m]["spent"] for m in msps]
    right.bar(
        [_short(m) for m in msps], spent, color=["#c44" if m in bad else "#48a" for m in msps]
    )
    budgets = [
        summary["privacy"][m]["budget"] for m in msps if summary["privacy"][m]["budget"] is not None
    ]
    if budgets:
        right.axhline(max(budgets), color="black", linestyle=":", label="trial budget")
        right.legend(fontsize=8)
    right.set(ylabel="epsilon spent (ledger)", title="privacy spent per hospital")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _start_local_chain(net: LocalNetwork, stack: ExitStack, console: Console) -> dict[str, Any]:
    """anvil on loopback with the settlement contracts deployed, and a payee address per hospital."""
    from eth_account import Account

    from devnet.anvil import local_settlement

    local = stack.enter_context(local_settlement(net.root / "ethereum"))
    payees = {net.msp_id(h): Account.create().address for h in net.hospital_names()}
    payees_path = write_toml(net.root / "ethereum" / "payees.toml", {"payees": payees})
    console.print(
        f"local Ethereum chain (anvil) on {local.node.rpc_url}, settlement contracts deployed"
    )
    return {"local": local, "url": local.url, "payees": payees, "payees_path": payees_path}


def _wait_for_settlement(
    net: LocalNetwork, trial_id: str, chain: dict[str, Any], console: Console, timeout: float = 120
) -> dict[str, dict[str, str]]:
    """Wait until every credited round's rewards carry their Ethereum transaction on the ledger."""
    from consortium.settlement import PayeeDirectory
    from consortium.settlement_cli import format_tokens

    def settled() -> bool:
        with net.client("auditor") as auditor:
            rounds = auditor.rewards(trial_id)["rounds"]
        credited = [r for r in rounds if r["status"] == "credited"]
        return bool(credited) and all(r.get("settlement") for r in credited)

    deadline = time.monotonic() + timeout
    while not settled():
        if time.monotonic() > deadline:
            raise BcflError(
                f"rounds were not settled on Ethereum within {timeout:.0f} s; see {net.root / 'logs'}"
            )
        time.sleep(0.5)
    client = chain["local"].open()
    try:
        payees = PayeeDirectory(chain["payees"])
        info = client.token_info()
        return {
            msp: {
                "address": chain["payees"][msp],
                "balance": format_tokens(amount, info["decimals"]),
                "symbol": info["symbol"],
            }
            for msp, amount in client.balances(payees).items()
        }
    finally:
        client.close()


def _follow(
    net: LocalNetwork, trial_id: str, rounds: int, timeout: float, console: Console
) -> dict[str, Any]:
    """Live progress until the trial completes or halts (or a party dies)."""
    deadline = time.monotonic() + timeout
    with (
        net.client("auditor") as auditor,
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress,
    ):
        overall = progress.add_task("rounds finalized", total=rounds)
        phase_task = progress.add_task("round 1: waiting for trial keys", total=len(PHASE_ORDER))
        while True:
            trial = auditor.trial(trial_id)
            progress.update(overall, completed=trial["head"]["round"])
            current = trial.get("current")
            if current:
                rnd = auditor.round(trial_id, current["round"], current["attempt"])
                phase = rnd["phase"]
                label = f"round {rnd['round']}" + (
                    f" (attempt {rnd['attempt']})" if rnd["attempt"] > 1 else ""
                )
                step = PHASE_ORDER.index(phase) + 1 if phase in PHASE_ORDER else 0
                progress.update(
                    phase_task,
                    description=f"{label}: {phase.lower().replace('_', ' ')}",
                    completed=step,
                )
            if trial["state"] in ("COMPLETED", "HALTED"):
                return trial
            for name, proc in net.processes.items():
                if not proc.running:
                    raise BcflError(
                        f"{name} exited with {proc.returncode} before the trial ended; its log:\n{proc.log_tail()}"
                    )
            if time.monotonic() > deadline:
                raise BcflError(
                    f"the trial did not finish within {timeout:.0f} s (state {trial['state']}); "
                    f"logs in {net.root / 'logs'}"
                )
            time.sleep(0.5)


def collect_results(net: LocalNetwork, trial_id: str) -> dict[str, Any]:
    """Per round: acceptance, each hospital's held-out accuracy, epsilon spent and rewards."""
    from silo_agent.agent import SiloAgent
    from silo_agent.cli import collect_status
    from silo_agent.config import load_config

    statuses: dict[str, dict[str, Any]] = {}
    for hospital in net.hospital_names():
        agent = SiloAgent(load_config(net.silo_config_path(hospital)))
        try:
            status = collect_status(agent)
        finally:
            agent.close()
        statuses[net.msp_id(hospital)] = next(
            t for t in status["trials"] if t["trial_id"] == trial_id
        )
    with net.client("auditor") as auditor:
        rounds_out = []
        for rnd in auditor.rounds(trial_id):
            acceptance = None
            if rnd.get("phase") in ("AGGREGATE", "ATTEST", "FINALIZED") or rnd.get("accepted"):
                try:
                    acceptance = auditor.acceptance(trial_id, rnd["round"], rnd["attempt"])
                except BcflError:
                    acceptance = None
            per_hospital = {}
            for msp_id, status in statuses.items():
                detail: dict[str, Any] = next(
                    (
                        d
                        for d in status["round_details"]
                        if d["round"] == rnd["round"] and d["attempt"] == rnd["attempt"]
                    ),
                    {},
                )
                decision = (acceptance or {}).get("candidates", {}).get(msp_id) or {}
                voter = (acceptance or {}).get("voters", {}).get(msp_id) or {}
                per_hospital[msp_id] = {
                    "test": detail.get("test"),
                    "epsilon_micro": detail.get("epsilon_micro"),
                    "accepted": msp_id in rnd.get("accepted", []),
                    "reward": (acceptance or {}).get("rewards", {}).get(msp_id, 0),
                    "update_reward": decision.get("reward", 0),
                    "voter_reward": voter.get("reward", 0),
                    "reason": decision.get("reason"),
                }
            rounds_out.append(
                {
                    "round": rnd["round"],
                    "attempt": rnd["attempt"],
                    "phase": rnd["phase"],
                    "accepted": rnd.get("accepted", []),
                    "hospitals": per_hospital,
                }
            )
        privacy = auditor.privacy_ledger(trial_id)
        rewards = auditor.rewards(trial_id)
    return {
        "round_results": rounds_out,
        "privacy": {
            p["msp_id"]: {
                "spent": p["epsilon_spent_micro"] / 1e6,
                "budget": None if p["budget_micro"] is None else p["budget_micro"] / 1e6,
            }
            for p in privacy
        },
        "rewards": {a["msp_id"]: a["total"] for a in rewards.get("accounts", [])},
        "initial_test": {
            msp: (s.get("initial_metrics") or {}).get("test") for msp, s in statuses.items()
        },
    }


def _accuracy(metrics: dict[str, Any] | None) -> str:
    if not metrics or metrics.get("accuracy") is None:
        return "-"
    return f"{metrics['accuracy']:.3f}"


def pooled_accuracy(hospital_metrics: list[dict[str, Any] | None]) -> float | None:
    """Accuracy on the union of the hospitals' test sets (each hospital reports its count)."""
    correct = total = 0.0
    for metrics in hospital_metrics:
        if not metrics or metrics.get("accuracy") is None or not metrics.get("n"):
            return None
        correct += metrics["accuracy"] * metrics["n"]
        total += metrics["n"]
    return correct / total if total else None


def _short(msp_id: str) -> str:
    """Hospital3MSP -> H3, to keep tables narrow."""
    name = msp_id.removesuffix("MSP")
    return "H" + name.removeprefix("Hospital") if name.startswith("Hospital") else name


def print_summary(summary: dict[str, Any], console: Console) -> None:
    msps = sorted(summary.get("privacy", {}))
    bad = set(summary.get("malicious", []))
    table = Table(
        title=f"Trial {summary['trial_id']}: accuracy on each hospital's held-out data",
        caption=", ".join(
            f"{_short(m)} = {m}" + (" (malicious)" if m in bad else "") for m in msps
        ),
    )
    table.add_column("round")
    for msp in msps:
        table.add_column(_short(msp) + ("*" if msp in bad else ""), justify="right")
    table.add_column("pooled", justify="right")
    table.add_column("accepted")
    table.add_column("rejected by votes")
    initial = summary.get("initial_test", {})
    table.add_row(
        "initial",
        *[_accuracy(initial.get(m)) for m in msps],
        _fmt_pooled(pooled_accuracy([initial.get(m) for m in msps])),
        "",
        "",
    )
    for rnd in summary.get("round_results", []):
        label = f"{rnd['round']}" + (f".{rnd['attempt']}" if rnd["attempt"] > 1 else "")
        if rnd["phase"] != "FINALIZED":
            label += f" ({rnd['phase'].lower()})"
        tests = [rnd["hospitals"].get(m, {}).get("test") for m in msps]
        accepted = f"{len(rnd['accepted'])} of {len(msps)}"
        rejected = [
            m for m in msps if rnd["hospitals"].get(m, {}).get("reason") not in (None, "accepted")
        ]
        table.add_row(
            label,
            *[_accuracy(t) for t in tests],
            _fmt_pooled(pooled_accuracy(tests)),
            accepted,
            "[red]" + ", ".join(_short(m) for m in rejected) + "[/red]" if rejected else "",
        )
    console.print(table)

    ledger_table = Table(title="Privacy and rewards (from the ledger)")
    for column in ("hospital", "epsilon spent", "epsilon budget", "rewards (tokens)"):
        ledger_table.add_column(column, justify="right" if column != "hospital" else "left")
    for msp in msps:
        p = summary["privacy"][msp]
        ledger_table.add_row(
            msp + ("*" if msp in bad else ""),
            f"{p['spent']:.3f}",
            "DP off" if p["budget"] is None else f"{p['budget']:.3f}",
            str(summary.get("rewards", {}).get(msp, 0)),
        )
    console.print(ledger_table)
    balances = summary.get("settlement_balances")
    if balances:
        token_table = Table(
            title="Rewards settled on Ethereum (anvil): token balances read from the chain"
        )
        for column in ("hospital", "payee address", "balance"):
            token_table.add_column(column, justify="right" if column == "balance" else "left")
        for msp in msps:
            entry = balances.get(msp, {})
            token_table.add_row(
                msp + ("*" if msp in bad else ""),
                entry.get("address", "-"),
                f"{entry.get('balance', '-')} {entry.get('symbol', '')}",
            )
        console.print(token_table)
    verify = summary.get("ledger_verify", {})
    if verify.get("ok"):
        replayed = (
            ", every transaction re-executed" if summary.get("ledger_verify_replayed") else ""
        )
        console.print(
            f"[green]bcfl ledger verify: OK[/green] ({verify.get('blocks')} blocks, "
            f"{verify.get('transactions')} transactions{replayed})"
        )
    else:
        console.print(f"[red]bcfl ledger verify FAILED[/red]: {verify.get('problems')}")
    state = summary.get("state")
    colour = "green" if state == "COMPLETED" else "red"
    console.print(
        f"trial state: [{colour}]{state}[/{colour}]; everything is under {summary['workdir']} "
        "(summary.json, accuracy.png, logs/, ledger/, store/)"
    )


def _fmt_pooled(value: float | None) -> str:
    return "-" if value is None else f"[bold]{value:.3f}[/bold]"


@click.command("demo")
@click.option(
    "--dataset",
    type=click.Choice(["breast-cancer", "heart-disease"]),
    default="breast-cancer",
    show_default=True,
    help="breast-cancer ships inside scikit-learn; heart-disease needs --data-dir.",
)
@click.option(
    "--data-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder with the four UCI heart disease files (processed.*.data).",
)
@click.option("--hospitals", type=click.IntRange(2, 16), default=4, show_default=True)
@click.option(
    "--rounds",
    type=click.IntRange(1, 100),
    default=None,
    help="Default: the data set's recommendation.",
)
@click.option(
    "--malicious",
    type=int,
    default=0,
    show_default=True,
    help="Hospitals (the last ones) that run --attack.",
)
@click.option(
    "--attack",
    default="sign_flip",
    show_default=True,
    help="What the malicious hospitals do: an attack of devnet.red_team (sign_flip, backdoor, "
    "label_flip, zero, inflated_weight, reencrypted_copy, aggregate_copy, aggregate_reencrypted, "
    "thief, vote_down, wrong_attestation).",
)
@click.option(
    "--no-dp", is_flag=True, help="Switch differential privacy off (recorded on the ledger)."
)
@click.option(
    "--epsilon",
    type=float,
    default=None,
    help="Trial-wide epsilon per hospital (default: the data set's).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Initial model seed.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bcfl-demo"),
    show_default=True,
    help="Where the consortium, ledger, store, logs and summary go.",
)
@click.option(
    "--ledger",
    type=click.Choice(["embedded", "fabric"]),
    default="embedded",
    show_default=True,
    help="embedded: SQLite hash chain; fabric: a native Hyperledger Fabric network on loopback.",
)
@click.option(
    "--settlement",
    type=click.Choice(["none", "ethereum"]),
    default="none",
    show_default=True,
    help="ethereum: pay each round's rewards as tokens on a local chain (anvil) and anchor the round.",
)
@click.option(
    "--fresh/--no-fresh",
    default=True,
    show_default=True,
    help="Replace a previous demo run in WORKDIR.",
)
@click.option(
    "--timeout",
    type=float,
    default=1800,
    show_default=True,
    help="Give up after this many seconds.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON at the end.")
def demo_command(
    dataset: str,
    data_dir: Path | None,
    hospitals: int,
    rounds: int | None,
    malicious: int,
    attack: str,
    no_dp: bool,
    epsilon: float | None,
    seed: int,
    workdir: Path,
    ledger: str,
    settlement: str,
    fresh: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Run a whole trial on this machine: a coordinator server and one silo agent process per
    hospital on loopback, DP and HE on, votes deciding what is aggregated; then print per-round
    accuracy, accepted updates, epsilon and rewards, and verify the ledger."""
    console = Console()
    summary = run_demo(
        workdir=workdir,
        dataset_name=dataset,
        data_dir=data_dir,
        hospitals=hospitals,
        rounds=rounds,
        malicious=malicious,
        attack=attack,
        dp=not no_dp,
        epsilon=epsilon,
        seed=seed,
        fresh=fresh,
        timeout=timeout,
        console=console,
        ledger=ledger,
        settlement=settlement,
    )
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    if summary.get("state") != "COMPLETED" or not summary.get("ledger_verify", {}).get("ok"):
        raise BcflError(
            "the demo trial did not complete with a verifying ledger (see above)",
            code="DEMO_FAILED",
        )
