"""Round settlement against a real anvil: payment, anchor, at-most-once, access, crash safety, chain resets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures.ethereum import EthChain, new_account

from bcfl_common.errors import SettlementError
from consortium.settlement import (
    CODE_CHAIN_CHANGED,
    CODE_CONFLICT,
    CODE_REVERTED,
    CODE_UNREACHABLE,
    EthereumSettlement,
    Payout,
    RoundRewards,
    round_digest,
    token_units,
    trial_key,
)

pytestmark = pytest.mark.ethereum

LEDGER_DIGEST = "5f" * 32
REWARDS = {
    "Hospital1MSP": token_units("12.5"),
    "Hospital2MSP": token_units("7"),
    "Hospital3MSP": token_units("0.25"),
    "Hospital4MSP": token_units("30"),
}


def rewards(
    trial: str = "trial-a", round: int = 1, amounts: dict[str, int] | None = None
) -> RoundRewards:
    return RoundRewards(trial, round, LEDGER_DIGEST, dict(amounts or REWARDS))


def balances(client: EthereumSettlement, chain: EthChain) -> dict[str, int]:
    return client.balances(chain.payees)


def settler_nonce(chain: EthChain, client: EthereumSettlement) -> int:
    return client.w3.eth.get_transaction_count(chain.settler.address, "latest")


def test_settle_pays_each_hospital_and_anchors_the_round(eth_chain: EthChain) -> None:
    client = eth_chain.open()
    record = client.settle_rewards(rewards(), eth_chain.payees)

    assert balances(client, eth_chain) == REWARDS
    assert client.token_info()["total_supply"] == sum(REWARDS.values())
    assert not record.already_settled
    assert record.gas_used and record.gas_used < 200_000

    expected_payouts = eth_chain.payees.payouts(REWARDS)
    expected = round_digest(
        "trial-a",
        1,
        bytes.fromhex(LEDGER_DIGEST),
        [p.payee for p in expected_payouts],
        [p.amount for p in expected_payouts],
    )
    anchor = client.contract.functions.anchorOf(trial_key("trial-a"), 1).call()
    assert bytes(anchor) == expected
    assert record.round_digest == "0x" + expected.hex()

    # an auditor reads the same settlement back, by search and by the recorded transaction hash
    for read in (
        client.read_settlement("trial-a", 1),
        client.read_settlement("trial-a", 1, tx_hash=record.tx_hash),
    ):
        assert read is not None
        assert read.round_digest == record.round_digest
        assert read.ledger_digest == "0x" + LEDGER_DIGEST
        assert read.tx_hash == record.tx_hash
        assert read.settler == eth_chain.settler.address
        assert {
            eth_chain.payees.msp_for(p): a for p, a in zip(read.payees, read.amounts, strict=True)
        } == REWARDS
    assert client.read_settlement("trial-a", 2) is None
    assert client.read_settlement("trial-b", 1) is None

    audit = client.reconcile(rewards(), eth_chain.payees)
    assert audit.status == "settled" and audit.problems == ()


def test_settling_a_round_again_pays_nothing(eth_chain: EthChain) -> None:
    client = eth_chain.open()
    first = client.settle_rewards(rewards(), eth_chain.payees)
    nonce = settler_nonce(eth_chain, client)

    # the client sees the settlement and returns it without sending anything
    again = client.settle_rewards(rewards(), eth_chain.payees)
    assert again.already_settled and again.tx_hash == first.tx_hash
    assert settler_nonce(eth_chain, client) == nonce

    # the contract itself refuses a second settlement of the same round, in a mined transaction
    payouts = eth_chain.payees.payouts(REWARDS)
    payees, amounts = [p.payee for p in payouts], [p.amount for p in payouts]
    digest = round_digest("trial-a", 1, bytes.fromhex(LEDGER_DIGEST), payees, amounts)
    call = client.contract.functions.settle(
        trial_key("trial-a"), 1, digest, bytes.fromhex(LEDGER_DIGEST), payees, amounts
    )
    with pytest.raises(SettlementError) as err:
        client._transact(
            call, "settle again", gas=400_000
        )  # fixed gas: skip the estimate, send anyway
    assert err.value.code == CODE_REVERTED
    assert "AlreadySettled" in err.value.message and "transaction 0x" in err.value.message
    receipt = client.w3.eth.get_transaction_receipt(err.value.detail["tx_hash"])
    assert receipt["status"] == 0
    assert balances(client, eth_chain) == REWARDS
    assert client.token_info()["total_supply"] == sum(REWARDS.values())


def test_the_same_round_with_other_amounts_is_refused(eth_chain: EthChain) -> None:
    client = eth_chain.open()
    client.settle_rewards(rewards(), eth_chain.payees)
    changed = {**REWARDS, "Hospital4MSP": token_units("300")}
    with pytest.raises(SettlementError) as err:
        client.settle_rewards(rewards(amounts=changed), eth_chain.payees)
    assert err.value.code == CODE_CONFLICT
    assert "already settled on chain" in err.value.message
    assert balances(client, eth_chain) == REWARDS

    audit = client.reconcile(rewards(amounts=changed), eth_chain.payees)
    assert audit.status == "mismatch"
    assert any("Hospital4MSP" in p and "ledger reward 300" in p for p in audit.problems)
    assert any("anchor" in p for p in audit.problems)


def test_a_non_settler_cannot_settle(eth_chain: EthChain) -> None:
    intruder = new_account()
    eth_chain.node.fund(intruder.address)
    client = eth_chain.open()
    other = EthereumSettlement(client.w3, client.deployment, intruder)

    with pytest.raises(SettlementError) as err:
        other.settle_rewards(rewards(), eth_chain.payees)
    assert err.value.code == CODE_REVERTED
    assert "AccessControlUnauthorizedAccount" in err.value.message
    assert "SETTLER_ROLE" in err.value.message and intruder.address in err.value.message

    # also when the transaction is mined: it fails and pays nothing
    payouts = eth_chain.payees.payouts(REWARDS)
    payees, amounts = [p.payee for p in payouts], [p.amount for p in payouts]
    digest = round_digest("trial-a", 1, bytes.fromhex(LEDGER_DIGEST), payees, amounts)
    call = other.contract.functions.settle(
        trial_key("trial-a"), 1, digest, bytes.fromhex(LEDGER_DIGEST), payees, amounts
    )
    with pytest.raises(SettlementError) as err:
        other._transact(call, "intrude", gas=400_000)
    assert "AccessControlUnauthorizedAccount" in err.value.message
    assert client.read_settlement("trial-a", 1) is None
    assert set(balances(client, eth_chain).values()) == {0}

    # the admin cannot settle either: only the settler role can
    admin_client = EthereumSettlement(client.w3, client.deployment, eth_chain.admin)
    with pytest.raises(SettlementError, match="AccessControlUnauthorizedAccount"):
        admin_client.settle_rewards(rewards(), eth_chain.payees)


def test_payment_must_match_the_anchored_digest(eth_chain: EthChain) -> None:
    client = eth_chain.open()
    payouts = eth_chain.payees.payouts(REWARDS)
    payees, amounts = [p.payee for p in payouts], [p.amount for p in payouts]
    ledger = bytes.fromhex(LEDGER_DIGEST)
    digest = round_digest("trial-a", 1, ledger, payees, amounts)
    inflated = [a * 10 for a in amounts]

    call = client.contract.functions.settle(
        trial_key("trial-a"), 1, digest, ledger, payees, inflated
    )
    with pytest.raises(SettlementError, match="RoundDigestMismatch"):
        client._transact(call, "pay other amounts than anchored")

    unsorted = list(reversed(payees))
    bad = round_digest("trial-a", 1, ledger, unsorted, list(reversed(amounts)))
    call = client.contract.functions.settle(
        trial_key("trial-a"), 1, bad, ledger, unsorted, list(reversed(amounts))
    )
    with pytest.raises(SettlementError, match="PayeesNotAscending"):
        client._transact(call, "unsorted payees")

    assert client.read_settlement("trial-a", 1) is None
    assert set(balances(client, eth_chain).values()) == {0}


def test_zero_rewards_and_anchor_only_rounds(eth_chain: EthChain) -> None:
    client = eth_chain.open()
    some_zero = {**REWARDS, "Hospital3MSP": 0}
    client.settle_rewards(rewards(round=1, amounts=some_zero), eth_chain.payees)
    assert balances(client, eth_chain) == some_zero
    record = client.settle_round("trial-a", 2, LEDGER_DIGEST, [])
    assert record.payees == () and record.total == 0
    assert client.read_settlement("trial-a", 2) is not None
    assert balances(client, eth_chain) == some_zero


def test_a_fresh_chain_is_detected_and_refused(eth_chain: EthChain, anvil_factory: Any) -> None:
    client = eth_chain.open()
    client.settle_rewards(rewards(), eth_chain.payees)
    port = eth_chain.node.port
    eth_chain.node.stop()

    # the node is down: a clear error, nothing assumed
    with pytest.raises(SettlementError) as err:
        client.read_settlement("trial-a", 1)
    assert err.value.code == CODE_UNREACHABLE and f":{port}" in err.value.message

    # anvil restarted on the same port: a new, empty chain
    eth_chain.node = anvil_factory(port=port)
    restarted = eth_chain.open()
    for attempt in (
        lambda: restarted.settle_rewards(rewards(round=2), eth_chain.payees),
        lambda: restarted.read_settlement("trial-a", 1),
        restarted.verify_chain,
    ):
        with pytest.raises(SettlementError) as err:
            attempt()
        assert err.value.code == CODE_CHAIN_CHANGED
        assert "restarted or reset" in err.value.message
    assert (
        restarted.w3.eth.get_transaction_count(eth_chain.settler.address) == 0
    )  # nothing was sent

    # even when the same admin redeploys to the very same addresses
    redeployed = eth_chain.redeploy()
    assert redeployed.settlement == eth_chain.deployment.settlement
    with pytest.raises(SettlementError) as err:
        restarted.settle_rewards(rewards(round=2), eth_chain.payees)
    assert err.value.code == CODE_CHAIN_CHANGED
    assert restarted.w3.eth.get_transaction_count(eth_chain.settler.address) == 0


COORDINATOR = r"""
import json, sys
from consortium.settlement import PayeeDirectory, RoundRewards, open_settlement

url, payees, amounts, out = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
client = open_settlement(url)

def submitted(tx_hash):
    with open(out, "w") as fh:
        fh.write(tx_hash)

rewards = RoundRewards("trial-crash", 1, "5f" * 32, {k: int(v) for k, v in amounts.items()})
client.settle_rewards(rewards, PayeeDirectory(payees), on_submitted=submitted)
"""


def start_coordinator(chain: EthChain, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    script = tmp_path / "coordinator.py"
    script.write_text(COORDINATOR)
    out = tmp_path / "submitted.txt"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            chain.url(timeout=120),
            json.dumps(dict(chain.payees.items())),
            json.dumps({k: str(v) for k, v in REWARDS.items()}),
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return proc, out


def wait_for_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        if proc.poll() is not None:
            raise AssertionError(
                f"coordinator exited early: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        time.sleep(0.05)
    raise AssertionError("coordinator never submitted its transaction")


def test_coordinator_killed_mid_settlement_settles_exactly_once(
    eth_chain: EthChain, tmp_path: Path
) -> None:
    """Killed after sending, before the receipt: the restart waits for that transaction, pays nothing more."""
    eth_chain.node.rpc("evm_setAutomine", [False])  # transactions wait in the pool until we mine
    proc, out = start_coordinator(eth_chain, tmp_path)
    try:
        sent = wait_for_file(out, proc)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # the coordinator dies waiting for its receipt
        proc.wait(timeout=30)
    client = eth_chain.open(timeout=60)
    assert client.read_settlement("trial-crash", 1) is None  # not mined yet

    result: dict[str, Any] = {}

    def restart() -> None:
        try:
            result["record"] = client.settle_rewards(
                RoundRewards("trial-crash", 1, LEDGER_DIGEST, REWARDS), eth_chain.payees
            )
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=restart)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive(), f"restart did not wait for the pending transaction: {result}"
    eth_chain.node.mine()
    thread.join(timeout=60)
    assert "error" not in result, result.get("error")
    record = result["record"]
    assert record.already_settled and record.tx_hash == sent
    assert settler_nonce(eth_chain, client) == 1  # one settlement transaction, ever
    assert balances(client, eth_chain) == REWARDS


def test_coordinator_killed_after_settlement_does_not_pay_again(
    eth_chain: EthChain, tmp_path: Path
) -> None:
    """Killed after the receipt but before recording it on the ledger: the restart finds it."""
    proc, out = start_coordinator(eth_chain, tmp_path)
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode() if proc.stderr else ""
    sent = out.read_text()
    client = eth_chain.open()
    record = client.settle_rewards(
        RoundRewards("trial-crash", 1, LEDGER_DIGEST, REWARDS), eth_chain.payees
    )
    assert record.already_settled and record.tx_hash == sent
    assert settler_nonce(eth_chain, client) == 1
    assert balances(client, eth_chain) == REWARDS


def test_settle_round_accepts_explicit_payouts(eth_chain: EthChain) -> None:
    client = eth_chain.open()
    a, b = (addr for _, addr in list(eth_chain.payees.items())[:2])
    record = client.settle_round("trial-x", 3, "ab" * 32, [Payout(b, 5), Payout(a, 7)])
    assert record.amount_for(a) == 7 and record.amount_for(b) == 5
    assert list(record.payees) == sorted([a, b], key=lambda x: int(x, 16))
    assert client.balance_of(a) == 7


def test_cli_demo_ends_with_token_balances(eth_tools: Any) -> None:
    from click.testing import CliRunner

    from devnet.anvil import settlement_group

    result = CliRunner().invoke(settlement_group, ["demo", "--hospitals", "4", "--rounds", "2"])
    assert result.exit_code == 0, result.output
    assert "Reward token balances" in result.output
    for i in range(1, 5):
        assert f"Hospital{i}MSP" in result.output
    assert "mismatch" not in result.output
