"""Signed HTTP requests between consortium members and the coordinator: one canonical string, signed with the member's key.

Every request carries five headers::

    X-Bcfl-Msp-Id       the member's MSP id
    X-Bcfl-Certificate  base64 of the member's PEM certificate
    X-Bcfl-Timestamp    Unix time in whole seconds
    X-Bcfl-Nonce        at least 16 random bytes, hex
    X-Bcfl-Signature    hex DER low-S ECDSA P-256/SHA-256 (``Identity.sign``) over

    METHOD "\\n" PATH["?" QUERY] "\\n" TIMESTAMP "\\n" NONCE "\\n" sha256hex(BODY)

``PATH?QUERY`` is the request target exactly as sent (percent-encoding untouched; no ``?`` when
there is no query). The server checks that the certificate was issued by that MSP's CA in the
consortium, that the signature verifies, that the timestamp is within ``MAX_SKEW_SECONDS`` of its
clock, and (with its own storage) that the nonce was never seen before. Clients use
:class:`BcflAuth` with httpx; servers call :func:`authenticate`.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass

import httpx

from bcfl_common.canonical import sha256_hex
from bcfl_common.errors import BcflError, IdentityError
from bcfl_common.vocabulary import ROLES, ROLES_BY_KIND
from consortium.identity import (
    Consortium,
    Identity,
    certificate_common_name,
    certificate_ous,
    certificate_role,
    load_certificate,
    verify_signature,
)

HEADER_MSP_ID = "X-Bcfl-Msp-Id"
HEADER_CERTIFICATE = "X-Bcfl-Certificate"
HEADER_TIMESTAMP = "X-Bcfl-Timestamp"
HEADER_NONCE = "X-Bcfl-Nonce"
HEADER_SIGNATURE = "X-Bcfl-Signature"
AUTH_HEADERS = (HEADER_MSP_ID, HEADER_CERTIFICATE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)

MAX_SKEW_SECONDS = 300
NONCE_BYTES = 16
# Bounds on header values, checked before anything is decoded or parsed.
MAX_CERTIFICATE_HEADER = 16384
MAX_SIGNATURE_HEADER = 256
_NONCE = re.compile(r"[0-9a-f]{32,128}")
_MSP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")
# ROLES_BY_KIND (bcfl_common.vocabulary): which bcfl roles an organisation of each kind may hold
# (the contract's rule, enforced here too).


def canonical_request(
    method: str, target: str, timestamp: int | str, nonce: str, body: bytes
) -> bytes:
    """The bytes a request signature covers."""
    return f"{method.upper()}\n{target}\n{timestamp}\n{nonce}\n{sha256_hex(body)}".encode()


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def sign_request(
    identity: Identity,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The authentication headers for one request (``target`` is ``PATH`` or ``PATH?QUERY``)."""
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    nonce = new_nonce() if nonce is None else nonce
    signature = identity.sign(canonical_request(method, target, timestamp, nonce, body))
    return {
        HEADER_MSP_ID: identity.msp_id,
        HEADER_CERTIFICATE: base64.b64encode(identity.cert_pem).decode("ascii"),
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: signature.hex(),
    }


def request_target(url: httpx.URL) -> str:
    """``PATH?QUERY`` of an httpx URL exactly as it goes on the wire."""
    return url.raw_path.decode("ascii")


class BcflAuth(httpx.Auth):
    """httpx authentication that signs every request as ``identity``."""

    requires_request_body = True

    def __init__(self, identity: Identity):
        self.identity = identity

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(
            sign_request(
                self.identity, request.method, request_target(request.url), request.content
            )
        )
        yield request


@dataclass(frozen=True)
class Principal:
    """Who sent an authenticated request."""

    msp_id: str
    name: str
    role: str
    organisation_kind: str
    timestamp: int
    nonce: str

    @property
    def role_honoured(self) -> bool:
        """Whether the organisation's kind may hold this role (a hospital CA cannot mint admins)."""
        return self.role in ROLES_BY_KIND.get(self.organisation_kind, ())

    def to_dict(self) -> dict[str, object]:
        return {
            "msp_id": self.msp_id,
            "name": self.name,
            "role": self.role,
            "organisation_kind": self.organisation_kind,
            "role_honoured": self.role_honoured,
        }


def _fail(code: str, message: str, **detail: object) -> IdentityError:
    return IdentityError(message, code=code, detail=dict(detail))


def bcfl_role(cert_pem: bytes) -> str:
    """The bcfl role of a certificate, read as the contract reads it (``identity.certificate_role``)."""
    role = certificate_role(cert_pem)
    if role is None:
        ous = certificate_ous(load_certificate(cert_pem))
        raise _fail(
            "INVALID_IDENTITY",
            f"certificate OUs {ous} carry no single bcfl role; expected exactly one of {list(ROLES)}",
            ous=ous,
        )
    return role


def authenticate(
    headers: Mapping[str, str],
    method: str,
    target: str,
    body: bytes,
    consortium: Consortium,
    *,
    now: int | None = None,
    max_skew: int = MAX_SKEW_SECONDS,
) -> Principal:
    """Check a request's signature headers; return its principal or raise IdentityError.

    Replays are the caller's business (it must remember ``principal.nonce`` per MSP id for at
    least ``2 * max_skew`` seconds); everything else is checked here, signature first so that a
    forged request is never described as merely stale.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    missing = [h for h in AUTH_HEADERS if not lowered.get(h.lower())]
    if missing:
        raise _fail(
            "UNAUTHENTICATED",
            f"missing authentication headers {missing}; expected a request signed with a consortium "
            f"identity ({', '.join(AUTH_HEADERS)})",
            missing=missing,
        )
    msp_id = lowered[HEADER_MSP_ID.lower()]
    cert_b64 = lowered[HEADER_CERTIFICATE.lower()]
    timestamp_text = lowered[HEADER_TIMESTAMP.lower()]
    nonce = lowered[HEADER_NONCE.lower()]
    signature_hex = lowered[HEADER_SIGNATURE.lower()]
    if not _MSP_ID.fullmatch(msp_id):
        raise _fail(
            "MALFORMED_AUTH",
            f"{HEADER_MSP_ID}: got {msp_id[:80]!r}, expected an MSP id",
            field=HEADER_MSP_ID,
        )
    if not _TIMESTAMP.fullmatch(timestamp_text):
        raise _fail(
            "MALFORMED_AUTH",
            f"{HEADER_TIMESTAMP}: got {timestamp_text[:40]!r}, expected Unix time in whole seconds",
            field=HEADER_TIMESTAMP,
        )
    if not _NONCE.fullmatch(nonce):
        raise _fail(
            "MALFORMED_AUTH",
            f"{HEADER_NONCE}: got {nonce[:40]!r}, expected {NONCE_BYTES} to 64 random bytes as lowercase hex",
            field=HEADER_NONCE,
        )
    if len(signature_hex) > MAX_SIGNATURE_HEADER or not _HEX.fullmatch(signature_hex):
        raise _fail(
            "MALFORMED_AUTH",
            f"{HEADER_SIGNATURE}: expected a hex DER ECDSA signature of at most {MAX_SIGNATURE_HEADER} hex digits",
            field=HEADER_SIGNATURE,
        )
    if len(cert_b64) > MAX_CERTIFICATE_HEADER:
        raise _fail(
            "MALFORMED_AUTH",
            f"{HEADER_CERTIFICATE}: {len(cert_b64)} characters, expected at most {MAX_CERTIFICATE_HEADER}",
            field=HEADER_CERTIFICATE,
        )
    try:
        cert_pem = base64.b64decode(cert_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _fail(
            "MALFORMED_AUTH",
            f"{HEADER_CERTIFICATE}: not base64 ({exc}); expected base64 of a PEM certificate",
            field=HEADER_CERTIFICATE,
        ) from exc
    timestamp = int(timestamp_text)
    now = int(time.time()) if now is None else int(now)
    try:
        consortium.verify_member_certificate(msp_id, cert_pem, at=now)
        verify_signature(
            cert_pem,
            canonical_request(method, target, timestamp, nonce, body),
            bytes.fromhex(signature_hex),
        )
    except IdentityError as exc:
        code = exc.code if exc.code != IdentityError.code else "BAD_SIGNATURE"
        raise _fail(code, exc.message, msp_id=msp_id) from exc
    if abs(now - timestamp) > max_skew:
        raise _fail(
            "STALE_REQUEST",
            f"{HEADER_TIMESTAMP}: {timestamp} is {now - timestamp:+d} s from the server clock ({now}); "
            f"expected within {max_skew} s (check the client's clock)",
            field=HEADER_TIMESTAMP,
            value=timestamp,
            server_time=now,
            max_skew=max_skew,
        )
    try:
        role = bcfl_role(cert_pem)
    except BcflError as exc:
        raise _fail(exc.code, exc.message, msp_id=msp_id) from exc
    kind = consortium.organisations[msp_id].kind
    return Principal(
        msp_id=msp_id,
        name=certificate_common_name(cert_pem),
        role=role,
        organisation_kind=kind,
        timestamp=timestamp,
        nonce=nonce,
    )
