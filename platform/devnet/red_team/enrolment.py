"""Enrolling an attacker: the hospital's claims at enrolment are its own, so a lying hospital
registers a dataset and a training split as large as its attack needs.

The contract cannot count a hospital's records; what it enforces is that the claim is made once,
on the ledger, under the hospital's signature (a dataset is registered once and bounds every
trial's training split, which bounds every sample weight), and the round rules cap what any
weight can buy (``max_weight_share_micro``). These attackers show that is what holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bcfl_common.errors import ContractError
from consortium.identity import Identity
from consortium.ledger import Ledger
from devnet.red_team.cli import attack_class, attack_options, parse_args
from privacy import dp
from silo_agent.config import SiloConfig
from silo_agent.enrolment import (
    dataset_commitment,
    dataset_id_of,
    enrol,
    find_dataset,
    training_records,
)
from silo_agent.state import SiloState


def enrol_attacker(
    ledger: Ledger,
    identity: Identity,
    config: SiloConfig,
    trial_id: str,
    attack: str,
    flags: Sequence[str] = (),
) -> dict[str, Any]:
    """:func:`silo_agent.enrolment.enrol` with the claimed training split of ``attack`` (run with
    the harness's ``flags``, e.g. ``["--claimed-records", "5000"]``); when the claim exceeds the
    data file, the dataset is first registered with the claimed row count (same id and file
    commitment an honest registration would use). Returns the key registration."""
    options = attack_options(parse_args(["--attack", attack, *flags])[0])
    trial = ledger.evaluate("get_trial", {"trial_id": trial_id})
    honest = training_records(config, trial, identity.msp_id)
    claim = attack_class(attack).claimed_training_records(options, honest)
    if claim is not None and config.data_path is not None:
        dataset_id = dataset_id_of(config)
        existing = find_dataset(ledger, identity.msp_id, dataset_id)
        if existing is None:
            salt = SiloState(config.state_dir).dataset_salt(dataset_id)
            try:
                ledger.submit(
                    "register_dataset",
                    {
                        "dataset_id": dataset_id,
                        "commitment": dataset_commitment(salt, config.data_path),
                        "records": claim,
                        "lifetime_epsilon_micro": dp.to_micro_epsilon(
                            config.lifetime_epsilon, round_up=False
                        ),
                    },
                )
            except ContractError as exc:
                if exc.code != "ALREADY_EXISTS":
                    raise
    return enrol(ledger, identity, config, trial_id, claimed_training_records=claim)
