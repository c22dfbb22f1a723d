"""`bcfl audit ...`: the auditor's read-only view, straight from the ledger (and the store and Ethereum when given); exits non-zero when a check fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from coordinator import audit_privacy, audit_settlement, audit_verify
from coordinator.audit import (
    AuditFailed,
    lineage_report,
    rewards_report,
    trial_report,
    trials_report,
)
from coordinator.audit_cli_support import (
    MICRO,
    _eps,
    _finish,
    _norm,
    _run,
    _short,
    _time,
    json_option,
    ledger_option,
)
from coordinator.settlement_step import TOKEN_UNITS_PER_REWARD

__all__ = ["AuditFailed", "audit_group"]


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
    report = _run(ledger_url, identity_dir, consortium_dir, member, trials_report)

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
        lambda ledger: trial_report(ledger, trial_id),
    )

    def render(r: dict[str, Any], console: Console) -> None:
        t = r["trial"]
        table = Table(title=f"trial {trial_id}", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        ev = t["evaluation"]
        rows = [
            (
                "state",
                t["state"]
                + (
                    f" ({t['halt'].get('code', 'HALTED_BY_ADMIN')}: {t['halt']['reason']})"
                    if t["halt"]
                    else ""
                ),
            ),
            (
                "task / model",
                f"{t['task']} / {t['model']['name']} {json.dumps(t['model']['hyperparameters'])}",
            ),
            (
                "rounds",
                f"{t['finalized']} of {t.get('final_round', t['rounds'])} finalized (min silos "
                f"{t['min_silos']}, at most {t.get('max_retries', 0)} retries in a row)",
            ),
            *(
                (
                    "resumed",
                    f"at {x['at']} by {x['by']['name']}: {x['reason']} (was "
                    f"{x['halt'].get('code', 'HALTED_BY_ADMIN')}: {x['halt']['reason']})",
                )
                for x in t.get("resumes", [])
            ),
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
                f"harm threshold {ev['acceptance_threshold_micro'] / MICRO:g}, min voters {ev['min_voters']}, "
                f"reward {ev['reward_per_round']} per round "
                f"({ev.get('voter_reward_share_micro', 0) / MICRO:.0%} to voters), "
                f"weight share cap {ev.get('max_weight_share_micro', MICRO) / MICRO:.0%}, "
                f"duplicate similarity {ev.get('duplicate_similarity_micro', MICRO) / MICRO:g}, "
                f"norm outlier ratio {ev.get('max_norm_ratio_milli', 0) / 1000:g}"
                f"{' per sqrt(sample weight)' if ev.get('norm_outlier_scaling') == 'sqrt_sample_weight' else ''}, "
                f"norm bound {_norm(ev.get('max_update_norm_milli')) if ev.get('max_update_norm_milli') else 'from the DP schedule'}",
            ),
            ("initial model", t["initial_model"]["sha256"]),
            (
                "enrolled",
                ", ".join(
                    f"{e['msp_id']} ({e['training_records']} records of {e['dataset_id']})"
                    + ("" if e["status"] == "enrolled" else f" (removed: {e['removal_reason']})")
                    for e in r["enrolments"]
                ),
            ),
        ]
        for key, value in rows:
            table.add_row(key, value)
        console.print(table)
        rounds = Table(title="rounds")
        numbers = ("improvement", "norm / bound", "votes", "weight", "reward")
        for column in ("round", "phase", "hospital", "verdict", *numbers, "model"):
            rounds.add_column(column, justify="right" if column in numbers else "left")
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
                    "-"
                    if c["improvement_micro"] is None
                    else f"{c['improvement_micro'] / MICRO:+.4f}",
                    f"{_norm(c['norm_milli'])} / {_norm(c['norm_bound_milli'])}",
                    "-" if c["required_votes"] is None else f"{c['votes']}/{c['required_votes']}",
                    "-" if c["sample_weight"] is None else f"{c['weight']} of {c['sample_weight']}",
                    str(c["reward"]),
                    model if i == 0 else "",
                )
        console.print(rounds)
        voters = Table(title="voters: agreement with the outcome and voter reward")
        for column in ("round", "voter", "agreed / judged", "voter reward"):
            voters.add_column(column, justify="left" if column in ("round", "voter") else "right")
        for rnd in r["rounds"]:
            for i, v in enumerate(rnd["voters"]):
                voters.add_row(
                    f"{rnd['round']}.{rnd['attempt']}" if i == 0 else "",
                    v["msp_id"],
                    f"{v['agreed']}/{v['judged']}",
                    str(v["reward"]),
                )
        if any(rnd["voters"] for rnd in r["rounds"]):
            console.print(voters)

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
        lambda ledger: audit_privacy.privacy_report(ledger, trial_id),
    )

    def render(r: dict[str, Any], console: Console) -> None:
        if not r["dp_enabled"]:
            console.print(
                f"[yellow]differential privacy is OFF for {trial_id}[/]: {r['dp_reason'] or '(no reason recorded)'}"
            )
        schedule = Table(
            title=f"DP schedule of {trial_id} (target epsilon {_eps(r['budget_micro'])} per hospital)"
        )
        for column in (
            "hospital",
            "records",
            "noise multiplier",
            "steps / round",
            "epsilon per round",
            "update norm bound",
        ):
            schedule.add_column(column, justify="left" if column == "hospital" else "right")
        for h in r["hospitals"]:
            entry = h["schedule"]
            if entry is None:
                schedule.add_row(h["msp_id"], str(h["training_records"]), "-", "-", "-", "-")
                continue
            schedule.add_row(
                h["msp_id"],
                str(h["training_records"]),
                f"{entry['noise_multiplier_micro'] / MICRO:.4f}",
                str(entry["steps_per_round"]),
                " ".join(_eps(e) for e in entry["epsilon_per_round_micro"]),
                _norm(entry["max_update_norm_milli"]),
            )
        console.print(schedule)
        table = Table(title=f"epsilon charged in {trial_id}")
        for column in (
            "hospital",
            "round",
            "charged",
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
        lifetime = Table(title="lifetime budgets of the hospitals' datasets (epsilon)")
        for column in (
            "hospital",
            "dataset",
            "records",
            "lifetime",
            "committed",
            "remaining",
            "trials",
        ):
            lifetime.add_column(
                column, justify="left" if column in ("hospital", "dataset", "trials") else "right"
            )
        for h in r["hospitals"]:
            d = h["dataset"]
            if d is None:
                continue
            lifetime.add_row(
                h["msp_id"],
                d["dataset_id"],
                str(d["records"]),
                _eps(d["lifetime_epsilon_micro"]),
                _eps(d["committed_micro"]),
                _eps(d["remaining_micro"]),
                ", ".join(
                    f"{t} ({x['state'].lower()}, counts {_eps(x['counted_micro'])})"
                    for t, x in d["trials"].items()
                ),
            )
        console.print(lifetime)

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
        lambda ledger: rewards_report(ledger, trial_id),
    )

    def render(r: dict[str, Any], console: Console) -> None:
        hospitals = sorted(
            {m for row in r["rounds"] for m in row["rewards"]}
            | {a["msp_id"] for a in r["accounts"]}
        )
        table = Table(title=f"rewards of {trial_id} (update + voter reward per hospital)")
        for column in ["round", "phase", "status", "pool", "paid", *hospitals, "settlement"]:
            table.add_column(
                column, justify="right" if column in ["pool", "paid", *hospitals] else "left"
            )
        for row in r["rounds"]:
            settled = row["settlement"]

            def cell(m: str, row: dict[str, Any] = row) -> str:
                if m not in row["rewards"]:
                    return ""
                parts = row["split"].get(m)
                if parts is None:
                    return str(row["rewards"][m])
                return f"{row['rewards'][m]} ({parts['update']} + {parts['voter']})"

            table.add_row(
                f"{row['round']}.{row['attempt']}",
                row["phase"] or "",
                row["status"],
                str(row["pool"]),
                str(row["paid"]),
                *[cell(m) for m in hospitals],
                ""
                if settled is None
                else f"chain {settled['chain_id']} {_short(settled['tx_hash'], 12)}",
            )
        totals = {a["msp_id"]: a["total"] for a in r["accounts"]}
        table.add_row(
            "total", "", "", "", "", *[f"[bold]{totals.get(m, 0)}[/]" for m in hospitals], ""
        )
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
        lambda ledger: lineage_report(ledger, trial_id),
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
    """Verify the ledger and recompute every decision: DP schedules (Opacus), epsilon charges, sample
    weights, duplicates, disputes, dataset budgets, commitments, acceptance, and (--store) the aggregates."""
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
            lambda ledger: audit_verify.verify_report(
                ledger, trial_id=trial_id, store=store, progress=progress
            ),
        )

    def render(r: dict[str, Any], out: Console) -> None:
        led = r["ledger"]
        state = "[green]verifies[/]" if led["ok"] else "[red]does NOT verify[/]"
        out.print(f"ledger {state}: {led['blocks']} blocks, {led['transactions']} transactions")

        def verdict(problems: list[str]) -> str:
            return "[green]ok[/]" if not problems else f"[red]{len(problems)} problem(s)[/]"

        checks = Table(title="decisions recomputed from the ledger")
        for column in ("trial", "check", "result"):
            checks.add_column(column)
        for tid, rows in r["trial_checks"].items():
            for i, c in enumerate(rows):
                checks.add_row(tid if i == 0 else "", c["check"], verdict(c["problems"]))
        datasets = r["datasets"]
        checks.add_row(
            "(all)" if len(r["trials"]) != 1 else "",
            f"{audit_verify.DATASETS} ({len(datasets['rows'])} datasets)",
            verdict(datasets["problems"]),
        )
        out.print(checks)
        table = Table(
            title="rounds recomputed"
            + (" (aggregates re-summed from the store)" if r["store_checked"] else "")
        )
        for column in ("trial", "round", "phase", "aggregate", "result"):
            table.add_column(column)
        for tid, rounds in r["trials"].items():
            for x in rounds:
                result = verdict(x["problems"])
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
