"""`bcfl network up|down|status|stop-node|start-node`: a local Hyperledger Fabric network (no Docker).

The network itself is ``devnet.fabric_network.FabricNetwork``; these commands drive it from a
state directory, so each invocation finds the nodes the previous one started.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from devnet.fabric_material import DEFAULT_BATCH_TIMEOUT
from devnet.fabric_network import FabricNetwork

_state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the network keeps its state and logs [default: $BCFL_NETWORK_DIR or ~/.cache/bcfl/network].",
)


@click.group("network")
def network_group() -> None:
    """Run a local Hyperledger Fabric network (native processes on 127.0.0.1, no Docker)."""


@network_group.command("up")
@_state_dir_option
@click.option(
    "--consortium",
    "consortium_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Consortium directory from `bcfl consortium init` [default: one made in the state dir].",
)
@click.option(
    "--hospitals",
    type=int,
    default=4,
    show_default=True,
    help="Hospitals of the consortium made when --consortium is not given.",
)
@click.option(
    "--orderers",
    type=click.Choice(["1", "3", "5"]),
    default="1",
    show_default=True,
    help="Raft ordering nodes.",
)
@click.option(
    "--batch-timeout",
    default=DEFAULT_BATCH_TIMEOUT,
    show_default=True,
    help="Orderer BatchTimeout (block cutting latency).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the network description as JSON.")
def up_command(
    state_dir: Path | None,
    consortium_dir: Path | None,
    hospitals: int,
    orderers: str,
    batch_timeout: str,
    as_json: bool,
) -> None:
    """Bring the network up (idempotent: finishes or restarts what is missing)."""
    from rich.console import Console

    network = FabricNetwork(
        state_dir,
        consortium_dir=consortium_dir,
        hospitals=hospitals,
        orderers=int(orderers),
        batch_timeout=batch_timeout,
    )
    console = Console(stderr=True)
    start = time.monotonic()
    with console.status("bringing the Fabric network up") as status:

        def report(step: str) -> None:
            status.update(f"network up: {step}")
            console.log(step)

        network.up(report)
    if as_json:
        click.echo(json.dumps(network.status(), indent=2))
    else:
        _print_status(network.status())
        click.echo(f"up in {time.monotonic() - start:.1f} s")


@network_group.command("down")
@_state_dir_option
@click.option(
    "--keep-state", is_flag=True, help="Stop the processes but keep ledgers, identities and logs."
)
def down_command(state_dir: Path | None, keep_state: bool) -> None:
    """Stop every process of the network and (unless --keep-state) remove its state."""
    network = FabricNetwork(state_dir)
    stopped = network.down(purge=not keep_state)
    click.echo(
        f"stopped {len(stopped)} process(es)"
        + ("" if keep_state else f"; removed {network.state_dir}")
    )


@network_group.command("status")
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_command(state_dir: Path | None, as_json: bool) -> None:
    """Show the network's nodes, whether they run, the ledger URL and where the logs are."""
    status = FabricNetwork(state_dir).status()
    if as_json:
        click.echo(json.dumps(status, indent=2))
    else:
        _print_status(status)


@network_group.command("stop-node")
@_state_dir_option
@click.argument("name")
def stop_node_command(state_dir: Path | None, name: str) -> None:
    """Stop one node (e.g. peer0.hospital1) to simulate a failure."""
    FabricNetwork(state_dir).stop_node(name)
    click.echo(f"stopped {name}")


@network_group.command("start-node")
@_state_dir_option
@click.argument("name")
def start_node_command(state_dir: Path | None, name: str) -> None:
    """Start one stopped node again; a peer catches up with the channel by itself."""
    FabricNetwork(state_dir).start_node(name)
    click.echo(f"started {name}")


def _print_status(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not status["exists"]:
        console.print(f"no network in {status['state_dir']}")
        return
    table = Table(title=f"Fabric network in {status['state_dir']}")
    for column in ("node", "kind", "organisation", "address", "pid", "state"):
        table.add_column(column)
    for node in status["nodes"]:
        state = (
            "running"
            if node["pid"] and node["listening"]
            else ("starting" if node["pid"] else "stopped")
        )
        table.add_row(
            node["name"],
            node["kind"],
            node["msp_id"],
            node["address"],
            str(node["pid"] or "-"),
            state,
        )
    console.print(table)
    console.print(f"channel {status['channel']}, chaincode {status['chaincode']}")
    console.print(f"ledger URL: {status['ledger_url']}")
    console.print(f"consortium: {status['consortium_dir']}")
    console.print(f"logs: {status['logs']}")
