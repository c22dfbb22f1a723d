"""Joining a trial: the hospital registers its own encryption key on the ledger, then asks the coordinator."""

from __future__ import annotations

from typing import Any

from consortium.identity import Identity
from consortium.ledger import Ledger


def register_encryption_key(ledger: Ledger, identity: Identity, trial_id: str) -> dict[str, Any]:
    """Record this hospital's X25519 key for ``trial_id`` in a transaction it signs itself.

    The contract enrols a hospital only with the key the hospital registered, so an operator
    cannot slip in a key of its own and receive the trial's secret context.
    """
    args = {
        "trial_id": trial_id,
        "encryption_public_key": identity.encryption_public_key_pem().decode(),
    }
    return ledger.submit("register_encryption_key", args).result


def request_enrolment(
    ledger: Ledger, coordinator: Any, identity: Identity, trial_id: str
) -> dict[str, Any]:
    """Register the key on the ledger, then send the enrolment request to the coordinator."""
    register_encryption_key(ledger, identity, trial_id)
    return coordinator.request_enrolment(trial_id, identity.encryption_public_key_pem())
