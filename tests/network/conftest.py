"""Fixtures of the real-network tests: a Hyperledger Fabric network (one per session) and its contract.

The Fabric network is started once per test session from the session's 4-hospital consortium
(``consortium_template``) and stopped at the end whatever happens. Each test that asks for
``contract_net`` gets the contract under a chaincode name of its own (a fresh state namespace on
the same channel, bootstrapped with ``init_consortium`` by the admin), so the contract suite's
tests run unchanged against Fabric (see ``test_fabric_contract_*.py``).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consortium.identity import Consortium, organisation_kinds
from consortium.ledger import open_ledger

# the contract suite's modules and its Flow driver, so test_fabric_contract_*.py can re-run them
CONTRACT_TESTS = Path(__file__).resolve().parents[1] / "contract"
if str(CONTRACT_TESTS) not in sys.path:
    sys.path.insert(0, str(CONTRACT_TESTS))

_names = itertools.count(1)


@pytest.fixture(scope="session")
def fabric_network(
    consortium_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A running Fabric network (1 Raft orderer, a peer per operator and hospital organisation)."""
    from devnet.fabric_material import fabric_unavailable_reason
    from devnet.fabric_network import FabricNetwork

    reason = fabric_unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Fabric tests: {reason}")  # never pass CI by skipping them
        pytest.skip(reason)

    # the contract suite moves the transaction clock hours ahead: widen the peers' time window
    network = FabricNetwork(
        tmp_path_factory.mktemp("fabric") / "network",
        consortium_dir=consortium_template,
        auth_time_window="48h",
    )
    try:
        network.up()
        yield network
    finally:
        network.down(purge=False)  # keep logs in the tmp dir for a failed run


class FabricContractNet:
    """The suite's ``contract_net`` interface (client(name), advance_time) over a Fabric chaincode."""

    host = "fabric"

    def __init__(self, consortium: Consortium, url: str, clock: Any):
        self.consortium = consortium
        self.url = url
        self.clock = clock
        self._clients: dict[str, Any] = {}

    def client(self, name: str) -> Any:
        if name not in self._clients:
            self._clients[name] = _Client(
                open_ledger(self.url, self.consortium.identity(name), clock=self.clock)
            )
        return self._clients[name]

    def advance_time(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def close(self) -> None:
        for client in self._clients.values():
            client.ledger.close()


class _Client:
    def __init__(self, ledger: Any):
        self.ledger = ledger

    def submit(self, function: str, args: dict[str, Any]) -> Any:
        return self.ledger.submit(function, args).result

    def evaluate(self, function: str, args: dict[str, Any]) -> Any:
        return self.ledger.evaluate(function, args)


def fresh_contract(network: Any, consortium: Consortium, clock: Any) -> str:
    """Define a new chaincode name on the channel, bootstrap it, and return its ledger URL."""
    name = f"bcfl-t{next(_names)}"
    network.define_chaincode(name)
    url = f"fabric://{network.info_path}?chaincode={name}"
    admin = open_ledger(url, consortium.identity("admin"), clock=clock)
    try:
        admin.submit("init_consortium", {"organisations": organisation_kinds(consortium)})
    finally:
        admin.close()
    return url


@pytest.fixture
def fabric_contract_factory(fabric_network: Any, consortium_template: Path, clock: Any) -> Any:
    """Call it to get the URL of a freshly defined and bootstrapped contract on the session network."""
    consortium = Consortium.load(consortium_template)
    return lambda: fresh_contract(fabric_network, consortium, clock)


@pytest.fixture
def fabric_contract_net(
    fabric_network: Any, consortium_template: Path, clock: Any
) -> Iterator[FabricContractNet]:
    consortium = Consortium.load(consortium_template)
    net = FabricContractNet(consortium, fresh_contract(fabric_network, consortium, clock), clock)
    yield net
    net.close()


@pytest.fixture
def contract_net(fabric_contract_net: FabricContractNet) -> FabricContractNet:
    """Under tests/network the contract suite's network is the Fabric one."""
    return fabric_contract_net


@pytest.fixture
def make_flow() -> Any:
    from contract_flow import Flow

    return Flow


@pytest.fixture
def flow(contract_net: Any) -> Any:
    from contract_flow import Flow

    return Flow(contract_net)
