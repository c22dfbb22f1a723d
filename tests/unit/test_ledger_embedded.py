"""The embedded ledger: signed transactions, hash-chained signed blocks, tamper detection, concurrency."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from bcfl_common.errors import ConfigError, ContractError, IdentityError, LedgerError
from consortium.identity import CertificateAuthority, Consortium, Identity
from consortium.ledger import open_ledger
from consortium.ledger.embedded import MAX_CLOCK_SKEW_SECONDS, EmbeddedLedger

MODEL_REF = {
    "content_id": "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq",
    "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
}


def trial_args(trial_id: str) -> dict:
    return {
        "trial_id": trial_id,
        "task": "binary_classification",
        "data_schema": {"columns": [{"name": "age", "type": "float"}], "label": "target"},
        "model": {"name": "logistic_regression", "hyperparameters": {"lr": "0.1"}},
        "initial_model": MODEL_REF,
        "rounds": 3,
        "min_silos": 2,
    }


def _db(ledger: EmbeddedLedger) -> sqlite3.Connection:
    return sqlite3.connect(ledger.path, isolation_level=None)


def test_create_submit_evaluate_events(embedded_ledger: EmbeddedLedger) -> None:
    assert embedded_ledger.height() == 2  # configuration block + init_consortium
    result = embedded_ledger.submit("create_trial", trial_args("t1"))
    assert result.block_number == 2 and result.event_name == "TrialCreated"
    assert result.result["state"] == "DRAFT"
    assert embedded_ledger.evaluate("get_trial", {"trial_id": "t1"})["trial_id"] == "t1"
    assert embedded_ledger.height() == 3  # evaluate records nothing
    names = [e.name for e in embedded_ledger.events()]
    assert names == ["ConsortiumInitialised", "TrialCreated"]
    assert [e.name for e in embedded_ledger.events(start_block=2)] == ["TrialCreated"]
    blocks = list(embedded_ledger.blocks())
    assert [b.number for b in blocks] == [0, 1, 2]
    assert blocks[2].previous_hash == blocks[1].hash
    report = embedded_ledger.verify(replay=True)
    assert report.ok, report.problems
    assert report.transactions == 2


def test_refused_transaction_records_nothing(
    embedded_ledger: EmbeddedLedger, consortium: Consortium, ledger_url: str
) -> None:
    embedded_ledger.submit("create_trial", trial_args("t1"))
    height = embedded_ledger.height()
    with pytest.raises(ContractError) as err:
        embedded_ledger.submit("create_trial", trial_args("t1"))
    assert err.value.code == "ALREADY_EXISTS"
    hospital = open_ledger(ledger_url, consortium.identity("hospital1"))
    with pytest.raises(ContractError) as err:
        hospital.submit("create_trial", trial_args("t2"))
    assert err.value.code == "FORBIDDEN_ROLE"
    with pytest.raises(ContractError) as err:
        hospital.submit("no_such_function", {})
    assert err.value.code == "UNKNOWN_FUNCTION"
    with pytest.raises(ContractError) as err:
        hospital.submit("create_trial", {"trial_id": "x" * 70_000})
    assert err.value.code == "ARGS_TOO_LARGE"
    with pytest.raises(LedgerError) as err:
        hospital.submit("create_trial", {"blob": "x" * (1 << 20)})
    assert err.value.code == "PROPOSAL_TOO_LARGE"
    assert embedded_ledger.height() == height
    assert embedded_ledger.verify().ok
    hospital.close()


def test_replayed_transaction_is_refused(embedded_ledger: EmbeddedLedger) -> None:
    envelope = embedded_ledger.sign_proposal("create_trial", trial_args("t1"))
    embedded_ledger.submit_envelope(envelope)
    with pytest.raises(LedgerError) as err:
        embedded_ledger.submit_envelope(json.loads(json.dumps(envelope)))
    assert err.value.code == "DUPLICATE_TXID"
    # changing the signed proposal breaks the creator's signature
    forged = json.loads(json.dumps(envelope))
    forged["proposal"]["args"] = forged["proposal"]["args"].replace("t1", "t9")
    with pytest.raises(IdentityError, match="does not verify"):
        embedded_ledger.submit_envelope(forged)
    assert embedded_ledger.verify().ok


def test_stale_and_future_timestamps_refused(embedded_ledger: EmbeddedLedger, clock) -> None:
    envelope = embedded_ledger.sign_proposal("create_trial", trial_args("t1"))
    clock.advance(MAX_CLOCK_SKEW_SECONDS + 60)
    with pytest.raises(LedgerError) as err:
        embedded_ledger.submit_envelope(envelope)
    assert err.value.code == "STALE_TIMESTAMP"


def _outsider(consortium: Consortium, msp_id: str = "Hospital1MSP") -> Identity:
    ca = CertificateAuthority.create("ca.evil", msp_id)
    cert, key = ca.issue("mallory", ["client", "silo"])
    assert key is not None
    return Identity("mallory", msp_id, "silo", cert.public_bytes(serialization.Encoding.PEM), key)


def test_certificates_from_outside_the_consortium(
    embedded_ledger: EmbeddedLedger, consortium: Consortium, ledger_url: str
) -> None:
    outsider = _outsider(consortium)
    with pytest.raises(IdentityError, match="not issued by"):
        open_ledger(ledger_url, outsider)
    # an envelope signed by the outsider but submitted through a member's connection
    impostor = EmbeddedLedger.__new__(EmbeddedLedger)
    impostor.__dict__.update(embedded_ledger.__dict__)
    impostor.identity = outsider
    envelope = impostor.sign_proposal("commit_update", {"trial_id": "t1"})
    with pytest.raises(IdentityError, match="not issued by"):
        embedded_ledger.submit_envelope(envelope)
    unknown_org = _outsider(consortium, "EvilMSP")
    impostor.identity = unknown_org
    with pytest.raises(IdentityError, match="not an organisation"):
        embedded_ledger.submit_envelope(impostor.sign_proposal("whoami", {}))
    assert embedded_ledger.height() == 2


@pytest.mark.parametrize(
    "target", ["block_body", "tx_signature", "stored_hash", "world_state", "event", "genesis"]
)
def test_tampering_is_detected(embedded_ledger: EmbeddedLedger, target: str) -> None:
    embedded_ledger.submit("create_trial", trial_args("t1"))
    embedded_ledger.submit("open_enrolment", {"trial_id": "t1"})
    assert embedded_ledger.verify().ok
    db = _db(embedded_ledger)
    if target in ("block_body", "tx_signature", "genesis"):
        number = 0 if target == "genesis" else 2
        body = bytearray(
            db.execute("SELECT body FROM blocks WHERE number = ?", (number,)).fetchone()[0]
        )
        if target == "tx_signature":
            data = json.loads(body)
            sig = data["transactions"][0]["signature"]
            data["transactions"][0]["signature"] = sig[:-2] + ("00" if sig[-2:] != "00" else "01")
            body = bytearray(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())
        else:
            # flip one byte inside a string value so that the JSON stays valid
            position = body.index(b"binary_classification" if number == 2 else b"test-consortium")
            body[position] ^= 0x01
        db.execute("UPDATE blocks SET body = ? WHERE number = ?", (bytes(body), number))
        expected = f"block {number}"
    elif target == "stored_hash":
        digest = db.execute("SELECT hash FROM blocks WHERE number = 3").fetchone()[0]
        db.execute(
            "UPDATE blocks SET hash = ? WHERE number = 3",
            (("f" if digest[0] != "f" else "e") + digest[1:],),
        )
        expected = "block 3"
    elif target == "world_state":
        key, value = db.execute("SELECT key, value FROM world_state LIMIT 1").fetchone()
        flipped = bytearray(value)
        flipped[-2] ^= 0x01
        db.execute("UPDATE world_state SET value = ? WHERE key = ?", (bytes(flipped), key))
        expected = "world state key"
    else:
        db.execute("UPDATE events SET name = 'TrialHalted' WHERE block_number = 3")
        expected = "events index"
    db.close()
    report = embedded_ledger.verify()
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems


def test_two_processes_submit_at_once(
    embedded_ledger: EmbeddedLedger, consortium: Consortium, ledger_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "submitter.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from consortium.identity import Consortium
        from consortium.ledger import open_ledger
        from test_ledger_embedded import trial_args
        consortium = Consortium.load({str(consortium.directory)!r})
        ledger = open_ledger({ledger_url!r}, consortium.identity("admin"))
        for i in range(15):
            ledger.submit("create_trial", trial_args(f"{{sys.argv[1]}}-{{i}}"))
        print("done")
    """)
    )
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), name], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for name in ("a", "b")
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err.decode()
        assert out.strip() == b"done"
    assert embedded_ledger.height() == 2 + 30
    trials = embedded_ledger.evaluate("list_trials", {})
    ids = {t["trial_id"] for t in (trials["trials"] if isinstance(trials, dict) else trials)}
    assert {f"a-{i}" for i in range(15)} | {f"b-{i}" for i in range(15)} <= ids
    assert embedded_ledger.verify().ok


def test_bad_urls(consortium: Consortium, tmp_path: Path) -> None:
    admin = consortium.identity("admin")
    with pytest.raises(ConfigError, match="scheme 'postgres'"):
        open_ledger("postgres://x/y", admin)
    with pytest.raises(ConfigError, match="empty host"):
        open_ledger("embedded://host/ledger.db", admin)
    with pytest.raises(LedgerError, match="no ledger at"):
        open_ledger(f"embedded://{tmp_path}/missing.db", admin)


def test_cli_init_show_verify(consortium: Consortium, tmp_path: Path) -> None:
    url = f"embedded://{tmp_path / 'cli' / 'ledger.db'}"
    bcfl = [sys.executable, "-m", "bcfl_cli"]
    env = {**os.environ, "COLUMNS": "200"}
    run = lambda *args: subprocess.run([*bcfl, *args], capture_output=True, text=True, env=env)  # noqa: E731
    created = run("ledger", "init", url, "--consortium", str(consortium.directory))
    assert created.returncode == 0, created.stderr
    ok = run(
        "ledger",
        "verify",
        url,
        "--consortium",
        str(consortium.directory),
        "--as",
        "auditor",
        "--replay",
    )
    assert ok.returncode == 0, ok.stderr
    assert "ledger verifies" in ok.stdout
    shown = run("ledger", "show", url, "--consortium", str(consortium.directory))
    assert "init_consortium" in shown.stdout and "(configuration)" in shown.stdout
    db = sqlite3.connect(tmp_path / "cli" / "ledger.db", isolation_level=None)
    body = bytearray(db.execute("SELECT body FROM blocks WHERE number = 1").fetchone()[0])
    body[body.index(b"init_consortium")] ^= 0x02
    db.execute("UPDATE blocks SET body = ? WHERE number = 1", (bytes(body),))
    db.close()
    bad = run("ledger", "verify", url, "--consortium", str(consortium.directory), "--json")
    assert bad.returncode == 6
    assert json.loads(bad.stdout)["ok"] is False
    assert "block 1" in bad.stderr
    missing = run("ledger", "verify", url)
    assert missing.returncode != 0 and "no identity given" in missing.stderr
