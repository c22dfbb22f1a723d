"""Fixtures for tests against a real anvil: the npm toolchain, anvil nodes, deployed contracts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from consortium.settlement import (
    AnvilNode,
    Deployment,
    EthereumSettlement,
    PayeeDirectory,
    Toolchain,
    deploy_contracts,
    eth_toolchain,
    open_settlement,
    write_key_file,
)

__all__ = [
    "EthChain",
    "anvil_factory",
    "eth_chain",
    "eth_chain_factory",
    "eth_tools",
    "new_account",
]


def new_account() -> Any:
    """A fresh random account (anvil's well-known dev keys are not needed)."""
    from eth_account import Account

    return Account.create()


@pytest.fixture(scope="session")
def eth_tools() -> Toolchain:
    """solc-js, OpenZeppelin and anvil from the npm registry, installed once into the bcfl cache."""
    return eth_toolchain()


@pytest.fixture
def anvil_factory(eth_tools: Toolchain, tmp_path: Path) -> Iterator[Callable[..., AnvilNode]]:
    """Start anvil nodes on free loopback ports; every node started is stopped at teardown."""
    nodes: list[AnvilNode] = []

    def start(**kwargs: Any) -> AnvilNode:
        kwargs.setdefault("log_path", tmp_path / f"anvil-{len(nodes)}.log")
        node = AnvilNode(eth_tools.anvil, **kwargs)
        nodes.append(node)
        return node.start()

    yield start
    for node in nodes:
        node.stop()


@dataclass
class EthChain:
    """A running anvil with the contracts deployed, keys on disk and a payee map for 4 hospitals."""

    node: AnvilNode
    workdir: Path
    admin: Any
    settler: Any
    deployment: Deployment
    deployment_path: Path
    settler_key_path: Path
    payees: PayeeDirectory

    def url(self, **query: Any) -> str:
        params = {"deployment": self.deployment_path, "key": self.settler_key_path, **query}
        q = "&".join(f"{k}={v}" for k, v in params.items() if v is not None)
        return f"eth://{self.node.host}:{self.node.port}?{q}"

    def open(self, **query: Any) -> EthereumSettlement:
        client = open_settlement(self.url(**query))
        assert isinstance(client, EthereumSettlement)
        return client

    def redeploy(self) -> Deployment:
        """Deploy again with the same admin (used after a chain reset)."""
        self.node.fund(self.admin.address)
        return deploy_contracts(self.node.rpc_url, self.admin, self.settler.address)


@pytest.fixture
def eth_chain_factory(
    anvil_factory: Callable[..., AnvilNode], tmp_path: Path
) -> Callable[..., EthChain]:
    def make(**anvil_kwargs: Any) -> EthChain:
        if anvil_kwargs.get("no_mining"):
            raise ValueError(
                "deploy on an automining node, then switch mining off (evm_setAutomine)"
            )
        node = anvil_factory(**anvil_kwargs)
        work = tmp_path / f"eth-{node.port}"
        work.mkdir()
        admin, settler = new_account(), new_account()
        node.fund(admin.address)
        node.fund(settler.address)
        deployment_path = work / "deployment.json"
        deployment = deploy_contracts(node.rpc_url, admin, settler.address, deployment_path)
        key_path = write_key_file(work / "settler.key", settler)
        payees = PayeeDirectory(
            {f"Hospital{i}MSP": new_account().address for i in range(1, 5)}, source="test payees"
        )
        return EthChain(node, work, admin, settler, deployment, deployment_path, key_path, payees)

    return make


@pytest.fixture
def eth_chain(eth_chain_factory: Callable[..., EthChain]) -> EthChain:
    return eth_chain_factory()
