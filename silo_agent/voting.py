"""Cross-evaluation: a Finding on every peer candidate (silo_agent.findings), committed then
revealed."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from bcfl_common.errors import BcflError, ContractError
from chaincode.commitments import new_salt, votes_commitment
from privacy.he import keyholder
from silo_agent.findings import (
    UNAVAILABLE,
    UNDECRYPTABLE,
    UnusableUpdate,
    container_problem,
    finding,
    finite_delta,
    problem_finding,
)
from silo_agent.steps import Step, TrialContext
from silo_agent.training import row_losses

if TYPE_CHECKING:
    from silo_agent.agent import SiloAgent

log = logging.getLogger("silo_agent.agent")


class PeerVoting:
    """The VOTE_COMMIT and VOTE_REVEAL steps of :class:`~silo_agent.agent.SiloAgent` (a mixin)."""

    def findings(self: SiloAgent, ctx: TrialContext, rnd: dict[str, Any]) -> dict[str, dict]:
        """A Finding (:mod:`silo_agent.findings`) on every peer candidate of the round.

        The score is the decrease of the mean log-loss (cross-entropy) on the local validation
        split when the candidate's update alone is applied to the base model: log-loss rather
        than accuracy because validation splits are small (tens of rows), where accuracy moves
        in coarse steps and is blind to confident mistakes, while the log-loss is continuous and
        punishes a poisoned (sign-flipped, scaled) update heavily.
        """
        local = self._local_data(ctx)
        spec, schema = ctx.trial["model"], ctx.trial["data_schema"]
        base = self._params(ctx, rnd["base"]).astype(np.float64)
        base_losses = row_losses(spec, schema, base, local.validation)
        submissions = self._submissions(rnd)
        history: list[np.ndarray] | None = None
        out: dict[str, dict] = {}
        for candidate in rnd["candidates"]:
            if candidate == self.msp_id:
                continue
            try:
                delta = self.candidate_delta(ctx, submissions.get(candidate), base.size)
            except UnusableUpdate as exc:
                log.warning(
                    "update of %s in %s round %s is unusable: %s",
                    candidate,
                    rnd["trial_id"],
                    rnd["round"],
                    exc,
                )
                out[candidate] = problem_finding(exc.problem)
                continue
            if history is None:
                history = self.similarity_history(ctx, rnd)
            losses = row_losses(spec, schema, base + delta, local.validation)
            out[candidate] = finding(delta, base_losses=base_losses, losses=losses, history=history)
        return out

    def candidate_delta(
        self: SiloAgent, ctx: TrialContext, record: dict[str, Any] | None, n_params: int
    ) -> np.ndarray:
        """A revealed update's parameter delta (decrypted: updates carry the plain delta, the
        aggregator applies the contract's weights), or UnusableUpdate
        naming the first problem: unavailable, wrong kind, wrong shape, undecryptable, not finite."""
        if record is None or not record["revealed"]:
            raise UnusableUpdate(UNAVAILABLE, "no revealed update")
        try:
            blob = self._fetch(record["content_id"], record["sha256"])
        except BcflError as exc:
            raise UnusableUpdate(UNAVAILABLE, str(exc)) from exc
        problem = container_problem(blob, preset=ctx.preset, n_params=n_params)
        if problem is not None:
            raise UnusableUpdate(problem, f"container header of {record['sha256'][:16]}")
        return finite_delta(self._decrypt(ctx, blob, n_params, 1))

    def _decrypt(
        self: SiloAgent, ctx: TrialContext, blob: bytes, n_params: int, weight: int
    ) -> np.ndarray:
        try:
            return keyholder.decrypt(
                ctx.secret, blob, expected_params=n_params, total_weight=float(weight)
            )
        except Exception as exc:  # untrusted bytes: TenSEAL raises ValueError, RuntimeError, ...
            raise UnusableUpdate(UNDECRYPTABLE, f"{type(exc).__name__}: {exc}") from exc

    def similarity_history(self: SiloAgent, ctx: TrialContext, rnd: dict[str, Any]) -> list:
        """The deltas a candidate of ``rnd`` must not repeat: every update revealed (or disclosed:
        its bytes went out without a reveal) in another (so earlier: ``rnd`` is the trial's
        latest) round attempt and every recorded aggregate
        divided by its total weight. Decrypted once, cached by sha256 (memory and state dir)."""
        trial_id = rnd["trial_id"]
        n_params = self._n_params(ctx)
        cache: dict[str, np.ndarray] = ctx.extras.setdefault("deltas", {})
        out: list[np.ndarray] = []
        for other in self._q("list_rounds", trial_id=trial_id):
            if (other["round"], other["attempt"]) == (rnd["round"], rnd["attempt"]):
                continue
            items = [
                (s["sha256"], s["content_id"], 1)
                for s in self._submissions(other).values()
                if s["revealed"] or s.get("disclosed_at") is not None
            ]
            aggregate = other.get("aggregate")
            if aggregate is not None:
                items.append(
                    (aggregate["sha256"], aggregate["content_id"], aggregate["total_weight"])
                )
            for sha, content_id, weight in items:
                delta = cache.get(sha)
                if delta is None:
                    delta = self.state.load_delta(trial_id, sha)
                if delta is None:
                    try:
                        blob = self._fetch(content_id, sha)
                        delta = finite_delta(self._decrypt(ctx, blob, n_params, weight))
                    except (BcflError, UnusableUpdate) as exc:
                        log.warning("earlier artifact %s of %s is skipped: %s", sha, trial_id, exc)
                        continue
                    self.state.save_delta(trial_id, sha, delta)
                cache[sha] = delta
                out.append(delta)
        return out

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
            findings = self.findings(ctx, rnd)
            salt = new_salt()
            votes = {
                "findings": findings,
                "salt": salt,
                "commitment": votes_commitment(
                    trial_id=trial_id, round=r, msp_id=self.msp_id, findings=findings, salt=salt
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
        shown = ", ".join(
            f"{m}={f['problem'] or format(f['score_micro'] / 1e6, '+.4f')}"
            for m, f in sorted(votes["findings"].items())
        )
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
                findings=votes["findings"],
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
