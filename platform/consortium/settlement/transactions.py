"""Sending a transaction and reading the reason of a refusal: gas, fees, nonces, receipts, reverts, unreachable nodes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from eth_typing import ABIError

from bcfl_common.errors import SettlementError
from consortium.settlement.digest import (
    CODE_CONFIG,
    CODE_REVERTED,
    CODE_TIMEOUT,
    CODE_UNREACHABLE,
    hex0x,
    keccak,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Revert decoding
# ---------------------------------------------------------------------------------------------

# the errors every Solidity contract may revert with, besides its ABI's own
_BUILTIN_ERRORS: tuple[dict[str, Any], ...] = (
    {"type": "error", "name": "Error", "inputs": [{"type": "string", "name": "reason"}]},
    {"type": "error", "name": "Panic", "inputs": [{"type": "uint256", "name": "code"}]},
)


def error_table(
    *abis: Sequence[Mapping[str, Any]],
) -> dict[bytes, tuple[str, list[str], list[str]]]:
    """Selector -> (error name, input types, input names) of every error the ABIs declare."""
    from eth_utils import abi_to_signature, function_signature_to_4byte_selector

    table: dict[bytes, tuple[str, list[str], list[str]]] = {}
    for abi in (_BUILTIN_ERRORS, *abis):
        for item in abi:
            if item.get("type") != "error":
                continue
            signature = abi_to_signature(cast("ABIError", item))  # an ABI entry of type "error"
            selector = function_signature_to_4byte_selector(signature)
            table[bytes(selector)] = (
                item["name"],
                [i["type"] for i in item["inputs"]],
                [i["name"] for i in item["inputs"]],
            )
    return table


def role_names(*abis: Sequence[Mapping[str, Any]]) -> dict[bytes, str]:
    """Role id -> name of every AccessControl role the ABIs expose as a ``NAME_ROLE()`` constant.

    OpenZeppelin's ids: ``DEFAULT_ADMIN_ROLE`` is 32 zero bytes, every other role is
    ``keccak256("NAME_ROLE")``.
    """
    names: dict[bytes, str] = {}
    for abi in abis:
        for item in abi:
            name = item.get("name", "")
            outputs = [o.get("type") for o in item.get("outputs", ())]
            if item.get("type") != "function" or not name.endswith("_ROLE"):
                continue
            if item.get("inputs") or outputs != ["bytes32"]:
                continue
            role = bytes(32) if name == "DEFAULT_ADMIN_ROLE" else keccak(name.encode())
            names[role] = name
    return names


def revert_data(exc: BaseException) -> bytes | None:
    candidates: list[Any] = [getattr(exc, "data", None)]
    response = getattr(exc, "rpc_response", None)
    if isinstance(response, Mapping):
        err = response.get("error")
        if isinstance(err, Mapping):
            candidates.append(err.get("data"))
    for c in candidates:
        if isinstance(c, Mapping):
            c = c.get("data")
        if isinstance(c, str) and c.startswith("0x") and len(c) >= 10:
            try:
                return bytes.fromhex(c[2:])
            except ValueError:
                continue
    return None


class RevertDecoder:
    """Reads a revert's custom error and arguments against the contracts' ABIs; role ids are shown
    by name. ``decoder(exc)`` is (message, detail) with ``detail["error"]`` the error's name."""

    def __init__(self, *abis: Sequence[Mapping[str, Any]]):
        self.errors = error_table(*abis)
        self.roles = role_names(*abis)

    def error_name(self, exc: BaseException) -> str | None:
        data = revert_data(exc)
        entry = self.errors.get(data[:4]) if data else None
        return entry[0] if entry else None

    def __call__(self, exc: BaseException) -> tuple[str, dict[str, Any]]:
        from eth_abi import decode

        data = revert_data(exc)
        if data is None:
            msg = getattr(exc, "message", None) or str(exc)
            return str(msg), {"error": None}
        entry = self.errors.get(data[:4])
        if entry is None:
            return f"unknown error data {hex0x(data)}", {"error": None, "data": hex0x(data)}
        name, types, names = entry
        try:
            values = decode(types, data[4:])
        except Exception:  # noqa: BLE001 - malformed revert data
            return f"{name}(<undecodable {hex0x(data[4:])}>)", {"error": name}
        shown = {n: self._format_arg(t, v) for n, t, v in zip(names, types, values, strict=True)}
        args = ", ".join(f"{n}={v}" for n, v in shown.items())
        return f"{name}({args})", {"error": name, "args": shown}

    def _format_arg(self, abi_type: str, value: Any) -> str:
        if abi_type == "address":
            from eth_utils import to_checksum_address

            return to_checksum_address(value)
        if abi_type == "bytes32" and bytes(value) in self.roles:
            return f"{self.roles[bytes(value)]} ({hex0x(value)})"
        if isinstance(value, bytes):
            return hex0x(value)
        return str(value)


# ---------------------------------------------------------------------------------------------
# Sending
# ---------------------------------------------------------------------------------------------


def send_transaction(
    w3: Any,
    account: Any,
    call: Any,
    *,
    what: str,
    endpoint: str = "the Ethereum node",
    decode_revert: Callable[[BaseException], tuple[str, dict[str, Any]]] | None = None,
    fees: Callable[[], dict[str, int]] | None = None,
    receipt_timeout: float = 120.0,
    poll_interval: float = 0.2,
    confirmations: int = 0,
    on_submitted: Callable[[str], None] | None = None,
    value: int = 0,
    gas: int | None = None,
) -> Any:
    """Estimate gas (surfacing reverts), sign with ``account``, send, and wait for the receipt.

    ``call`` is a contract function call or constructor. Nonces come from the node's pending count
    and a "nonce too low" race is retried; a reverted receipt is replayed to find its reason.
    A fixed ``gas`` skips the estimate (the transaction is then sent even if it will revert).
    """
    from web3.exceptions import ContractLogicError, TimeExhausted, Web3RPCError

    eth = w3.eth
    sender = account.address
    decode = decode_revert or (
        lambda exc: (getattr(exc, "message", None) or str(exc), {"error": None})
    )

    def reverted(exc: BaseException, stage: str) -> SettlementError:
        reason, detail = decode(exc)
        return SettlementError(
            f"{what}: the contract reverted ({stage}): {reason}",
            code=CODE_REVERTED,
            detail={**detail, "stage": stage},
        )

    with rpc_errors(endpoint, what):
        base_tx: dict[str, Any] = {"from": sender, "value": value}
        if gas is None:
            try:
                estimate = int(call.estimate_gas(base_tx))
            except ContractLogicError as exc:
                raise reverted(exc, "gas estimation") from exc
            gas = min(int(estimate * 1.25) + 20_000, int(eth.get_block("latest")["gasLimit"]))
        # explicit fee fields, or web3's: EIP-1559 (tip from the node, max fee = tip + 2 x base
        # fee), or the node's gas price on a chain without a base fee
        fee_fields = fees() if fees else use_web3_fees(w3)
        tx_hash: str | None = None
        for attempt in range(3):
            nonce = eth.get_transaction_count(sender, "pending")
            tx = call.build_transaction(
                {**base_tx, "nonce": nonce, "gas": gas, "chainId": eth.chain_id, **fee_fields}
            )
            signed = account.sign_transaction(tx)
            try:
                tx_hash = hex0x(eth.send_raw_transaction(signed.raw_transaction))
                break
            except Web3RPCError as exc:
                text = str(exc.message).lower()
                if "already known" in text:
                    tx_hash = hex0x(signed.hash)
                    break
                if "nonce too low" in text and attempt < 2:
                    continue
                if "insufficient funds" in text:
                    balance = eth.get_balance(sender)
                    raise SettlementError(
                        f"{what}: settler {sender} has {balance} wei; the transaction may cost up to"
                        f" {gas * int(tx.get('maxFeePerGas', tx.get('gasPrice', 0)))}"
                        " wei. Fund the settler account",
                        code=CODE_CONFIG,
                    ) from exc
                raise SettlementError(
                    f"{what}: {endpoint} rejected the transaction: {exc.message}",
                    code=CODE_REVERTED,
                ) from exc
        assert tx_hash is not None
        if on_submitted is not None:
            on_submitted(tx_hash)
        try:
            receipt = eth.wait_for_transaction_receipt(
                tx_hash, timeout=receipt_timeout, poll_latency=poll_interval
            )
        except TimeExhausted as exc:
            raise SettlementError(
                f"{what}: transaction {tx_hash} was not mined within {receipt_timeout:.0f}s. It may"
                " still be mined; calling settle_round again is safe (it waits for it and never pays"
                " twice)",
                code=CODE_TIMEOUT,
                detail={"tx_hash": tx_hash},
            ) from exc
        if receipt["status"] != 1:
            replay = {k: tx[k] for k in ("from", "to", "data", "value", "gas") if k in tx}
            try:
                eth.call(replay, receipt["blockNumber"])
                reason = (
                    f"out of gas (used {receipt['gasUsed']} of {gas})"
                    if receipt["gasUsed"] >= gas
                    else "no reason given"
                )
                raise SettlementError(
                    f"{what}: transaction {tx_hash} failed in block {receipt['blockNumber']}: {reason}",
                    code=CODE_REVERTED,
                    detail={"tx_hash": tx_hash, "error": None},
                )
            except ContractLogicError as exc:
                err = reverted(exc, f"transaction {tx_hash}")
                err.detail["tx_hash"] = tx_hash
                raise err from exc
        if confirmations > 0:
            target = receipt["blockNumber"] + confirmations
            deadline = time.monotonic() + receipt_timeout
            while eth.block_number < target:
                if time.monotonic() > deadline:
                    raise SettlementError(
                        f"{what}: transaction {tx_hash} has fewer than {confirmations} confirmations"
                        f" after {receipt_timeout:.0f}s",
                        code=CODE_TIMEOUT,
                        detail={"tx_hash": tx_hash},
                    )
                time.sleep(poll_interval)
        return receipt


@contextmanager
def rpc_errors(endpoint: str, what: str) -> Iterator[None]:
    """Turn a node that cannot be reached, or refuses a call, into SettlementError(CODE_UNREACHABLE)."""
    import requests
    from web3.exceptions import Web3RPCError

    try:
        yield
    except SettlementError:
        raise
    except (requests.exceptions.RequestException, ConnectionError, OSError) as exc:
        raise SettlementError(
            f"cannot reach {endpoint} to {what}: {exc.__class__.__name__}: {exc}",
            code=CODE_UNREACHABLE,
        ) from exc
    except Web3RPCError as exc:
        raise SettlementError(
            f"{endpoint} refused to {what}: {exc.message}", code=CODE_UNREACHABLE
        ) from exc


def use_web3_fees(w3: Any) -> dict[str, int]:
    """No fee fields: web3 fills them when it builds the transaction. On a chain whose blocks
    have no base fee (before London) that takes a gas-price strategy: the node's eth_gasPrice."""
    if w3.eth.get_block("latest").get("baseFeePerGas") is None and (
        w3.eth.generate_gas_price({}) is None  # no strategy set yet
    ):
        from web3.gas_strategies.rpc import rpc_gas_price_strategy

        w3.eth.set_gas_price_strategy(rpc_gas_price_strategy)
    return {}
