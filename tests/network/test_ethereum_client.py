"""Settlement client pieces that need no chain: payee map, key file, URL, amounts, deployment file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from eth_account import Account

from bcfl_common.errors import SettlementError
from consortium.settlement import (
    CODE_CONFIG,
    Deployment,
    PayeeDirectory,
    Payout,
    canonical_payouts,
    load_settler_key,
    open_settlement,
    round_digest,
    token_units,
    write_key_file,
)

A = "0x" + "11" * 20
B = "0x" + "22" * 20


def test_payee_map_from_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "payees.toml"
    toml.write_text(f'[payees]\nHospital1MSP = "{A}"\nHospital2MSP = "{B}"\n')
    flat = tmp_path / "payees.json"
    flat.write_text(json.dumps({"Hospital1MSP": A, "Hospital2MSP": B}))
    for path in (toml, flat):
        d = PayeeDirectory.load(path)
        assert d.address_for("Hospital1MSP") == "0x1111111111111111111111111111111111111111"
        assert d.msp_for(B) == "Hospital2MSP"
        payouts = d.payouts({"Hospital2MSP": 5, "Hospital1MSP": 7})
        assert [p.msp_id for p in payouts] == ["Hospital1MSP", "Hospital2MSP"]  # ascending address


def test_payee_map_errors_name_the_problem(tmp_path: Path) -> None:
    d = PayeeDirectory({"Hospital1MSP": A})
    with pytest.raises(SettlementError, match="'Hospital9MSP' has no payee address.*Hospital1MSP"):
        d.address_for("Hospital9MSP")
    with pytest.raises(SettlementError, match="share address"):
        PayeeDirectory({"Hospital1MSP": A, "Hospital2MSP": A.upper().replace("0X", "0x")})
    with pytest.raises(SettlementError, match="not an Ethereum address"):
        PayeeDirectory({"Hospital1MSP": "hospital-1"})
    bad = tmp_path / "p.toml"
    bad.write_text("payees = [")
    with pytest.raises(SettlementError, match="not valid TOML"):
        PayeeDirectory.load(bad)


def test_payouts_are_validated_and_canonical() -> None:
    assert [p.payee for p in canonical_payouts({B: 1, A: 2})] == [
        "0x1111111111111111111111111111111111111111",
        "0x2222222222222222222222222222222222222222",
    ]
    with pytest.raises(SettlementError, match="non-negative integer"):
        canonical_payouts([Payout(A, -1)])
    with pytest.raises(SettlementError, match="non-negative integer"):
        canonical_payouts([Payout(A, 1.5)])  # type: ignore[arg-type]
    with pytest.raises(SettlementError, match="appears twice"):
        canonical_payouts([Payout(A, 1), Payout(A.lower(), 2)])


def test_round_digest_commits_to_every_field() -> None:
    base = round_digest("t", 1, b"\x01" * 32, [A, B], [1, 2])
    assert base != round_digest("u", 1, b"\x01" * 32, [A, B], [1, 2])
    assert base != round_digest("t", 2, b"\x01" * 32, [A, B], [1, 2])
    assert base != round_digest("t", 1, b"\x02" * 32, [A, B], [1, 2])
    assert base != round_digest("t", 1, b"\x01" * 32, [A, B], [1, 3])
    assert base != round_digest("t", 1, b"\x01" * 32, [A], [1])
    with pytest.raises(SettlementError, match="ledger_digest.*32 bytes"):
        round_digest("t", 1, "abcd", [A], [1])
    with pytest.raises(SettlementError, match=r"round -1 .*\[0, 2\^64\)"):
        round_digest("t", -1, b"\x01" * 32, [A], [1])


def test_token_units() -> None:
    assert token_units("1.5") == 15 * 10**17
    assert token_units(3) == 3 * 10**18
    with pytest.raises(SettlementError, match="multiple of 10"):
        token_units("0.0000000000000000001")
    with pytest.raises(SettlementError):
        token_units("-1")


def test_settler_key_file_must_be_private(tmp_path: Path) -> None:
    account = Account.create()
    path = write_key_file(tmp_path / "settler.key", account)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_settler_key(path).address == account.address
    os.chmod(path, 0o644)
    with pytest.raises(SettlementError, match="mode 0644; expected 0600") as err:
        load_settler_key(path)
    assert account.key.hex().removeprefix("0x") not in err.value.message
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    garbage.chmod(0o600)
    with pytest.raises(SettlementError, match="does not hold a private key") as err:
        load_settler_key(garbage)
    assert "not a key" not in err.value.message


def test_urls_and_deployment_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SettlementError, match="scheme 'http'"):
        open_settlement("http://127.0.0.1:8545")
    with pytest.raises(SettlementError, match="names no deployment"):
        open_settlement("eth://127.0.0.1:8545")
    with pytest.raises(SettlementError, match="expected eth://host:port"):
        open_settlement("eth://127.0.0.1?deployment=x")
    wrong = tmp_path / "deployment.json"
    wrong.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(SettlementError, match="format is 'something else'") as err:
        Deployment.load(wrong)
    assert err.value.code == CODE_CONFIG
