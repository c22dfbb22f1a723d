"""The settlement seam (``open_settlement(url)``) and its Ethereum implementation over web3.py."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from bcfl_common.errors import SettlementError
from consortium.settlement.configuration import (
    Deployment,
    PayeeDirectory,
    canonical_payouts,
    connect_web3,
    load_settler_key,
    rpc_endpoint,
)
from consortium.settlement.deployment import abi_fingerprint, load_artifact
from consortium.settlement.digest import (
    CODE_CHAIN_CHANGED,
    CODE_CONFIG,
    CODE_CONFLICT,
    CODE_PENDING,
    bytes32,
    check_round,
    checked_address,
    hex0x,
    keccak,
    round_digest,
    trial_key,
)
from consortium.settlement.records import (
    PayeeRow,
    Payout,
    RoundReconciliation,
    RoundRewards,
    SettlementRecord,
)
from consortium.settlement.transactions import RevertDecoder, rpc_errors, send_transaction

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# The seam
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class Settlement(Protocol):
    """What the coordinator and the auditor use; ``open_settlement(url)`` returns one."""

    def verify_chain(self) -> None: ...

    def settle_round(
        self,
        trial: str,
        round: int,
        ledger_digest: bytes | str,
        payouts: Iterable[Payout] | Mapping[str, int],
        *,
        on_submitted: Callable[[str], None] | None = None,
    ) -> SettlementRecord: ...

    def settle_rewards(
        self,
        rewards: RoundRewards,
        payees: PayeeDirectory,
        *,
        on_submitted: Callable[[str], None] | None = None,
    ) -> SettlementRecord: ...

    def is_settled(self, trial: str, round: int) -> bool: ...

    def read_settlement(
        self, trial: str, round: int, *, tx_hash: str | None = None
    ) -> SettlementRecord | None: ...

    def reconcile(self, rewards: RoundRewards, payees: PayeeDirectory) -> RoundReconciliation: ...

    def balance_of(self, address: str) -> int: ...

    def close(self) -> None: ...


class EthereumSettlement:
    """Settlement on an EVM chain through web3.py, signed locally with the settler's key."""

    def __init__(
        self,
        w3: Any,
        deployment: Deployment,
        account: Any | None = None,
        *,
        endpoint: str = "",
        receipt_timeout: float = 120.0,
        poll_interval: float = 0.2,
        confirmations: int = 0,
        log_range: int = 100_000,
    ):
        self.w3 = w3
        self.log_range = max(1, log_range)
        self.deployment = deployment
        self.account = account
        self.endpoint = endpoint or "the Ethereum node"
        self.receipt_timeout = receipt_timeout
        self.poll_interval = poll_interval
        self.confirmations = confirmations
        settlement_art = load_artifact("RoundSettlement")
        token_art = load_artifact("RewardToken")
        self._check_abis(settlement_art, token_art)
        self.contract = w3.eth.contract(address=deployment.settlement, abi=settlement_art["abi"])
        self.token = w3.eth.contract(address=deployment.token, abi=token_art["abi"])
        self._decode_revert = RevertDecoder(settlement_art["abi"], token_art["abi"])

    # -- chain identity -------------------------------------------------------------------

    def _check_abis(self, settlement_art: Mapping[str, Any], token_art: Mapping[str, Any]) -> None:
        for name, art in (("RoundSettlement", settlement_art), ("RewardToken", token_art)):
            recorded = self.deployment.abi_sha256.get(name)
            if recorded and recorded != abi_fingerprint(art):
                raise SettlementError(
                    f"the deployment's {name} was built from another interface (ABI sha256"
                    f" {recorded}) than contracts/artifacts/{name}.json ({abi_fingerprint(art)});"
                    " use the matching bcfl version or redeploy",
                    code=CODE_CONFIG,
                )

    def _rpc(self, what: str) -> Any:
        return rpc_errors(self.endpoint, what)

    def verify_chain(self) -> None:
        """Refuse (CODE_CHAIN_CHANGED) unless the node serves the chain and contracts deployed."""
        d = self.deployment
        eth = self.w3.eth
        restarted = (
            " The chain was probably restarted or reset (a fresh anvil is a new chain): settlements"
            " recorded before are not on it. Redeploy with `bcfl settlement deploy` to start a new"
            " settlement record, and keep the old deployment file for the audit trail."
        )
        with self._rpc("check the chain"):
            chain_id = eth.chain_id
            if chain_id != d.chain_id:
                raise SettlementError(
                    f"{self.endpoint} serves chain id {chain_id}; the deployment expects chain id"
                    f" {d.chain_id}",
                    code=CODE_CHAIN_CHANGED,
                    detail={"expected": d.chain_id, "found": chain_id},
                )
            genesis = hex0x(eth.get_block(0)["hash"])
            if genesis != d.genesis_hash:
                raise SettlementError(
                    f"{self.endpoint} has genesis block {genesis}; the deployment expects genesis"
                    f" {d.genesis_hash}." + restarted,
                    code=CODE_CHAIN_CHANGED,
                    detail={"expected": d.genesis_hash, "found": genesis},
                )
            head = eth.block_number
            if head < d.deploy_block:
                raise SettlementError(
                    f"{self.endpoint} is at block {head}, below the deployment block"
                    f" {d.deploy_block}." + restarted,
                    code=CODE_CHAIN_CHANGED,
                    detail={"expected_min_block": d.deploy_block, "found": head},
                )
            block_hash = hex0x(eth.get_block(d.deploy_block)["hash"])
            if block_hash != d.deploy_block_hash:
                raise SettlementError(
                    f"{self.endpoint} has block {d.deploy_block} = {block_hash}; the deployment"
                    f" expects {d.deploy_block_hash} (the chain was reorganised or reset)."
                    + restarted,
                    code=CODE_CHAIN_CHANGED,
                    detail={"expected": d.deploy_block_hash, "found": block_hash},
                )
            for name, address, expected in (
                ("RoundSettlement", d.settlement, d.settlement_code_hash),
                ("RewardToken", d.token, d.token_code_hash),
            ):
                code = bytes(eth.get_code(address))
                found = hex0x(keccak(code)) if code else None
                if found != expected:
                    raise SettlementError(
                        f"{name} at {address} on {self.endpoint} has "
                        + (f"code hash {found}" if code else "no code")
                        + f"; the deployment expects code hash {expected}."
                        + restarted,
                        code=CODE_CHAIN_CHANGED,
                        detail={"contract": address, "expected": expected, "found": found},
                    )

    # -- reading ----------------------------------------------------------------------------

    def is_settled(self, trial: str, round: int) -> bool:
        self.verify_chain()
        with self._rpc("read a settlement"):
            return bool(
                self.contract.functions.isSettled(trial_key(trial), check_round(round)).call()
            )

    def read_settlement(
        self, trial: str, round: int, *, tx_hash: str | None = None
    ) -> SettlementRecord | None:
        """The on-chain settlement of (trial, round), or None if it has not been settled.

        ``tx_hash`` (e.g. the one recorded on the ledger) finds the round's event directly;
        without it the contract's logs are searched from the deployment block.
        """
        self.verify_chain()
        return self._read(trial, round, tx_hash=tx_hash)

    def _read(
        self, trial: str, round: int, *, tx_hash: str | None = None
    ) -> SettlementRecord | None:
        from web3.logs import DISCARD

        key = trial_key(trial)
        check_round(round)
        with self._rpc("read a settlement"):
            digest = bytes(self.contract.functions.anchorOf(key, round).call())
            if digest == bytes(32):
                return None
            event = self.contract.events.RoundSettled()
            wanted = {"trial": key, "round": round, "roundDigest": digest}
            found = None
            if tx_hash:
                receipt = self.w3.eth.get_transaction_receipt(tx_hash)
                found = next(
                    (
                        ev
                        for ev in event.process_receipt(receipt, errors=DISCARD)
                        if self._is(ev, wanted)
                    ),
                    None,
                )
            if found is None:
                found = self._search_logs(event, wanted)
            if found is None:
                raise SettlementError(
                    f"trial {trial!r} round {round} is anchored with digest {hex0x(digest)}, but no"
                    f" RoundSettled event for it was found from block {self.deployment.deploy_block};"
                    " expected exactly one (is the node pruning logs?)",
                    code=CODE_CHAIN_CHANGED,
                )
            receipt = self.w3.eth.get_transaction_receipt(found["transactionHash"])
            return self._record(trial, round, found, receipt)

    def _is(self, ev: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
        """Whether a decoded event is the settlement contract's and carries ``wanted``'s values."""
        return ev["address"] == self.deployment.settlement and all(
            ev["args"][name] == value for name, value in wanted.items()
        )

    def _search_logs(self, event: Any, wanted: Mapping[str, Any]) -> Any | None:
        """The first RoundSettled event with ``wanted``'s (indexed) values, from the deployment
        block on, asked for in ranges of ``log_range`` blocks."""
        head = self.w3.eth.block_number
        start = self.deployment.deploy_block
        while start <= head:
            end = min(head, start + self.log_range - 1)
            logs = event.get_logs(argument_filters=dict(wanted), from_block=start, to_block=end)
            found = next((ev for ev in logs if self._is(ev, wanted)), None)
            if found is not None:
                return found
            start = end + 1
        return None

    def _record(self, trial: str, round: int, ev: Any, receipt: Any) -> SettlementRecord:
        args = ev["args"]
        block = self.w3.eth.get_block(ev["blockNumber"])
        return SettlementRecord(
            trial=trial,
            round=round,
            trial_key=hex0x(args["trial"]),
            round_digest=hex0x(args["roundDigest"]),
            ledger_digest=hex0x(args["ledgerDigest"]),
            payees=tuple(args["payees"]),
            amounts=tuple(int(a) for a in args["amounts"]),
            total=int(args["total"]),
            tx_hash=hex0x(ev["transactionHash"]),
            block_number=int(ev["blockNumber"]),
            block_hash=hex0x(ev["blockHash"]),
            timestamp=int(block["timestamp"]),
            chain_id=self.deployment.chain_id,
            contract=self.deployment.settlement,
            settler=receipt["from"],
            gas_used=int(receipt["gasUsed"]),
        )

    def balance_of(self, address: str) -> int:
        """Reward-token balance of ``address`` in base units."""
        self.verify_chain()
        with self._rpc("read a balance"):
            return int(self.token.functions.balanceOf(checked_address(address, "address")).call())

    def balances(self, payees: PayeeDirectory) -> dict[str, int]:
        """MSP id -> reward-token balance (base units) for every configured hospital."""
        self.verify_chain()
        with self._rpc("read balances"):
            return {
                msp: int(self.token.functions.balanceOf(addr).call())
                for msp, addr in payees.items()
            }

    def token_info(self) -> dict[str, Any]:
        with self._rpc("read the token"):
            f = self.token.functions
            return {
                "address": self.deployment.token,
                "name": f.name().call(),
                "symbol": f.symbol().call(),
                "decimals": int(f.decimals().call()),
                "total_supply": int(f.totalSupply().call()),
            }

    # -- settling ---------------------------------------------------------------------------

    def settle_rewards(
        self,
        rewards: RoundRewards,
        payees: PayeeDirectory,
        *,
        on_submitted: Callable[[str], None] | None = None,
    ) -> SettlementRecord:
        """Settle a round from the ledger's rewards (MSP id -> base units) via the payee map."""
        return self.settle_round(
            rewards.trial,
            rewards.round,
            rewards.ledger_digest,
            payees.payouts(rewards.rewards),
            on_submitted=on_submitted,
        )

    def settle_round(
        self,
        trial: str,
        round: int,
        ledger_digest: bytes | str,
        payouts: Iterable[Payout] | Mapping[str, int],
        *,
        on_submitted: Callable[[str], None] | None = None,
    ) -> SettlementRecord:
        """Pay ``payouts`` for (trial, round) and anchor its digest; idempotent by (trial, round).

        If (trial, round) is already settled with the same digest, the existing settlement is
        returned (``already_settled=True``) and nothing is paid; if it is settled with different
        data, CODE_CONFLICT is raised. Safe to call again after a crash at any point: earlier
        unmined transactions of the settler are waited for before anything new is sent, and the
        contract's at-most-once check is the final guard. ``on_submitted(tx_hash)`` is called
        once the transaction is accepted by the node, before its receipt (the coordinator may
        record it).
        """
        account = self._require_account()
        ledger = bytes32(ledger_digest, "ledger_digest")
        check_round(round)
        ordered = canonical_payouts(payouts)
        payees = [p.payee for p in ordered]
        amounts = [p.amount for p in ordered]
        digest = round_digest(trial, round, ledger, payees, amounts)

        self.verify_chain()
        existing = self._existing(trial, round, digest)
        if existing is not None:
            return existing
        if self._wait_for_pending(account.address):
            existing = self._existing(trial, round, digest)  # an earlier attempt may have landed
            if existing is not None:
                return existing

        call = self.contract.functions.settle(
            trial_key(trial), round, digest, ledger, payees, amounts
        )
        try:
            receipt = self._transact(call, f"settle trial {trial!r} round {round}", on_submitted)
        except SettlementError as exc:
            if exc.detail.get("error") == "AlreadySettled":  # lost a race with an earlier attempt
                existing = self._existing(trial, round, digest)
                if existing is not None:
                    return existing
            raise
        record = self._read(trial, round, tx_hash=hex0x(receipt["transactionHash"]))
        if record is None or record.tx_hash != hex0x(receipt["transactionHash"]):
            raise SettlementError(
                f"settle trial {trial!r} round {round}: transaction {hex0x(receipt['transactionHash'])}"
                " succeeded but the contract does not show it as the round's settlement",
                code=CODE_CHAIN_CHANGED,
            )
        log.info(
            "settled trial %s round %s: %d payees, total %d, tx %s, gas %s",
            trial,
            round,
            len(payees),
            record.total,
            record.tx_hash,
            record.gas_used,
        )
        return record

    def _existing(self, trial: str, round: int, digest: bytes) -> SettlementRecord | None:
        record = self._read(trial, round)
        if record is None:
            return None
        if record.round_digest != hex0x(digest):
            raise SettlementError(
                f"trial {trial!r} round {round} is already settled on chain with round digest"
                f" {record.round_digest} (tx {record.tx_hash}); this settlement commits to"
                f" {hex0x(digest)}: the payees, amounts or ledger digest differ. Nothing was paid;"
                " reconcile the round against the ledger (auditor view)",
                code=CODE_CONFLICT,
                detail={"onchain": record.to_dict(), "expected_digest": hex0x(digest)},
            )
        return replace(record, already_settled=True)

    def _require_account(self) -> Any:
        if self.account is None:
            raise SettlementError(
                "this settlement client has no settler key; expected `key=/path/to/settler.key` in"
                " the eth:// URL (or BCFL_ETH_SETTLER_KEY)",
                code=CODE_CONFIG,
            )
        return self.account

    def _wait_for_pending(self, address: str) -> bool:
        """Wait until none of ``address``'s transactions is unmined; True if there were some."""
        eth = self.w3.eth
        deadline = time.monotonic() + self.receipt_timeout
        waited = False
        while True:
            with self._rpc("read the settler's nonce"):
                pending = eth.get_transaction_count(address, "pending")
                latest = eth.get_transaction_count(address, "latest")
            if pending <= latest:
                return waited
            if time.monotonic() > deadline:
                raise SettlementError(
                    f"settler {address} has {pending - latest} transaction(s) pending (nonces"
                    f" {latest}..{pending - 1}) after {self.receipt_timeout:.0f}s; not sending"
                    " another settlement until they are mined or dropped. Retry later",
                    code=CODE_PENDING,
                )
            waited = True
            time.sleep(self.poll_interval)

    def _transact(
        self,
        call: Any,
        what: str,
        on_submitted: Callable[[str], None] | None = None,
        *,
        gas: int | None = None,
    ) -> Any:
        """Estimate, sign, send and wait for ``call``; a revert becomes CODE_REVERTED with its reason."""
        return send_transaction(
            self.w3,
            self.account,
            call,
            what=what,
            endpoint=self.endpoint,
            decode_revert=self._decode_revert,
            receipt_timeout=self.receipt_timeout,
            poll_interval=self.poll_interval,
            confirmations=self.confirmations,
            on_submitted=on_submitted,
            gas=gas,
        )

    # -- auditing ---------------------------------------------------------------------------

    def reconcile(self, rewards: RoundRewards, payees: PayeeDirectory) -> RoundReconciliation:
        """The ledger's rewards for a round next to its on-chain settlement, with every mismatch."""
        expected = payees.payouts(rewards.rewards)
        ledger = bytes32(rewards.ledger_digest, "ledger_digest")
        digest = hex0x(
            round_digest(
                rewards.trial,
                rewards.round,
                ledger,
                [p.payee for p in expected],
                [p.amount for p in expected],
            )
        )
        record = self.read_settlement(rewards.trial, rewards.round)
        chain = dict(zip(record.payees, record.amounts, strict=True)) if record else {}
        ledger_amounts = {p.payee: p.amount for p in expected}
        rows: list[PayeeRow] = []
        for address in sorted(set(ledger_amounts) | set(chain), key=lambda a: int(a, 16)):
            msp = payees.msp_for(address) or "(unknown payee)"
            rows.append(
                PayeeRow(
                    msp,
                    address,
                    ledger_amounts.get(address),
                    chain.get(address) if record else None,
                )
            )
        if record is None:
            return RoundReconciliation(
                rewards.trial,
                rewards.round,
                "unsettled",
                digest,
                None,
                tuple(rows),
                ("not settled on chain",),
            )
        problems: list[str] = []
        if record.round_digest != digest:
            problems.append(
                f"anchor {record.round_digest} differs from the digest of the ledger's round {digest}"
            )
        if record.ledger_digest != hex0x(ledger):
            problems.append(
                f"anchored ledger digest {record.ledger_digest} differs from the ledger's {hex0x(ledger)}"
            )
        for r in rows:
            if not r.matches:
                problems.append(
                    f"{r.msp_id} ({r.payee}): ledger reward {r.ledger_amount if r.ledger_amount is not None else 'none'},"
                    f" paid on chain {r.chain_amount if r.chain_amount is not None else 'nothing'}"
                )
        return RoundReconciliation(
            rewards.trial,
            rewards.round,
            "mismatch" if problems else "settled",
            digest,
            record,
            tuple(rows),
            tuple(problems),
        )

    def close(self) -> None:
        session = getattr(self.w3.provider, "_request_session_manager", None)
        close = getattr(getattr(session, "session", None), "close", None)
        if callable(close):  # pragma: no branch - best effort; web3 keeps a cached session
            try:
                close()
            except Exception:  # noqa: BLE001
                pass

    def __enter__(self) -> EthereumSettlement:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Opening and deploying
# ---------------------------------------------------------------------------------------------

_FACTORIES: dict[str, Callable[[str, Any], Settlement]] = {}


def register_settlement_scheme(scheme: str, factory: Callable[[str, Any], Settlement]) -> None:
    _FACTORIES[scheme] = factory


def open_settlement(url: str, identity: Any = None) -> Settlement:
    """A settlement client for ``url``.

    ``eth://host:port[/path]?deployment=FILE&key=FILE[&timeout=S][&confirmations=N][&poa=1]``
    ``[&log_range=BLOCKS]``
    (``eths://`` for HTTPS). ``deployment`` is the JSON written by ``deploy_contracts``; ``key``
    is the settler's private key file (mode 0600), needed only to settle. Both fall back to
    ``BCFL_ETH_DEPLOYMENT`` and ``BCFL_ETH_SETTLER_KEY``. ``identity`` (the ledger identity) is
    accepted for the seam's uniform signature; the Ethereum key never derives from it.
    """
    scheme = urlsplit(url).scheme
    factory = _FACTORIES.get(scheme)
    if factory is None:
        raise SettlementError(
            f"settlement URL {url!r} has scheme {scheme!r}; expected one of: {', '.join(sorted(_FACTORIES))}",
            code=CODE_CONFIG,
        )
    return factory(url, identity)


def _open_eth(url: str, identity: Any = None) -> EthereumSettlement:
    endpoint, query = rpc_endpoint(url)
    deployment_path = query.get("deployment") or os.environ.get("BCFL_ETH_DEPLOYMENT")
    if not deployment_path:
        raise SettlementError(
            f"settlement URL {url!r} names no deployment; expected ?deployment=/path/deployment.json"
            " (or BCFL_ETH_DEPLOYMENT)",
            code=CODE_CONFIG,
        )
    key_path = query.get("key") or os.environ.get("BCFL_ETH_SETTLER_KEY")

    def number(name: str, default: float) -> float:
        try:
            value = float(query.get(name, default))
        except ValueError:
            value = -1
        if value < 0:
            raise SettlementError(
                f"settlement URL: {name}={query.get(name)!r}; expected a non-negative number",
                code=CODE_CONFIG,
            )
        return value

    timeout = number("timeout", 120.0)
    w3 = connect_web3(
        endpoint, timeout=min(timeout, 60.0), poa=query.get("poa") in ("1", "true", "yes")
    )
    return EthereumSettlement(
        w3,
        Deployment.load(deployment_path),
        load_settler_key(key_path) if key_path else None,
        endpoint=endpoint,
        receipt_timeout=timeout,
        poll_interval=number("poll", 0.2),
        confirmations=int(number("confirmations", 0)),
        log_range=max(1, int(number("log_range", 100_000))),
    )


register_settlement_scheme("eth", _open_eth)
register_settlement_scheme("eths", _open_eth)
