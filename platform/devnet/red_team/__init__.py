"""Red-team silos for demos, tests and the robustness bench: hospitals that follow the protocol's
messages but cheat in what they send.

Each attack is a :class:`~silo_agent.agent.SiloAgent` subclass overriding only the agent's seams
(``compute_delta``, ``training_data``, ``seal_update``, ``claimed_sample_weight``, ``findings``,
``attested_sha256``); the production agent has no attack switches, attacks live here only.

======================  =========================================================================
attack                  what the hospital does
======================  =========================================================================
sign_flip               sends ``-scale`` (10) times its honest update
backdoor                trains on its rows plus triggered copies labelled 1, sends ``scale`` (5)x
label_flip              trains on its rows with the labels flipped
zero                    free rider: an encrypted zero update
inflated_weight         free rider: a zero update claiming 100,000 training records
reencrypted_copy        re-encrypts a peer's update of an earlier round as its own
aggregate_copy          sends the previous round's aggregate container as its update
aggregate_reencrypted   re-encrypts the previous round's aggregate delta as its update
thief                   commits to a peer's update of this round if it can find it, else a zero
                        update, then tries to reveal the peer's bytes
vote_down               one of colluders: judges every other hospital harmful, boosts the ring
wrong_attestation       attests a random hash
======================  =========================================================================

Run one as ``python -m devnet.red_team --attack NAME [options] <bcfl silo run arguments>``.
"""

from __future__ import annotations

from devnet.red_team.base import AttackingSilo
from devnet.red_team.cli import ATTACKS, OPTION_FLAGS, attack_class, attacker, main, parse_args
from devnet.red_team.free_riding import (
    AggregateCopySilo,
    AggregateReencryptedSilo,
    InflatedWeightSilo,
    ReencryptedCopySilo,
    ThiefSilo,
    ZeroUpdateSilo,
)
from devnet.red_team.poisoning import BackdoorSilo, LabelFlipSilo, SignFlipSilo, apply_trigger
from devnet.red_team.voting import VoteDownSilo, WrongAttestationSilo, fake_finding

__all__ = [
    "ATTACKS",
    "OPTION_FLAGS",
    "AggregateCopySilo",
    "AggregateReencryptedSilo",
    "AttackingSilo",
    "BackdoorSilo",
    "InflatedWeightSilo",
    "LabelFlipSilo",
    "ReencryptedCopySilo",
    "SignFlipSilo",
    "ThiefSilo",
    "VoteDownSilo",
    "WrongAttestationSilo",
    "ZeroUpdateSilo",
    "apply_trigger",
    "attack_class",
    "attacker",
    "fake_finding",
    "main",
    "parse_args",
]
