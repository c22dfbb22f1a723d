"""Homomorphic encryption of model updates: CKKS presets, trial keys, container, envelopes."""

from __future__ import annotations

from privacy.he.envelope import (
    envelope_header,
    load_private_key,
    load_public_key,
    open_envelope,
    seal_envelope,
)
from privacy.he.format import (
    FORMAT_VERSION,
    MAX_CONTAINER_BYTES,
    MAX_PARAMETERS,
    Container,
    Kind,
    decode_container,
    peek_header,
)
from privacy.he.keys import HEContext, generate_context, load_public_context, load_secret_context
from privacy.he.ops import aggregate, decrypt, encrypt_update, release
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
    "MAX_PARAMETERS",
    "PRESETS",
    "Container",
    "HEContext",
    "HEPreset",
    "Kind",
    "aggregate",
    "check_parameters",
    "decode_container",
    "decrypt",
    "encrypt_update",
    "envelope_header",
    "generate_context",
    "get_preset",
    "load_private_key",
    "load_public_context",
    "load_public_key",
    "load_secret_context",
    "open_envelope",
    "peek_header",
    "release",
    "seal_envelope",
]
