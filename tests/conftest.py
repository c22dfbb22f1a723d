"""Shared fixtures: a consortium (built once per session), ledgers, stores and a contract network."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from consortium.identity import Consortium, init_consortium
from consortium.ledger import open_ledger
from consortium.ledger.embedded import EmbeddedLedger, create_embedded_ledger

# Shared fixture modules: the Fabric network and contract fixtures (tests/network and the contract
# suite's Fabric runs) and the Ethereum (anvil) fixtures.
pytest_plugins = ["fixtures.fabric", "fixtures.ethereum"]


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """A terminated run (a CI timeout, `kill`) ends as Ctrl-C does: the session fixtures' teardown
    stops the Fabric network, anvil and the other servers they started instead of leaving them
    running (SIGTERM's default would kill pytest at once)."""
    signal.signal(signal.SIGTERM, _interrupt)


MEMBER_NAMES = (
    "admin",
    "coordinator",
    "auditor",
    "hospital1",
    "hospital2",
    "hospital3",
    "hospital4",
)


class SettableClock:
    """The ledger's transaction clock, which tests move forward to pass deadlines."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture(scope="session")
def consortium_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-hospital consortium generated once; tests get a copy so they may change it."""
    directory = tmp_path_factory.mktemp("consortium-template") / "consortium"
    init_consortium(directory, hospitals=4, name="test-consortium")
    return directory


@pytest.fixture
def consortium(consortium_template: Path, tmp_path: Path) -> Consortium:
    directory = tmp_path / "consortium"
    shutil.copytree(consortium_template, directory)
    return Consortium.load(directory)


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    return f"embedded://{tmp_path / 'ledger' / 'ledger.db'}"


@pytest.fixture
def embedded_ledger(
    consortium: Consortium, ledger_url: str, clock: SettableClock
) -> Iterator[EmbeddedLedger]:
    """A fresh embedded ledger, created and bootstrapped by the consortium admin."""
    ledger = create_embedded_ledger(
        ledger_url, consortium, consortium.identity("admin"), clock=clock
    )
    yield ledger
    ledger.close()


@dataclass
class ContractClient:
    """One member's view of the contract: submit and evaluate with plain dicts."""

    ledger: Any

    def submit(self, function: str, args: dict[str, Any]) -> Any:
        return self.ledger.submit(function, args).result

    def evaluate(self, function: str, args: dict[str, Any]) -> Any:
        return self.ledger.evaluate(function, args)


@dataclass
class ContractNet:
    """The contract reached through a real ledger host, one client per consortium member."""

    consortium: Consortium
    url: str
    clock: SettableClock
    host: str = "embedded"
    _clients: dict[str, ContractClient] = field(default_factory=dict)

    def client(self, name: str) -> ContractClient:
        if name not in self._clients:
            ledger = open_ledger(self.url, self.consortium.identity(name), clock=self.clock)
            self._clients[name] = ContractClient(ledger)
        return self._clients[name]

    def advance_time(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def close(self) -> None:
        for client in self._clients.values():
            client.ledger.close()


@pytest.fixture
def contract_net(
    embedded_ledger: EmbeddedLedger, consortium: Consortium, ledger_url: str, clock: SettableClock
) -> Iterator[ContractNet]:
    net = ContractNet(consortium=consortium, url=ledger_url, clock=clock)
    yield net
    net.close()
