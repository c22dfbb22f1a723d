"""What every `bcfl audit` command shares: the ledger option, opening the ledger as the auditor, printing a report (table or JSON) and failing when a check failed."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from consortium.ledger.cli import identity_options, resolve_identity
from coordinator import audit

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


def _norm(milli: int | None) -> str:
    return "-" if milli is None else f"{milli / 1000:.6g}"


def _short(value: str | None, n: int = 16) -> str:
    return "" if not value else (value[:n] + "…" if len(value) > n else value)
