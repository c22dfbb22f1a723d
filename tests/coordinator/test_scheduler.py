"""The round scheduler against a real embedded ledger and file store, with real CKKS updates from the hospitals."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from silo_side import Hospitals, register_for_trial

from bcfl_common.errors import ContractError, LedgerError
from consortium.ledger import open_ledger
from consortium.storage import open_store
from coordinator.scheduler import Scheduler
from coordinator.schemas import TrialSpec
from coordinator.service import CoordinatorService
from privacy import he
from privacy.he import keyholder

HOSPITALS = ["hospital1", "hospital2", "hospital3"]
TRIAL = "trial-s"


@pytest.fixture(scope="module")
def secret_context() -> he.HEContext:
    return keyholder.generate_context()


def running_trial(
    service: CoordinatorService,
    net: Any,
    store_url: str,
    secret: he.HEContext,
    *,
    rounds: int = 2,
    keys: bool = True,
) -> Hospitals:
    """A RUNNING trial made through the service (real initial model), three hospitals enrolled with their keys."""
    service.create_trial(
        TrialSpec(
            trial_id=TRIAL,
            task="binary_classification",
            data_schema={
                "features": [{"name": "age", "type": "float"}],
                "label": {"name": "y", "positive": [1]},
            },
            model={"name": "logistic_regression"},
            rounds=rounds,
            min_silos=2,
            evaluation={"min_voters": 2},
            phase_seconds={"submit": 600, "reveal": 600, "vote_commit": 600, "vote_reveal": 600},
        )
    )
    admin = net.client("admin")
    for name in HOSPITALS:
        identity = net.consortium.identity(name)
        key = register_for_trial(net.client(name), identity, TRIAL)
        admin.submit(
            "enrol_hospital",
            {"trial_id": TRIAL, "msp_id": identity.msp_id, "encryption_public_key": key},
        )
    service.start_trial(TRIAL)
    hospitals = Hospitals(net, open_store(store_url), TRIAL, HOSPITALS, secret)
    if keys:
        hospitals.record_keys("hospital1")
    return hospitals


def actions(outcomes: list[Any]) -> list[tuple[str, str]]:
    return [(o.action, o.status) for o in outcomes]


def event_counts(net: Any) -> collections.Counter[str]:
    ledger = net.client("auditor").ledger
    return collections.Counter(e.name for e in ledger.events(0))


def run_round_to_attest(
    hospitals: Hospitals, tick: Callable[[], list[Any]], names: list[str] = HOSPITALS
) -> list[Any]:
    for name in names:
        hospitals.commit(name)
    assert actions(tick())[0] == ("close_update_commits", "done")
    for name in names:
        hospitals.reveal(name)
    assert actions(tick())[0] == ("close_update_reveals", "done")
    for name in names:
        hospitals.commit_votes(name)
    assert actions(tick())[0] == ("close_vote_commits", "done")
    for name in names:
        hospitals.reveal_votes(name)
    return tick()


def test_scheduler_runs_a_trial_to_completion(
    service: CoordinatorService, contract_net: Any, store_url: str, secret_context: he.HEContext
) -> None:
    hospitals = running_trial(service, contract_net, store_url, secret_context, keys=False)
    tick = service.scheduler.tick
    # Without trial keys there is nothing to open, and nothing is written to the ledger.
    height = contract_net.client("auditor").ledger.height()
    assert actions(tick()) == [("open_round", "waiting")]
    assert contract_net.client("auditor").ledger.height() == height
    hospitals.record_keys("hospital1")

    outcomes = tick()
    assert actions(outcomes) == [("open_round", "done"), ("close_update_commits", "waiting")]
    assert outcomes[-1].detail["waiting_for"] == ["Hospital1MSP", "Hospital2MSP", "Hospital3MSP"]
    height = contract_net.client("auditor").ledger.height()
    assert actions(tick()) == [
        ("close_update_commits", "waiting")
    ]  # no useless TOO_EARLY transaction
    assert contract_net.client("auditor").ledger.height() == height

    outcomes = run_round_to_attest(hospitals, tick)
    assert actions(outcomes) == [
        ("close_voting", "done"),
        ("record_aggregate", "done"),
        ("attest", "waiting"),
    ]
    rnd = hospitals.round()
    assert rnd["phase"] == "ATTEST"
    assert sorted(rnd["aggregate"]["update_sha256s"]) == rnd["aggregate"]["update_sha256s"]
    # The aggregate is the weighted mean of the three deltas, and only the hospitals can see it.
    expected = sum(u.delta * u.sample_weight for u in hospitals.updates.values()) / sum(
        u.sample_weight for u in hospitals.updates.values()
    )
    np.testing.assert_allclose(hospitals.decrypt_aggregate(), expected, atol=1e-4)
    # Anyone with the public context recomputes the same bytes from the accepted updates in sha256 order.
    store = open_store(store_url)
    keys = contract_net.client("auditor").evaluate("get_trial_keys", {"trial_id": TRIAL})
    public = he.load_public_context(
        store.get(keys["public_context"]["content_id"]), he.DEFAULT_PRESET
    )
    by_sha = {u.sha256: (m, u) for m, u in hospitals.updates.items()}
    acceptance = contract_net.client("auditor").evaluate(
        "get_acceptance", {"trial_id": TRIAL, "round": 1}
    )
    shas = rnd["aggregate"]["update_sha256s"]
    recomputed = he.aggregate(
        public,
        [store.get(by_sha[s][1].content_id) for s in shas],
        # Each update times the contract's (capped) weight: silos encrypt the plain delta.
        weights=[acceptance["candidates"][hospitals.msp[by_sha[s][0]]]["weight"] for s in shas],
    )
    assert store.get(rnd["aggregate"]["content_id"]) == recomputed

    hospitals.attest("hospital1")
    assert hospitals.attest("hospital2")["round"]["phase"] == "FINALIZED"
    outcomes = tick()
    assert actions(outcomes) == [("open_round", "done"), ("close_update_commits", "waiting")]

    # Round 2: hospital3 never commits; the commit phase closes once its deadline has passed.
    hospitals.commit("hospital1")
    hospitals.commit("hospital2")
    assert actions(tick()) == [("close_update_commits", "waiting")]
    contract_net.advance_time(601)
    outcomes = tick()
    assert actions(outcomes)[0] == ("close_update_commits", "done")
    assert outcomes[0].detail["missing"] == ["Hospital3MSP"]
    for name in ("hospital1", "hospital2"):
        hospitals.reveal(name)
    tick()
    for name in HOSPITALS:
        hospitals.commit_votes(name)
    tick()
    for name in HOSPITALS:
        hospitals.reveal_votes(name)
    assert actions(tick())[-1] == ("attest", "waiting")
    hospitals.attest("hospital1")
    hospitals.attest("hospital2")
    assert hospitals.round()["phase"] == "FINALIZED"

    assert actions(tick()) == [("complete_trial", "done"), ("none", "idle")]
    assert actions(tick()) == []  # a COMPLETED trial is no longer RUNNING
    trial = contract_net.client("auditor").evaluate("get_trial", {"trial_id": TRIAL})
    assert trial["state"] == "COMPLETED" and trial["head"]["round"] == 2
    counts = event_counts(contract_net)
    for name in (
        "RoundOpened",
        "UpdateCommitsClosed",
        "UpdateRevealsClosed",
        "VoteCommitsClosed",
        "VotingClosed",
        "AggregateRecorded",
        "RoundFinalized",
    ):
        assert counts[name] == 2, (name, counts)
    assert counts["TrialCompleted"] == 1
    steps = service.database.steps(trial_id=TRIAL, limit=100)
    assert {s["status"] for s in steps} <= {"done", "stored"}
    status = service.scheduler.status()
    assert status["ticks"] > 5 and status["last_error"] is None


def test_restart_mid_round_resumes_without_repeating_a_step(
    make_service: Callable[..., CoordinatorService],
    contract_net: Any,
    store_url: str,
    secret_context: he.HEContext,
) -> None:
    first = make_service()
    hospitals = running_trial(first, contract_net, store_url, secret_context, rounds=1)
    first.scheduler.tick()
    for name in HOSPITALS:
        hospitals.commit(name)
    first.scheduler.tick()
    for name in HOSPITALS:
        hospitals.reveal(name)
    first.scheduler.tick()
    for name in HOSPITALS:
        hospitals.commit_votes(name)
    first.scheduler.tick()
    for name in HOSPITALS:
        hospitals.reveal_votes(name)

    # The coordinator dies between storing the aggregate and recording it on the ledger.
    ledger = first.coordinator_ledger
    real_submit = ledger.submit

    def crash_on_record(function: str, args: dict[str, Any]) -> Any:
        if function == "record_aggregate":
            raise LedgerError("connection to the ledger lost", code="LEDGER_UNAVAILABLE")
        return real_submit(function, args)

    ledger.submit = crash_on_record  # type: ignore[method-assign]
    outcomes = first.scheduler.tick()
    assert actions(outcomes) == [("close_voting", "done"), ("record_aggregate", "failed")]
    stored_once = set(open_store(store_url).list())
    first.close()

    second = make_service()  # same ledger, store and database
    outcomes = second.scheduler.tick()
    assert actions(outcomes) == [("record_aggregate", "done"), ("attest", "waiting")]
    rnd = hospitals.round()
    assert rnd["aggregate"]["content_id"] in stored_once  # the same bytes as before the crash
    assert set(open_store(store_url).list()) == stored_once
    assert actions(second.scheduler.tick()) == [("attest", "waiting")]
    counts = event_counts(contract_net)
    for name in (
        "RoundOpened",
        "UpdateCommitsClosed",
        "UpdateRevealsClosed",
        "VoteCommitsClosed",
        "VotingClosed",
        "AggregateRecorded",
    ):
        assert counts[name] == 1, (name, counts)
    # The bookkeeping of both lives shows the failed attempt and the resumed one.
    steps = [
        (s["step"], s["status"]) for s in reversed(second.database.steps(trial_id=TRIAL, limit=100))
    ]
    assert ("record_aggregate", "failed") in steps and steps[-1] == ("record_aggregate", "done")
    assert steps.count(("close_voting", "done")) == 1


def test_standalone_scheduler_over_plain_ledgers(
    service: CoordinatorService,
    contract_net: Any,
    ledger_url: str,
    store_url: str,
    secret_context: he.HEContext,
    clock: Any,
) -> None:
    hospitals = running_trial(service, contract_net, store_url, secret_context, rounds=1)
    consortium = contract_net.consortium
    coordinator = open_ledger(ledger_url, consortium.identity("coordinator"), clock=clock)
    admin = open_ledger(ledger_url, consortium.identity("admin"), clock=clock)
    scheduler = Scheduler(coordinator, open_store(store_url), admin_ledger=admin, clock=clock)
    try:
        assert actions(scheduler.tick())[0] == ("open_round", "done")
        outcomes = run_round_to_attest(hospitals, scheduler.tick)
        assert actions(outcomes)[-1] == ("attest", "waiting")
        hospitals.attest("hospital1")
        hospitals.attest("hospital3")
        assert actions(scheduler.tick())[0] == ("complete_trial", "done")
    finally:
        coordinator.close()
        admin.close()


def test_unusable_update_halts_the_round_and_the_schedule_waits_for_the_admin(
    service: CoordinatorService, contract_net: Any, store_url: str, secret_context: he.HEContext
) -> None:
    hospitals = running_trial(service, contract_net, store_url, secret_context)
    tick = service.scheduler.tick
    tick()
    hospitals.commit("hospital1")
    hospitals.commit("hospital2")
    hospitals.commit("hospital3", payload=b"BCFU" + b"\x00" * 100)  # not a valid container
    tick()
    for name in HOSPITALS:
        hospitals.reveal(name)
    tick()
    for name in HOSPITALS:
        hospitals.commit_votes(name)
    tick()
    for name in HOSPITALS:
        hospitals.reveal_votes(name)
    outcomes = tick()
    assert actions(outcomes)[:2] == [("close_voting", "done"), ("abort_round", "done")]
    rnd = hospitals.round()
    assert rnd["phase"] == "HALTED" and rnd["halt"]["code"] == "ABORTED"
    assert (
        "aggregation impossible" in rnd["halt"]["reason"]
        and "Hospital3MSP" in rnd["halt"]["reason"]
    )
    # The schedule pauses rather than retrying a failed round by itself...
    height = contract_net.client("auditor").ledger.height()
    assert actions(tick()) == [("open_round", "waiting")]
    assert contract_net.client("auditor").ledger.height() == height
    # ...until the admin opens the next attempt.
    reopened = service.open_round(TRIAL)
    assert (reopened["round"], reopened["attempt"]) == (1, 2)
    assert actions(tick()) == [("close_update_commits", "waiting")]


def test_a_failed_attempt_is_retried_and_an_aborted_one_waits_for_the_admin(
    service: CoordinatorService, contract_net: Any, store_url: str, secret_context: he.HEContext
) -> None:
    # Two rounds: the failed attempt's reveals stay charged, so each hospital has one reveal
    # of its DP schedule left for the retry.
    hospitals = running_trial(service, contract_net, store_url, secret_context, rounds=2)
    tick = service.scheduler.tick
    tick()
    run_round_to_attest(hospitals, tick)
    hospitals.attest("hospital1")
    hospitals.attest("hospital2", sha256="f" * 64)  # a dissent alone is no halt
    assert hospitals.round()["phase"] == "ATTEST"
    hospitals.attest("hospital3", sha256="e" * 64)  # no hash can reach the quorum any more
    halted = hospitals.round()
    assert halted["phase"] == "HALTED" and halted["halt"]["retry"] is True
    # The contract counted the failure; the scheduler opens the next attempt by itself.
    outcomes = tick()
    assert actions(outcomes)[0] == ("open_round", "done")
    assert (outcomes[0].round, outcomes[0].attempt) == (1, 2)
    progress = service.progress(TRIAL)
    assert progress["failed_attempts"] == 1 and progress["phase"] == "SUBMIT"
    assert progress["waiting_for"] == ["Hospital1MSP", "Hospital2MSP", "Hospital3MSP"]
    # An attempt the admin aborts is not retried: the scheduler says it waits for the admin.
    service.abort_round(TRIAL, 1, "operator check")
    outcomes = tick()
    assert actions(outcomes) == [("open_round", "waiting")]
    assert outcomes[0].detail["waiting_for"] == ["admin"]
    progress = service.progress(TRIAL)
    assert progress["waiting_for"] == ["admin"] and "trial next" in progress["reason"]
    # Rolling back to round 0 would need 2 more reveals each: refused up front...
    with pytest.raises(ContractError) as refused:
        service.rollback(TRIAL, 0, "attestation mismatch investigated")
    assert refused.value.code == "INFEASIBLE" and "final_round=1 would fit" in refused.value.message
    # ...and accepted with the plan shortened to what the budgets carry.
    service.rollback(TRIAL, 0, "attestation mismatch investigated", final_round=1)
    outcomes = tick()
    assert actions(outcomes)[0] == ("open_round", "done")
    assert (outcomes[0].round, outcomes[0].attempt) == (1, 3)


def test_background_scheduler_in_the_live_service(
    live: Any,
    make_service: Callable[..., CoordinatorService],
    contract_net: Any,
    store_url: str,
    secret_context: he.HEContext,
) -> None:
    service = make_service(scheduler=True, poll_interval=0.05)
    server = live(service)
    running_trial(service, contract_net, store_url, secret_context)
    deadline = time.monotonic() + 30
    while (
        contract_net.client("auditor").evaluate("get_trial", {"trial_id": TRIAL})["current"] is None
    ):
        assert time.monotonic() < deadline, service.scheduler.status()
        time.sleep(0.05)
    from consortium.coordinator_client import CoordinatorClient

    with CoordinatorClient(server.base_url, contract_net.consortium.identity("auditor")) as auditor:
        status = auditor.scheduler_status()
        assert status["running"] is True
        assert any(
            s["step"] == "open_round" and s["status"] == "done" for s in status["recent_steps"]
        )
        assert auditor.round(TRIAL, 1)["phase"] == "SUBMIT"
