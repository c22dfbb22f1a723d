"""Cross-evaluation: score the peers' candidate updates, commit then reveal the scores."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from bcfl_common.errors import BcflError, ContractError, StoreError
from chaincode.commitments import new_salt, votes_commitment
from privacy.he import keyholder
from silo_agent.steps import Step, TrialContext
from silo_agent.training import evaluate

if TYPE_CHECKING:
    from silo_agent.agent import SiloAgent

log = logging.getLogger("silo_agent.agent")

MAX_SCORE_MICRO = 10**12
# A peer update that cannot be fetched, verified or decrypted gets the lowest score: it is
# rejected by the votes instead of stopping the round.
REJECT_SCORE_MICRO = -MAX_SCORE_MICRO


class PeerVoting:
    """The VOTE_COMMIT and VOTE_REVEAL steps of :class:`~silo_agent.agent.SiloAgent` (a mixin)."""

    def score_candidates(self: SiloAgent, ctx: TrialContext, rnd: dict[str, Any]) -> dict[str, int]:
        """Score every peer candidate on the local validation split, in micro-units.

        Metric: the decrease of the mean log-loss (cross-entropy) on the validation split when the
        candidate's update alone is applied to the base model: ``loss(base) - loss(base + delta)``.
        Log-loss rather than accuracy because validation splits are small (tens of rows), where
        accuracy moves in coarse steps and is blind to confident mistakes, while the log-loss is
        continuous and punishes a poisoned (sign-flipped, scaled) update heavily.
        """
        local = self._local_data(ctx)
        spec, schema = ctx.trial["model"], ctx.trial["data_schema"]
        base = self._params(ctx, rnd["base"]).astype(np.float64)
        base_loss = evaluate(spec, schema, base, local.validation)["loss"]
        submissions = self._submissions(rnd)
        scores: dict[str, int] = {}
        for candidate in rnd["candidates"]:
            if candidate == self.msp_id:
                continue
            record = submissions.get(candidate)
            try:
                if record is None or not record["revealed"]:
                    raise StoreError(f"{candidate} has no revealed update")
                blob = self._fetch(record["content_id"], record["sha256"])
                delta = keyholder.decrypt(
                    ctx.secret,
                    blob,
                    expected_params=base.size,
                    total_weight=float(record["sample_weight"]),
                )
                loss = evaluate(spec, schema, base + delta, local.validation)["loss"]
                value = (base_loss - loss) * 1e6
                scores[candidate] = (
                    int(max(-MAX_SCORE_MICRO, min(MAX_SCORE_MICRO, round(value))))
                    if math.isfinite(value)
                    else REJECT_SCORE_MICRO
                )
            except BcflError as exc:
                log.warning(
                    "update of %s in %s round %s is unusable: %s",
                    candidate,
                    rnd["trial_id"],
                    rnd["round"],
                    exc,
                )
                scores[candidate] = REJECT_SCORE_MICRO
        return scores

    def _votes(self: SiloAgent, rnd: dict[str, Any]) -> dict[str, dict[str, Any]]:
        records = self._q(
            "get_votes", trial_id=rnd["trial_id"], round=rnd["round"], attempt=rnd["attempt"]
        )
        return {r["msp_id"]: r for r in records}

    def _commit_votes(
        self: SiloAgent, ctx: TrialContext, rnd: dict[str, Any], steps: list[Step]
    ) -> None:
        trial_id, r, a = rnd["trial_id"], rnd["round"], rnd["attempt"]
        if self.msp_id in self._votes(rnd):
            return
        entry = self.state.journal_entry(trial_id, r, a)
        votes = entry.get("votes")
        if votes is None:
            scores = self.score_candidates(ctx, rnd)
            salt = new_salt()
            votes = {
                "scores": scores,
                "salt": salt,
                "commitment": votes_commitment(
                    trial_id=trial_id, round=r, msp_id=self.msp_id, scores=scores, salt=salt
                ),
            }
            self.state.record(trial_id, r, a, "votes", votes)  # before commit_votes is sent
        try:
            self._submit("commit_votes", trial_id=trial_id, round=r, commitment=votes["commitment"])
        except ContractError as exc:
            if exc.code == "DUPLICATE":
                return
            if exc.code in ("LATE", "NOT_ENROLLED"):
                self._emit(
                    steps,
                    Step(trial_id, "votes refused", f"{exc.code}: {exc.message}", r, a, "warning"),
                )
                return
            raise
        shown = ", ".join(f"{m}={s / 1e6:+.4f}" for m, s in sorted(votes["scores"].items()))
        self._emit(steps, Step(trial_id, "committed votes", shown or "no peer candidates", r, a))

    def _reveal_votes(
        self: SiloAgent, ctx: TrialContext, rnd: dict[str, Any], steps: list[Step]
    ) -> None:
        trial_id, r, a = rnd["trial_id"], rnd["round"], rnd["attempt"]
        mine = self._votes(rnd).get(self.msp_id)
        if mine is None or mine["revealed"]:
            return
        votes = self.state.journal_entry(trial_id, r, a).get("votes")
        if votes is None or votes["commitment"] != mine["commitment"]:
            self._emit(
                steps,
                Step(
                    trial_id,
                    "cannot reveal votes",
                    "the journal holds no votes matching the ledger's commitment",
                    r,
                    a,
                    "error",
                ),
            )
            return
        try:
            self._submit(
                "reveal_votes",
                trial_id=trial_id,
                round=r,
                scores=votes["scores"],
                salt=votes["salt"],
            )
        except ContractError as exc:
            if exc.code == "DUPLICATE":
                return
            if exc.code in ("LATE", "NOT_ENROLLED"):
                self._emit(
                    steps,
                    Step(
                        trial_id,
                        "votes reveal refused",
                        f"{exc.code}: {exc.message}",
                        r,
                        a,
                        "warning",
                    ),
                )
                return
            raise
        self._emit(steps, Step(trial_id, "revealed votes", "", r, a))
