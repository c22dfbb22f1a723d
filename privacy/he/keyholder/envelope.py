"""Key envelopes: a trial's secret context sealed to one hospital's X25519 key with HPKE."""

from __future__ import annotations

import json
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from bcfl_common.canonical import canonical_json
from bcfl_common.errors import IdentityError, PrivacyError

# RFC 9180 HPKE, base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
_SUITE_NAME = "HPKE-X25519-HKDF-SHA256-AES-256-GCM"
_MAGIC = b"BCFK"
_VERSION = 1
_PREFIX = struct.Struct("<4sHI")  # magic, version, header length
MAX_ENVELOPE_BYTES = 16 << 20


def _suite() -> hpke.Suite:
    return hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def _binding(trial_id: str, recipient: str) -> dict[str, str]:
    for field, value in (("trial_id", trial_id), ("recipient", recipient)):
        if not isinstance(value, str) or not value:
            raise PrivacyError(f"key envelope {field}: got {value!r}, expected a non-empty string")
    return {
        "purpose": "bcfl/he-secret-context",
        "recipient": recipient,
        "suite": _SUITE_NAME,
        "trial_id": trial_id,
        "version": str(_VERSION),
    }


def seal_envelope(
    secret: bytes, recipient_key: X25519PublicKey | bytes, *, trial_id: str, recipient: str
) -> bytes:
    """Seal ``secret`` (the trial's secret context) to ``recipient`` (its MSP id).

    The trial id and recipient are HPKE ``info``: an envelope opened under any other trial or
    recipient fails authentication, so envelopes cannot be replayed across trials or hospitals.
    """
    key = load_public_key(recipient_key) if isinstance(recipient_key, bytes) else recipient_key
    if not isinstance(key, X25519PublicKey):
        raise PrivacyError(
            f"recipient_key: got {type(key).__name__}, expected an X25519 public key"
        )
    binding = _binding(trial_id, recipient)
    header = canonical_json(binding)
    sealed = _suite().encrypt(bytes(secret), key, info=header)
    return _PREFIX.pack(_MAGIC, _VERSION, len(header)) + header + sealed


def envelope_header(envelope: bytes) -> dict[str, str]:
    """The envelope's clear-text binding (trial id, recipient, suite); not authenticated alone."""
    if not isinstance(envelope, bytes | bytearray) or len(envelope) > MAX_ENVELOPE_BYTES:
        raise PrivacyError(f"key envelope: expected at most {MAX_ENVELOPE_BYTES} bytes")
    if len(envelope) < _PREFIX.size:
        raise PrivacyError(f"key envelope: got {len(envelope)} bytes, expected a BCFK envelope")
    magic, version, hlen = _PREFIX.unpack_from(envelope)
    if magic != _MAGIC or version != _VERSION:
        raise PrivacyError(
            f"key envelope: got magic {magic!r} version {version}, expected {_MAGIC!r} {_VERSION}"
        )
    if _PREFIX.size + hlen > len(envelope) or hlen > 4096:
        raise PrivacyError(f"key envelope: header length {hlen} does not fit, envelope truncated")
    try:
        header = json.loads(envelope[_PREFIX.size : _PREFIX.size + hlen])
    except ValueError as exc:
        raise PrivacyError(f"key envelope: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise PrivacyError("key envelope: header is not a JSON object")
    return header


def open_envelope(
    envelope: bytes, private_key: X25519PrivateKey | bytes, *, trial_id: str, recipient: str
) -> bytes:
    """Open an envelope with the recipient's private key, for the expected trial and recipient."""
    key = load_private_key(private_key) if isinstance(private_key, bytes) else private_key
    if not isinstance(key, X25519PrivateKey):
        raise PrivacyError(f"private_key: got {type(key).__name__}, expected an X25519 private key")
    header = envelope_header(envelope)
    expected = _binding(trial_id, recipient)
    for field in ("trial_id", "recipient", "suite"):
        if header.get(field) != expected[field]:
            raise PrivacyError(
                f"key envelope {field}: got {header.get(field)!r}, expected {expected[field]!r}",
                detail={"field": field, "value": str(header.get(field))},
            )
    hlen = _PREFIX.unpack_from(envelope)[2]
    try:
        return _suite().decrypt(
            bytes(envelope[_PREFIX.size + hlen :]), key, info=canonical_json(expected)
        )
    except (InvalidTag, ValueError) as exc:
        raise PrivacyError(
            f"key envelope: cannot be opened with this key for trial {trial_id!r} and recipient "
            f"{recipient!r} (wrong key, or the envelope was altered)"
        ) from exc


def load_public_key(pem: bytes) -> X25519PublicKey:
    """An X25519 public key from PEM (SubjectPublicKeyInfo)."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise IdentityError(f"encryption public key: not a PEM public key ({exc})") from exc
    if not isinstance(key, X25519PublicKey):
        raise IdentityError(
            f"encryption public key: got {type(key).__name__}, expected an X25519 key"
        )
    return key


def load_private_key(pem: bytes, password: bytes | None = None) -> X25519PrivateKey:
    """An X25519 private key from PEM (PKCS#8)."""
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"encryption private key: not a PEM private key ({exc})") from exc
    if not isinstance(key, X25519PrivateKey):
        raise IdentityError(
            f"encryption private key: got {type(key).__name__}, expected an X25519 key"
        )
    return key
