"""Fixtures of the silo agent suite: demo data on disk, silo agents, and a coordinator driver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from silo_harness import HOSPITALS, CoordinatorDriver, silo_config

from consortium.storage import open_store
from silo_agent.agent import SiloAgent
from silo_agent.config import SiloConfig
from silo_agent.datasets import load_demo_dataset, write_demo_dataset


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    dataset = load_demo_dataset("breast-cancer", hospitals=4)
    folder = tmp_path_factory.mktemp("demo-data")
    return {"dataset": dataset, "paths": write_demo_dataset(dataset, folder)}


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return (tmp_path / "store").as_uri()


@pytest.fixture
def config_for(
    tmp_path: Path, consortium: Any, ledger_url: str, store_url: str, demo_files: dict[str, Any]
) -> Callable[..., SiloConfig]:
    """The silo config of a demo hospital (the same state directory every time)."""

    def make(name: str, **extra: Any) -> SiloConfig:
        data = demo_files["paths"][HOSPITALS.index(name)]
        return silo_config(tmp_path, consortium, ledger_url, store_url, name, data, **extra)

    return make


@pytest.fixture
def driver(
    contract_net: Any, store_url: str, config_for: Callable[..., SiloConfig]
) -> CoordinatorDriver:
    return CoordinatorDriver(contract_net, open_store(store_url), config_for)


@pytest.fixture
def make_agent(
    contract_net: Any, config_for: Callable[..., SiloConfig]
) -> Iterator[Callable[..., SiloAgent]]:
    opened: list[SiloAgent] = []

    def make(
        name: str, *, agent_class: Callable[..., SiloAgent] = SiloAgent, **extra: Any
    ) -> SiloAgent:
        config = config_for(name, **extra)
        agent = agent_class(config, ledger_options={"clock": contract_net.clock})
        opened.append(agent)
        return agent

    yield make
    for agent in opened:
        agent.close()
