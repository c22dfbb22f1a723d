"""A local Ethereum chain for tests, benchmarks and the demo: anvil (from the npm registry) under
the devnet supervisor, with the settlement contracts deployed; and the ``bcfl settlement``
commands that start one (``install``, ``local-chain``, ``demo``).

``settlement_group`` here is the whole ``bcfl settlement`` group: the client commands of
``consortium.settlement_cli`` (deploy, status, show, balances) plus those three.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from bcfl_common.errors import SettlementError
from consortium.loopback import free_port
from consortium.settlement import (
    CODE_CONFIG,
    CODE_UNREACHABLE,
    Deployment,
    EthereumSettlement,
    deploy_contracts,
    open_settlement,
    repo_root,
    write_key_file,
)
from consortium.settlement.digest import checked_address
from consortium.settlement_cli import (
    balances_table,
    reconciliation_table,
)
from consortium.settlement_cli import (
    settlement_group as client_settlement_group,
)
from devnet.supervisor import ProcessError, Supervised

ANVIL_PACKAGE = "@foundry-rs/anvil-linux-amd64"


@dataclass(frozen=True)
class Toolchain:
    """The pinned npm packages (solc-js, OpenZeppelin, anvil) installed by deploy/ethereum/install.sh."""

    root: Path

    @property
    def node_modules(self) -> Path:
        return self.root / "node_modules"

    @property
    def anvil(self) -> Path:
        override = os.environ.get("BCFL_ANVIL")
        if override:
            return Path(override)
        return self.node_modules / ANVIL_PACKAGE / "bin" / "anvil"


def eth_toolchain(timeout: float = 600.0) -> Toolchain:
    """Install (once, cached outside the clone) and return the pinned Ethereum toolchain."""
    script = repo_root() / "deploy" / "ethereum" / "install.sh"
    if not script.exists():
        raise SettlementError(f"{script} is missing; expected a bcfl clone", code=CODE_CONFIG)
    try:
        out = subprocess.run(
            ["bash", str(script)], check=True, capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError as exc:
        raise SettlementError(f"cannot run {script}: {exc}", code=CODE_CONFIG) from exc
    except subprocess.CalledProcessError as exc:
        raise SettlementError(
            f"{script} failed (exit {exc.returncode}): {exc.stderr.strip()[-2000:]}",
            code=CODE_CONFIG,
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise SettlementError(
            f"{script} did not finish within {timeout:.0f}s", code=CODE_CONFIG
        ) from exc
    return Toolchain(Path(out.stdout.strip().splitlines()[-1]))


class AnvilNode:
    """An anvil process on loopback, run by the devnet supervisor; ``stop()`` (or the context
    manager) always ends it. Without a fixed ``port`` a free one is picked (and another one tried
    if anvil cannot bind it)."""

    def __init__(
        self,
        anvil: str | os.PathLike[str],
        *,
        port: int | None = None,
        chain_id: int = 31337,
        block_time: float | None = None,
        no_mining: bool = False,
        log_path: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
    ):
        self.anvil = Path(anvil)
        self.host = host
        self.port = port
        self.chain_id = chain_id
        self.block_time = block_time
        self.no_mining = no_mining
        self.log_path = Path(log_path) if log_path else None
        self.process: Supervised | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def argv(self) -> list[str]:
        args = [
            str(self.anvil),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--chain-id",
            str(self.chain_id),
            "--accounts",
            "2",
        ]
        if self.no_mining:
            args.append("--no-mining")
        elif self.block_time:
            args += ["--block-time", str(self.block_time)]
        return args

    def start(self, timeout: float = 30.0) -> AnvilNode:
        if not self.anvil.exists():
            raise SettlementError(
                f"anvil not found at {self.anvil}; run deploy/ethereum/install.sh (or set BCFL_ANVIL)",
                code=CODE_CONFIG,
            )
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="anvil-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        fixed_port = self.port is not None
        problem = ""
        for _attempt in range(1 if fixed_port else 5):
            if not fixed_port:
                self.port = free_port(self.host)
            self.process = Supervised(
                f"anvil on {self.host}:{self.port}", self.argv(), self.log_path
            )
            self.process.start()
            try:
                self.process.wait_ready(
                    self._answers, timeout=timeout, what="answering JSON-RPC", interval=0.05
                )
                return self
            except ProcessError as exc:  # exited (port taken?) or never answered
                problem = exc.message
                self.stop()
        raise SettlementError(
            f"anvil did not start on {self.host}:{self.port}: {problem}", code=CODE_CONFIG
        )

    def _answers(self) -> bool:
        try:
            return self.rpc("eth_chainId") is not None
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        """One raw JSON-RPC call (anvil_*, evm_* controls included)."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
        req = urllib.request.Request(
            self.rpc_url, data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
            answer = json.loads(resp.read())
        if "error" in answer:
            raise SettlementError(f"anvil {method}: {answer['error']}", code=CODE_UNREACHABLE)
        return answer.get("result")

    def fund(self, address: str, wei: int = 10**21) -> None:
        self.rpc("anvil_setBalance", [checked_address(address, "address"), hex(wei)])

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", [hex(blocks)])

    def version(self) -> str:
        out = subprocess.run(
            [str(self.anvil), "--version"], capture_output=True, text=True, check=False
        )
        return out.stdout.strip().splitlines()[0] if out.stdout else "unknown"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.stop(timeout=10)

    def kill(self) -> None:
        """End anvil as a crash would (SIGKILL): the chain is gone, as after a host failure."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()

    def __enter__(self) -> AnvilNode:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LocalSettlement:
    """A running local chain with the contracts deployed: what ``bcfl demo --settlement ethereum`` uses."""

    node: AnvilNode
    deployment: Deployment
    deployment_path: Path
    settler_key_path: Path
    admin_key_path: Path

    @property
    def url(self) -> str:
        return (
            f"eth://{self.node.host}:{self.node.port}?deployment={self.deployment_path}"
            f"&key={self.settler_key_path}"
        )

    def open(self) -> EthereumSettlement:
        client = open_settlement(self.url)
        assert isinstance(client, EthereumSettlement)
        return client

    def stop(self) -> None:
        self.node.stop()


@contextmanager
def local_settlement(
    workdir: str | os.PathLike[str], *, chain_id: int = 31337
) -> Iterator[LocalSettlement]:
    """Start anvil on a free loopback port, create admin and settler keys, deploy; stop on exit."""
    from eth_account import Account

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    node = AnvilNode(eth_toolchain().anvil, chain_id=chain_id, log_path=work / "anvil.log")
    node.start()
    try:
        admin, settler = Account.create(), Account.create()
        admin_key = write_key_file(work / "admin.key", admin)
        settler_key = write_key_file(work / "settler.key", settler)
        node.fund(admin.address)
        node.fund(settler.address)
        deployment = deploy_contracts(
            node.rpc_url, admin, settler.address, work / "deployment.json"
        )
        yield LocalSettlement(node, deployment, work / "deployment.json", settler_key, admin_key)
    finally:
        node.stop()


# ---------------------------------------------------------------------------------------------
# bcfl settlement: the client's commands and those that run a local chain
# ---------------------------------------------------------------------------------------------

settlement_group = click.Group(
    "settlement",
    commands=dict(client_settlement_group.commands),
    help=client_settlement_group.help,
)


@settlement_group.command("install")
def install_cmd() -> None:
    """Install the pinned solc, OpenZeppelin Contracts and anvil (npm, cached outside the clone)."""
    tc = eth_toolchain()
    click.echo(f"toolchain: {tc.root}")
    click.echo(f"anvil:     {tc.anvil} ({AnvilNode(tc.anvil).version()})")


@settlement_group.command("local-chain")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    required=True,
    help="Where to put anvil's log, the keys and the deployment file.",
)
def local_chain_cmd(workdir: str) -> None:
    """Start anvil on loopback with the contracts deployed; print the eth:// URL; stop on Ctrl-C."""
    with local_settlement(workdir) as loc:
        click.echo(f"anvil on {loc.node.rpc_url} (log {loc.node.log_path})")
        click.echo(f"settlement URL: {loc.url}")
        click.echo("Ctrl-C to stop")
        try:
            while loc.node.running:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


@settlement_group.command("demo")
@click.option("--hospitals", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 100))
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep the chain's files here.")
def demo_cmd(hospitals: int, rounds: int, workdir: str | None) -> None:
    """Settle a few rounds of example ledger rewards on a local anvil and show the balances."""
    from eth_account import Account
    from rich.console import Console
    from rich.progress import Progress

    from bcfl_common.canonical import canonical_json, sha256_hex
    from consortium.settlement import PayeeDirectory, RoundRewards, token_units

    console = Console()
    with tempfile.TemporaryDirectory(prefix="bcfl-settlement-") as tmp:
        with local_settlement(workdir or tmp) as loc, loc.open() as st:
            payees = PayeeDirectory(
                {f"Hospital{i + 1}MSP": Account.create().address for i in range(hospitals)}
            )
            trial = f"demo-{secrets.token_hex(4)}"
            audit = []
            with Progress(console=console) as progress:
                task = progress.add_task("settling rounds", total=rounds)
                for r in range(1, rounds + 1):
                    rewards = {
                        msp: token_units(Decimal(10 + (i * 7 + r * 3) % 11) / 2)
                        for i, (msp, _) in enumerate(payees.items())
                    }
                    ledger_digest = sha256_hex(
                        canonical_json(
                            {
                                "trial": trial,
                                "round": r,
                                "rewards": {k: str(v) for k, v in rewards.items()},
                            }
                        )
                    )
                    rr = RoundRewards(trial, r, ledger_digest, rewards)
                    rec = st.settle_rewards(rr, payees)
                    audit.append(st.reconcile(rr, payees))
                    progress.console.print(f"round {r}: tx {rec.tx_hash[:18]}…, gas {rec.gas_used}")
                    progress.advance(task)
            console.print(reconciliation_table(audit))
            console.print(balances_table(st, payees))
