"""Dishonest judges: colluding voters and a silo that attests a model nobody computed."""

from __future__ import annotations

import secrets
from typing import Any

from devnet.red_team.base import AttackingSilo, option_error
from silo_agent.findings import MAX_SCORE_MICRO
from silo_agent.steps import TrialContext

# A norm far over any bound and a similarity at the top of the scale.
FAKE_NORM_MILLI = 10**9
FAKE_PROBLEM = "undecryptable"


def fake_finding(peer_index: int, round_number: int) -> dict[str, Any]:
    """The finding colluders report on a hospital outside the ring: every one says "harmful"
    (lowest score); alternately a fake problem, or a fake norm and similarity with it. A pure
    function of the peer's position and the round, so every colluder reports the same."""
    if (peer_index + round_number) % 2 == 0:
        return {
            "score_micro": -MAX_SCORE_MICRO,
            "score_se_micro": None,
            "norm_milli": None,
            "similarity_micro": None,
            "problem": FAKE_PROBLEM,
        }
    return {
        "score_micro": -MAX_SCORE_MICRO,
        "score_se_micro": 0,  # claims certainty: no error to widen its own harm bar
        "norm_milli": FAKE_NORM_MILLI,
        "similarity_micro": 1_000_000,
        "problem": None,
    }


class VoteDownSilo(AttackingSilo):
    """One of a ring of colluders (``colluders``: MSP ids, itself included): sends honest updates
    but judges every hospital outside the ring harmful (with fake problems, norms and
    similarities) and boosts the ring's own candidates (top score, no problem, no similarity)."""

    ATTACK = "vote_down"
    OPTIONS = {"colluders": ()}

    def check_options(self, values: dict[str, Any]) -> None:
        ring = values["colluders"]
        if isinstance(ring, str):
            ring = tuple(m for m in ring.split(",") if m)
        if not all(isinstance(m, str) and m for m in ring):
            raise option_error(self.ATTACK, "colluders", ring, "comma-separated MSP ids")
        values["colluders"] = tuple(sorted(set(ring)))

    @property
    def ring(self) -> set[str]:
        return set(self.attack_options["colluders"]) | {self.msp_id}

    def findings(self, ctx: TrialContext, rnd: dict[str, Any]) -> dict[str, dict[str, Any]]:
        honest = super().findings(ctx, rnd)
        outsiders = sorted(m for m in rnd["candidates"] if m not in self.ring)
        out: dict[str, dict[str, Any]] = {}
        for peer, finding in honest.items():
            if peer in self.ring:
                out[peer] = {
                    "score_micro": MAX_SCORE_MICRO,
                    "score_se_micro": 0,
                    "norm_milli": finding.get("norm_milli") or 0,
                    "similarity_micro": 0,
                    "problem": None,
                }
            else:
                out[peer] = fake_finding(outsiders.index(peer), rnd["round"])
        return out


class WrongAttestationSilo(AttackingSilo):
    """Takes part honestly but attests a random hash instead of the model it computed."""

    ATTACK = "wrong_attestation"

    def attested_sha256(self, ctx: TrialContext, rnd: dict[str, Any], model_bytes: bytes) -> str:
        return secrets.token_hex(32)
