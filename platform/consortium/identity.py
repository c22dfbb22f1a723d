"""Consortium identities: one CA per organisation, ECDSA P-256 members in Fabric's MSP layout, signing.

A consortium directory looks like this (the same files later serve as Fabric identities)::

    consortium.json                       public description: organisations, CA certificates, members
    organizations/<MSP>/ca/ca.pem         the organisation's signing CA (ca-key.pem beside it, 0600)
    organizations/<MSP>/tlsca/tlsca.pem   the organisation's TLS CA (tlsca-key.pem beside it, 0600)
    organizations/<MSP>/msp/              the organisation MSP for channel configuration
    members/<name>/msp/signcerts/cert.pem
    members/<name>/msp/keystore/key.pem   0600, never printed
    members/<name>/msp/cacerts/ca.pem
    members/<name>/msp/config.yaml        Fabric NodeOUs
    members/<name>/encryption/            hospitals only: X25519 key pair for trial key envelopes
    members/<name>/member.json

Roles travel in the certificate subject as organisational units: one OU is the Fabric node role
(``client``, ``admin``, ``peer``, ``orderer``), one is the bcfl role (``admin``, ``coordinator``,
``silo``, ``auditor``). Which organisation may hold which bcfl role is the contract's business.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bcfl_common.certificates import certificate_common_name as common_name_of
from bcfl_common.certificates import certificate_ous, role_from_ous
from bcfl_common.errors import ConfigError, IdentityError
from bcfl_common.files import write_private

CONSORTIUM_FILE = "consortium.json"
# Order of the P-256 group: signatures are normalised to s <= n/2 (Fabric refuses high-S).
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
CERT_VALIDITY = dt.timedelta(days=3650)
# A fixed "not before" keeps certificates valid for transactions stamped slightly in the past.
_NOT_BEFORE_SLACK = dt.timedelta(days=1)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _pem_private(key: ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def normalise_low_s(der_signature: bytes) -> bytes:
    """Fabric (like Bitcoin) accepts only the low-S form of an ECDSA signature."""
    r, s = decode_dss_signature(der_signature)
    if s > P256_ORDER // 2:
        s = P256_ORDER - s
    return encode_dss_signature(r, s)


def sign_bytes(private_key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return normalise_low_s(private_key.sign(data, ec.ECDSA(hashes.SHA256())))


def verify_signature(cert_pem: bytes, data: bytes, signature: bytes) -> None:
    """Raise IdentityError unless ``signature`` is a low-S ECDSA P-256/SHA-256 signature by the cert's key."""
    cert = load_certificate(cert_pem)
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise IdentityError("certificate key is not an EC key; expected ECDSA P-256")
    try:
        _, s = decode_dss_signature(signature)
    except ValueError as exc:
        raise IdentityError(f"signature is not DER-encoded ECDSA: {exc}") from exc
    if s > P256_ORDER // 2:
        raise IdentityError("signature is not in low-S form (expected s <= n/2)")
    try:
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise IdentityError(
            f"signature does not verify for {certificate_subject(cert)}", code="BAD_SIGNATURE"
        ) from exc


def load_certificate(cert_pem: bytes | str) -> x509.Certificate:
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise IdentityError(f"not a PEM X.509 certificate: {exc}", code="BAD_CERTIFICATE") from exc


def certificate_subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def certificate_role(cert_pem: bytes | str) -> str | None:
    """The bcfl role carried in the certificate's OUs, or None: read exactly as the contract
    reads it (``bcfl_common.certificates.role_from_ous``)."""
    return role_from_ous(certificate_ous(load_certificate(cert_pem)))


def certificate_common_name(cert_pem: bytes | str) -> str:
    return common_name_of(load_certificate(cert_pem))


# ---------------------------------------------------------------------------------------------
# Certificate authority
# ---------------------------------------------------------------------------------------------


@dataclass
class CertificateAuthority:
    """An organisation's CA; its key stays in the consortium directory of whoever runs it."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(
        cls, common_name: str, organisation: str, now: dt.datetime | None = None
    ) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = now or dt.datetime.now(dt.UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _NOT_BEFORE_SLACK)
            .not_valid_after(now + CERT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert=cert, key=key)

    @classmethod
    def load(cls, directory: Path, stem: str = "ca") -> CertificateAuthority:
        cert = load_certificate((directory / f"{stem}.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / f"{stem}-key.pem").read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{directory / (stem + '-key.pem')} is not an EC private key")
        return cls(cert=cert, key=key)

    def save(self, directory: Path, stem: str = "ca") -> None:
        _write_public(directory / f"{stem}.pem", _pem_cert(self.cert))
        write_private(directory / f"{stem}-key.pem", _pem_private(self.key))

    def issue(
        self,
        common_name: str,
        organisational_units: Iterable[str],
        *,
        public_key: ec.EllipticCurvePublicKey | None = None,
        hostnames: Iterable[str] = (),
        ip_addresses: Iterable[str] = (),
        tls: bool = False,
        now: dt.datetime | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey | None]:
        """Issue a leaf certificate; generates the key pair unless ``public_key`` is given.

        ``tls=True`` gives a server+client TLS certificate (with SANs); otherwise a signing
        certificate as Fabric expects for MSP identities.
        """
        import ipaddress

        key = None
        if public_key is None:
            key = ec.generate_private_key(ec.SECP256R1())
            public_key = key.public_key()
        now = now or dt.datetime.now(dt.UTC)
        organisation = self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(organisation))]
        attributes += [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou) for ou in organisational_units
        ]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _NOT_BEFORE_SLACK)
            .not_valid_after(now + CERT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if tls:
            sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
            sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            ).add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            if sans:
                builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        else:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        return builder.sign(self.key, hashes.SHA256()), key


# ---------------------------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------------------------


@dataclass
class Identity:
    """A member acting on the ledger: MSP id, certificate and signing key."""

    name: str
    msp_id: str
    role: str
    cert_pem: bytes
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    directory: Path | None = None

    def sign(self, data: bytes) -> bytes:
        return sign_bytes(self.private_key, data)

    @property
    def encryption_private_key_path(self) -> Path | None:
        if self.directory is None:
            return None
        path = self.directory / "encryption" / "private.pem"
        return path if path.exists() else None

    def encryption_private_key(self) -> x25519.X25519PrivateKey:
        path = self.encryption_private_key_path
        if path is None:
            raise IdentityError(
                f"member {self.name!r} has no encryption key (only hospitals have one)"
            )
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        if not isinstance(key, x25519.X25519PrivateKey):
            raise IdentityError(f"{path} is not an X25519 private key")
        return key

    def encryption_public_key_pem(self) -> bytes:
        if self.directory is None or not (self.directory / "encryption" / "public.pem").exists():
            raise IdentityError(
                f"member {self.name!r} has no encryption key (only hospitals have one)"
            )
        return (self.directory / "encryption" / "public.pem").read_bytes()


def load_identity(member_dir: str | Path) -> Identity:
    """Load a member from its folder (the ``members/<name>`` folder of a consortium)."""
    member_dir = Path(member_dir)
    meta_path = member_dir / "member.json"
    cert_path = member_dir / "msp" / "signcerts" / "cert.pem"
    key_path = member_dir / "msp" / "keystore" / "key.pem"
    for path in (meta_path, cert_path, key_path):
        if not path.is_file():
            raise IdentityError(
                f"identity folder {member_dir} is missing {path.relative_to(member_dir)}; "
                "expected a member folder made by `bcfl consortium init`",
                code="IDENTITY_NOT_FOUND",
            )
    meta = json.loads(meta_path.read_text())
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{key_path} is not an EC private key; expected ECDSA P-256")
    cert_pem = cert_path.read_bytes()
    cert_key = load_certificate(cert_pem).public_key()
    if (
        not isinstance(cert_key, ec.EllipticCurvePublicKey)
        or cert_key.public_numbers() != key.public_key().public_numbers()
    ):
        raise IdentityError(f"{key_path} does not match the certificate {cert_path}")
    return Identity(
        name=meta["name"],
        msp_id=meta["msp_id"],
        role=meta["role"],
        cert_pem=cert_pem,
        private_key=key,
        directory=member_dir,
    )


# ---------------------------------------------------------------------------------------------
# Consortium
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Organisation:
    msp_id: str
    kind: str
    ca_cert_pem: bytes
    tls_ca_cert_pem: bytes


@dataclass(frozen=True)
class MemberInfo:
    name: str
    role: str
    msp_id: str


@dataclass
class Consortium:
    """The public description of a consortium: its organisations' CAs and its members."""

    name: str
    organisations: dict[str, Organisation]
    members: dict[str, MemberInfo]
    directory: Path | None = None

    @classmethod
    def load(cls, directory: str | Path) -> Consortium:
        directory = Path(directory)
        path = directory / CONSORTIUM_FILE
        if not path.is_file():
            raise ConfigError(
                f"{path} not found; expected a consortium directory made by `bcfl consortium init`"
            )
        return cls.from_dict(json.loads(path.read_text()), directory)

    @classmethod
    def from_dict(cls, data: dict, directory: Path | None = None) -> Consortium:
        organisations = {
            o["msp_id"]: Organisation(
                msp_id=o["msp_id"],
                kind=o["kind"],
                ca_cert_pem=o["ca_cert"].encode(),
                tls_ca_cert_pem=o["tls_ca_cert"].encode(),
            )
            for o in data["organisations"]
        }
        members = {
            m["name"]: MemberInfo(m["name"], m["role"], m["msp_id"]) for m in data["members"]
        }
        return cls(
            name=data["name"], organisations=organisations, members=members, directory=directory
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "organisations": [
                {
                    "msp_id": o.msp_id,
                    "kind": o.kind,
                    "ca_cert": o.ca_cert_pem.decode(),
                    "tls_ca_cert": o.tls_ca_cert_pem.decode(),
                }
                for o in self.organisations.values()
            ],
            "members": [
                {"name": m.name, "role": m.role, "msp_id": m.msp_id} for m in self.members.values()
            ],
        }

    def identity(self, name: str) -> Identity:
        if self.directory is None:
            raise ConfigError("this consortium description was not loaded from a directory")
        if name not in self.members:
            raise IdentityError(
                f"member {name!r} is not in consortium {self.name!r}; expected one of {sorted(self.members)}",
                code="IDENTITY_NOT_FOUND",
            )
        return load_identity(self.directory / "members" / name)

    def member_dir(self, name: str) -> Path:
        assert self.directory is not None
        return self.directory / "members" / name

    def organisation_dir(self, msp_id: str) -> Path:
        assert self.directory is not None
        return self.directory / "organizations" / msp_id

    def hospitals(self) -> list[MemberInfo]:
        return [m for m in self.members.values() if m.role == "silo"]

    def certificate_authority(self, msp_id: str, tls: bool = False) -> CertificateAuthority:
        """The organisation's CA with its key, for issuing peer, orderer and TLS certificates."""
        if tls:
            return CertificateAuthority.load(self.organisation_dir(msp_id) / "tlsca", "tlsca")
        return CertificateAuthority.load(self.organisation_dir(msp_id) / "ca", "ca")

    def verify_member_certificate(
        self, msp_id: str, cert_pem: bytes, at: int | None = None
    ) -> x509.Certificate:
        """Check that ``cert_pem`` was issued by ``msp_id``'s CA (and is valid at time ``at``)."""
        org = self.organisations.get(msp_id)
        if org is None:
            raise IdentityError(
                f"MSP id {msp_id!r} is not an organisation of consortium {self.name!r}; "
                f"expected one of {sorted(self.organisations)}",
                code="UNKNOWN_ORGANISATION",
            )
        return verify_issued_by(cert_pem, org.ca_cert_pem, at=at, what=f"certificate for {msp_id}")


def verify_issued_by(
    cert_pem: bytes, ca_cert_pem: bytes, *, at: int | None = None, what: str = "certificate"
) -> x509.Certificate:
    cert = load_certificate(cert_pem)
    ca = load_certificate(ca_cert_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise IdentityError(
            f"{what} ({certificate_subject(cert)}) was not issued by the organisation's CA "
            f"({certificate_subject(ca)})",
            code="CERTIFICATE_NOT_TRUSTED",
        ) from exc
    if at is not None:
        moment = dt.datetime.fromtimestamp(at, dt.UTC)
        if not (cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc):
            raise IdentityError(
                f"{what} is not valid at {moment.isoformat()} (valid {cert.not_valid_before_utc.isoformat()} "
                f"to {cert.not_valid_after_utc.isoformat()})",
                code="CERTIFICATE_EXPIRED",
            )
    return cert


# ---------------------------------------------------------------------------------------------
# Creating a consortium
# ---------------------------------------------------------------------------------------------

_NODE_OU_CONFIG = """NodeOUs:
  Enable: true
  ClientOUIdentifier:
    Certificate: cacerts/ca.pem
    OrganizationalUnitIdentifier: client
  PeerOUIdentifier:
    Certificate: cacerts/ca.pem
    OrganizationalUnitIdentifier: peer
  AdminOUIdentifier:
    Certificate: cacerts/ca.pem
    OrganizationalUnitIdentifier: admin
  OrdererOUIdentifier:
    Certificate: cacerts/ca.pem
    OrganizationalUnitIdentifier: orderer
"""


def fabric_node_ou(role: str) -> str:
    """The Fabric NodeOU a member with this bcfl role carries (admins administer their org)."""
    return "admin" if role == "admin" else "client"


def write_msp_folder(
    directory: Path,
    ca: CertificateAuthority,
    tls_ca: CertificateAuthority,
    cert: x509.Certificate | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> None:
    """Write a Fabric MSP folder (cacerts, tlscacerts, config.yaml, and signcerts/keystore if given)."""
    _write_public(directory / "cacerts" / "ca.pem", _pem_cert(ca.cert))
    _write_public(directory / "tlscacerts" / "tlsca.pem", _pem_cert(tls_ca.cert))
    _write_public(directory / "config.yaml", _NODE_OU_CONFIG.encode())
    if cert is not None:
        _write_public(directory / "signcerts" / "cert.pem", _pem_cert(cert))
    if key is not None:
        write_private(directory / "keystore" / "key.pem", _pem_private(key))


def _plan(hospitals: int) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(msp_id, kind, [(member name, role)]) for every organisation of a new consortium."""
    plan: list[tuple[str, str, list[tuple[str, str]]]] = [
        ("CoordinatorMSP", "operator", [("admin", "admin"), ("coordinator", "coordinator")]),
        ("AuditorMSP", "auditor", [("auditor", "auditor")]),
    ]
    for i in range(1, hospitals + 1):
        plan.append((f"Hospital{i}MSP", "hospital", [(f"hospital{i}", "silo")]))
    return plan


def init_consortium(
    directory: str | Path, hospitals: int, name: str = "bcfl-consortium"
) -> Consortium:
    """Create a consortium in an empty (or absent) directory and return its description."""
    directory = Path(directory)
    if hospitals < 1 or hospitals > 64:
        raise ConfigError(f"--hospitals={hospitals}: expected between 1 and 64 hospitals")
    if (directory / CONSORTIUM_FILE).exists():
        raise ConfigError(
            f"{directory} already holds a consortium ({CONSORTIUM_FILE}); refusing to overwrite its keys"
        )
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty; expected a new or empty directory")
    directory.mkdir(parents=True, exist_ok=True)
    organisations: dict[str, Organisation] = {}
    members: dict[str, MemberInfo] = {}
    for msp_id, kind, people in _plan(hospitals):
        org_dir = directory / "organizations" / msp_id
        ca = CertificateAuthority.create(f"ca.{msp_id.lower()}", msp_id)
        tls_ca = CertificateAuthority.create(f"tlsca.{msp_id.lower()}", msp_id)
        ca.save(org_dir / "ca", "ca")
        tls_ca.save(org_dir / "tlsca", "tlsca")
        write_msp_folder(org_dir / "msp", ca, tls_ca)
        organisations[msp_id] = Organisation(
            msp_id, kind, _pem_cert(ca.cert), _pem_cert(tls_ca.cert)
        )
        for member_name, role in people:
            cert, key = ca.issue(
                member_name, [fabric_node_ou(role), role] if role != "admin" else ["admin"]
            )
            member_dir = directory / "members" / member_name
            write_msp_folder(member_dir / "msp", ca, tls_ca, cert, key)
            if role == "silo":
                enc = x25519.X25519PrivateKey.generate()
                write_private(member_dir / "encryption" / "private.pem", _pem_private(enc))
                _write_public(
                    member_dir / "encryption" / "public.pem",
                    enc.public_key().public_bytes(
                        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                    ),
                )
            (member_dir / "member.json").write_text(
                json.dumps({"name": member_name, "role": role, "msp_id": msp_id}, indent=2) + "\n"
            )
            members[member_name] = MemberInfo(member_name, role, msp_id)
    consortium = Consortium(
        name=name, organisations=organisations, members=members, directory=directory
    )
    (directory / CONSORTIUM_FILE).write_text(json.dumps(consortium.to_dict(), indent=2) + "\n")
    return consortium


def organisation_kinds(consortium: Consortium) -> list[dict[str, str]]:
    """The argument of the contract's ``init_consortium``: every organisation with its kind."""
    return [{"msp_id": o.msp_id, "kind": o.kind} for o in consortium.organisations.values()]
