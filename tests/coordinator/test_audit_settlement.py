"""`bcfl audit settlement` (the auditor view of item 5) against a real anvil: ledger rewards next to the Ethereum payment and anchor, mismatches reported."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.ethereum import EthChain
from test_audit import audit_cli
from test_audit_support import create_running_trial, finalize_round

from consortium.settlement import token_units
from consortium.storage import open_store
from coordinator.audit import AuditFailed
from coordinator.service import CoordinatorService
from coordinator.settlement_step import settlement_round
from privacy import he
from privacy.he import keyholder

pytestmark = pytest.mark.ethereum
TRIAL = "trial-paid"


@pytest.fixture(scope="module")
def secret_context() -> he.HEContext:
    return keyholder.generate_context()


@pytest.fixture
def payees_file(eth_chain: EthChain, tmp_path: Path) -> Path:
    path = tmp_path / "payees.toml"
    path.write_text(
        "[payees]\n"
        + "".join(f'{msp} = "{address}"\n' for msp, address in eth_chain.payees.items())
    )
    return path


@pytest.fixture
def paying_service(
    make_service: Callable[..., CoordinatorService], eth_chain: EthChain, payees_file: Path
) -> CoordinatorService:
    return make_service(settlement_url=eth_chain.url(timeout=30), settlement_payees=payees_file)


def audit_settlement(
    consortium: Any, ledger_url: str, chain: EthChain, payees: Path, *extra: str
) -> tuple[int, Any]:
    # The auditor needs no settler key: the deployment file says where the contracts are.
    url = chain.url(key=None, timeout=30)
    code, out = audit_cli(
        consortium,
        ledger_url,
        "settlement",
        TRIAL,
        "--settlement",
        url,
        "--payees",
        str(payees),
        *extra,
    )
    return code, json.loads(out) if "--json" in extra else out


def test_settled_rounds_match_and_a_fresh_chain_is_reported(
    paying_service: CoordinatorService,
    contract_net: Any,
    store_url: str,
    eth_chain: EthChain,
    anvil_factory: Any,
    payees_file: Path,
    consortium: Any,
    ledger_url: str,
    secret_context: he.HEContext,
) -> None:
    tick = paying_service.scheduler.tick
    hospitals = create_running_trial(contract_net, open_store(store_url), secret_context, TRIAL)
    paying_service.set_trial_settlement(TRIAL, True)
    finalize_round(hospitals, tick)
    tick()
    finalize_round(hospitals, tick, low_scored=())  # round 2 finalized, not settled yet

    code, report = audit_settlement(consortium, ledger_url, eth_chain, payees_file, "--json")
    assert code == 0, report["problems"]
    first, second = report["rounds"]
    assert (first["status"], second["status"]) == ("settled", "unsettled")
    assert first["chain"]["tx_hash"] == first["ledger_settlement"]["tx_hash"]
    assert first["chain"]["ledger_digest"] == "0x" + first["ledger_digest"]
    assert first["chain"]["round_digest"] == first["expected_anchor"]
    paid = {p["msp_id"]: (p["ledger_amount"], p["chain_amount"]) for p in first["payees"]}
    rewards = first["ledger_rewards"]
    assert paid == {m: (str(token_units(v)), str(token_units(v))) for m, v in rewards.items() if v}
    code, out = audit_settlement(consortium, ledger_url, eth_chain, payees_file)
    assert code == 0 and "settled" in out and "unsettled" in out and "all checks passed" in out

    # anvil restarted: a new chain that holds none of the settlements the ledger records.
    port = eth_chain.node.port
    eth_chain.node.stop()
    eth_chain.node = anvil_factory(port=port)
    code, report = audit_settlement(consortium, ledger_url, eth_chain, payees_file, "--json")
    assert code == AuditFailed.exit_code
    assert "SETTLEMENT_CHAIN_CHANGED" in report["problems"][0]
    assert [r["status"] for r in report["rounds"]] == ["unverifiable", "unverifiable"]
    assert any("round 1: the ledger records settlement" in p for p in report["problems"])
    code, out = audit_settlement(consortium, ledger_url, eth_chain, payees_file)
    assert code == AuditFailed.exit_code and "check(s) FAILED" in out


def test_a_payment_that_differs_from_the_ledger_is_reported(
    paying_service: CoordinatorService,
    contract_net: Any,
    store_url: str,
    eth_chain: EthChain,
    payees_file: Path,
    consortium: Any,
    ledger_url: str,
    secret_context: he.HEContext,
) -> None:
    hospitals = create_running_trial(contract_net, open_store(store_url), secret_context, TRIAL)
    # Round 1 was paid on chain by someone else, with other amounts and another ledger digest.
    payee = eth_chain.payees.address_for("Hospital1MSP")
    eth_chain.open().settle_round(TRIAL, settlement_round(1, 1), "ab" * 32, {payee: token_units(5)})
    finalize_round(hospitals, paying_service.scheduler.tick)

    code, report = audit_settlement(consortium, ledger_url, eth_chain, payees_file, "--json")
    assert code == AuditFailed.exit_code
    [row, *_] = report["rounds"]
    assert row["status"] == "mismatch"
    text = "\n".join(report["problems"])
    assert "anchor" in text and "differs from the digest of the ledger's round" in text
    assert "Hospital2MSP" in text and "paid on chain nothing" in text
    assert "no settlement is recorded on the ledger" in text
