"""Optional Ethereum settlement: pay a finalized round's ledger rewards and anchor its digest (eth://).

The package: ``digest`` (the anchor every party computes, limits, error codes), ``records``
(payouts, rewards, on-chain records, reconciliations), ``configuration`` (eth:// URLs, payee map,
settler key file, deployment file), ``transactions`` (sending, fees, receipts, reverts,
unreachable nodes), ``deployment`` (contract artifacts, deploying) and ``client`` (the
``Settlement`` seam, ``EthereumSettlement``, ``open_settlement``). A local chain for tests and
demos (anvil) is ``devnet.anvil``'s.
"""

from consortium.settlement.client import (
    EthereumSettlement,
    Settlement,
    open_settlement,
    register_settlement_scheme,
)
from consortium.settlement.configuration import (
    DEPLOYMENT_FORMAT,
    Deployment,
    PayeeDirectory,
    canonical_payouts,
    load_settler_key,
    write_key_file,
)
from consortium.settlement.deployment import (
    DEFAULT_TOKEN_NAME,
    DEFAULT_TOKEN_SYMBOL,
    artifacts_dir,
    deploy_contracts,
    load_artifact,
    repo_root,
)
from consortium.settlement.digest import (
    CODE_CHAIN_CHANGED,
    CODE_CONFIG,
    CODE_CONFLICT,
    CODE_PENDING,
    CODE_REVERTED,
    CODE_TIMEOUT,
    CODE_UNREACHABLE,
    DIGEST_TAG_TEXT,
    MAX_PAYEES,
    MAX_ROUND,
    MAX_TOTAL,
    TOKEN_DECIMALS,
    payout_hash,
    round_digest,
    token_units,
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

__all__ = [
    "CODE_CHAIN_CHANGED",
    "CODE_CONFIG",
    "CODE_CONFLICT",
    "CODE_PENDING",
    "CODE_REVERTED",
    "CODE_TIMEOUT",
    "CODE_UNREACHABLE",
    "DEFAULT_TOKEN_NAME",
    "DEFAULT_TOKEN_SYMBOL",
    "DEPLOYMENT_FORMAT",
    "DIGEST_TAG_TEXT",
    "MAX_PAYEES",
    "MAX_ROUND",
    "MAX_TOTAL",
    "TOKEN_DECIMALS",
    "Deployment",
    "EthereumSettlement",
    "PayeeDirectory",
    "PayeeRow",
    "Payout",
    "RevertDecoder",
    "RoundReconciliation",
    "RoundRewards",
    "Settlement",
    "SettlementRecord",
    "artifacts_dir",
    "canonical_payouts",
    "deploy_contracts",
    "load_artifact",
    "load_settler_key",
    "open_settlement",
    "payout_hash",
    "register_settlement_scheme",
    "repo_root",
    "round_digest",
    "rpc_errors",
    "send_transaction",
    "token_units",
    "trial_key",
    "write_key_file",
]
