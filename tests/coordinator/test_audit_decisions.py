"""`bcfl audit verify` recomputes the protocol's decisions from the ledger alone and names each
forged one: records written through a real embedded ledger by a real run (the coordinator
started the trial with its DP schedule and ran the rounds), then the world state edited the way
someone with write access to the ledger database would."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_audit import audit_json
from test_audit_support import create_running_trial, finalize_round

from chaincode.state import create_composite_key
from consortium.storage import open_store
from coordinator.audit import AuditFailed
from coordinator.audit_verify import (
    CHARGES,
    DATASETS,
    DISPUTES,
    DUPLICATES,
    SCHEDULE,
    WEIGHTS,
)
from coordinator.service import CoordinatorService
from model_registry.training_settings import training_inputs
from privacy import he
from privacy.dp import dp_schedule
from privacy.he import keyholder

TRIAL = "trial-decisions"
H1, H2, H3 = "Hospital1MSP", "Hospital2MSP", "Hospital3MSP"


@pytest.fixture(scope="module")
def secret_context() -> he.HEContext:
    return keyholder.generate_context()


@pytest.fixture
def honest_run(
    make_service: Callable[..., CoordinatorService],
    contract_net: Any,
    store_url: str,
    secret_context: he.HEContext,
    clock: Any,
) -> dict[str, Any]:
    """Round 1: hospital3 found harmful. Round 2: hospital3 commits to hospital2's bytes two
    seconds after it (excluded as duplicate content, owner hospital2), and hospital1 attests
    another model hash before the others finalize (a dispute)."""
    service = make_service()
    hospitals = create_running_trial(
        contract_net, open_store(store_url), secret_context, TRIAL, service=service
    )
    first = finalize_round(hospitals, service.scheduler.tick)
    second = finalize_round(
        hospitals,
        service.scheduler.tick,
        low_scored=(),
        copies={"hospital3": "hospital2"},
        dissent=("hospital1",),
        clock=clock,
    )
    service.scheduler.tick()  # completes the trial
    return {"service": service, "rounds": [first, second]}


def tampered(ledger_url: str, tmp_path: Path, edits: list[tuple[str, list[str], Any]]) -> str:
    """A copy of the ledger database with world-state records rewritten by ``edit(record)``."""
    source = Path(ledger_url.removeprefix("embedded://"))
    target = tmp_path / f"tampered-{len(list(tmp_path.glob('tampered-*')))}" / "ledger.db"
    target.parent.mkdir()
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    with sqlite3.connect(target) as conn:
        for kind, attributes, edit in edits:
            key = create_composite_key(kind, attributes).encode()
            [(raw,)] = conn.execute(
                "SELECT value FROM world_state WHERE key = ?", (key,)
            ).fetchall()
            record = json.loads(raw)
            edit(record)
            conn.execute(
                "UPDATE world_state SET value = ? WHERE key = ?", (json.dumps(record).encode(), key)
            )
    return f"embedded://{target}"


def verify(consortium: Any, ledger_url: str) -> tuple[int, dict[str, Any]]:
    return audit_json(consortium, ledger_url, "verify", TRIAL)


def named(report: dict[str, Any], check: str) -> list[str]:
    """The problems the check named ``check`` reported, without the ``"<trial> <check>: "`` prefix."""
    prefix = f"{TRIAL} {check}: "
    return [p.removeprefix(prefix) for p in report["problems"] if p.startswith(prefix)]


def test_the_recorded_schedule_is_privacy_dp_and_an_honest_run_verifies(
    honest_run: dict[str, Any], consortium: Any, ledger_url: str
) -> None:
    service = honest_run["service"]
    trial = service.trial(TRIAL)
    recorded = service.dp_schedule(TRIAL)
    assert recorded["entries"] == dp_schedule(
        trial, {m: 100 for m in (H1, H2, H3)}, training_inputs(trial)
    )
    second = honest_run["rounds"][1]
    assert second["excluded"] == {
        H3: {"reason": "duplicate_content", "sha256": second["excluded"][H3]["sha256"], "owner": H2}
    }
    assert [d["msp_id"] for d in second["disputes"]] == [H1]

    code, report = verify(consortium, ledger_url)
    assert code == 0, report["problems"]
    for check in report["trial_checks"][TRIAL]:
        assert check["problems"] == [], check
    code, report = audit_json(consortium, ledger_url, "trial", TRIAL)
    reasons = {c["msp_id"]: c["reason"] for c in report["rounds"][1]["candidates"]}
    assert reasons[H3] == f"duplicate_content (owner {H2})"


def test_each_forged_decision_is_named(
    honest_run: dict[str, Any], consortium: Any, ledger_url: str, tmp_path: Path
) -> None:
    r1 = [TRIAL, "000001", "000001"]
    r2 = [TRIAL, "000002", "000001"]

    def smaller_epsilon(schedule: dict[str, Any]) -> None:
        entry = schedule["entries"][H1]
        entry["epsilon_micro"] = [e // 2 for e in entry["epsilon_micro"]]

    url = tampered(ledger_url, tmp_path, [("dp_schedule", [TRIAL], smaller_epsilon)])
    code, report = verify(consortium, url)
    assert code == AuditFailed.exit_code
    [problem] = named(report, SCHEDULE)
    assert (
        f"schedule entry of {H1}: epsilon_micro: recorded [" in problem
        and "recomputed [" in problem
    )

    def cheap(update: dict[str, Any]) -> None:
        update["epsilon_spent_micro"] = 1

    url = tampered(ledger_url, tmp_path, [("update", [*r1, H2], cheap)])
    code, report = verify(consortium, url)
    assert code == AuditFailed.exit_code
    assert any(
        f"{H2} round 1: charged epsilon_spent_micro 1, the schedule's reveal number 1 costs" in p
        for p in named(report, CHARGES)
    ), report["problems"]

    def fewer_records(enrolment: dict[str, Any]) -> None:
        enrolment["training_records"] = 5

    url = tampered(ledger_url, tmp_path, [("enrolment", [TRIAL, H1], fewer_records)])
    code, report = verify(consortium, url)
    assert code == AuditFailed.exit_code
    assert f"{H1} round 1: sample_weight 10 is over its registered training_records 5" in named(
        report, WEIGHTS
    )

    def thief_owns(rnd: dict[str, Any]) -> None:
        sha256 = rnd["excluded"][H3]["sha256"]
        rnd["excluded"] = {H2: {"reason": "duplicate_content", "sha256": sha256, "owner": H3}}

    url = tampered(ledger_url, tmp_path, [("round", r2, thief_owns)])
    code, report = verify(consortium, url)
    assert code == AuditFailed.exit_code
    assert any(
        "round 2: round.excluded" in p and f"'owner': '{H2}'" in p
        for p in named(report, DUPLICATES)
    ), report["problems"]

    def hide_dispute(rnd: dict[str, Any]) -> None:
        rnd["disputes"] = []

    url = tampered(ledger_url, tmp_path, [("round", r2, hide_dispute)])
    code, report = verify(consortium, url)
    assert code == AuditFailed.exit_code
    [problem] = named(report, DISPUTES)
    assert "round 2: round.disputes []" in problem and f"'msp_id': '{H1}'" in problem

    def small_lifetime(dataset: dict[str, Any]) -> None:
        dataset["lifetime_epsilon_micro"] = 500_000

    url = tampered(ledger_url, tmp_path, [("dataset", [H2, "records-2026"], small_lifetime)])
    code, report = verify(consortium, url)
    assert code == AuditFailed.exit_code
    lifetime = [p for p in report["problems"] if p.startswith(f"{DATASETS}: ")]
    assert any(
        f"dataset records-2026 of {H2}: enrolled in {TRIAL} planning 1000000" in p
        and "over its lifetime of 500000" in p
        for p in lifetime
    ), report["problems"]
    # The same tampering shows in the privacy report (and the CLI exits non-zero).
    code, report = audit_json(consortium, url, "privacy", TRIAL)
    assert code == AuditFailed.exit_code
    assert any("over its lifetime of 500000" in p for p in report["problems"])


def test_a_copy_of_the_ledger_is_unchanged_by_the_helper(
    honest_run: dict[str, Any], consortium: Any, ledger_url: str, tmp_path: Path
) -> None:
    """The tampering helper's copy verifies before any edit: the failures above are the edits'."""
    url = tampered(ledger_url, tmp_path, [])
    code, report = verify(consortium, url)
    assert code == 0, report["problems"]
    shutil.rmtree(Path(url.removeprefix("embedded://")).parent)
