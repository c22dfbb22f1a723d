"""Homomorphic encryption of model updates, public surface: CKKS presets, the update container,
the public context and aggregation.

Everything here works without the trial's secret key and imports nothing that holds one: this is
what the coordinator and auditors use. Generating or opening the secret context, encrypting,
decrypting, releasing and key envelopes live in :mod:`privacy.he.keyholder` (hospitals only).
"""

from __future__ import annotations

from privacy.he.aggregation import aggregate
from privacy.he.context import MAX_CONTEXT_BYTES, HEContext, load_public_context
from privacy.he.format import (
    FORMAT_VERSION,
    MAX_CONTAINER_BYTES,
    MAX_PARAMETERS,
    Container,
    Kind,
    decode_container,
    peek_header,
)
from privacy.he.presets import (
    DEFAULT_PRESET,
    PRESETS,
    HEPreset,
    check_parameters,
    get_preset,
)

__all__ = [
    "DEFAULT_PRESET",
    "FORMAT_VERSION",
    "MAX_CONTAINER_BYTES",
    "MAX_CONTEXT_BYTES",
    "MAX_PARAMETERS",
    "PRESETS",
    "Container",
    "HEContext",
    "HEPreset",
    "Kind",
    "aggregate",
    "check_parameters",
    "decode_container",
    "get_preset",
    "load_public_context",
    "peek_header",
]

# Names that moved to the key-holder surface (issue 9): a clear error instead of a bare one. The
# public surface does not import them, not even lazily.
_KEYHOLDER_NAMES = frozenset(
    {
        "decrypt",
        "encrypt_update",
        "envelope_header",
        "generate_context",
        "load_private_key",
        "load_public_key",
        "load_secret_context",
        "open_envelope",
        "release",
        "seal_envelope",
    }
)


def __getattr__(name: str) -> object:
    if name in _KEYHOLDER_NAMES:
        raise AttributeError(
            f"privacy.he.{name} is on the key holders' surface: import it from "
            f"privacy.he.keyholder (privacy.he is the public surface, usable without the secret key)",
            name=name,
            obj=None,
        )
    raise AttributeError(f"module 'privacy.he' has no attribute {name!r}")
