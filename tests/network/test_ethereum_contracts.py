"""The committed contract artifacts match their sources, and the client computes digests as the contract does."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from fixtures.ethereum import EthChain

from consortium.settlement import payout_hash, repo_root, round_digest, trial_key
from devnet.anvil import Toolchain

pytestmark = pytest.mark.ethereum

CONTRACTS = repo_root() / "contracts"


def run_build(contracts: Path, tools: Toolchain, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(contracts / "build.mjs"), "--modules", str(tools.node_modules), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_committed_artifacts_match_a_fresh_compile(eth_tools: Toolchain) -> None:
    result = run_build(CONTRACTS, eth_tools, "--check")
    assert result.returncode == 0, (
        "contracts/artifacts differ from contracts/src; rebuild with `node contracts/build.mjs` "
        f"and commit the result:\n{result.stderr}"
    )


def test_check_fails_when_a_source_changes(eth_tools: Toolchain, tmp_path: Path) -> None:
    copy = tmp_path / "contracts"
    shutil.copytree(CONTRACTS, copy, ignore=shutil.ignore_patterns("node_modules"))
    source = copy / "src" / "RoundSettlement.sol"
    source.write_text(source.read_text().replace("MAX_PAYEES = 256", "MAX_PAYEES = 255"))
    result = run_build(copy, eth_tools, "--check")
    assert result.returncode == 1
    assert "RoundSettlement.json differs from a fresh compile" in result.stderr
    assert "RewardToken.json" not in result.stderr  # only the changed contract is reported


def test_client_digest_equals_the_contracts(eth_chain: EthChain) -> None:
    client = eth_chain.open()
    payees = sorted((a for _, a in eth_chain.payees.items()), key=lambda a: int(a, 16))
    amounts = [0, 1, 10**18, 2**128 - 10**18 - 2]
    ledger = bytes(range(32))
    on_chain = client.contract.functions.roundDigestOf(
        trial_key("trial-ü"), 7, ledger, payees, amounts
    ).call()
    assert bytes(on_chain) == round_digest("trial-ü", 7, ledger, payees, amounts)
    assert bytes(client.contract.functions.payoutHashOf(payees, amounts).call()) == payout_hash(
        payees, amounts
    )
    # the trial id is hashed as UTF-8
    from eth_utils import keccak

    assert trial_key("trial-ü") == keccak("trial-ü".encode())
