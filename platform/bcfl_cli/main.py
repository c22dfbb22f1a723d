"""The root ``bcfl`` command: mounts each package's command group lazily and maps errors to exit codes."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from bcfl_common.errors import BcflError

# name -> "module:attribute". Groups are imported only when used, so `bcfl --help` stays fast
# (torch and TenSEAL are not imported to print help).
COMMAND_GROUPS: dict[str, tuple[str, str]] = {
    "consortium": (
        "consortium.identity_cli:consortium_group",
        "Create and inspect a consortium's identities.",
    ),
    "ledger": ("consortium.ledger.cli:ledger_group", "Inspect and verify a ledger."),
    "store": (
        "consortium.storage_cli:store_group",
        "Put, get and verify content-addressed artifacts.",
    ),
    "coordinator": (
        "coordinator.cli:coordinator_group",
        "Run the coordinator service and drive trials through its API.",
    ),
    "silo": (
        "silo_agent.cli:silo_group",
        "Run a hospital's silo agent: enrol, train, vote, attest.",
    ),
    "network": (
        "devnet.fabric_cli:network_group",
        "Run a local Hyperledger Fabric network (no Docker).",
    ),
    "demo": (
        "devnet.demo:demo_command",
        "Run a whole trial on this machine (coordinator + one silo per hospital).",
    ),
    "audit": (
        "coordinator.audit_cli:audit_group",
        "The auditor's read-only view: trials, privacy, rewards, lineage, verification, settlement.",
    ),
    "settlement": (
        "devnet.anvil:settlement_group",
        "Optional Ethereum settlement: deploy, inspect, reconcile.",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMAND_GROUPS:
            return None
        target, _ = COMMAND_GROUPS[cmd_name]
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMAND_GROUPS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="bcfl")
def cli(verbose: int) -> None:
    """bcfl: federated learning for hospital consortia on a permissioned ledger."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_click(command: click.Command, argv: list[str] | None, prog_name: str) -> None:
    """Run a click command as a program: a BcflError becomes one readable line on stderr and
    its exit code; an abort exits 130."""
    try:
        command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except BcflError as exc:
        click.echo(f"error [{exc.code}]: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `bcfl`."""
    run_click(cli, argv, "bcfl")
