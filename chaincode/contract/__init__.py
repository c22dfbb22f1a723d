"""The consortium contract: datasets, trials, enrolment, trial keys, rounds (commit-reveal updates and votes), acceptance, attestation, rewards, retries, rollback, resume.

Entry point: ``invoke(state, function, args) -> bytes`` (``dispatch``): one JSON object in,
canonical JSON out, a ``ContractError`` with a code of ``CODES`` for a refusal, exactly one event
per state-changing function. The record shapes are the TypedDicts of ``bcfl_common.records``;
each function's docstring gives its role, arguments, result and event.

Determinism: time is the transaction timestamp (int seconds); no randomness; no float decides
anything (scores, thresholds and epsilons are ints in micro-units (1e-6), gradient norms in
milli-units, weights and rewards are ints, delta is a reduced fraction [num, den]). The
arithmetic lives in ``chaincode.rules`` and the commitment hashes in ``chaincode.commitments``.

The package follows the protocol:

``dispatch``      invoke, the function table, identification of the caller, CODES
``context``       one transaction (records in and out, its event) and its caller
``store``         keys and record access, the checks every step shares
``trials``        the consortium, trials and their life cycle, enrolment, trial keys
``datasets``      registered datasets, their lifetime epsilon, a trial's DP schedule
``rounds``        open_round, the update exchange, the vote exchange
``ballots``       the one commit / close / reveal mechanism both exchanges use
``disclosure``    an update uploaded but never revealed: opened late, charged, owned
``finalisation``  close_voting, aggregate, attestation, rewards, settlement
``liveness``      failed rounds retried a bounded number of times, trials that cannot go on halted
``recovery``      the admin's abort_round, rollback and resume_trial
``queries``       everything read-only
"""

from __future__ import annotations

# Importing the function modules registers their functions in the table.
from chaincode.contract import (  # noqa: F401
    datasets,
    disclosure,
    finalisation,
    queries,
    recovery,
    rounds,
    trials,
)
from chaincode.contract.dispatch import CODES, MAX_ARGS_BYTES, TABLE, invoke

READ_ONLY_FUNCTIONS: frozenset[str] = frozenset(
    name for name, spec in TABLE.items() if spec.read_only
)
FUNCTIONS: frozenset[str] = frozenset(TABLE)

__all__ = ["CODES", "FUNCTIONS", "MAX_ARGS_BYTES", "READ_ONLY_FUNCTIONS", "invoke"]
