"""The anchor every party computes the same way (contracts/src/RoundSettlement.sol), its limits,
the stable error codes, and the checks of the values that go into it."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from bcfl_common.errors import SettlementError

DIGEST_TAG_TEXT = "bcfl.settlement.round.v1"
TOKEN_DECIMALS = 18
MAX_PAYEES = 256
MAX_TOTAL = 2**128 - 1
MAX_ROUND = 2**64 - 1

# Stable codes (SettlementError.code) a caller can match on.
CODE_CHAIN_CHANGED = "SETTLEMENT_CHAIN_CHANGED"  # fresh / reset / different chain or contract
CODE_REVERTED = "SETTLEMENT_REVERTED"  # the contract refused the call; message has the reason
CODE_CONFLICT = "SETTLEMENT_CONFLICT"  # (trial, round) settled on chain with different data
CODE_PENDING = "SETTLEMENT_PENDING"  # earlier settler transactions are still unmined
CODE_TIMEOUT = "SETTLEMENT_TIMEOUT"  # sent, but no receipt in time (safe to call again)
CODE_UNREACHABLE = "SETTLEMENT_UNREACHABLE"  # the node does not answer
CODE_CONFIG = "SETTLEMENT_CONFIG"  # bad URL, key file, deployment file or payee map


def keccak(data: bytes) -> bytes:
    from eth_utils import keccak as eth_keccak

    return bytes(eth_keccak(data))


def trial_key(trial: str) -> bytes:
    """The trial's on-chain id: keccak-256 of the UTF-8 trial id used on the ledger."""
    if not isinstance(trial, str) or not trial:
        raise SettlementError(
            f"trial id {trial!r} is not valid; expected a non-empty string (the ledger's trial id)",
            code=CODE_CONFIG,
        )
    return keccak(trial.encode("utf-8"))


def payout_hash(payees: Sequence[str], amounts: Sequence[int]) -> bytes:
    """keccak256(abi.encode(address[] payees, uint256[] amounts)), as the contract computes it."""
    from eth_abi import encode

    return keccak(encode(["address[]", "uint256[]"], [list(payees), list(amounts)]))


def round_digest(
    trial: str, round: int, ledger_digest: bytes, payees: Sequence[str], amounts: Sequence[int]
) -> bytes:
    """The anchor of a settled round; equals ``RoundSettlement.roundDigestOf`` on chain.

    keccak256(abi.encode(keccak256("bcfl.settlement.round.v1"), keccak256(utf8(trial)), uint64
    round, bytes32 ledgerDigest, keccak256(abi.encode(payees, amounts)))).
    """
    from eth_abi import encode

    return keccak(
        encode(
            ["bytes32", "bytes32", "uint64", "bytes32", "bytes32"],
            [
                keccak(DIGEST_TAG_TEXT.encode()),
                trial_key(trial),
                check_round(round),
                bytes32(ledger_digest, "ledger_digest"),
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


def check_round(round: int) -> int:
    if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round <= MAX_ROUND:
        raise SettlementError(
            f"round {round!r} is not valid; expected an integer in [0, 2^64)", code=CODE_CONFIG
        )
    return round


def bytes32(value: bytes | str, name: str) -> bytes:
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


def checked_address(value: str, what: str) -> str:
    from eth_utils import is_address, to_checksum_address

    if not isinstance(value, str) or not is_address(value):
        raise SettlementError(
            f"{what} {value!r} is not an Ethereum address; expected 0x followed by 40 hex digits"
            " (checksummed if mixed case)",
            code=CODE_CONFIG,
        )
    return to_checksum_address(value)


def hex0x(data: bytes) -> str:
    return "0x" + bytes(data).hex()
