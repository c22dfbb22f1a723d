"""``bcfl settlement``: deploy, inspect and reconcile the optional Ethereum settlement.

These are the client's commands (any node). Those that run a local chain (``install``,
``local-chain``, ``demo``) are ``devnet.anvil``'s, whose ``settlement_group`` adds them to these.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from bcfl_common.errors import SettlementError


def format_tokens(amount: int, decimals: int = 18) -> str:
    """Base units as whole tokens, e.g. 1500000000000000000 -> '1.5'."""
    return format(Decimal(amount).scaleb(-decimals).normalize(), "f")


def balances_table(settlement: Any, payees: Any, *, title: str = "Reward token balances") -> Table:
    """Per-hospital reward-token balances (what ``bcfl demo --settlement ethereum`` ends with)."""
    info = settlement.token_info()
    table = Table(title=f"{title} ({info['symbol']} at {info['address']})")
    table.add_column("hospital (MSP id)")
    table.add_column("payee address")
    table.add_column(f"balance ({info['symbol']})", justify="right")
    balances = settlement.balances(payees)
    for msp, address in payees.items():
        table.add_row(msp, address, format_tokens(balances[msp], info["decimals"]))
    table.caption = (
        f"total supply {format_tokens(info['total_supply'], info['decimals'])} {info['symbol']}"
    )
    return table


def reconciliation_table(rows: list[Any]) -> Table:
    """The auditor view: each round's ledger rewards next to its Ethereum settlement and anchor."""
    table = Table(title="Ledger rewards vs Ethereum settlement")
    for col in ("round", "status", "hospital", "ledger", "paid on chain", "anchor", "tx"):
        table.add_column(col, justify="right" if col in ("ledger", "paid on chain") else "left")
    for rec in rows:
        style = {"settled": "green", "unsettled": "yellow", "mismatch": "bold red"}[rec.status]
        anchor = f"{rec.record.round_digest[:10]}…" if rec.record else "-"
        tx = f"{rec.record.tx_hash[:10]}…" if rec.record else "-"
        for i, r in enumerate(rec.rows or [None]):
            first = i == 0
            table.add_row(
                str(rec.round) if first else "",
                f"[{style}]{rec.status}[/]" if first else "",
                r.msp_id if r else "-",
                format_tokens(r.ledger_amount) if r and r.ledger_amount is not None else "-",
                format_tokens(r.chain_amount) if r and r.chain_amount is not None else "-",
                anchor if first else "",
                tx if first else "",
            )
        for problem in rec.problems if rec.status == "mismatch" else ():
            table.add_row("", "", f"[red]{problem}[/]", "", "", "", "")
    return table


@click.group("settlement")
def settlement_group() -> None:
    """Optional Ethereum settlement: reward token, round settlement and anchoring."""


@settlement_group.command("deploy")
@click.option("--rpc", required=True, help="Node JSON-RPC URL, e.g. http://127.0.0.1:8545.")
@click.option(
    "--admin-key",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="File with the admin's hex private key (mode 0600); pays for the deployment.",
)
@click.option("--settler", "settler_address", help="Address allowed to settle rounds.")
@click.option(
    "--settler-key",
    type=click.Path(exists=True, dir_okay=False),
    help="Or: the settler's key file (its address is used; the key is not stored).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    required=True,
    help="Where to write the deployment file the eth:// URL names.",
)
@click.option("--token-name", default="bcfl Contribution Reward", show_default=True)
@click.option("--token-symbol", default="BCFLR", show_default=True)
def deploy_cmd(
    rpc: str,
    admin_key: str,
    settler_address: str | None,
    settler_key: str | None,
    out: str,
    token_name: str,
    token_symbol: str,
) -> None:
    """Deploy RewardToken and RoundSettlement and write the deployment file."""
    from consortium.settlement import deploy_contracts, load_settler_key

    if bool(settler_address) == bool(settler_key):
        raise SettlementError(
            "give exactly one of --settler ADDRESS or --settler-key FILE", code="SETTLEMENT_CONFIG"
        )
    settler = settler_address or load_settler_key(settler_key).address  # type: ignore[arg-type]
    d = deploy_contracts(
        rpc,
        load_settler_key(admin_key),
        settler,
        out,
        token_name=token_name,
        token_symbol=token_symbol,
    )
    click.echo(f"RewardToken     {d.token}")
    click.echo(f"RoundSettlement {d.settlement}  (chain {d.chain_id}, block {d.deploy_block})")
    click.echo(f"deployment file {out}")


@settlement_group.command("status")
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(url: str, as_json: bool) -> None:
    """Check that URL's chain still holds the deployed contracts; show the token."""
    from consortium.settlement import open_settlement

    with open_settlement(url) as st:  # type: ignore[attr-defined]
        st.verify_chain()
        info = st.token_info()
        data = {
            "deployment": st.deployment.to_dict(),
            "token": {**info, "total_supply": str(info["total_supply"])},
            "settler": st.account.address if st.account else None,
        }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    d = data["deployment"]
    click.echo(f"chain {d['chain_id']} (genesis {d['genesis_hash']}): deployment verified")
    click.echo(f"RoundSettlement {d['settlement']}, settler {d['settler']}")
    click.echo(
        f"RewardToken     {d['token']} {info['name']} ({info['symbol']}), "
        f"supply {format_tokens(info['total_supply'], info['decimals'])}"
    )


@settlement_group.command("show")
@click.argument("url")
@click.argument("trial")
@click.argument("round", type=int)
@click.option("--tx", "tx_hash", help="Transaction hash recorded on the ledger (faster lookup).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_cmd(url: str, trial: str, round: int, tx_hash: str | None, as_json: bool) -> None:
    """Show a round's settlement: anchor, payees, amounts and transaction."""
    from consortium.settlement import open_settlement

    with open_settlement(url) as st:  # type: ignore[attr-defined]
        rec = st.read_settlement(trial, round, tx_hash=tx_hash)
    if as_json:
        click.echo(json.dumps(rec.to_dict() if rec else None, indent=2))
        return
    if rec is None:
        click.echo(f"trial {trial!r} round {round}: not settled")
        return
    console = Console()
    console.print(f"trial {trial!r} round {round}: anchor {rec.round_digest}")
    console.print(
        f"ledger digest {rec.ledger_digest}; tx {rec.tx_hash} in block {rec.block_number} "
        f"(gas {rec.gas_used})"
    )
    table = Table("payee", "amount")
    for payee, amount in zip(rec.payees, rec.amounts, strict=True):
        table.add_row(payee, format_tokens(amount))
    console.print(table)


@settlement_group.command("balances")
@click.argument("url")
@click.option(
    "--payees",
    "payees_path",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="TOML/JSON map MSP id -> payee address.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def balances_cmd(url: str, payees_path: str, as_json: bool) -> None:
    """Reward-token balance of every hospital in the payee map."""
    from consortium.settlement import PayeeDirectory, open_settlement

    payees = PayeeDirectory.load(payees_path)
    with open_settlement(url) as st:  # type: ignore[attr-defined]
        if as_json:
            click.echo(json.dumps({k: str(v) for k, v in st.balances(payees).items()}, indent=2))
        else:
            Console().print(balances_table(st, payees))
