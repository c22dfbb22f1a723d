"""`bcfl audit ...`: the auditor's read-only view, straight from the ledger (and the store and Ethereum when given); exits non-zero when a check fails."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from consortium.ledger.cli import identity_options, resolve_identity
from coordinator import audit, audit_settlement
from coordinator.settlement_step import TOKEN_UNITS_PER_REWARD

MICRO = audit.MICRO


def ledger_option(func):  # type: ignore[no-untyped-def]
    func = identity_options(func)
    return click.option(
        "--ledger",
        "ledger_url",
        required=True,
        envvar="BCFL_LEDGER",
        help="The consortium ledger: embedded:///path/ledger.db or fabric://...",
    )(func)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the report as JSON (for scripts)."
)


def _open(
    ledger_url: str, identity_dir: Path | None, consortium_dir: Path | None, member: str | None
) -> Any:
    from consortium.ledger import open_ledger

    # Read-only: an auditor identity by default; the contract's queries are open to every member.
    return open_ledger(
        ledger_url, resolve_identity(identity_dir, consortium_dir, member, default="auditor")
    )


def _run(
    ledger_url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    make: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    ledger = _open(ledger_url, identity_dir, consortium_dir, member)
    try:
        return make(ledger)
    finally:
        ledger.close()


def _console() -> Console:
    # Hashes must not be cut short in a file or a pipe: wide lines there, the terminal's width otherwise.
    return Console() if sys.stdout.isatty() else Console(width=220)


def _finish(
    report: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any], Console], None]
) -> None:
    """Print the report; raise AuditFailed (non-zero exit) if any check failed."""
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        console = _console()
        render(report, console)
        for warning in report.get("warnings", []):
            console.print(f"[yellow]warning:[/] {warning}")
        if report["problems"]:
            console.print(f"[bold red]{len(report['problems'])} check(s) FAILED[/]")
            for problem in report["problems"]:
                console.print(f"  [red]✗[/] {problem}")
        elif report.get("checks"):
            console.print(f"[green]all checks passed[/] ({'; '.join(report['checks'])})")
    if report["problems"]:
        first = report["problems"][0]
        more = f" (and {len(report['problems']) - 1} more)" if len(report["problems"]) > 1 else ""
        raise audit.AuditFailed(f"{first}{more}", detail={"problems": report["problems"]})


def _time(ts: int | float | None) -> str:
    return "" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _eps(micro: int | None) -> str:
    return "-" if micro is None else f"{micro / MICRO:.6g}"


def _short(value: str | None, n: int = 16) -> str:
    return "" if not value else (value[:n] + "…" if len(value) > n else value)


@click.group("audit")
def audit_group() -> None:
    """The auditor's view of a trial, read from the ledger itself (the coordinator is not trusted).

    Every command is read-only, takes --ledger URL and an identity (--consortium DIR --as auditor),
    prints tables or --json, and exits non-zero (17) when a check fails.
    """


@audit_group.command("trials")
@ledger_option
@json_option
def trials_command(
    ledger_url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    as_json: bool,
) -> None:
    """Every trial on the ledger."""
    report = _run(ledger_url, identity_dir, consortium_dir, member, audit.trials_report)

    def render(r: dict[str, Any], console: Console) -> None:
        table = Table(title="trials on the ledger")
        for column in (
            "trial",
            "state",
            "task",
            "model",
            "finalized",
            "current",
            "DP",
            "HE",
            "rollbacks",
            "created (UTC)",
        ):
            table.add_column(column)
        for t in r["trials"]:
            current = t["current"]
            table.add_row(
                t["trial_id"],
                t["state"],
                t["task"],
                t["model"],
                f"{t['finalized']}/{t['rounds']}",
                "" if current is None else f"{current['round']}.{current['attempt']}",
                t["dp"],
                t["he"],
                str(t["rollbacks"]),
                _time(t["created_at"]),
            )
        console.print(table)

    _finish(report, as_json, render)


@audit_group.command("trial")
@ledger_option
@click.argument("trial_id")
@json_option
def trial_command(
    ledger_url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str,
    as_json: bool,
) -> None:
    """A trial: state, DP and HE switches with reasons, and each round's accepted and rejected updates, weights and rewards."""
    report = _run(
        ledger_url,
        identity_dir,
        consortium_dir,
        member,
        lambda ledger: audit.trial_report(ledger, trial_id),
    )

    def render(r: dict[str, Any], console: Console) -> None:
        t = r["trial"]
        table = Table(title=f"trial {trial_id}", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        ev = t["evaluation"]
        rows = [
            ("state", t["state"] + (f" ({t['halt']['reason']})" if t["halt"] else "")),
            (
                "task / model",
                f"{t['task']} / {t['model']['name']} {json.dumps(t['model']['hyperparameters'])}",
            ),
            ("rounds", f"{t['finalized']} of {t['rounds']} finalized (min silos {t['min_silos']})"),
            (
                "created",
                f"{_time(t['created_at'])} by {t['created_by']['name']}@{t['created_by']['msp_id']}",
            ),
            (
                "differential privacy",
                r["dp"]["summary"]
                if r["dp"]["enabled"]
                else f"[yellow]OFF[/]: {r['dp']['reason']}",
            ),
            (
                "homomorphic encryption",
                r["he"]["summary"]
                if r["he"]["enabled"]
                else f"[yellow]OFF[/]: {r['he']['reason']}",
            ),
            (
                "evaluation",
                f"threshold {ev['acceptance_threshold_micro'] / MICRO:g}, min voters {ev['min_voters']}, "
                f"reward {ev['reward_per_round']} per round",
            ),
            ("initial model", t["initial_model"]["sha256"]),
            (
                "enrolled",
                ", ".join(
                    f"{e['msp_id']}"
                    + ("" if e["status"] == "enrolled" else f" (removed: {e['removal_reason']})")
                    for e in r["enrolments"]
                ),
            ),
        ]
        for key, value in rows:
            table.add_row(key, value)
        console.print(table)
        rounds = Table(title="rounds")
        for column in (
            "round",
            "phase",
            "hospital",
            "verdict",
            "median",
            "votes",
            "weight",
            "contribution",
            "reward",
            "model",
        ):
            rounds.add_column(
                column,
                justify="right"
                if column in ("median", "votes", "weight", "contribution", "reward")
                else "left",
            )
        for rnd in r["rounds"]:
            label = f"{rnd['round']}.{rnd['attempt']}"
            phase = rnd["phase"] + (
                f" ({rnd['halt']['code']}: {rnd['halt']['reason']})" if rnd["halt"] else ""
            )
            model = _short(rnd["model_sha256"])
            if not rnd["candidates"]:
                rounds.add_row(label, phase, "", "", "", "", "", "", "", model)
            for i, c in enumerate(rnd["candidates"]):
                verdict = (
                    "[green]accepted[/]" if c["accepted"] else f"[red]rejected[/]: {c['reason']}"
                )
                rounds.add_row(
                    label if i == 0 else "",
                    phase if i == 0 else "",
                    c["msp_id"],
                    verdict,
                    "-" if c["median_micro"] is None else f"{c['median_micro'] / MICRO:+.4f}",
                    f"{c['votes']}/{c['required_votes']}",
                    str(c["weight"]),
                    str(c["contribution"]),
                    str(c["reward"]),
                    model if i == 0 else "",
                )
        console.print(rounds)

    _finish(report, as_json, render)


@audit_group.command("privacy")
@ledger_option
@click.argument("trial_id")
@json_option
def privacy_command(
    ledger_url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str,
    as_json: bool,
) -> None:
    """Epsilon spent by each hospital, per round and cumulatively, against the trial's budget."""
    report = _run(
        ledger_url,
        identity_dir,
        consortium_dir,
        member,
        lambda ledger: audit.privacy_report(ledger, trial_id),
    )

    def render(r: dict[str, Any], console: Console) -> None:
        if not r["dp_enabled"]:
            console.print(
                f"[yellow]differential privacy is OFF for {trial_id}[/]: {r['dp_reason'] or '(no reason recorded)'}"
            )
        table = Table(
            title=f"privacy ledger of {trial_id} (epsilon; budget {_eps(r['budget_micro'])} per hospital)"
        )
        for column in (
            "hospital",
            "round",
            "epsilon this round",
            "cumulative",
            "budget",
            "remaining",
        ):
            table.add_column(column, justify="left" if column in ("hospital", "round") else "right")
        for h in r["hospitals"]:
            if not h["entries"]:
                table.add_row(
                    h["msp_id"], "-", "0", "0", _eps(h["budget_micro"]), _eps(h["remaining_micro"])
                )
            for i, e in enumerate(h["entries"]):
                last = i == len(h["entries"]) - 1
                table.add_row(
                    h["msp_id"] if i == 0 else "",
                    f"{e['round']}.{e['attempt']}",
                    _eps(e["epsilon_micro"]),
                    _eps(e["cumulative_micro"]),
                    _eps(h["budget_micro"]) if i == 0 else "",
                    _eps(h["remaining_micro"]) if last else "",
                )
        console.print(table)

    _finish(report, as_json, render)


@audit_group.command("rewards")
@ledger_option
@click.argument("trial_id")
@json_option
def rewards_command(
    ledger_url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str,
    as_json: bool,
) -> None:
    """Rewards of each round (credited, void or pending) and each hospital's account, cross-checked."""
    report = _run(
        ledger_url,
        identity_dir,
        consortium_dir,
        member,
        lambda ledger: audit.rewards_report(ledger, trial_id),
    )

    def render(r: dict[str, Any], console: Console) -> None:
        hospitals = sorted(
            {m for row in r["rounds"] for m in row["rewards"]}
            | {a["msp_id"] for a in r["accounts"]}
        )
        table = Table(title=f"rewards of {trial_id}")
        for column in ["round", "phase", "status", "pool", *hospitals, "settlement"]:
            table.add_column(column, justify="right" if column in ["pool", *hospitals] else "left")
        for row in r["rounds"]:
            settled = row["settlement"]
            table.add_row(
                f"{row['round']}.{row['attempt']}",
                row["phase"] or "",
                row["status"],
                str(row["pool"]),
                *[str(row["rewards"].get(m, "")) for m in hospitals],
                ""
                if settled is None
                else f"chain {settled['chain_id']} {_short(settled['tx_hash'], 12)}",
            )
        totals = {a["msp_id"]: a["total"] for a in r["accounts"]}
        table.add_row("total", "", "", "", *[f"[bold]{totals.get(m, 0)}[/]" for m in hospitals], "")
        console.print(table)

    _finish(report, as_json, render)


@audit_group.command("lineage")
@ledger_option
@click.argument("trial_id")
@json_option
def lineage_command(
    ledger_url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str,
    as_json: bool,
) -> None:
    """The model hash of each finalized round, every attempt, and the rollbacks."""
    report = _run(
        ledger_url,
        identity_dir,
        consortium_dir,
        member,
        lambda ledger: audit.lineage_report(ledger, trial_id),
    )

    def render(r: dict[str, Any], console: Console) -> None:
        table = Table(title=f"model lineage of {trial_id} (head: round {r['head']['round']})")
        for column in ("round", "model sha256", "content id", "finalized (UTC)", "disputes"):
            table.add_column(column)
        table.add_row(
            "0",
            r["initial_model"]["sha256"],
            _short(r["initial_model"]["content_id"], 24),
            "initial model",
            "",
        )
        for e in r["lineage"]:
            table.add_row(
                f"{e['round']}.{e['attempt']}",
                e["model_sha256"],
                _short(e["content_id"], 24),
                _time(e["finalized_at"]),
                ", ".join(d["msp_id"] for d in e["disputes"]),
            )
        console.print(table)
        off = [a for a in r["attempts"] if not a["in_lineage"]]
        if off:
            other = Table(title="attempts not in the current lineage")
            for column in ("round", "phase", "model sha256", "halt"):
                other.add_column(column)
            for a in off:
                halt = "" if a["halt"] is None else f"{a['halt']['code']}: {a['halt']['reason']}"
                other.add_row(
                    f"{a['round']}.{a['attempt']}", a["phase"], a["model_sha256"] or "", halt
                )
            console.print(other)
        if r["rollbacks"]:
            rb = Table(title="rollbacks")
            for column in ("at (UTC)", "from", "to", "by", "reason"):
                rb.add_column(column)
            for x in r["rollbacks"]:
                rb.add_row(
                    _time(x["at"]),
                    f"{x['from_round']}.{x['from_attempt']}",
                    f"{x['to_round']}.{x['to_attempt']}",
                    f"{x['by']['name']}@{x['by']['msp_id']}",
                    x["reason"] or "",
                )
            console.print(rb)

    _finish(report, as_json, render)


@audit_group.command("verify")
@ledger_option
@click.argument("trial_id", required=False)
@click.option(
    "--store",
    "store_url",
    default=None,
    envvar="BCFL_STORE",
    help="Artifact store (file:///... or ipfs://...): also re-aggregate each round's accepted updates.",
)
@json_option
def verify_command(
    ledger_url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str | None,
    store_url: str | None,
    as_json: bool,
) -> None:
    """Verify the ledger and recompute every round: commitments, acceptance from the revealed votes, and (--store) the aggregates."""
    store = None
    if store_url:
        from consortium.storage import open_store

        store = open_store(store_url)
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
        disable=as_json,
    ) as bar:
        task = bar.add_task("verifying the ledger", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=f"recomputing {what}", completed=done, total=total)

        report = _run(
            ledger_url,
            identity_dir,
            consortium_dir,
            member,
            lambda ledger: audit.verify_report(
                ledger, trial_id=trial_id, store=store, progress=progress
            ),
        )

    def render(r: dict[str, Any], out: Console) -> None:
        led = r["ledger"]
        state = "[green]verifies[/]" if led["ok"] else "[red]does NOT verify[/]"
        out.print(f"ledger {state}: {led['blocks']} blocks, {led['transactions']} transactions")
        table = Table(
            title="rounds recomputed"
            + (" (aggregates re-summed from the store)" if r["store_checked"] else "")
        )
        for column in ("trial", "round", "phase", "aggregate", "result"):
            table.add_column(column)
        for tid, rounds in r["trials"].items():
            for x in rounds:
                result = (
                    "[green]ok[/]"
                    if not x["problems"]
                    else f"[red]{len(x['problems'])} problem(s)[/]"
                )
                table.add_row(
                    tid,
                    f"{x['round']}.{x['attempt']}",
                    x["phase"],
                    _short(x["aggregate_sha256"]),
                    result,
                )
        out.print(table)

    _finish(report, as_json, render)


@audit_group.command("settlement")
@ledger_option
@click.argument("trial_id")
@click.option(
    "--settlement",
    "settlement_url",
    required=True,
    envvar="BCFL_SETTLEMENT",
    help="eth://host:port?deployment=FILE (no settler key needed).",
)
@click.option(
    "--payees",
    "payees_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="TOML/JSON map MSP id -> payee address (the consortium's payee map).",
)
@json_option
def settlement_command(
    ledger_url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str,
    settlement_url: str,
    payees_path: str,
    as_json: bool,
) -> None:
    """Each round's ledger rewards next to its Ethereum payment and anchor; every mismatch is reported."""
    from consortium.settlement import PayeeDirectory, open_settlement
    from consortium.settlement_cli import format_tokens

    payees = PayeeDirectory.load(payees_path)
    settlement = open_settlement(settlement_url)
    try:
        report = _run(
            ledger_url,
            identity_dir,
            consortium_dir,
            member,
            lambda ledger: audit_settlement.settlement_report(ledger, trial_id, settlement, payees),
        )
    finally:
        settlement.close()

    def render(r: dict[str, Any], console: Console) -> None:
        table = Table(
            title=f"{trial_id}: ledger rewards vs Ethereum settlement (chain {r['chain_id']}, {r['contract']})"
        )
        money = ("ledger reward (tokens)", "paid on chain (tokens)")
        for column in ("round", "status", "hospital", *money, "ledger digest", "anchor", "tx"):
            table.add_column(column, justify="right" if column in money else "left")
        styles = {"settled": "green", "unsettled": "yellow", "not credited": "dim"}
        for row in r["rounds"]:
            style = styles.get(row["status"], "bold red")
            chain = row["chain"] or {}
            recorded = row["ledger_settlement"] or {}
            lines = (
                row["payees"]
                or [
                    {
                        "msp_id": m,
                        "ledger_amount": str(v * TOKEN_UNITS_PER_REWARD) if v else None,
                        "chain_amount": None,
                    }
                    for m, v in sorted(row["ledger_rewards"].items())
                ]
                or [None]
            )
            for i, p in enumerate(lines):
                first = i == 0
                table.add_row(
                    f"{row['round']}.{row['attempt']}" if first else "",
                    f"[{style}]{row['status']}[/]" if first else "",
                    p["msp_id"] if p else "-",
                    format_tokens(int(p["ledger_amount"]))
                    if p and p["ledger_amount"] is not None
                    else "-",
                    format_tokens(int(p["chain_amount"]))
                    if p and p["chain_amount"] is not None
                    else "-",
                    _short(row["ledger_digest"], 12) if first else "",
                    _short(chain.get("round_digest"), 12) if first else "",
                    _short(chain.get("tx_hash") or recorded.get("tx_hash"), 12) if first else "",
                )
        console.print(table)

    _finish(report, as_json, render)
