"""Fixtures of the contract suite: a Flow driver over the shared ``contract_net`` fixture."""

from __future__ import annotations

from typing import Any

import pytest
from contract_flow import Flow


@pytest.fixture
def make_flow() -> type[Flow]:
    return Flow


@pytest.fixture
def flow(contract_net: Any) -> Flow:
    return Flow(contract_net)
