"""Shared fixtures for the privacy tests: one trial context per session (key generation is cheap,
but encrypting in several tests under one key mirrors a trial)."""

from __future__ import annotations

import numpy as np
import pytest

from privacy import he
from privacy.he import keyholder


@pytest.fixture(scope="session")
def secret_ctx() -> keyholder.SecretContext:
    return keyholder.generate_context()


@pytest.fixture(scope="session")
def public_ctx(secret_ctx: keyholder.SecretContext) -> he.HEContext:
    return he.load_public_context(secret_ctx.public_bytes(), he.DEFAULT_PRESET)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
