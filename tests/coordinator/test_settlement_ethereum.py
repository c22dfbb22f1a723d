"""The coordinator settles finalized rounds on a real anvil: paid once, recorded on the ledger, conflicts and fresh chains halt settlement (not training)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.ethereum import EthChain
from test_audit import audit_cli
from test_audit_support import create_running_trial, finalize_round

from bcfl_common.errors import ConfigError
from consortium.coordinator_client import CoordinatorClient
from consortium.settlement import CODE_CHAIN_CHANGED, CODE_CONFLICT, token_units
from consortium.storage import open_store
from coordinator.service import CoordinatorService
from coordinator.settlement_step import (
    chain_rewards,
    ledger_round_digest,
    read_round_records,
    settlement_round,
)
from privacy import he
from privacy.he import keyholder

pytestmark = pytest.mark.ethereum
TRIAL = "trial-eth"


@pytest.fixture(scope="module")
def secret_context() -> he.HEContext:
    return keyholder.generate_context()


def write_payees(chain: EthChain, path: Path) -> Path:
    path.write_text(
        "[payees]\n" + "".join(f'{msp} = "{address}"\n' for msp, address in chain.payees.items())
    )
    return path


@pytest.fixture
def settled_service(
    make_service: Callable[..., CoordinatorService], eth_chain: EthChain, tmp_path: Path
) -> Callable[..., CoordinatorService]:
    def make(**changes: Any) -> CoordinatorService:
        return make_service(
            settlement_url=eth_chain.url(timeout=30),
            settlement_payees=write_payees(eth_chain, tmp_path / "payees.toml"),
            **changes,
        )

    return make


def settler_nonce(chain: EthChain) -> int:
    client = chain.open()
    return int(client.w3.eth.get_transaction_count(chain.settler.address))


def ledger_rewards(net: Any, trial_id: str = TRIAL) -> dict[tuple[int, int], dict[str, Any]]:
    rounds = net.client("auditor").evaluate("get_rewards", {"trial_id": trial_id})["rounds"]
    return {(r["round"], r["attempt"]): r for r in rounds}


def settles(outcomes: list[Any]) -> list[tuple[str, int | None, str]]:
    return [(o.status, o.round, o.detail.get("code", "")) for o in outcomes if o.action == "settle"]


def test_finalized_rounds_are_settled_once_and_recorded_on_the_ledger(
    settled_service: Callable[..., CoordinatorService],
    contract_net: Any,
    store_url: str,
    eth_chain: EthChain,
    secret_context: he.HEContext,
) -> None:
    service = settled_service()
    tick = service.scheduler.tick
    hospitals = create_running_trial(contract_net, open_store(store_url), secret_context, TRIAL)

    # Settlement is available but this trial has not opted in: nothing is paid.
    finalize_round(hospitals, tick)
    assert settles(tick()) == []
    assert settler_nonce(eth_chain) == 0
    assert service.trial_settlement(TRIAL)["enabled"] is False

    # Switched on later: the round finalized before is settled on the next pass.
    status = service.set_trial_settlement(TRIAL, True, "consortium agreement 2026-01")
    assert status["enabled"] and status["unsettled"] == [(1, 1)] and status["missing_payees"] == []
    assert settles(tick()) == [("done", 1, "")]
    rr = ledger_rewards(contract_net)[(1, 1)]
    assert rr["status"] == "credited" and rr["settlement"]["recorded_by"]["role"] == "coordinator"
    assert rr["settlement"]["chain_id"] == eth_chain.deployment.chain_id

    client = eth_chain.open()
    record = client.read_settlement(
        TRIAL, settlement_round(1, 1), tx_hash=rr["settlement"]["tx_hash"]
    )
    assert record is not None and record.tx_hash == rr["settlement"]["tx_hash"]
    # The anchor commits to the digest anyone recomputes from the ledger's records of the round.
    rnd, acceptance, rewards = read_round_records(contract_net.client("auditor"), TRIAL, 1, 1)
    assert record.ledger_digest == "0x" + ledger_round_digest(rnd, acceptance, rewards)
    assert (
        client.reconcile(chain_rewards(TRIAL, rnd, acceptance, rewards), eth_chain.payees).status
        == "settled"
    )
    # One ledger reward point is one token; the rejected hospital got only its voter reward
    # (its votes agreed with the outcome), nothing for its update.
    assert acceptance["candidates"]["Hospital3MSP"]["reason"] == "harmful"
    balances = client.balances(eth_chain.payees)
    assert {m: balances[m] for m in ("Hospital1MSP", "Hospital2MSP", "Hospital3MSP")} == {
        m: token_units(rr["rewards"][m]) for m in ("Hospital1MSP", "Hospital2MSP", "Hospital3MSP")
    }
    assert acceptance["candidates"]["Hospital3MSP"]["reward"] == 0
    assert balances["Hospital3MSP"] == token_units(acceptance["voters"]["Hospital3MSP"]["reward"])
    assert sum(balances.values()) == token_units(1000)

    # Further passes pay nothing more.
    assert settles(tick()) == []
    assert settler_nonce(eth_chain) == 1

    # Round 2 (the last): settled after it finalizes, also once the trial is COMPLETED.
    finalize_round(hospitals, tick, low_scored=())
    outcomes = tick()
    assert ("complete_trial", "done") in [(o.action, o.status) for o in outcomes]
    assert settles(outcomes) == [("done", 2, "")]
    assert all(r["settlement"] for r in ledger_rewards(contract_net).values())
    assert settler_nonce(eth_chain) == 2
    assert sum(client.balances(eth_chain.payees).values()) == token_units(2000)
    events = [e.name for e in contract_net.client("auditor").ledger.events(0)]
    assert events.count("SettlementRecorded") == 2
    status = service.scheduler.status()["settlement"]
    assert status["configured"] and status["chain_id"] == eth_chain.deployment.chain_id
    assert status["trials"][TRIAL]["enabled"] and status["trials"][TRIAL]["halted"] is None


def test_settlement_must_be_configured_to_be_switched_on(
    make_service: Callable[..., CoordinatorService],
    contract_net: Any,
    store_url: str,
    secret_context: he.HEContext,
) -> None:
    service = make_service()
    create_running_trial(contract_net, open_store(store_url), secret_context, TRIAL)
    with pytest.raises(ConfigError) as err:
        service.set_trial_settlement(TRIAL, True)
    assert err.value.code == "SETTLEMENT_NOT_CONFIGURED"
    assert service.trial_settlement(TRIAL)["configured"] is False
    assert service.scheduler.status()["settlement"] == {"configured": False}


def test_a_conflicting_settlement_on_chain_halts_settlement_but_not_training(
    settled_service: Callable[..., CoordinatorService],
    contract_net: Any,
    store_url: str,
    eth_chain: EthChain,
    secret_context: he.HEContext,
    live: Any,
    consortium: Any,
) -> None:
    service = settled_service()
    tick = service.scheduler.tick
    hospitals = create_running_trial(contract_net, open_store(store_url), secret_context, TRIAL)
    service.set_trial_settlement(TRIAL, True)
    # Someone holding the settler key already settled round 1 of this trial with other amounts.
    eth_chain.open().settle_round(
        TRIAL, 1, "ab" * 32, {eth_chain.payees.address_for("Hospital1MSP"): token_units(5)}
    )

    finalize_round(hospitals, tick)
    outcomes = tick()
    assert ("open_round", "done") in [(o.action, o.status) for o in outcomes]  # training goes on
    assert settles(outcomes) == [("halted", 1, CODE_CONFLICT)]
    assert ledger_rewards(contract_net)[(1, 1)]["settlement"] is None
    assert settler_nonce(eth_chain) == 1  # nothing sent by the coordinator
    # Halted stays halted (no retries that could pay against conflicting data) and is visible.
    assert settles(tick()) == [("halted", 1, CODE_CONFLICT)]
    server = live(service)
    with CoordinatorClient(server.base_url, consortium.identity("auditor")) as auditor:
        halted = auditor.request("GET", f"/trials/{TRIAL}/settlement")["halted"]
        assert halted["code"] == CODE_CONFLICT and "already settled on chain" in halted["message"]
        scheduler = auditor.scheduler_status()["settlement"]["trials"][TRIAL]
        assert scheduler["halted"]["code"] == CODE_CONFLICT


def test_a_fresh_chain_is_reported_and_nothing_is_sent(
    settled_service: Callable[..., CoordinatorService],
    contract_net: Any,
    store_url: str,
    eth_chain: EthChain,
    anvil_factory: Any,
    secret_context: he.HEContext,
    live: Any,
    consortium: Any,
) -> None:
    service = settled_service()
    tick = service.scheduler.tick
    hospitals = create_running_trial(contract_net, open_store(store_url), secret_context, TRIAL)
    service.set_trial_settlement(TRIAL, True)
    finalize_round(hospitals, tick)
    assert settles(tick()) == [("done", 1, "")]

    # anvil restarts on the same port: a new, empty chain under the same URL.
    port = eth_chain.node.port
    eth_chain.node.stop()
    eth_chain.node = anvil_factory(port=port)
    finalize_round(hospitals, tick, low_scored=())
    outcomes = tick()
    assert ("complete_trial", "done") in [
        (o.action, o.status) for o in outcomes
    ]  # training finished regardless
    assert settles(outcomes) == [("halted", 2, CODE_CHAIN_CHANGED)]
    assert settler_nonce(eth_chain) == 0  # nothing was sent to the new chain
    rewards = ledger_rewards(contract_net)
    assert rewards[(1, 1)]["settlement"] is not None and rewards[(2, 1)]["settlement"] is None

    server = live(service)
    with CoordinatorClient(server.base_url, consortium.identity("admin")) as admin:
        status = admin.request("GET", f"/trials/{TRIAL}/settlement")
        assert status["halted"]["code"] == CODE_CHAIN_CHANGED and status["halted"]["round"] == 2
        assert "restarted or reset" in status["halted"]["message"]
        assert status["unsettled"] == [[2, 1]]
        assert (
            admin.scheduler_status()["settlement"]["trials"][TRIAL]["halted"]["code"]
            == CODE_CHAIN_CHANGED
        )
        # Switching settlement on again resumes it, and the chain is still the wrong one: halted again.
        admin.request(
            "PUT", f"/admin/trials/{TRIAL}/settlement", json={"enabled": True, "reason": "retry"}
        )
        outcomes = admin.run_scheduler()["outcomes"]
        assert [
            (o["status"], o["detail"]["code"]) for o in outcomes if o["action"] == "settle"
        ] == [("halted", CODE_CHAIN_CHANGED)]
    assert settler_nonce(eth_chain) == 0


def test_a_round_finalized_again_after_a_rollback_is_settled_in_its_own_slot(
    settled_service: Callable[..., CoordinatorService],
    contract_net: Any,
    store_url: str,
    eth_chain: EthChain,
    secret_context: he.HEContext,
    consortium: Any,
    ledger_url: str,
    tmp_path: Path,
) -> None:
    service = settled_service()
    tick = service.scheduler.tick
    hospitals = create_running_trial(contract_net, open_store(store_url), secret_context, TRIAL)
    service.set_trial_settlement(TRIAL, True)
    finalize_round(hospitals, tick)
    assert settles(tick()) == [("done", 1, "")]  # round 2 is open now
    service.abort_round(TRIAL, 2, "bad base model")
    service.rollback(TRIAL, 0, "retrain round 1", final_round=1)  # DP: 1 reveal left each
    finalize_round(hospitals, tick, low_scored=(), seed=1)  # round 1 again, as attempt 2
    outcomes = tick()
    assert [(o.status, o.round, o.attempt) for o in outcomes if o.action == "settle"] == [
        ("done", 1, 2)
    ]
    rewards = ledger_rewards(contract_net)
    assert rewards[(1, 1)]["settlement"]["tx_hash"] != rewards[(1, 2)]["settlement"]["tx_hash"]
    client = eth_chain.open()
    assert (
        client.read_settlement(TRIAL, settlement_round(1, 2)).tx_hash
        == rewards[(1, 2)]["settlement"]["tx_hash"]
    )
    assert client.read_settlement(TRIAL, 1).tx_hash == rewards[(1, 1)]["settlement"]["tx_hash"]
    assert sum(client.balances(eth_chain.payees).values()) == token_units(
        2000
    )  # both finalized attempts paid

    # The auditor finds everything consistent, including the attempt outside the current lineage.
    for args in (
        ["verify", "--store", store_url],
        ["lineage", TRIAL],
        ["rewards", TRIAL],
        ["privacy", TRIAL],
        [
            "settlement",
            TRIAL,
            "--settlement",
            eth_chain.url(key=None),
            "--payees",
            str(tmp_path / "payees.toml"),
        ],
    ):
        code, out = audit_cli(consortium, ledger_url, *args, "--json")
        assert code == 0, out
    lineage = json.loads(audit_cli(consortium, ledger_url, "lineage", TRIAL, "--json")[1])
    assert [(e["round"], e["attempt"]) for e in lineage["lineage"]] == [(1, 2)]
    assert [(a["round"], a["attempt"], a["in_lineage"]) for a in lineage["attempts"]] == [
        (1, 1, False),
        (1, 2, True),
        (2, 1, False),
    ]  # the plan was cut to round 1: every hospital has made its schedule's 2 reveals
    trial = contract_net.client("auditor").evaluate("get_trial", {"trial_id": TRIAL})
    assert trial["state"] == "COMPLETED" and trial["final_round"] == 1
