"""The committed contract artifacts and deploying them: RewardToken, RoundSettlement, the minter grant."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bcfl_common.canonical import canonical_json, sha256_hex
from bcfl_common.errors import SettlementError
from consortium.settlement.configuration import Deployment, connect_web3, rpc_endpoint
from consortium.settlement.digest import CODE_CONFIG, checked_address, hex0x, keccak
from consortium.settlement.transactions import RevertDecoder, send_transaction

log = logging.getLogger(__name__)

DEFAULT_TOKEN_NAME = "bcfl Contribution Reward"
DEFAULT_TOKEN_SYMBOL = "BCFLR"


def repo_root() -> Path:
    """The clone this module runs from (contracts/ and deploy/ live there)."""
    return Path(__file__).resolve().parents[3]  # platform/consortium/settlement/<this file>


def artifacts_dir() -> Path:
    return Path(
        os.environ.get("BCFL_CONTRACTS_ARTIFACTS") or repo_root() / "contracts" / "artifacts"
    )


def load_artifact(name: str) -> dict[str, Any]:
    """A committed compiled contract (``RewardToken`` or ``RoundSettlement``): abi, bytecode, ..."""
    p = artifacts_dir() / f"{name}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise SettlementError(
            f"contract artifact {p}: cannot load it ({exc}); expected the committed output of"
            " `node contracts/build.mjs` (or set BCFL_CONTRACTS_ARTIFACTS)",
            code=CODE_CONFIG,
        ) from exc


def abi_fingerprint(artifact: Mapping[str, Any]) -> str:
    return sha256_hex(canonical_json(artifact["abi"]))


def deploy_contracts(
    rpc: str | Any,
    admin: Any,
    settler: str,
    deployment_path: str | os.PathLike[str] | None = None,
    *,
    token_name: str = DEFAULT_TOKEN_NAME,
    token_symbol: str = DEFAULT_TOKEN_SYMBOL,
    receipt_timeout: float = 120.0,
) -> Deployment:
    """Deploy RewardToken and RoundSettlement, make the latter the token's minter, record it all.

    ``rpc`` is an http(s):// or eth:// URL or a Web3; ``admin`` (a LocalAccount) pays for and
    administers both contracts; ``settler`` is the address allowed to settle.
    """
    if isinstance(rpc, str):
        endpoint = rpc_endpoint(rpc)[0] if rpc.startswith(("eth://", "eths://")) else rpc
        w3 = connect_web3(endpoint)
    else:
        w3, endpoint = rpc, "the Ethereum node"
    settler = checked_address(settler, "settler")
    token_art = load_artifact("RewardToken")
    settlement_art = load_artifact("RoundSettlement")
    errors = RevertDecoder(token_art["abi"], settlement_art["abi"])

    def decode(exc: BaseException) -> tuple[str, dict[str, Any]]:
        name = errors.error_name(exc)
        if name is not None:
            return name, {"error": name}
        return str(getattr(exc, "message", exc)), {"error": None}

    Token = w3.eth.contract(abi=token_art["abi"], bytecode=token_art["bytecode"])
    r1 = send_transaction(
        w3,
        admin,
        Token.constructor(token_name, token_symbol, admin.address),
        what="deploy RewardToken",
        decode_revert=decode,
        endpoint=endpoint,
        receipt_timeout=receipt_timeout,
    )
    token_address = r1["contractAddress"]
    Settle = w3.eth.contract(abi=settlement_art["abi"], bytecode=settlement_art["bytecode"])
    deployment_id = os.urandom(32)
    r2 = send_transaction(
        w3,
        admin,
        Settle.constructor(admin.address, token_address, settler, deployment_id),
        what="deploy RoundSettlement",
        decode_revert=decode,
        endpoint=endpoint,
        receipt_timeout=receipt_timeout,
    )
    settlement_address = r2["contractAddress"]
    token = w3.eth.contract(address=token_address, abi=token_art["abi"])
    minter_role = token.functions.MINTER_ROLE().call()
    r3 = send_transaction(
        w3,
        admin,
        token.functions.grantRole(minter_role, settlement_address),
        what="grant MINTER_ROLE to RoundSettlement",
        decode_revert=decode,
        endpoint=endpoint,
        receipt_timeout=receipt_timeout,
    )
    deploy_block = int(r2["blockNumber"])
    deployment = Deployment(
        chain_id=int(w3.eth.chain_id),
        genesis_hash=hex0x(w3.eth.get_block(0)["hash"]),
        settlement=settlement_address,
        token=token_address,
        deploy_block=deploy_block,
        deploy_block_hash=hex0x(r2["blockHash"]),
        settlement_code_hash=hex0x(keccak(bytes(w3.eth.get_code(settlement_address)))),
        token_code_hash=hex0x(keccak(bytes(w3.eth.get_code(token_address)))),
        admin=admin.address,
        settler=settler,
        deployment_id=hex0x(deployment_id),
        abi_sha256={
            "RewardToken": abi_fingerprint(token_art),
            "RoundSettlement": abi_fingerprint(settlement_art),
        },
    )
    log.info(
        "deployed RewardToken %s and RoundSettlement %s at block %d (minter grant in block %d)",
        token_address,
        settlement_address,
        deploy_block,
        r3["blockNumber"],
    )
    if deployment_path is not None:
        deployment.save(deployment_path)
    return deployment
