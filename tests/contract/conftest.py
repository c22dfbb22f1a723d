"""Fixtures of the contract suite: every test runs on both chaincode hosts, and a Flow driver.

``contract_net`` is parametrised over the host: ``embedded`` (the suite-wide embedded ledger
of ``tests/conftest.py``) and ``fabric`` (a chaincode of its own on the session's Fabric
network, ``tests/fixtures/fabric.py``; marked ``fabric`` and ``slow``, skipped where Fabric is
not installed). Both hosts must give the same results for the same transactions.
"""

from __future__ import annotations

from typing import Any

import pytest
from contract_flow import Flow

HOSTS = ["embedded", pytest.param("fabric", marks=[pytest.mark.fabric, pytest.mark.slow])]


@pytest.fixture(params=HOSTS)
def contract_net(request: pytest.FixtureRequest) -> Any:
    """The contract behind a real ledger host; ``contract_net.host`` names it."""
    if request.param == "fabric":
        return request.getfixturevalue("fabric_contract_net")
    # the embedded network: the same-named fixture this one overrides (tests/conftest.py)
    return request.getfixturevalue("contract_net")


@pytest.fixture
def make_flow() -> type[Flow]:
    return Flow


@pytest.fixture
def flow(contract_net: Any) -> Flow:
    return Flow(contract_net)
