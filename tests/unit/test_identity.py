"""Consortium identities: layout, key protection, signatures, certificate trust."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from bcfl_common.errors import ConfigError, IdentityError
from consortium.identity import (
    P256_ORDER,
    CertificateAuthority,
    Consortium,
    certificate_role,
    init_consortium,
    load_identity,
    verify_signature,
)


def test_layout_roles_and_private_key_modes(consortium: Consortium) -> None:
    assert set(consortium.organisations) == {
        "CoordinatorMSP",
        "AuditorMSP",
        "Hospital1MSP",
        "Hospital2MSP",
        "Hospital3MSP",
        "Hospital4MSP",
    }
    roles = {m.name: m.role for m in consortium.members.values()}
    assert roles["admin"] == "admin" and roles["coordinator"] == "coordinator"
    assert roles["auditor"] == "auditor" and roles["hospital3"] == "silo"
    for name in consortium.members:
        folder = consortium.member_dir(name)
        for sub in (
            "msp/signcerts/cert.pem",
            "msp/keystore/key.pem",
            "msp/cacerts/ca.pem",
            "msp/config.yaml",
        ):
            assert (folder / sub).is_file(), sub
        assert stat.S_IMODE((folder / "msp/keystore/key.pem").stat().st_mode) == 0o600
        identity = consortium.identity(name)
        assert certificate_role(identity.cert_pem) == roles[name]
    assert (
        stat.S_IMODE((consortium.member_dir("hospital1") / "encryption/private.pem").stat().st_mode)
        == 0o600
    )
    assert not (consortium.member_dir("auditor") / "encryption").exists()


def test_signatures_are_low_s_and_verify(consortium: Consortium) -> None:
    hospital = consortium.identity("hospital1")
    for i in range(40):  # ~half of raw ECDSA signatures are high-S; all of ours must be low-S
        data = f"message {i}".encode()
        signature = hospital.sign(data)
        _, s = decode_dss_signature(signature)
        assert s <= P256_ORDER // 2
        verify_signature(hospital.cert_pem, data, signature)
    with pytest.raises(IdentityError, match="does not verify"):
        verify_signature(hospital.cert_pem, b"other message", hospital.sign(b"message"))
    other = consortium.identity("hospital2")
    with pytest.raises(IdentityError):
        verify_signature(other.cert_pem, b"message", hospital.sign(b"message"))


def test_certificate_trust(consortium: Consortium) -> None:
    hospital1 = consortium.identity("hospital1")
    consortium.verify_member_certificate("Hospital1MSP", hospital1.cert_pem)
    with pytest.raises(IdentityError, match="not issued by"):
        consortium.verify_member_certificate("Hospital2MSP", hospital1.cert_pem)
    with pytest.raises(IdentityError, match="not an organisation"):
        consortium.verify_member_certificate("EvilMSP", hospital1.cert_pem)
    outsider_ca = CertificateAuthority.create("ca.evil", "Hospital1MSP")
    cert, _ = outsider_ca.issue("mallory", ["client", "silo"])
    from cryptography.hazmat.primitives import serialization

    with pytest.raises(IdentityError, match="not issued by"):
        consortium.verify_member_certificate(
            "Hospital1MSP", cert.public_bytes(serialization.Encoding.PEM)
        )


def test_init_refuses_to_overwrite(consortium: Consortium, tmp_path) -> None:
    assert consortium.directory is not None
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        init_consortium(consortium.directory, hospitals=2)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        init_consortium(tmp_path / "busy", hospitals=2)
    with pytest.raises(ConfigError, match="between 1 and 64"):
        init_consortium(tmp_path / "zero", hospitals=0)


def test_load_identity_errors(consortium: Consortium, tmp_path) -> None:
    with pytest.raises(IdentityError, match="missing"):
        load_identity(tmp_path)
    folder = consortium.member_dir("hospital2")
    # a key that belongs to another member's certificate is refused
    (folder / "msp/keystore/key.pem").write_bytes(
        (consortium.member_dir("hospital3") / "msp/keystore/key.pem").read_bytes()
    )
    with pytest.raises(IdentityError, match="does not match"):
        load_identity(folder)


def test_cli_init_never_prints_private_keys(tmp_path) -> None:
    target = tmp_path / "c"
    proc = subprocess.run(
        [sys.executable, "-m", "bcfl_cli", "consortium", "init", str(target), "--hospitals", "2"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr
    assert "hospital2" in proc.stdout
    assert json.loads((target / "consortium.json").read_text())["members"][0]["name"] == "admin"
    again = subprocess.run(
        [sys.executable, "-m", "bcfl_cli", "consortium", "init", str(target)],
        capture_output=True,
        text=True,
    )
    assert again.returncode != 0
    assert "refusing to overwrite" in again.stderr
