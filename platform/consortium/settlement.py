"""Optional Ethereum settlement: pay a finalized round's ledger rewards and anchor its digest (eth://)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qs, unquote, urlsplit

from bcfl_common.canonical import canonical_json, sha256_hex
from bcfl_common.errors import SettlementError
from bcfl_common.files import write_atomic
from consortium.loopback import free_port

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Constants and the digest every party computes the same way (contracts/src/RoundSettlement.sol)
# ---------------------------------------------------------------------------------------------

DEPLOYMENT_FORMAT = "bcfl.settlement.deployment.v1"
DIGEST_TAG_TEXT = "bcfl.settlement.round.v1"
TOKEN_DECIMALS = 18
MAX_PAYEES = 256
MAX_TOTAL = 2**128 - 1
MAX_ROUND = 2**64 - 1
DEFAULT_TOKEN_NAME = "bcfl Contribution Reward"
DEFAULT_TOKEN_SYMBOL = "BCFLR"
ANVIL_PACKAGE = "@foundry-rs/anvil-linux-amd64"

# Stable codes (SettlementError.code) a caller can match on.
CODE_CHAIN_CHANGED = "SETTLEMENT_CHAIN_CHANGED"  # fresh / reset / different chain or contract
CODE_REVERTED = "SETTLEMENT_REVERTED"  # the contract refused the call; message has the reason
CODE_CONFLICT = "SETTLEMENT_CONFLICT"  # (trial, round) settled on chain with different data
CODE_PENDING = "SETTLEMENT_PENDING"  # earlier settler transactions are still unmined
CODE_TIMEOUT = "SETTLEMENT_TIMEOUT"  # sent, but no receipt in time (safe to call again)
CODE_UNREACHABLE = "SETTLEMENT_UNREACHABLE"  # the node does not answer
CODE_CONFIG = "SETTLEMENT_CONFIG"  # bad URL, key file, deployment file or payee map


def _keccak(data: bytes) -> bytes:
    from eth_utils import keccak

    return keccak(data)


_ROLE_NAMES = {
    bytes(32): "DEFAULT_ADMIN_ROLE",
    bytes.fromhex(
        "6666bf5bfee463d10a7fc50448047f8a53b7762d7e28fbc5c643182785f3fd3f"
    ): "SETTLER_ROLE",
    bytes.fromhex(
        "9f2df0fed2c77648de5860a4cc508cd0818c85b8b8a1ab4ceeef8d981c8956a6"
    ): "MINTER_ROLE",
}

# keccak256("RoundSettled(bytes32,uint64,bytes32,bytes32,uint256,address[],uint256[])")
_ROUND_SETTLED_TOPIC = bytes.fromhex(
    "d1c190fd0d8c6a8dab5d92276d12fe70cc83f76203072d8277d7687f9fd3790e"
)


def trial_key(trial: str) -> bytes:
    """The trial's on-chain id: keccak-256 of the UTF-8 trial id used on the ledger."""
    if not isinstance(trial, str) or not trial:
        raise SettlementError(
            f"trial id {trial!r} is not valid; expected a non-empty string (the ledger's trial id)",
            code=CODE_CONFIG,
        )
    return _keccak(trial.encode("utf-8"))


def payout_hash(payees: Sequence[str], amounts: Sequence[int]) -> bytes:
    """keccak256(abi.encode(address[] payees, uint256[] amounts)), as the contract computes it."""
    from eth_abi import encode

    return _keccak(encode(["address[]", "uint256[]"], [list(payees), list(amounts)]))


def round_digest(
    trial: str, round: int, ledger_digest: bytes, payees: Sequence[str], amounts: Sequence[int]
) -> bytes:
    """The anchor of a settled round; equals ``RoundSettlement.roundDigestOf`` on chain.

    keccak256(abi.encode(keccak256("bcfl.settlement.round.v1"), keccak256(utf8(trial)), uint64
    round, bytes32 ledgerDigest, keccak256(abi.encode(payees, amounts)))).
    """
    from eth_abi import encode

    return _keccak(
        encode(
            ["bytes32", "bytes32", "uint64", "bytes32", "bytes32"],
            [
                _keccak(DIGEST_TAG_TEXT.encode()),
                trial_key(trial),
                _check_round(round),
                _bytes32(ledger_digest, "ledger_digest"),
                payout_hash(payees, amounts),
            ],
        )
    )


def token_units(amount: Decimal | int | str, decimals: int = TOKEN_DECIMALS) -> int:
    """Whole tokens (e.g. ``"12.5"``) to base units; refuses amounts finer than the token allows."""
    try:
        value = Decimal(str(amount)) if not isinstance(amount, Decimal) else amount
    except InvalidOperation as exc:
        raise SettlementError(f"amount {amount!r} is not a number", code=CODE_CONFIG) from exc
    scaled = value.scaleb(decimals)
    if not scaled.is_finite() or scaled != scaled.to_integral_value() or scaled < 0:
        raise SettlementError(
            f"amount {amount!r} is not a non-negative multiple of 10^-{decimals} tokens",
            code=CODE_CONFIG,
        )
    return int(scaled)


def _check_round(round: int) -> int:
    if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round <= MAX_ROUND:
        raise SettlementError(
            f"round {round!r} is not valid; expected an integer in [0, 2^64)", code=CODE_CONFIG
        )
    return round


def _bytes32(value: bytes | str, name: str) -> bytes:
    raw: bytes | None = None
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
    elif isinstance(value, str):
        text = value[2:] if value[:2].lower() == "0x" else value
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None or len(raw) != 32:
        raise SettlementError(
            f"{name} {value!r} is not valid; expected 32 bytes (64 hex digits, e.g. a sha256 digest)",
            code=CODE_CONFIG,
        )
    return raw


def _address(value: str, what: str) -> str:
    from eth_utils import is_address, to_checksum_address

    if not isinstance(value, str) or not is_address(value):
        raise SettlementError(
            f"{what} {value!r} is not an Ethereum address; expected 0x followed by 40 hex digits"
            " (checksummed if mixed case)",
            code=CODE_CONFIG,
        )
    return to_checksum_address(value)


def _hex(data: bytes) -> str:
    return "0x" + bytes(data).hex()


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payout:
    """One payment of a round: ``amount`` token base units to ``payee`` (hospital ``msp_id``)."""

    payee: str
    amount: int
    msp_id: str | None = None


@dataclass(frozen=True)
class RoundRewards:
    """A finalized round's rewards as the ledger recorded them: MSP id -> token base units."""

    trial: str
    round: int
    ledger_digest: str  # hex digest of the finalized round record on the ledger
    rewards: Mapping[str, int]


@dataclass(frozen=True)
class SettlementRecord:
    """A round's settlement as it stands on chain (decoded from the contract and its event)."""

    trial: str
    round: int
    trial_key: str
    round_digest: str
    ledger_digest: str
    payees: tuple[str, ...]
    amounts: tuple[int, ...]
    total: int
    tx_hash: str
    block_number: int
    block_hash: str
    timestamp: int
    chain_id: int
    contract: str
    settler: str
    gas_used: int | None = None
    already_settled: bool = False  # True when settle_round found it settled by an earlier call

    def amount_for(self, payee: str) -> int:
        payee = _address(payee, "payee")
        return dict(zip(self.payees, self.amounts, strict=True)).get(payee, 0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["payees"] = list(self.payees)
        data["amounts"] = [str(a) for a in self.amounts]  # JSON numbers lose precision past 2^53
        data["total"] = str(self.total)
        return data


@dataclass(frozen=True)
class PayeeRow:
    msp_id: str
    payee: str
    ledger_amount: int | None
    chain_amount: int | None

    @property
    def matches(self) -> bool:
        return self.ledger_amount == self.chain_amount


@dataclass(frozen=True)
class RoundReconciliation:
    """The auditor's view of one round: ledger rewards next to the Ethereum settlement."""

    trial: str
    round: int
    status: str  # "settled" (matches), "unsettled", or "mismatch"
    expected_digest: str
    record: SettlementRecord | None
    rows: tuple[PayeeRow, ...]
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "round": self.round,
            "status": self.status,
            "expected_digest": self.expected_digest,
            "record": self.record.to_dict() if self.record else None,
            "rows": [
                {
                    "msp_id": r.msp_id,
                    "payee": r.payee,
                    "ledger_amount": None if r.ledger_amount is None else str(r.ledger_amount),
                    "chain_amount": None if r.chain_amount is None else str(r.chain_amount),
                }
                for r in self.rows
            ],
            "problems": list(self.problems),
        }


# ---------------------------------------------------------------------------------------------
# Configuration: payee map, settler key, deployment file, artifacts
# ---------------------------------------------------------------------------------------------


class PayeeDirectory:
    """Where each hospital is paid: a configured map MSP id -> Ethereum address.

    Addresses come from configuration, never from the MSP identity (no key is derived from an MSP
    id). File formats: TOML ``[payees]`` table or JSON ``{"payees": {...}}`` (a flat map works too).
    """

    def __init__(self, payees: Mapping[str, str], *, source: str = "<mapping>"):
        self.source = source
        resolved: dict[str, str] = {}
        owner: dict[str, str] = {}
        for msp_id, address in payees.items():
            if not isinstance(msp_id, str) or not msp_id:
                raise SettlementError(
                    f"payee map {source}: MSP id {msp_id!r} is not a non-empty string",
                    code=CODE_CONFIG,
                )
            checked = _address(address, f"payee map {source}: address of {msp_id}")
            if checked in owner:
                raise SettlementError(
                    f"payee map {source}: {msp_id} and {owner[checked]} share address {checked};"
                    " expected one address per hospital",
                    code=CODE_CONFIG,
                )
            owner[checked] = msp_id
            resolved[msp_id] = checked
        self._payees = resolved
        self._owners = owner

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PayeeDirectory:
        p = Path(path)
        try:
            text = p.read_bytes()
        except OSError as exc:
            raise SettlementError(
                f"payee map {p}: cannot read it: {exc}", code=CODE_CONFIG
            ) from exc
        try:
            data = tomllib.loads(text.decode()) if p.suffix == ".toml" else json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SettlementError(
                f"payee map {p}: not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {exc}",
                code=CODE_CONFIG,
            ) from exc
        if isinstance(data, dict) and isinstance(data.get("payees"), dict):
            data = data["payees"]
        if not isinstance(data, dict):
            raise SettlementError(
                f"payee map {p}: expected a table MSP id -> address", code=CODE_CONFIG
            )
        return cls(data, source=str(p))

    def address_for(self, msp_id: str) -> str:
        try:
            return self._payees[msp_id]
        except KeyError:
            raise SettlementError(
                f"hospital {msp_id!r} has no payee address in {self.source};"
                f" expected one of: {', '.join(sorted(self._payees)) or '(none configured)'}",
                code=CODE_CONFIG,
            ) from None

    def msp_for(self, address: str) -> str | None:
        return self._owners.get(_address(address, "payee"))

    def payouts(self, rewards: Mapping[str, int]) -> list[Payout]:
        """Ledger rewards (MSP id -> base units) as payouts, in the contract's canonical order."""
        return _canonical_payouts(
            Payout(self.address_for(msp), amount, msp) for msp, amount in rewards.items()
        )

    def items(self) -> list[tuple[str, str]]:
        return sorted(self._payees.items())

    def __len__(self) -> int:
        return len(self._payees)


def _canonical_payouts(payouts: Iterable[Payout] | Mapping[str, int]) -> list[Payout]:
    items = (
        [Payout(a, v) for a, v in payouts.items()]
        if isinstance(payouts, Mapping)
        else list(payouts)
    )
    result: list[Payout] = []
    seen: set[str] = set()
    total = 0
    for p in items:
        payee = _address(p.payee, "payee")
        if isinstance(p.amount, bool) or not isinstance(p.amount, int) or p.amount < 0:
            raise SettlementError(
                f"amount for {p.msp_id or payee} is {p.amount!r}; expected a non-negative integer"
                " number of token base units (see token_units)",
                code=CODE_CONFIG,
            )
        if payee in seen:
            raise SettlementError(
                f"payee {payee} appears twice; expected each once", code=CODE_CONFIG
            )
        seen.add(payee)
        total += p.amount
        result.append(Payout(payee, p.amount, p.msp_id))
    if len(result) > MAX_PAYEES:
        raise SettlementError(
            f"{len(result)} payees in one round; the contract accepts at most {MAX_PAYEES}",
            code=CODE_CONFIG,
        )
    if total > MAX_TOTAL:
        raise SettlementError(f"round total {total} exceeds 2^128-1 base units", code=CODE_CONFIG)
    result.sort(key=lambda p: int(p.payee, 16))  # the contract requires strictly ascending payees
    return result


def load_settler_key(path: str | os.PathLike[str]) -> Any:
    """The settler's account from a file holding its hex private key; the file must be mode 0600."""
    from eth_account import Account

    p = Path(path)
    try:
        st = p.stat()
        text = p.read_text().strip()
    except OSError as exc:
        raise SettlementError(
            f"settler key file {p}: cannot read it: {exc}", code=CODE_CONFIG
        ) from exc
    if st.st_mode & 0o077:
        raise SettlementError(
            f"settler key file {p} has mode {st.st_mode & 0o777:04o}; expected 0600"
            f" (readable by its owner only): chmod 600 {p}",
            code=CODE_CONFIG,
        )
    try:
        return Account.from_key(_bytes32(text, "private key"))
    except (SettlementError, ValueError) as exc:
        # never echo the file's content: it is a secret
        raise SettlementError(
            f"settler key file {p} does not hold a private key; expected 64 hex digits"
            " (optionally 0x-prefixed) on one line",
            code=CODE_CONFIG,
        ) from exc


def write_key_file(path: str | os.PathLike[str], account: Any) -> Path:
    """Write ``account``'s private key as hex to ``path`` with mode 0600 (atomically)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(account.key.hex().removeprefix("0x") + "\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _atomic_write_json(path: Path, data: Any) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def repo_root() -> Path:
    """The clone this module runs from (contracts/ and deploy/ live there)."""
    return Path(__file__).resolve().parents[2]


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


def _abi_fingerprint(artifact: Mapping[str, Any]) -> str:
    return sha256_hex(canonical_json(artifact["abi"]))


@dataclass(frozen=True)
class Deployment:
    """Where the consortium's settlement lives and how to recognise that chain again.

    Written at deploy time; the client refuses to work against a chain that no longer matches it
    (another chain id or genesis, a reset chain, no or different contract code).
    """

    chain_id: int
    genesis_hash: str
    settlement: str
    token: str
    deploy_block: int
    deploy_block_hash: str
    settlement_code_hash: str
    token_code_hash: str
    admin: str
    settler: str
    deployment_id: str = ""
    abi_sha256: Mapping[str, str] = field(default_factory=dict)
    trial_key_scheme: str = "keccak256(utf8(trial_id))"
    format: str = DEPLOYMENT_FORMAT

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["abi_sha256"] = dict(self.abi_sha256)
        return data

    def save(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        _atomic_write_json(p, self.to_dict())
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Deployment:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise SettlementError(
                f"deployment file {p}: cannot load it ({exc}); expected the JSON written by"
                " `bcfl settlement deploy`",
                code=CODE_CONFIG,
            ) from exc
        if not isinstance(data, dict) or data.get("format") != DEPLOYMENT_FORMAT:
            raise SettlementError(
                f"deployment file {p}: format is {data.get('format') if isinstance(data, dict) else None!r};"
                f" expected {DEPLOYMENT_FORMAT!r}",
                code=CODE_CONFIG,
            )
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except TypeError as exc:
            raise SettlementError(f"deployment file {p}: {exc}", code=CODE_CONFIG) from exc


# ---------------------------------------------------------------------------------------------
# Revert decoding
# ---------------------------------------------------------------------------------------------


def _error_table(
    *abis: Sequence[Mapping[str, Any]],
) -> dict[bytes, tuple[str, list[str], list[str]]]:
    table: dict[bytes, tuple[str, list[str], list[str]]] = {
        bytes.fromhex("08c379a0"): ("Error", ["string"], ["reason"]),
        bytes.fromhex("4e487b71"): ("Panic", ["uint256"], ["code"]),
    }
    for abi in abis:
        for item in abi:
            if item.get("type") != "error":
                continue
            types = [i["type"] for i in item["inputs"]]
            sig = f"{item['name']}({','.join(types)})"
            table[_keccak(sig.encode())[:4]] = (
                item["name"],
                types,
                [i["name"] for i in item["inputs"]],
            )
    return table


def _revert_data(exc: BaseException) -> bytes | None:
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


def _format_arg(value: Any) -> str:
    if isinstance(value, bytes):
        return _hex(value)
    return str(value)


# ---------------------------------------------------------------------------------------------
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
        self._errors = _error_table(settlement_art["abi"], token_art["abi"])

    # -- chain identity -------------------------------------------------------------------

    def _check_abis(self, settlement_art: Mapping[str, Any], token_art: Mapping[str, Any]) -> None:
        for name, art in (("RoundSettlement", settlement_art), ("RewardToken", token_art)):
            recorded = self.deployment.abi_sha256.get(name)
            if recorded and recorded != _abi_fingerprint(art):
                raise SettlementError(
                    f"the deployment's {name} was built from another interface (ABI sha256"
                    f" {recorded}) than contracts/artifacts/{name}.json ({_abi_fingerprint(art)});"
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
            genesis = _hex(eth.get_block(0)["hash"])
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
            block_hash = _hex(eth.get_block(d.deploy_block)["hash"])
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
                found = _hex(_keccak(code)) if code else None
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
                self.contract.functions.isSettled(trial_key(trial), _check_round(round)).call()
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
        key = trial_key(trial)
        _check_round(round)
        with self._rpc("read a settlement"):
            digest = bytes(self.contract.functions.anchorOf(key, round).call())
            if digest == bytes(32):
                return None
            topics = [
                _hex(_ROUND_SETTLED_TOPIC),
                _hex(key),
                _hex(round.to_bytes(32, "big")),
                _hex(digest),
            ]
            found = None
            if tx_hash:
                receipt = self.w3.eth.get_transaction_receipt(tx_hash)
                found = next((lg for lg in receipt["logs"] if self._is_event(lg, topics)), None)
            if found is None:
                found = self._search_logs(topics)
            if found is None:
                raise SettlementError(
                    f"trial {trial!r} round {round} is anchored with digest {_hex(digest)}, but no"
                    f" RoundSettled event for it was found from block {self.deployment.deploy_block};"
                    " expected exactly one (is the node pruning logs?)",
                    code=CODE_CHAIN_CHANGED,
                )
            receipt = self.w3.eth.get_transaction_receipt(found["transactionHash"])
            return self._record(trial, round, found, receipt)

    def _is_event(self, entry: Mapping[str, Any], topics: Sequence[str]) -> bool:
        return entry["address"] == self.deployment.settlement and [
            _hex(t) for t in entry["topics"]
        ] == list(topics)

    def _search_logs(self, topics: Sequence[str]) -> Any | None:
        eth = self.w3.eth
        head = eth.block_number
        start = self.deployment.deploy_block
        while start <= head:
            end = min(head, start + self.log_range - 1)
            logs = eth.get_logs(
                {
                    "address": self.deployment.settlement,
                    "fromBlock": start,
                    "toBlock": end,
                    "topics": list(topics),
                }
            )
            if logs:
                return logs[0]
            start = end + 1
        return None

    def _record(self, trial: str, round: int, entry: Any, receipt: Any) -> SettlementRecord:
        ev = self.contract.events.RoundSettled().process_log(entry)
        args = ev["args"]
        block = self.w3.eth.get_block(ev["blockNumber"])
        return SettlementRecord(
            trial=trial,
            round=round,
            trial_key=_hex(args["trial"]),
            round_digest=_hex(args["roundDigest"]),
            ledger_digest=_hex(args["ledgerDigest"]),
            payees=tuple(args["payees"]),
            amounts=tuple(int(a) for a in args["amounts"]),
            total=int(args["total"]),
            tx_hash=_hex(ev["transactionHash"]),
            block_number=int(ev["blockNumber"]),
            block_hash=_hex(ev["blockHash"]),
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
            return int(self.token.functions.balanceOf(_address(address, "address")).call())

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
        ledger = _bytes32(ledger_digest, "ledger_digest")
        _check_round(round)
        ordered = _canonical_payouts(payouts)
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
        record = self._read(trial, round, tx_hash=_hex(receipt["transactionHash"]))
        if record is None or record.tx_hash != _hex(receipt["transactionHash"]):
            raise SettlementError(
                f"settle trial {trial!r} round {round}: transaction {_hex(receipt['transactionHash'])}"
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
        if record.round_digest != _hex(digest):
            raise SettlementError(
                f"trial {trial!r} round {round} is already settled on chain with round digest"
                f" {record.round_digest} (tx {record.tx_hash}); this settlement commits to"
                f" {_hex(digest)}: the payees, amounts or ledger digest differ. Nothing was paid;"
                " reconcile the round against the ledger (auditor view)",
                code=CODE_CONFLICT,
                detail={"onchain": record.to_dict(), "expected_digest": _hex(digest)},
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

    def _fees(self) -> dict[str, int]:
        eth = self.w3.eth
        with self._rpc("read gas prices"):
            base = eth.get_block("latest").get("baseFeePerGas")
            if base is None:
                return {"gasPrice": int(eth.gas_price)}
            try:
                tip = int(eth.max_priority_fee)
            except Exception:  # noqa: BLE001 - nodes without eth_maxPriorityFeePerGas
                tip = 10**9
            return {"maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * int(base) + tip}

    def _decode_revert(self, exc: BaseException) -> tuple[str, dict[str, Any]]:
        from eth_abi import decode

        data = _revert_data(exc)
        if data is None:
            msg = getattr(exc, "message", None) or str(exc)
            return str(msg), {"error": None}
        entry = self._errors.get(data[:4])
        if entry is None:
            return f"unknown error data {_hex(data)}", {"error": None, "data": _hex(data)}
        name, types, names = entry
        try:
            values = decode(types, data[4:])
        except Exception:  # noqa: BLE001 - malformed revert data
            return f"{name}(<undecodable {_hex(data[4:])}>)", {"error": name}
        shown = {n: self._format_arg(t, v) for n, t, v in zip(names, types, values, strict=True)}
        args = ", ".join(f"{n}={v}" for n, v in shown.items())
        return f"{name}({args})", {"error": name, "args": shown}

    def _format_arg(self, abi_type: str, value: Any) -> str:
        if abi_type == "address":
            from eth_utils import to_checksum_address

            return to_checksum_address(value)
        if abi_type == "bytes32" and bytes(value) in _ROLE_NAMES:
            return f"{_ROLE_NAMES[bytes(value)]} ({_hex(value)})"
        return _format_arg(value)

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
            fees=self._fees,
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
        ledger = _bytes32(rewards.ledger_digest, "ledger_digest")
        digest = _hex(
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
        if record.ledger_digest != _hex(ledger):
            problems.append(
                f"anchored ledger digest {record.ledger_digest} differs from the ledger's {_hex(ledger)}"
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
        fee_fields = fees() if fees else _default_fees(w3)
        tx_hash: str | None = None
        for attempt in range(3):
            nonce = eth.get_transaction_count(sender, "pending")
            tx = call.build_transaction(
                {**base_tx, "nonce": nonce, "gas": gas, "chainId": eth.chain_id, **fee_fields}
            )
            signed = account.sign_transaction(tx)
            try:
                tx_hash = _hex(eth.send_raw_transaction(signed.raw_transaction))
                break
            except Web3RPCError as exc:
                text = str(exc.message).lower()
                if "already known" in text:
                    tx_hash = _hex(signed.hash)
                    break
                if "nonce too low" in text and attempt < 2:
                    continue
                if "insufficient funds" in text:
                    balance = eth.get_balance(sender)
                    raise SettlementError(
                        f"{what}: settler {sender} has {balance} wei; the transaction may cost up to"
                        f" {gas * int(fee_fields.get('maxFeePerGas', fee_fields.get('gasPrice', 0)))}"
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


def _default_fees(w3: Any) -> dict[str, int]:
    base = w3.eth.get_block("latest").get("baseFeePerGas")
    if base is None:
        return {"gasPrice": int(w3.eth.gas_price)}
    tip = 10**9
    return {"maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * int(base) + tip}


# ---------------------------------------------------------------------------------------------
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


def _rpc_endpoint(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    if parts.scheme not in ("eth", "eths") or not parts.hostname or not parts.port:
        raise SettlementError(
            f"settlement URL {url!r} is not valid; expected eth://host:port?deployment=FILE&key=FILE",
            code=CODE_CONFIG,
        )
    query = {k: unquote(v[-1]) for k, v in parse_qs(parts.query).items()}
    http = "https" if parts.scheme == "eths" else "http"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{http}://{host}:{parts.port}{parts.path}", query


def _web3(endpoint: str, *, timeout: float = 30.0, poa: bool = False) -> Any:
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(endpoint, request_kwargs={"timeout": timeout}))
    if poa:
        from web3.middleware import ExtraDataToPOAMiddleware

        w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    return w3


def _open_eth(url: str, identity: Any = None) -> EthereumSettlement:
    endpoint, query = _rpc_endpoint(url)
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
    w3 = _web3(endpoint, timeout=min(timeout, 60.0), poa=query.get("poa") in ("1", "true", "yes"))
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
        endpoint = _rpc_endpoint(rpc)[0] if rpc.startswith(("eth://", "eths://")) else rpc
        w3 = _web3(endpoint)
    else:
        w3, endpoint = rpc, "the Ethereum node"
    settler = _address(settler, "settler")
    token_art = load_artifact("RewardToken")
    settlement_art = load_artifact("RoundSettlement")
    opts = {"endpoint": endpoint, "receipt_timeout": receipt_timeout}
    errors = _error_table(token_art["abi"], settlement_art["abi"])

    def decode(exc: BaseException) -> tuple[str, dict[str, Any]]:
        data = _revert_data(exc)
        if data and data[:4] in errors:
            return errors[data[:4]][0], {"error": errors[data[:4]][0]}
        return str(getattr(exc, "message", exc)), {"error": None}

    Token = w3.eth.contract(abi=token_art["abi"], bytecode=token_art["bytecode"])
    r1 = send_transaction(
        w3,
        admin,
        Token.constructor(token_name, token_symbol, admin.address),
        what="deploy RewardToken",
        decode_revert=decode,
        **opts,
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
        **opts,
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
        **opts,
    )
    deploy_block = int(r2["blockNumber"])
    deployment = Deployment(
        chain_id=int(w3.eth.chain_id),
        genesis_hash=_hex(w3.eth.get_block(0)["hash"]),
        settlement=settlement_address,
        token=token_address,
        deploy_block=deploy_block,
        deploy_block_hash=_hex(r2["blockHash"]),
        settlement_code_hash=_hex(_keccak(bytes(w3.eth.get_code(settlement_address)))),
        token_code_hash=_hex(_keccak(bytes(w3.eth.get_code(token_address)))),
        admin=admin.address,
        settler=settler,
        deployment_id=_hex(deployment_id),
        abi_sha256={
            "RewardToken": _abi_fingerprint(token_art),
            "RoundSettlement": _abi_fingerprint(settlement_art),
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


# ---------------------------------------------------------------------------------------------
# Local chain for tests, benchmarks and the demo: anvil from the npm registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Toolchain:
    """The pinned npm packages (solc-js, OpenZeppelin, anvil) installed by deploy/ethereum/install.sh."""

    root: Path

    @property
    def node_modules(self) -> Path:
        return self.root / "node_modules"

    @property
    def anvil(self) -> Path:
        override = os.environ.get("BCFL_ANVIL")
        if override:
            return Path(override)
        return self.node_modules / ANVIL_PACKAGE / "bin" / "anvil"


def eth_toolchain(timeout: float = 600.0) -> Toolchain:
    """Install (once, cached outside the clone) and return the pinned Ethereum toolchain."""
    script = repo_root() / "deploy" / "ethereum" / "install.sh"
    if not script.exists():
        raise SettlementError(f"{script} is missing; expected a bcfl clone", code=CODE_CONFIG)
    try:
        out = subprocess.run(
            ["bash", str(script)], check=True, capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError as exc:
        raise SettlementError(f"cannot run {script}: {exc}", code=CODE_CONFIG) from exc
    except subprocess.CalledProcessError as exc:
        raise SettlementError(
            f"{script} failed (exit {exc.returncode}): {exc.stderr.strip()[-2000:]}",
            code=CODE_CONFIG,
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise SettlementError(
            f"{script} did not finish within {timeout:.0f}s", code=CODE_CONFIG
        ) from exc
    return Toolchain(Path(out.stdout.strip().splitlines()[-1]))


class AnvilNode:
    """An anvil process on loopback; ``stop()`` (or the context manager) always ends it."""

    def __init__(
        self,
        anvil: str | os.PathLike[str],
        *,
        port: int | None = None,
        chain_id: int = 31337,
        block_time: float | None = None,
        no_mining: bool = False,
        log_path: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
    ):
        self.anvil = Path(anvil)
        self.host = host
        self.port = port
        self.chain_id = chain_id
        self.block_time = block_time
        self.no_mining = no_mining
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def rpc_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> AnvilNode:
        if not self.anvil.exists():
            raise SettlementError(
                f"anvil not found at {self.anvil}; run deploy/ethereum/install.sh (or set BCFL_ANVIL)",
                code=CODE_CONFIG,
            )
        fixed_port = self.port is not None
        for _attempt in range(1 if fixed_port else 5):
            if not fixed_port:
                self.port = free_port(self.host)
            if self._spawn_and_wait(timeout):
                return self
        raise SettlementError(
            f"anvil did not start on {self.host}:{self.port}: {self._log_tail()}", code=CODE_CONFIG
        )

    def _spawn_and_wait(self, timeout: float) -> bool:
        args = [
            str(self.anvil),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--chain-id",
            str(self.chain_id),
            "--accounts",
            "2",
        ]
        if self.no_mining:
            args.append("--no-mining")
        elif self.block_time:
            args += ["--block-time", str(self.block_time)]
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix="anvil-", suffix=".log")[1])
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._cleanup()
                return False
            try:
                if self.rpc("eth_chainId") is not None:
                    return True
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.05)
        self.stop()
        return False

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        """One raw JSON-RPC call (anvil_*, evm_* controls included)."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
        req = urllib.request.Request(
            self.rpc_url, data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
            answer = json.loads(resp.read())
        if "error" in answer:
            raise SettlementError(f"anvil {method}: {answer['error']}", code=CODE_UNREACHABLE)
        return answer.get("result")

    def fund(self, address: str, wei: int = 10**21) -> None:
        self.rpc("anvil_setBalance", [_address(address, "address"), hex(wei)])

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", [hex(blocks)])

    def version(self) -> str:
        out = subprocess.run(
            [str(self.anvil), "--version"], capture_output=True, text=True, check=False
        )
        return out.stdout.strip().splitlines()[0] if out.stdout else "unknown"

    def _log_tail(self) -> str:
        try:
            return (
                self.log_path.read_text(errors="replace")[-1500:] if self.log_path else ""
            ).strip() or "(no output)"
        except OSError:
            return "(no log)"

    def _cleanup(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._cleanup()

    def __enter__(self) -> AnvilNode:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LocalSettlement:
    """A running local chain with the contracts deployed: what ``bcfl demo --settlement ethereum`` uses."""

    node: AnvilNode
    deployment: Deployment
    deployment_path: Path
    settler_key_path: Path
    admin_key_path: Path

    @property
    def url(self) -> str:
        return (
            f"eth://{self.node.host}:{self.node.port}?deployment={self.deployment_path}"
            f"&key={self.settler_key_path}"
        )

    def open(self) -> EthereumSettlement:
        return _open_eth(self.url)

    def stop(self) -> None:
        self.node.stop()


@contextmanager
def local_settlement(
    workdir: str | os.PathLike[str], *, chain_id: int = 31337
) -> Iterator[LocalSettlement]:
    """Start anvil on a free loopback port, create admin and settler keys, deploy; stop on exit."""
    from eth_account import Account

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    node = AnvilNode(eth_toolchain().anvil, chain_id=chain_id, log_path=work / "anvil.log")
    node.start()
    try:
        admin, settler = Account.create(), Account.create()
        admin_key = write_key_file(work / "admin.key", admin)
        settler_key = write_key_file(work / "settler.key", settler)
        node.fund(admin.address)
        node.fund(settler.address)
        deployment = deploy_contracts(
            node.rpc_url, admin, settler.address, work / "deployment.json"
        )
        yield LocalSettlement(node, deployment, work / "deployment.json", settler_key, admin_key)
    finally:
        node.stop()
