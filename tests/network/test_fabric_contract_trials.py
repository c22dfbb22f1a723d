"""The contract suite's tests/contract/test_trials.py, run unchanged against the real Fabric network."""

import pytest
from test_trials import *  # noqa: F401,F403  (tests/contract is on sys.path via tests/network/conftest.py)

pytestmark = [pytest.mark.fabric, pytest.mark.slow]
