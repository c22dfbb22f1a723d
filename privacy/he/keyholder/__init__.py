"""The key holders' HE surface: the trial's secret context, encryption, decryption, release and
key envelopes.

Only hospitals import this package. The public surface, :mod:`privacy.he` (presets, the container
format, the public context and :func:`~privacy.he.aggregate`), never imports it, so a party that
only sums ciphertexts (the coordinator, an auditor) has no decrypt path at all; import-linter keeps
it so.
"""

from __future__ import annotations

from privacy.he.keyholder.envelope import (
    MAX_ENVELOPE_BYTES,
    envelope_header,
    load_private_key,
    load_public_key,
    open_envelope,
    seal_envelope,
)
from privacy.he.keyholder.keys import SecretContext, generate_context, load_secret_context
from privacy.he.keyholder.release import release
from privacy.he.keyholder.updates import decrypt, encrypt_update

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "SecretContext",
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
]
