"""`bcfl consortium ...`: create a consortium's identities and list its members."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from consortium.identity import Consortium, init_consortium


@click.group("consortium")
def consortium_group() -> None:
    """Create and inspect a consortium's identities (CAs, members, MSP folders)."""


@consortium_group.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--hospitals",
    "-n",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Number of hospital organisations.",
)
@click.option("--name", default="bcfl-consortium", show_default=True, help="Consortium name.")
def init_command(directory: Path, hospitals: int, name: str) -> None:
    """Create a consortium in DIRECTORY: a CA per organisation and one MSP folder per member.

    Organisations: CoordinatorMSP (members admin, coordinator), AuditorMSP (auditor) and
    Hospital1MSP..HospitalNMSP (member hospitalI, role silo, with an X25519 encryption key).
    Private keys are written with mode 0600 and never printed.
    """
    consortium = init_consortium(directory, hospitals, name=name)
    _print_members(consortium, title=f"Consortium {name!r} created in {directory}")


@consortium_group.command("show")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the public description as JSON.")
def show_command(directory: Path, as_json: bool) -> None:
    """List the organisations and members of the consortium in DIRECTORY."""
    consortium = Consortium.load(directory)
    if as_json:
        click.echo(json.dumps(consortium.to_dict(), indent=2))
        return
    _print_members(consortium, title=f"Consortium {consortium.name!r}")


def _print_members(consortium: Consortium, title: str) -> None:
    table = Table(title=title)
    for column in ("member", "role", "MSP id", "organisation kind", "folder"):
        table.add_column(column)
    for member in consortium.members.values():
        org = consortium.organisations[member.msp_id]
        folder = str(consortium.member_dir(member.name)) if consortium.directory else ""
        table.add_row(member.name, member.role, member.msp_id, org.kind, folder)
    Console().print(table)
