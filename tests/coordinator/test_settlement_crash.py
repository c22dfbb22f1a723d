"""`bcfl coordinator serve` killed (-9) between a round's finalisation and its recorded settlement settles it exactly once after a restart (real anvil, real embedded ledger)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.ethereum import EthChain
from test_audit_support import create_running_trial, finalize_round

from consortium.loopback import free_port
from consortium.settlement import token_units
from consortium.storage import open_store
from coordinator.config import CoordinatorConfig
from coordinator.service import CoordinatorService
from coordinator.settlement_step import FAULT_ENV, settlement_round
from privacy import he
from privacy.he import keyholder

pytestmark = pytest.mark.ethereum
TRIAL = "trial-crash"


@pytest.fixture(scope="module")
def secret_context() -> he.HEContext:
    return keyholder.generate_context()


def write_config(config: CoordinatorConfig, chain: EthChain, directory: Path) -> Path:
    payees = directory / "payees.toml"
    payees.write_text(
        "[payees]\n" + "".join(f'{msp} = "{address}"\n' for msp, address in chain.payees.items())
    )
    path = directory / "coordinator.toml"
    path.write_text(
        "[coordinator]\n"
        f'consortium = "{config.consortium}"\n'
        f'state_dir = "{config.state_dir}"\n'
        f'ledger_url = "{config.ledger_url}"\n'
        f'store_url = "{config.store_url}"\n'
        f'database_url = "{config.database_url}"\n'
        "poll_interval = 0.2\n"
        "\n[settlement]\n"
        f'url = "{chain.url(timeout=30)}"\n'
        'payees = "payees.toml"\n'
    )
    return path


@pytest.fixture
def coordinator_process(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `bcfl coordinator serve` as a real process; every process started is stopped at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(config_path: Path, *, fault: str | None = None) -> subprocess.Popen[bytes]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BCFL_COORDINATOR_", FAULT_ENV))
        }
        if fault is not None:
            env[FAULT_ENV] = fault
        log = open(tmp_path / f"coordinator-{len(started)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bcfl_cli",
                "-v",
                "coordinator",
                "serve",
                "--config",
                str(config_path),
                "--port",
                str(free_port()),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        proc.log_path = log.name  # type: ignore[attr-defined]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def log_of(proc: subprocess.Popen[bytes]) -> str:
    return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def round_rewards(net: Any) -> dict[str, Any]:
    [rr] = [
        r
        for r in net.client("auditor").evaluate("get_rewards", {"trial_id": TRIAL})["rounds"]
        if r["round"] == 1
    ]
    return rr


def wait_until(
    condition: Callable[[], Any], proc: subprocess.Popen[bytes], what: str, timeout: float = 90
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(
                f"the coordinator exited ({proc.returncode}) before {what}:\n{log_of(proc)[-4000:]}"
            )
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log_of(proc)[-4000:]}")


@pytest.mark.parametrize("fault", ["before-send", "after-submit", "after-settle"])
def test_killed_between_finalisation_and_settlement_settles_exactly_once_on_restart(
    fault: str,
    make_service: Callable[..., CoordinatorService],
    coordinator_config: CoordinatorConfig,
    contract_net: Any,
    store_url: str,
    eth_chain: EthChain,
    secret_context: he.HEContext,
    tmp_path: Path,
    coordinator_process: Callable[..., subprocess.Popen[bytes]],
) -> None:
    # Round 1 is finalized on the ledger (the hospitals' last attestation), with settlement on.
    service = make_service()
    hospitals = create_running_trial(contract_net, open_store(store_url), secret_context, TRIAL)
    service.database.set_trial_settlement(TRIAL, True, by="admin@OperatorMSP")
    finalize_round(hospitals, service.scheduler.tick)
    service.close()
    rr = round_rewards(contract_net)
    assert rr["status"] == "credited" and rr["settlement"] is None
    expected = {m: token_units(v) for m, v in rr["rewards"].items() if v}
    client = eth_chain.open()
    nonce = lambda: int(client.w3.eth.get_transaction_count(eth_chain.settler.address))  # noqa: E731

    config_path = write_config(coordinator_config, eth_chain, tmp_path)
    crashed = coordinator_process(config_path, fault=fault)
    assert crashed.wait(timeout=120) == -signal.SIGKILL, log_of(crashed)[-4000:]
    assert f"{FAULT_ENV}={fault}: killing the coordinator" in log_of(crashed)
    assert round_rewards(contract_net)["settlement"] is None  # died before recording anything
    on_chain = client.read_settlement(TRIAL, settlement_round(1, 1))
    if fault == "before-send":
        assert nonce() == 0 and on_chain is None
    else:  # sent (anvil mines at once): paid, but the ledger does not know yet
        assert nonce() == 1 and on_chain is not None

    restarted = coordinator_process(config_path)
    settlement = wait_until(
        lambda: round_rewards(contract_net)["settlement"],
        restarted,
        "the settlement to be recorded",
    )
    time.sleep(1.0)  # a few more scheduler passes: nothing more may happen

    record = client.read_settlement(TRIAL, settlement_round(1, 1), tx_hash=settlement["tx_hash"])
    assert record is not None and record.tx_hash == settlement["tx_hash"]
    if on_chain is not None:
        assert (
            on_chain.tx_hash == settlement["tx_hash"]
        )  # the restart found it and did not pay again
    assert nonce() == 1  # exactly one settlement transaction, ever
    balances = client.balances(eth_chain.payees)
    assert {m: b for m, b in balances.items() if b} == expected  # paid once
    events = [e.name for e in contract_net.client("auditor").ledger.events(0)]
    assert events.count("SettlementRecorded") == 1  # recorded once
    history = contract_net.client("auditor").evaluate(
        "get_history", {"trial_id": TRIAL, "record": "round_rewards", "round": 1, "attempt": 1}
    )
    assert [h["value"]["settlement"] is not None for h in history] == [True, False, False]
    assert "settled on chain" in log_of(restarted)
