"""`bcfl audit` against a real embedded ledger and file store with finalized rounds: an honest trial passes, tampering is detected."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_audit_support import create_running_trial, finalize_round

from bcfl_common.errors import BcflError
from chaincode.state import create_composite_key
from consortium.storage import open_store
from coordinator.audit import AuditFailed
from coordinator.audit_cli import audit_group
from coordinator.audit_verify import TRIAL_CHECKS
from coordinator.service import CoordinatorService
from privacy import he
from privacy.he import keyholder

TRIAL = "trial-audit"


@pytest.fixture(scope="module")
def secret_context() -> he.HEContext:
    return keyholder.generate_context()


def audit_cli(consortium: Any, ledger_url: str, *args: str) -> tuple[int, str]:
    """Run `bcfl audit ARGS` as the auditor; (exit code as `bcfl` would give it, stdout)."""
    runner = CliRunner()
    command, rest = args[0], list(args[1:])
    result = runner.invoke(
        audit_group,
        [
            command,
            "--ledger",
            ledger_url,
            "--consortium",
            str(consortium.directory),
            "--as",
            "auditor",
            *rest,
        ],
        catch_exceptions=True,
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        if not isinstance(result.exception, BcflError):
            raise result.exception
        return result.exception.exit_code, result.stdout
    return result.exit_code, result.stdout


def audit_json(consortium: Any, ledger_url: str, *args: str) -> tuple[int, dict[str, Any]]:
    code, out = audit_cli(consortium, ledger_url, *args, "--json")
    return code, json.loads(out)


@pytest.fixture
def finished_trial(
    make_service: Callable[..., CoordinatorService],
    contract_net: Any,
    store_url: str,
    secret_context: he.HEContext,
) -> dict[str, Any]:
    """Two finalized rounds (hospital3's round-1 update found harmful by its peers), started
    (with its DP schedule) and run by the coordinator."""
    service = make_service()
    hospitals = create_running_trial(
        contract_net, open_store(store_url), secret_context, TRIAL, service=service
    )
    first = finalize_round(hospitals, service.scheduler.tick)
    second = finalize_round(hospitals, service.scheduler.tick, low_scored=())
    service.scheduler.tick()  # completes the trial
    return {"service": service, "hospitals": hospitals, "rounds": [first, second]}


def test_an_honest_trial_passes_every_audit(
    finished_trial: dict[str, Any], consortium: Any, ledger_url: str, store_url: str
) -> None:
    code, report = audit_json(consortium, ledger_url, "trials")
    assert code == 0 and [
        (t["trial_id"], t["state"], t["finalized"]) for t in report["trials"]
    ] == [(TRIAL, "COMPLETED", 2)]

    code, report = audit_json(consortium, ledger_url, "trial", TRIAL)
    assert code == 0
    assert report["dp"]["enabled"] and report["he"]["enabled"] and report["warnings"] == []
    first = report["rounds"][0]
    verdicts = {c["msp_id"]: (c["accepted"], c["reason"]) for c in first["candidates"]}
    assert verdicts == {
        "Hospital1MSP": (True, "accepted"),
        "Hospital2MSP": (True, "accepted"),
        "Hospital3MSP": (False, "harmful"),
    }
    assert [c["weight"] for c in first["candidates"]] == [10, 10, 0]
    assert all(c["improvement_micro"] > 0 for c in first["candidates"][:2])
    update_rewards = sum(c["reward"] for c in first["candidates"])
    voter_rewards = sum(v["reward"] for v in first["voters"])
    assert update_rewards + voter_rewards == 1000 and voter_rewards == 200
    assert {v["msp_id"]: (v["agreed"], v["judged"]) for v in first["voters"]} == {
        m: (2, 2) for m in ("Hospital1MSP", "Hospital2MSP", "Hospital3MSP")
    }
    assert [r["model_sha256"] for r in report["rounds"]] == [
        r["model"]["sha256"] for r in finished_trial["rounds"]
    ]

    code, report = audit_json(consortium, ledger_url, "privacy", TRIAL)
    assert code == 0 and report["budget_micro"] == 1_000_000
    schedule = finished_trial["service"].dp_schedule(TRIAL)["entries"]
    for h in report["hospitals"]:
        eps = schedule[h["msp_id"]]["epsilon_micro"]
        assert h["schedule"]["epsilon_per_round_micro"] == [eps[0], eps[1] - eps[0]]
        assert [(e["round"], e["epsilon_micro"], e["cumulative_micro"]) for e in h["entries"]] == [
            (1, eps[0], eps[0]),
            (2, eps[1] - eps[0], eps[1]),
        ]
        assert h["budget_micro"] == eps[-1] and h["remaining_micro"] == 0
        dataset = h["dataset"]
        assert dataset["dataset_id"] == "records-2026"
        assert dataset["trials"][TRIAL]["state"] == "COMPLETED"
        assert dataset["committed_micro"] == eps[-1]  # what the completed trial spent
        assert dataset["remaining_micro"] == dataset["lifetime_epsilon_micro"] - eps[-1]

    code, report = audit_json(consortium, ledger_url, "rewards", TRIAL)
    assert code == 0 and [r["status"] for r in report["rounds"]] == ["credited", "credited"]
    assert sum(a["total"] for a in report["accounts"]) == 2000
    split = report["rounds"][0]["split"]
    assert split["Hospital3MSP"]["update"] == 0 and split["Hospital3MSP"]["voter"] > 0

    code, report = audit_json(consortium, ledger_url, "lineage", TRIAL)
    assert code == 0 and [e["model_sha256"] for e in report["lineage"]] == [
        r["model"]["sha256"] for r in finished_trial["rounds"]
    ]

    code, report = audit_json(consortium, ledger_url, "verify", "--store", store_url)
    assert code == 0, report["problems"]
    assert report["ledger"]["ok"] and report["store_checked"]
    assert [(x["round"], x["problems"]) for x in report["trials"][TRIAL]] == [(1, []), (2, [])]
    assert any("aggregate recomputed" in c for x in report["trials"][TRIAL] for c in x["checks"])
    assert [c["check"] for c in report["trial_checks"][TRIAL]] == list(TRIAL_CHECKS)
    assert all(c["problems"] == [] for c in report["trial_checks"][TRIAL])
    assert len(report["datasets"]["rows"]) == 3 and report["datasets"]["problems"] == []

    # The tables a person reads.
    for args in (["privacy", TRIAL], ["rewards", TRIAL], ["lineage", TRIAL], ["verify"]):
        code, out = audit_cli(consortium, ledger_url, *args)
        assert code == 0 and "all checks passed" in out, out
    code, out = audit_cli(consortium, ledger_url, "trials")
    assert code == 0 and TRIAL in out and "COMPLETED" in out
    code, out = audit_cli(consortium, ledger_url, "trial", TRIAL)
    assert code == 0 and "rejected: harmful" in out and "Hospital3MSP" in out
    code, out = audit_cli(consortium, ledger_url, "verify")
    assert all(name in out for name in TRIAL_CHECKS), out
    code, out = audit_cli(consortium, ledger_url, "lineage", TRIAL)
    assert finished_trial["rounds"][1]["model"]["sha256"] in out  # full hashes, never cut short


def test_a_tampered_ledger_state_is_detected(
    finished_trial: dict[str, Any], consortium: Any, ledger_url: str
) -> None:
    # Someone with write access to the ledger database moves round 1's rewards to hospital3.
    path = ledger_url.removeprefix("embedded://")
    key = create_composite_key("acceptance", [TRIAL, "000001", "000001"]).encode()
    with sqlite3.connect(path) as conn:
        [(raw,)] = conn.execute("SELECT value FROM world_state WHERE key = ?", (key,)).fetchall()
        acceptance = json.loads(raw)
        acceptance["rewards"] = {"Hospital1MSP": 0, "Hospital2MSP": 0, "Hospital3MSP": 1000}
        conn.execute(
            "UPDATE world_state SET value = ? WHERE key = ?", (json.dumps(acceptance).encode(), key)
        )

    code, report = audit_json(consortium, ledger_url, "verify", TRIAL)
    assert code == AuditFailed.exit_code and not report["ok"]
    assert not report["ledger"]["ok"]  # the state no longer follows from the signed blocks
    assert any(
        "acceptance.rewards" in p and "recomputed from the revealed findings" in p
        for p in report["problems"]
    )
    code, report = audit_json(consortium, ledger_url, "rewards", TRIAL)
    assert code == AuditFailed.exit_code
    assert any("differ from the acceptance" in p for p in report["problems"])
    code, out = audit_cli(consortium, ledger_url, "verify", TRIAL)
    assert code == AuditFailed.exit_code and "check(s) FAILED" in out


def test_an_aggregate_that_is_not_the_sum_of_the_accepted_updates_is_detected(
    make_service: Callable[..., CoordinatorService],
    contract_net: Any,
    store_url: str,
    consortium: Any,
    ledger_url: str,
    secret_context: he.HEContext,
) -> None:
    service = make_service()
    hospitals = create_running_trial(
        contract_net, open_store(store_url), secret_context, TRIAL, rounds=1
    )
    # A dishonest coordinator records the sum of only some accepted updates (the contract sees only hashes).
    scheduler = service.scheduler
    honest = scheduler._compute_aggregate
    scheduler._compute_aggregate = lambda trial, rnd, keys, inputs: honest(
        trial, rnd, keys, inputs[:1]
    )  # type: ignore[method-assign]
    rnd = finalize_round(hospitals, scheduler.tick, low_scored=())
    assert len(rnd["accepted"]) == 3

    code, report = audit_json(consortium, ledger_url, "verify")
    assert code == 0  # the ledger alone is consistent: only the artifacts tell
    code, report = audit_json(consortium, ledger_url, "verify", "--store", store_url)
    assert code == AuditFailed.exit_code
    [problem] = report["problems"]
    assert (
        f"the ledger records sha256 {rnd['aggregate']['sha256']}, re-aggregating the accepted updates gives"
        in problem
    )


def test_a_trial_with_dp_off_shows_the_reason(
    contract_net: Any,
    store_url: str,
    consortium: Any,
    ledger_url: str,
    secret_context: he.HEContext,
    tmp_path: Path,
) -> None:
    create_running_trial(
        contract_net,
        open_store(store_url),
        secret_context,
        TRIAL,
        dp={"enabled": False, "reason": "synthetic data only"},
    )
    code, report = audit_json(consortium, ledger_url, "trial", TRIAL)
    assert code == 0 and report["dp"] == {
        "enabled": False,
        "summary": "off",
        "reason": "synthetic data only",
        "policy": {"enabled": False, "reason": "synthetic data only"},
    }
    assert report["warnings"] == [
        "differential privacy is OFF (synthetic data only): no privacy budget protects the patients"
    ]
    code, report = audit_json(consortium, ledger_url, "privacy", TRIAL)
    assert (
        code == 0 and report["dp_enabled"] is False and report["dp_reason"] == "synthetic data only"
    )
    assert all(h["budget_micro"] is None for h in report["hospitals"])
