"""How a bcfl role and name are read from an X.509 certificate, and how an X25519 key is parsed:
one reading shared by the contract, the ledger hosts and the HTTP API."""

from __future__ import annotations

import base64
import binascii

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.x509.oid import NameOID

from bcfl_common.vocabulary import ROLES


def parse_certificate(cert_pem: bytes | str) -> x509.Certificate:
    """A PEM X.509 certificate; ValueError (naming what was wrong) otherwise."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else bytes(cert_pem)
    try:
        return x509.load_pem_x509_certificate(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM X.509 certificate: {exc}") from exc


def certificate_ous(cert: x509.Certificate) -> list[str]:
    """The subject's organisational units, in order."""
    return [
        str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    ]


def certificate_common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def role_from_ous(ous: list[str]) -> str | None:
    """The bcfl role carried in a certificate's OUs, or None when there is not exactly one.

    ``admin`` is also Fabric's admin NodeOU: next to another role OU it is read as the NodeOU and
    the other role counts (least privilege). Two roles other than admin are ambiguous: such a
    certificate acts as nobody.
    """
    roles = {ou for ou in ous if ou in ROLES}
    if len(roles) > 1:
        roles.discard("admin")
    return roles.pop() if len(roles) == 1 else None


def x25519_public_key_raw(text: str) -> bytes:
    """The 32 raw bytes of an X25519 public key given as PEM (SubjectPublicKeyInfo) or base64 of
    the raw bytes; ValueError otherwise."""
    try:
        if text.lstrip().startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
            if not isinstance(key, x25519.X25519PublicKey):
                raise ValueError("not an X25519 key")
            return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        raw = base64.b64decode(text, validate=True)
        x25519.X25519PublicKey.from_public_bytes(raw)
        return raw
    except (TypeError, binascii.Error, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        raise ValueError(f"not an X25519 public key: {exc}") from exc
