"""Configuration of the settlement: eth:// URLs, the payee map, the settler's key file, the deployment file."""

from __future__ import annotations

import json
import logging
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from bcfl_common.errors import SettlementError
from bcfl_common.files import write_atomic, write_private
from consortium.settlement.digest import (
    CODE_CONFIG,
    MAX_PAYEES,
    MAX_TOTAL,
    bytes32,
    checked_address,
)
from consortium.settlement.records import Payout

log = logging.getLogger(__name__)

DEPLOYMENT_FORMAT = "bcfl.settlement.deployment.v1"


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
            checked = checked_address(address, f"payee map {source}: address of {msp_id}")
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
        return self._owners.get(checked_address(address, "payee"))

    def payouts(self, rewards: Mapping[str, int]) -> list[Payout]:
        """Ledger rewards (MSP id -> base units) as payouts, in the contract's canonical order."""
        return canonical_payouts(
            Payout(self.address_for(msp), amount, msp) for msp, amount in rewards.items()
        )

    def items(self) -> list[tuple[str, str]]:
        return sorted(self._payees.items())

    def __len__(self) -> int:
        return len(self._payees)


def canonical_payouts(payouts: Iterable[Payout] | Mapping[str, int]) -> list[Payout]:
    items = (
        [Payout(a, v) for a, v in payouts.items()]
        if isinstance(payouts, Mapping)
        else list(payouts)
    )
    result: list[Payout] = []
    seen: set[str] = set()
    total = 0
    for p in items:
        payee = checked_address(p.payee, "payee")
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
        return Account.from_key(bytes32(text, "private key"))
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
    write_private(p, (account.key.hex().removeprefix("0x") + "\n").encode())
    return p


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


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
        write_json(p, self.to_dict())
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


def rpc_endpoint(url: str) -> tuple[str, dict[str, str]]:
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


def connect_web3(endpoint: str, *, timeout: float = 30.0, poa: bool = False) -> Any:
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(endpoint, request_kwargs={"timeout": timeout}))
    if poa:
        from web3.middleware import ExtraDataToPOAMiddleware

        w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    return w3
