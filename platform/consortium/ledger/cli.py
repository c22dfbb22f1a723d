"""`bcfl ledger ...`: create, show and verify a ledger."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from bcfl_common.errors import ConfigError, LedgerIntegrityError
from consortium.identity import Consortium, Identity, load_identity
from consortium.ledger.base import ReplayingLedger, open_ledger


def identity_options(func):  # type: ignore[no-untyped-def]
    """--identity or --consortium/--as: who acts on the ledger."""
    func = click.option(
        "--as", "member", envvar="BCFL_MEMBER", help="Member name inside --consortium."
    )(func)
    func = click.option(
        "--consortium",
        "consortium_dir",
        envvar="BCFL_CONSORTIUM",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="Consortium directory.",
    )(func)
    func = click.option(
        "--identity",
        "identity_dir",
        envvar="BCFL_IDENTITY",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="A member folder (members/<name> of a consortium).",
    )(func)
    return func


def resolve_identity(
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    default: str = "auditor",
) -> Identity:
    if identity_dir is not None:
        return load_identity(identity_dir)
    if consortium_dir is not None:
        return Consortium.load(consortium_dir).identity(member or default)
    raise ConfigError(
        "no identity given: pass --identity MEMBER_DIR, or --consortium DIR --as NAME"
    )


@click.group("ledger")
def ledger_group() -> None:
    """Create, inspect and verify a ledger (embedded:///path/ledger.db or fabric://...)."""


@ledger_group.command("init")
@click.argument("url", envvar="BCFL_LEDGER")
@click.option(
    "--consortium",
    "consortium_dir",
    required=True,
    envvar="BCFL_CONSORTIUM",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Consortium directory.",
)
@click.option(
    "--as", "member", default="admin", show_default=True, help="The consortium admin's member name."
)
def init_command(url: str, consortium_dir: Path, member: str) -> None:
    """Create an embedded ledger at URL for the consortium (configuration block + contract bootstrap)."""
    from consortium.ledger.embedded import create_embedded_ledger

    consortium = Consortium.load(consortium_dir)
    with create_embedded_ledger(url, consortium, consortium.identity(member)) as ledger:
        click.echo(f"ledger created at {url} ({ledger.height()} blocks)")


@ledger_group.command("verify")
@click.argument("url", envvar="BCFL_LEDGER")
@identity_options
@click.option("--replay", is_flag=True, help="Also re-execute every transaction with the contract.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_command(
    url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    replay: bool,
    as_json: bool,
) -> None:
    """Re-check every block hash, signature and certificate; name the first thing that fails.

    Exits 0 when the ledger verifies, 6 when it does not.
    """
    ledger = open_ledger(url, resolve_identity(identity_dir, consortium_dir, member))
    replaying = ledger if isinstance(ledger, ReplayingLedger) and ledger.supports_replay else None
    if replay and replaying is None:
        ledger.close()
        raise ConfigError(
            f"--replay: the ledger at {url} cannot re-execute its transactions here; "
            "expected an embedded:// ledger (Fabric's peers re-executed them at endorsement)"
        )
    try:
        report = replaying.verify(replay=True) if replay and replaying else ledger.verify()
    finally:
        ledger.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        console = Console()
        if report.ok:
            console.print(
                f"[green]ledger verifies[/green]: {report.blocks} blocks, {report.transactions} transactions"
            )
            for check in report.checks:
                console.print(f"  [green]✓[/green] {check}")
        else:
            console.print(
                f"[red]ledger does NOT verify[/red] ({len(report.problems)} problems); first: {report.problems[0]}"
            )
            for item in report.problems[1:10]:
                console.print(f"  - {item}")
    if not report.ok:
        raise LedgerIntegrityError(f"ledger does not verify: {report.problems[0]}")


@ledger_group.command("show")
@click.argument("url", envvar="BCFL_LEDGER")
@identity_options
@click.option("--from", "start", type=int, default=0, show_default=True, help="First block.")
@click.option("--limit", type=int, default=200, show_default=True, help="How many blocks at most.")
@click.option("--json", "as_json", is_flag=True, help="Print blocks as JSON lines.")
def show_command(
    url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    start: int,
    limit: int,
    as_json: bool,
) -> None:
    """Print the chain: one row per transaction (block, time, creator, function, event)."""
    ledger = open_ledger(url, resolve_identity(identity_dir, consortium_dir, member))
    try:
        blocks = list(ledger.blocks(start, start + limit))
    finally:
        ledger.close()
    if as_json:
        for block in blocks:
            click.echo(json.dumps(block.__dict__))
        return
    table = Table(title=f"{url}: blocks {start}..{start + len(blocks) - 1}")
    for column in ("block", "time (UTC)", "hash", "creator", "function", "event"):
        table.add_column(column)
    for block in blocks:
        when = dt.datetime.fromtimestamp(block.timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        if not block.transactions:
            table.add_row(
                str(block.number), when, block.hash[:12], block.signer_msp_id, "(configuration)", ""
            )
        for tx in block.transactions:
            proposal = tx.get("proposal", {})
            event = (tx.get("event") or {}).get("name", "")
            table.add_row(
                str(block.number),
                when,
                block.hash[:12],
                proposal.get("creator", {}).get("msp_id", "?"),
                proposal.get("function", "?"),
                event,
            )
    Console().print(table)
