"""The Fabric ledger (``fabric://...``): the peer's Gateway service over gRPC, as the caller's own identity.

URLs (choose one form):

* ``fabric:///abs/path/network.json``: the description `bcfl network up` writes. The caller's own
  organisation's peer is the gateway; the other peers are fallbacks, tried in turn when it is down.
* ``fabric://HOST:PORT[,HOST:PORT...]/CHANNEL/CHAINCODE?tls_ca=/path/ca.pem[&tls_ca=...]``: explicit
  gateway peers (in order of preference) and the TLS CA certificates that sign their server
  certificates. ``server_name=NAME`` overrides the TLS host name to check.

Query parameters of both forms: ``channel=`` and ``chaincode=`` (the profile form's defaults are
the network's), ``timeout=`` seconds per call (30), ``mvcc_retries=`` (5), ``commit_wait=all``
(default: ``submit`` returns once every reachable peer committed, so the next transaction,
whoever sends it through whichever peer, sees it) or ``gateway`` (once the gateway peer did). ``open_ledger`` also
takes ``clock=`` (a callable returning seconds): the time stamped on proposals, which is the
transaction time the contract sees.

Every request is signed by the caller: ECDSA P-256 over SHA-256 in low-S form, the creator being a
``SerializedIdentity`` of the caller's MSP id and PEM certificate. ``submit`` is the Gateway flow:
Endorse (the gateway collects endorsements satisfying the MAJORITY policy), sign the prepared
envelope, Submit, then wait on CommitStatus. A transaction invalidated by an MVCC or phantom read
conflict is run again (a new proposal) up to ``mvcc_retries`` times.

Calling convention with the chaincode (``chaincode.host_fabric``): arguments ``[function, args]``
with ``args`` the canonical JSON of one object; an error response's message is
``"<CODE>: <message>"`` and becomes ``ContractError(code=CODE)`` here.

Blocks come from the peer's Deliver service; ``verify`` checks what Fabric provides: the header
hash chain, each block's data hash, the orderer's signature on every block against the ordering
organisation's CA in the channel configuration, and every transaction's creator signature and
endorsements against the organisations' CAs in that configuration.

The package: ``config`` (URLs and network descriptions), ``proposals`` (signed proposals),
``gateway`` (the ``FabricLedger``: connections, failover, evaluate, submit, commit status,
retries), ``errors`` (the peers' refusals, read from the gRPC rich status), ``blocks`` (decoding
envelopes, blocks, transactions and events) and ``verify`` (the auditor's check).
"""

from consortium.ledger.fabric.blocks import block_header_hash
from consortium.ledger.fabric.config import (
    DEFAULT_TIMEOUT,
    FabricTarget,
    GatewayPeer,
    parse_fabric_url,
)
from consortium.ledger.fabric.errors import DETAIL_MARKER, TransactionInvalid
from consortium.ledger.fabric.gateway import MVCC_CODES, FabricLedger, open_fabric_ledger
from consortium.ledger.fabric.proposals import SignedProposal, make_proposal, serialized_identity
from consortium.ledger.fabric.verify import verify_blocks

__all__ = [
    "DEFAULT_TIMEOUT",
    "DETAIL_MARKER",
    "MVCC_CODES",
    "FabricLedger",
    "FabricTarget",
    "GatewayPeer",
    "SignedProposal",
    "TransactionInvalid",
    "block_header_hash",
    "make_proposal",
    "open_fabric_ledger",
    "parse_fabric_url",
    "serialized_identity",
    "verify_blocks",
]
