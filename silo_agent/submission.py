"""SUBMIT and REVEAL: train, encrypt and commit an update; upload and reveal it once committed.

The encrypted update stays in the state directory until the REVEAL phase: only its sha256 (inside
the salted commitment) reaches the ledger during SUBMIT, and the bytes reach the artifact store
only after every commitment is fixed. A hospital that wants to pass a peer's update off as its
own (update theft) therefore has nothing to copy while it could still commit to it, and a copy
made later matches no commitment (and the contract refuses a sha256 revealed before).

Seams (small, used by the honest path; ``devnet.red_team``'s attackers override them):
:meth:`~UpdateSubmission.training_data`, :meth:`~UpdateSubmission.compute_delta`,
:meth:`~UpdateSubmission.claimed_sample_weight`, :meth:`~UpdateSubmission.seal_update`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from bcfl_common.errors import ContractError, PrivacyBudgetExceeded, PrivacyError, StoreError
from chaincode.commitments import new_salt, update_commitment
from model_registry.training_settings import training_inputs
from privacy import dp, he
from privacy.he import keyholder
from silo_agent.data import EncodedData
from silo_agent.steps import Step, TrialContext
from silo_agent.training import TrainingSettings, open_accountant, train_local

if TYPE_CHECKING:
    from silo_agent.agent import SiloAgent

# Round indexes in the accountant: one per (round, attempt).
ATTEMPTS_PER_ROUND = 1_000_000


def check_schedule_entry(
    trial_id: str,
    msp_id: str,
    recorded: Mapping[str, Any] | None,
    recomputed: Mapping[str, Any],
) -> None:
    """Refuse (PrivacyError SCHEDULE_MISMATCH) a recorded DP schedule entry that is not what this
    hospital's own Opacus computation gives: the contract charges epsilon and bounds update norms
    from that entry, so a wrong one would misstate the hospital's privacy loss."""
    if recorded is None:
        raise PrivacyError(
            f"trial {trial_id!r}: the ledger's DP schedule has no entry for {msp_id}; expected one "
            "per enrolled hospital; refusing to train (nothing was sent)",
            code="SCHEDULE_MISMATCH",
            detail={"trial_id": trial_id, "msp_id": msp_id, "fields": ["entry"]},
        )
    differences = dp.schedule_differences(recorded, recomputed)
    if differences:
        raise PrivacyError(
            f"trial {trial_id!r}: the ledger's DP schedule entry of {msp_id} is not this silo's "
            f"own computation ({'; '.join(differences)}); refusing to train (nothing was sent)",
            code="SCHEDULE_MISMATCH",
            detail={
                "trial_id": trial_id,
                "msp_id": msp_id,
                "fields": [d.split(":", 1)[0] for d in differences],
            },
        )


def check_training_records(
    trial_id: str, msp_id: str, registered: int | None, training_records: int
) -> None:
    """Refuse to train on a split of another size than the enrolment registered (the contract
    bounds the sample weight, and the schedule was computed, by the registered count)."""
    if registered != training_records:
        raise PrivacyError(
            f"trial {trial_id!r}: the local training split has {training_records} records, "
            f"the enrolment of {msp_id} registered training_records = {registered}; expected "
            "the data (and [data] validation_fraction) the hospital enrolled with; refusing to "
            "train (nothing was sent)",
            code="TRAINING_RECORDS_MISMATCH",
            detail={
                "trial_id": trial_id,
                "field": "training_records",
                "value": training_records,
                "expected": registered,
            },
        )


class UpdateSubmission:
    """The SUBMIT and REVEAL steps of :class:`~silo_agent.agent.SiloAgent` (a mixin)."""

    # -- seams ---------------------------------------------------------------------------------
    def training_data(self: SiloAgent, ctx: TrialContext) -> EncodedData:
        """The records this silo trains on in the trial: its local split's training part."""
        return self._local_data(ctx).train

    def compute_delta(self, base: np.ndarray, trained: np.ndarray) -> np.ndarray:
        """The update this silo sends for a round: its trained parameters minus the base model's
        (float64)."""
        return np.asarray(trained, dtype=np.float64) - np.asarray(base, dtype=np.float64)

    def claimed_sample_weight(self, ctx: TrialContext, training_records: int) -> int:
        """The sample weight revealed with the update: the number of records trained on."""
        return training_records

    def seal_update(
        self: SiloAgent, ctx: TrialContext, rnd: dict[str, Any], delta: np.ndarray, weight: int
    ) -> bytes:
        """The update container: the plain parameter ``delta`` encrypted under the trial's CKKS
        key. ``weight`` (the sample weight it will reveal) is not applied here: the aggregator
        multiplies each accepted update by the weight the contract decided (capped)."""
        return keyholder.encrypt_update(ctx.secret, delta)

    # -- ledger views --------------------------------------------------------------------------
    def _submissions(self: SiloAgent, rnd: dict[str, Any]) -> dict[str, dict[str, Any]]:
        records = self._q(
            "get_submissions", trial_id=rnd["trial_id"], round=rnd["round"], attempt=rnd["attempt"]
        )
        return {r["msp_id"]: r for r in records}

    def _skip(
        self: SiloAgent, steps: list[Step], rnd: dict[str, Any], reason: str, level: str = "warning"
    ) -> None:
        self.state.record(rnd["trial_id"], rnd["round"], rnd["attempt"], "skipped", reason)
        self._emit(
            steps,
            Step(rnd["trial_id"], "skipped round", reason, rnd["round"], rnd["attempt"], level),
        )

    # -- SUBMIT --------------------------------------------------------------------------------
    def _submit_update(
        self: SiloAgent, ctx: TrialContext, rnd: dict[str, Any], steps: list[Step]
    ) -> None:
        trial_id, r, a = rnd["trial_id"], rnd["round"], rnd["attempt"]
        if self.msp_id not in rnd["enrolled"]:
            return
        entry = self.state.journal_entry(trial_id, r, a)
        mine = self._submissions(rnd).get(self.msp_id)
        if mine is not None or entry.get("skipped"):
            return
        update = entry.get("update")
        if update is None:
            update = self._unrevealed_update(rnd)
            if update is not None:
                self.state.record(trial_id, r, a, "update", update)  # before commit_update
                self._emit(
                    steps,
                    Step(
                        trial_id,
                        "reusing update",
                        f"attempt {update['reused_from_attempt']}'s update was never revealed: "
                        "committed again, no new training and no new epsilon",
                        r,
                        a,
                    ),
                )
            else:
                update = self._prepare_update(ctx, rnd, steps)
            if update is None:
                return
        try:
            self._submit(
                "commit_update",
                trial_id=trial_id,
                round=r,
                base_model_sha256=update["base_model_sha256"],
                commitment=update["commitment"],
            )
        except ContractError as exc:
            if exc.code == "DUPLICATE":
                return
            if exc.code in ("LATE", "STALE", "BUDGET_EXCEEDED", "NOT_ENROLLED"):
                self._skip(steps, rnd, f"commit refused: {exc.code}: {exc.message}")
                return
            raise
        self._emit(
            steps,
            Step(
                trial_id,
                "committed update",
                f"weight {update['sample_weight']}, sha256 {update['sha256'][:16]} "
                "(kept locally until REVEAL)",
                r,
                a,
            ),
        )

    def _unrevealed_update(self: SiloAgent, rnd: dict[str, Any]) -> dict[str, Any] | None:
        """An earlier attempt's update of this round, trained on the same base model and never
        revealed: nobody saw its bytes, so a retry commits it again under a fresh salt instead
        of training again (which would spend epsilon twice for one disclosure, and after a few
        retries refuse the round locally)."""
        trial_id, r, a = rnd["trial_id"], rnd["round"], rnd["attempt"]
        base = rnd["base"]["model"]["sha256"]
        journal = self.state.journal(trial_id)["rounds"]
        by_sha = self._updates_by_sha(trial_id)
        for earlier_attempt in range(a - 1, 0, -1):
            entry = journal.get(f"{r}.{earlier_attempt}", {})
            earlier = entry.get("update")
            if earlier is None or earlier["base_model_sha256"] != base or entry.get("withdrawn"):
                continue
            # Uploaded bytes are out (and disclosed on the ledger, so a reveal of them would be
            # refused): only an update nobody saw is committed again.
            if self._revealed(rnd, by_sha[earlier["sha256"]]):
                continue  # disclosed: its epsilon is spent and its bytes may not be revealed twice
            if self.state.load_update(trial_id, earlier["sha256"]) is None:
                continue
            salt = new_salt()
            commitment = update_commitment(
                trial_id=trial_id,
                round=r,
                msp_id=self.msp_id,
                sha256=earlier["sha256"],
                sample_weight=earlier["sample_weight"],
                salt=salt,
            )
            return {
                **earlier,
                "salt": salt,
                "commitment": commitment,
                "reused_from_attempt": earlier.get("reused_from_attempt", earlier_attempt),
            }
        return None

    def _revealed(
        self: SiloAgent, rnd: dict[str, Any], entries: list[dict[str, Any]], uploads: bool = True
    ) -> bool:
        """Whether this hospital revealed, in any of these journal entries' attempts, its update,
        or began to upload it (a reveal refused LATE after the upload still left the bytes in the
        shared store: disclosed, as far as this hospital's budget is concerned; ``uploads``
        false: only ledger reveals count)."""
        for entry in entries:
            if entry.get("disclosed"):
                return True
            if uploads and (entry.get("uploading") or entry["update"].get("content_id")):
                return True  # its bytes went to the shared store
            where = {**rnd, "round": entry["round"], "attempt": entry["attempt"]}
            mine = self._submissions(where).get(self.msp_id)
            if mine is not None and (mine["revealed"] or mine.get("disclosed_at") is not None):
                return True
        return False

    def _updates_by_sha(self: SiloAgent, trial_id: str) -> dict[str, list[dict[str, Any]]]:
        """The journal's attempts by the sha256 of the update they committed (a reused update
        is the same bytes under several attempts)."""
        by_sha: dict[str, list[dict[str, Any]]] = {}
        for entry in self.state.journal(trial_id)["rounds"].values():
            if entry.get("update") is not None:
                by_sha.setdefault(entry["update"]["sha256"], []).append(entry)
        return by_sha

    def _settle_uploaded(
        self: SiloAgent, rnd: dict[str, Any], entries: list[dict[str, Any]], steps: list[Step]
    ) -> None:
        """Journal entries of one update whose bytes went out: disclosed on the ledger unless a
        reveal of them landed (``_disclose``), then marked ``disclosed`` once that is settled."""
        trial_id = rnd["trial_id"]
        settled = True
        if not self._revealed(rnd, entries, uploads=False):
            uploaded = next(
                (e for e in entries if e.get("uploading") or e["update"].get("content_id")),
                None,
            )
            if uploaded is not None:
                settled = self._disclose(
                    trial_id, uploaded["round"], uploaded["attempt"], uploaded["update"], steps
                )
        if settled:
            for e in entries:
                self.state.record(trial_id, e["round"], e["attempt"], "disclosed", True)

    def _disclose_pending(self: SiloAgent, rnd: dict[str, Any], steps: list[Step]) -> None:
        """On every tick of a RUNNING trial: an earlier attempt's update whose bytes went out
        and whose disclosure has not settled (the agent was down, or the contract said
        TOO_EARLY) is disclosed now, not only before this hospital next trains: it may never
        train again (the plan's last round), and a copier's reveal of the bytes is claimed only
        by their author's disclosure."""
        now = (rnd["round"], rnd["attempt"])
        for entries in self._updates_by_sha(rnd["trial_id"]).values():
            if any(
                e.get("disclosed") or e.get("withdrawn") or (e["round"], e["attempt"]) == now
                for e in entries
            ):
                continue
            if any(e.get("uploading") or e["update"].get("content_id") for e in entries):
                self._settle_uploaded(rnd, entries, steps)

    def _withdraw_undisclosed(
        self: SiloAgent, rnd: dict[str, Any], accountant: Any, steps: list[Step]
    ) -> None:
        """Before training for attempt (r, a): every earlier update that was never revealed can
        no longer be (its attempts are over) and is not reused (else no training would happen):
        destroy it and take back its local charge, so that halted, aborted and rolled-back
        attempts cost the hospital nothing locally, as on the ledger."""
        trial_id, now = rnd["trial_id"], (rnd["round"], rnd["attempt"])
        for sha, entries in self._updates_by_sha(trial_id).items():
            if any(e.get("withdrawn") or e.get("disclosed") for e in entries):
                continue
            if any((e["round"], e["attempt"]) == now for e in entries):
                continue
            if self._revealed(rnd, entries):
                continue  # its bytes went out: _disclose_pending settles it, every tick
            self.state.delete_update(trial_id, sha)
            for e in entries:
                r, a = e["round"], e["attempt"]
                if e["update"].get("reused_from_attempt") is None:  # the one that was charged
                    accountant.withdraw_round(
                        r * ATTEMPTS_PER_ROUND + a, f"round {r} attempt {a} ended unrevealed"
                    )
                self.state.record(trial_id, r, a, "withdrawn", True)
            first = min((e["round"], e["attempt"]) for e in entries)
            self._emit(
                steps,
                Step(
                    trial_id,
                    "withdrew update",
                    f"the update of round {first[0]} attempt {first[1]} was never revealed: "
                    "destroyed, and its local epsilon charge taken back",
                    rnd["round"],
                    rnd["attempt"],
                ),
            )

    def _check_dp_schedule(self: SiloAgent, ctx: TrialContext, training_records: int) -> None:
        """This hospital's entry of the trial's DP schedule, recomputed (once per context)."""
        if ctx.extras.get("schedule_checked") == training_records:
            return
        trial = ctx.trial
        record = self._q("get_dp_schedule", trial_id=trial["trial_id"])
        recomputed = dp.schedule_entry(
            trial, training_records=training_records, **training_inputs(trial)
        )
        check_schedule_entry(
            trial["trial_id"], self.msp_id, record["entries"].get(self.msp_id), recomputed
        )
        ctx.extras["schedule_checked"] = training_records

    def _prepare_update(
        self: SiloAgent, ctx: TrialContext, rnd: dict[str, Any], steps: list[Step]
    ) -> dict[str, Any] | None:
        trial, trial_id, r, a = ctx.trial, rnd["trial_id"], rnd["round"], rnd["attempt"]
        train = self.training_data(ctx)
        enrolment = self.enrolment(trial_id) or {}
        check_training_records(trial_id, self.msp_id, enrolment.get("training_records"), len(train))
        settings = TrainingSettings.from_hyperparameters(trial["model"].get("hyperparameters"))
        if trial["dp"].get("enabled", True):
            self._check_dp_schedule(ctx, len(train))
        accountant = open_accountant(
            self.state.accountant_path(trial_id), trial, settings, len(train)
        )
        index = r * ATTEMPTS_PER_ROUND + a
        budget = None
        if accountant is not None:  # uploads that went out were settled (_disclose_pending)
            self._withdraw_undisclosed(rnd, accountant, steps)
            # The local accountant is authoritative for this hospital's own budget.
            ledger_account = self._q("get_privacy_ledger", trial_id=trial_id, msp_id=self.msp_id)[0]
            limit = ledger_account["budget_micro"]
            if self.config.epsilon_budget is not None:
                limit = min(limit, dp.to_micro_epsilon(self.config.epsilon_budget, round_up=False))
            budget = dp.PrivacyBudget(limit)
            if not any(e["round"] == index for e in accountant.rounds):
                try:
                    accountant.check_round(budget)
                except PrivacyBudgetExceeded as exc:
                    self._skip(steps, rnd, f"privacy budget: {exc.message}")
                    return None
        self._emit(
            steps,
            Step(
                trial_id,
                "training",
                f"{len(train)} samples, DP {'on' if accountant else 'off'}",
                r,
                a,
            ),
        )
        base = self._params(ctx, rnd["base"])
        started = time.perf_counter()
        result = train_local(
            trial["model"], trial["data_schema"], base, train, accountant=accountant
        )
        train_seconds = time.perf_counter() - started
        if accountant is not None and not any(e["round"] == index for e in accountant.rounds):
            try:
                accountant.charge_round(index, budget=budget, steps=result.steps)
            except PrivacyBudgetExceeded as exc:
                self._skip(steps, rnd, f"privacy budget: {exc.message}")
                return None
        weight = self.claimed_sample_weight(ctx, len(train))
        delta = self._clip_to_he_range(
            ctx, rnd, self.compute_delta(base, result.params), weight, steps
        )
        blob = self.seal_update(ctx, rnd, delta, weight)
        sha = self.state.save_update(trial_id, blob)  # kept here until REVEAL
        salt = new_salt()
        update = {
            "base_model_sha256": rnd["base"]["model"]["sha256"],
            "sha256": sha,
            "sample_weight": weight,
            "salt": salt,
            "commitment": update_commitment(
                trial_id=trial_id,
                round=r,
                msp_id=self.msp_id,
                sha256=sha,
                sample_weight=weight,
                salt=salt,
            ),
            "train_loss": result.train_loss if math.isfinite(result.train_loss) else None,
            "steps": result.steps,
            "train_seconds": round(train_seconds, 4),  # local only: the round-overhead benchmark
        }
        self.state.record(trial_id, r, a, "update", update)  # before commit_update is sent
        return update

    def _clip_to_he_range(
        self: SiloAgent,
        ctx: TrialContext,
        rnd: dict[str, Any],
        delta: np.ndarray,
        weight: int,
        steps: list[Step],
    ) -> np.ndarray:
        """CKKS wraps around silently beyond the preset's range: the delta is clipped so that
        ``weight * delta`` fits one summand's share of it (the aggregate multiplies the delta by
        a weight of at most the sample weight; no honest update of a sensible model comes near
        the cap)."""
        cap = he.get_preset(ctx.preset).max_abs_value * 0.999 / max(1, weight)
        if float(np.max(np.abs(delta))) <= cap:
            return delta
        self._emit(
            steps,
            Step(
                rnd["trial_id"],
                "clipped update",
                f"|delta| capped at {cap:.4g} for the HE range",
                rnd["round"],
                rnd["attempt"],
                "warning",
            ),
        )
        return np.clip(delta, -cap, cap)

    # -- REVEAL --------------------------------------------------------------------------------
    def _reveal_update(
        self: SiloAgent, ctx: TrialContext, rnd: dict[str, Any], steps: list[Step]
    ) -> None:
        trial_id, r, a = rnd["trial_id"], rnd["round"], rnd["attempt"]
        mine = self._submissions(rnd).get(self.msp_id)
        if mine is None or mine["revealed"]:
            return
        update = self.state.journal_entry(trial_id, r, a).get("update")
        blob = None if update is None else self.state.load_update(trial_id, update["sha256"])
        if update is None or update["commitment"] != mine["commitment"] or blob is None:
            what = (
                "the journal holds no update matching the ledger's commitment"
                if update is None or update["commitment"] != mine["commitment"]
                else f"the committed update {update['sha256'][:16]} is missing from the state directory"
            )
            self._emit(
                steps,
                Step(trial_id, "cannot reveal", f"{what} (state directory lost?)", r, a, "error"),
            )
            return
        if update.get("content_id") is None:
            # From here on the bytes may be out (the store is shared): never withdrawn.
            self.state.record(trial_id, r, a, "uploading", True)
            stored = self.store.put(blob)  # the commitments are fixed: now the bytes may go out
            if stored.sha256 != update["sha256"]:
                raise StoreError(
                    f"artifact store returned sha256 {stored.sha256} for the update, expected "
                    f"{update['sha256']} (the committed one)",
                    code="STORE_INTEGRITY",
                )
            update = {**update, "content_id": stored.content_id}
            self.state.record(trial_id, r, a, "update", update)  # before reveal_update is sent
        try:
            self._submit(
                "reveal_update",
                trial_id=trial_id,
                round=r,
                content_id=update["content_id"],
                sha256=update["sha256"],
                sample_weight=update["sample_weight"],
                salt=update["salt"],
            )
        except ContractError as exc:
            if exc.code == "DUPLICATE":
                return
            if exc.code in ("LATE", "BUDGET_EXCEEDED", "DUPLICATE_CONTENT", "NOT_ENROLLED"):
                self._skip(steps, rnd, f"reveal refused: {exc.code}: {exc.message}")
                if exc.code == "LATE":
                    self._disclose(trial_id, r, a, update, steps)
                return
            if exc.code == "WRONG_STATE":  # halted (aborted) between the upload and the reveal
                self._skip(steps, rnd, f"reveal refused: {exc.code}: {exc.message}")
                self._disclose(trial_id, r, a, update, steps)
                return
            raise
        self._emit(steps, Step(trial_id, "revealed update", update["content_id"], r, a))

    def _disclose(
        self: SiloAgent, trial_id: str, r: int, a: int, update: dict[str, Any], steps: list[Step]
    ) -> bool:
        """Open the commitment of an update whose bytes went to the shared store but whose
        reveal did not land (``disclose_update``): the ledger then holds the bytes as this
        hospital's, so no peer can reveal them later as its own, and charges their epsilon.
        True when that is settled: disclosed now or before, or refused for good (the bytes
        revealed already, the budget spent); False when it may still work later."""
        if update.get("content_id") is None:
            return True  # the upload never completed: nothing of it is known to be out
        try:
            self._submit(
                "disclose_update",
                trial_id=trial_id,
                round=r,
                attempt=a,
                content_id=update["content_id"],
                sha256=update["sha256"],
                sample_weight=update["sample_weight"],
                salt=update["salt"],
            )
        except ContractError as exc:
            if exc.code == "DUPLICATE":  # disclosed (or revealed) already
                self.state.record(trial_id, r, a, "disclosed", True)
                return True
            if exc.code in (
                "TOO_EARLY",
                "DUPLICATE_CONTENT",
                "BUDGET_EXCEEDED",
                "NOT_COMMITTED",
                "WRONG_STATE",
                "NOT_ENROLLED",
            ):
                note = f"{exc.code}: {exc.message}"
                if self.state.journal_entry(trial_id, r, a).get("disclosure_refused") != note:
                    self.state.record(trial_id, r, a, "disclosure_refused", note)  # said once
                    self._emit(
                        steps,
                        Step(
                            trial_id,
                            "cannot disclose",
                            f"update {update['sha256'][:16]}: {note}",
                            r,
                            a,
                            "warning",
                        ),
                    )
                return exc.code in ("DUPLICATE_CONTENT", "BUDGET_EXCEEDED", "NOT_COMMITTED")
            raise
        self.state.record(trial_id, r, a, "disclosed", True)
        self._emit(
            steps,
            Step(
                trial_id,
                "disclosed update",
                f"{update['sha256'][:16]}: uploaded but not revealed; the ledger now holds it "
                "as this hospital's and charged its epsilon",
                r,
                a,
            ),
        )
        return True
