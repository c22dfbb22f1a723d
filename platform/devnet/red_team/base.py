"""What every attacking silo shares: its options and the ledger look-ups attacks need.

An attacker is a :class:`~silo_agent.agent.SiloAgent` subclass that overrides only the agent's
seams (``compute_delta``, ``training_data``, ``seal_update``, ``claimed_sample_weight``,
``findings``, ``attested_sha256``; the thief also wraps ``tick``). Everything else (commitments,
reveals, journals, the run loop) is the production agent's, so a defence that stops an attacker
here stops it against the real protocol.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from bcfl_common.errors import ConfigError
from privacy.he.keyholder import decrypt
from silo_agent.agent import SiloAgent
from silo_agent.config import SiloConfig
from silo_agent.steps import TrialContext

log = logging.getLogger("devnet.red_team")


def option_error(attack: str, name: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(
        f"--{name.replace('_', '-')} of attack {attack!r}: got {value!r}, expected {expected}"
    )


def positive_number(attack: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise option_error(attack, name, value, "a positive number")
    if value <= 0:
        raise option_error(attack, name, value, "a positive number")
    return float(value)


class AttackingSilo(SiloAgent):
    """Base of the red-team silos: ``OPTIONS`` names the attack's options and their defaults.

    :meth:`claimed_training_records` is what the hospital claims as its training split when it
    enrols; ``devnet`` enrols attackers with :func:`devnet.red_team.enrolment.enrol_attacker`.
    """

    ATTACK: ClassVar[str] = ""
    OPTIONS: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, config: SiloConfig, **options: Any):
        own = {k: options.pop(k) for k in list(options) if k in self.OPTIONS}
        unknown = sorted(k for k in options if k not in AGENT_OPTIONS)
        if unknown:
            raise ConfigError(
                f"attack {self.ATTACK!r}: got option(s) {unknown}, expected only "
                f"{sorted(self.OPTIONS) or 'none'}"
            )
        values = {**self.OPTIONS, **{k: v for k, v in own.items() if v is not None}}
        self.check_options(values)
        super().__init__(config, **options)
        self.attack_options = values

    def check_options(self, values: dict[str, Any]) -> None:
        """Refuse option values the attack cannot use (a clear error naming the option)."""

    @classmethod
    def claimed_training_records(cls, options: Mapping[str, Any], honest: int) -> int | None:
        """The training split the hospital registers at enrolment, given its ``options`` and its
        honest count (None: the honest count; see :mod:`devnet.red_team.enrolment`)."""
        return None

    # -- what attacks look up on the ledger ----------------------------------------------------
    def earlier_revealed_updates(self, trial_id: str, rnd: dict[str, Any]) -> list[dict[str, Any]]:
        """Revealed updates of earlier rounds (or attempts) of the trial, newest round first."""
        out = []
        for other in self._q("list_rounds", trial_id=trial_id):
            if (other["round"], other["attempt"]) >= (rnd["round"], rnd["attempt"]):
                continue
            records = self._q(
                "get_submissions", trial_id=trial_id, round=other["round"], attempt=other["attempt"]
            )
            out += [r for r in records if r["revealed"] and r.get("content_id")]
        return sorted(out, key=lambda r: (-r["round"], -r["attempt"], r["msp_id"]))

    def previous_aggregate(self, rnd: dict[str, Any]) -> dict[str, Any] | None:
        """The aggregate record of the round this round's base model came from (None in round 1)."""
        base = rnd["base"]
        if base["round"] == 0:
            return None
        earlier = self._q(
            "get_round", trial_id=rnd["trial_id"], round=base["round"], attempt=base["attempt"]
        )
        return earlier.get("aggregate")

    def decrypted(
        self, ctx: TrialContext, content_id: str, sha256: str, weight: float
    ) -> np.ndarray:
        """A container of the trial decrypted with the trial key (every hospital holds it)."""
        blob = self._fetch(content_id, sha256)
        return decrypt(ctx.secret, blob, expected_params=self._n_params(ctx), total_weight=weight)

    def wait_until(self, done: Any, rnd: dict[str, Any], *, what: str, poll: float = 0.3) -> bool:
        """Poll ``done()`` until it is true or the current phase's deadline is near (a fifth of
        the window, at least 3 s, is left for the attacker's own transaction). Returns done()."""
        deadline = rnd.get("deadline")
        changed = rnd.get("phase_changed_at") or time.time()
        margin = max(3.0, 0.2 * ((deadline or changed) - changed))
        while not done():
            if deadline is None or time.time() >= deadline - margin:
                log.warning("%s: stopped waiting for %s (deadline near)", self.msp_id, what)
                return bool(done())
            time.sleep(poll)
        return True


# The keyword options of SiloAgent itself, passed through untouched.
AGENT_OPTIONS = frozenset({"identity", "ledger", "store", "ledger_options", "report"})
