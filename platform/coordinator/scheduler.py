"""The round scheduler: reads every running trial from the ledger and takes the next step of its round.

One pass (:meth:`Scheduler.tick`) looks at each RUNNING trial and, for as long as it makes
progress, does the next thing the contract expects from the coordinator:

* no round in progress, keys recorded, ``head.round < rounds``  -> ``open_round``
* SUBMIT / REVEAL / VOTE_COMMIT / VOTE_REVEAL, once every expected hospital acted or the phase
  deadline passed -> ``close_update_commits`` / ``close_update_reveals`` / ``close_vote_commits`` /
  ``close_voting`` (checked from the round record first: no transaction that would be TOO_EARLY)
* AGGREGATE -> fetch the accepted encrypted updates by content id, check their sha256, sum them,
  each times its aggregation weight from the contract's acceptance (capped, integer), with the
  trial's *public* CKKS context in sha256 order (so anyone recomputes the same bytes),
  store the aggregate and ``record_aggregate``. Nothing is ever decrypted: the coordinator has no
  secret key.
* ATTEST -> nothing: the contract finalizes the round when a quorum of hospitals attests.
* ``head.round == final_round`` and no round in progress -> ``complete_trial`` (admin identity).
* a round attempt that failed (HALTED with ``halt.retry``: the contract counted it against the
  trial's ``max_retries``) -> ``open_round`` for the next attempt; when the retries run out, the
  budgets are spent or too few hospitals are left, the contract halts the trial itself, with a
  code, so nothing stays RUNNING that cannot move.
* then, with settlement configured (``settlement``, a :class:`coordinator.settlement_step.SettlementStep`):
  every finalized round of an opted-in trial (any trial state) not yet settled is paid on
  Ethereum and its transaction recorded on the ledger; settlement never holds up training.

State lives on the ledger only; the database keeps bookkeeping (which steps ran, with which
transaction). A restart simply reads the ledger again: a step already committed is seen as done,
and aggregation is deterministic, so re-storing gives the same content id. A round the admin
ABORTED is not retried: the schedule pauses until the admin opens the next attempt, rolls back
or halts (``coordinator.progress`` says so, naming the commands).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bcfl_common.errors import (
    BcflError,
    ContractError,
    PrivacyError,
    StoreError,
    StoreIntegrityError,
    UpdateFormatError,
)
from coordinator.progress import ADMIN_NEXT, expected, resumed_after

log = logging.getLogger(__name__)

TERMINAL_PHASES = ("FINALIZED", "HALTED")
CLOSE_STEPS = {
    "SUBMIT": "close_update_commits",
    "REVEAL": "close_update_reveals",
    "VOTE_COMMIT": "close_vote_commits",
    "VOTE_REVEAL": "close_voting",
}
# Refusals meaning someone else (the admin, another coordinator) already moved the round on.
RACED_CODES = frozenset({"WRONG_STATE", "LATE", "DUPLICATE", "NO_SUCH_ROUND", "ALREADY_EXISTS"})
MAX_REASON = 1000


@dataclass
class StepOutcome:
    """What one scheduler step did for one trial."""

    trial_id: str
    action: str
    status: str  # done | waiting | raced | failed | idle
    round: int | None = None
    attempt: int | None = None
    tx_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    @property
    def progressed(self) -> bool:
        return self.status == "done"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Unusable(Exception):
    """An accepted update (or the trial's context) can never be aggregated: the round must stop."""


class Scheduler:
    """Drives the rounds of every running trial. ``ledger`` acts as the coordinator; ``admin_ledger``
    (optional) as the consortium admin, for ``complete_trial`` and for aborting a round whose
    accepted updates cannot be aggregated."""

    def __init__(
        self,
        ledger: Any,
        store: Any,
        *,
        admin_ledger: Any | None = None,
        database: Any | None = None,
        settlement: Any | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 2.0,
        max_steps_per_trial: int = 16,
    ):
        self.ledger = ledger
        self.admin_ledger = admin_ledger
        self.store = store
        self.database = database
        self.settlement = settlement
        self.clock = clock
        self.poll_interval = poll_interval
        self.max_steps_per_trial = max_steps_per_trial
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._trials: dict[str, dict[str, Any]] = {}
        self._ticks = 0
        self._last_tick_at: float | None = None
        self._last_error: str | None = None
        self._height: int | None = None

    # -- running -----------------------------------------------------------------------------
    def start(self) -> None:
        """Run passes in a background thread every ``poll_interval`` seconds (or when woken)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="bcfl-scheduler", daemon=True)
        self._thread.start()
        log.info("scheduler started (poll interval %.2f s)", self.poll_interval)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
            log.info("scheduler stopped")

    def wake(self) -> None:
        """Ask for a pass now (after an admin action, for instance)."""
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # keep scheduling; the error is visible in status()
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.exception("scheduler pass failed")
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    # -- one pass ----------------------------------------------------------------------------
    def tick(self) -> list[StepOutcome]:
        """One pass over every RUNNING trial; returns what was done or is awaited."""
        with self._lock:
            outcomes: list[StepOutcome] = []
            for trial in self.ledger.evaluate("list_trials", {"state": "RUNNING"}):
                outcomes.extend(self.run_trial(trial["trial_id"]))
            if self.settlement is not None:
                outcomes.extend(self.settlement.tick())
            self._height = self.ledger.height()
            self._ticks += 1
            self._last_tick_at = time.time()
            self._last_error = None
            return outcomes

    def run_trial(self, trial_id: str) -> list[StepOutcome]:
        """Step one trial for as long as it makes progress."""
        with self._lock:
            outcomes = []
            for _ in range(self.max_steps_per_trial):
                outcome = self.step(trial_id)
                outcomes.append(outcome)
                self._trials[trial_id] = outcome.to_dict()
                if not outcome.progressed:
                    break
            return outcomes

    def step(self, trial_id: str) -> StepOutcome:
        """Read the trial and its current round from the ledger; take at most one step."""
        trial = self._query("get_trial", {"trial_id": trial_id})
        if trial["state"] != "RUNNING":
            return StepOutcome(trial_id, "none", "idle", detail={"state": trial["state"]})
        current = trial["current"]
        rnd = None
        if current is not None:
            rnd = self._query(
                "get_round",
                {"trial_id": trial_id, "round": current["round"], "attempt": current["attempt"]},
            )
        if rnd is None or rnd["phase"] in TERMINAL_PHASES:
            return self._between_rounds(trial, rnd)
        phase = rnd["phase"]
        if phase in CLOSE_STEPS:
            waiting = self._waiting_for(trial, rnd)
            now = int(self.clock())
            if waiting and now <= rnd["deadline"]:
                return self._outcome(
                    trial,
                    rnd,
                    CLOSE_STEPS[phase],
                    "waiting",
                    phase=phase,
                    waiting_for=waiting,
                    deadline=rnd["deadline"],
                    now=now,
                )
            return self._submit(
                self.ledger,
                trial,
                rnd,
                CLOSE_STEPS[phase],
                {"trial_id": trial_id, "round": rnd["round"]},
                detail={"phase": phase, "missing": waiting, "deadline_passed": bool(waiting)},
            )
        if phase == "AGGREGATE":
            return self._aggregate(trial, rnd)
        # ATTEST: the contract finalizes at quorum; nothing for the coordinator to do.
        attested = self._query(
            "get_attestations",
            {"trial_id": trial_id, "round": rnd["round"], "attempt": rnd["attempt"]},
        )
        return self._outcome(
            trial,
            rnd,
            "attest",
            "waiting",
            phase=phase,
            attestations=len(attested),
            quorum=rnd["attestation_quorum"],
        )

    # -- between rounds ----------------------------------------------------------------------
    def _between_rounds(self, trial: dict[str, Any], rnd: dict[str, Any] | None) -> StepOutcome:
        trial_id = trial["trial_id"]
        halt = (rnd or {}).get("halt") or {}
        if (
            rnd is not None
            and rnd["phase"] == "HALTED"
            and not halt.get("retry")
            and not resumed_after(trial, rnd)
        ):
            return self._outcome(
                trial,
                rnd,
                "open_round",
                "waiting",
                phase="HALTED",
                halt_code=halt.get("code"),
                waiting_for=["admin"],
                reason=f"round {rnd['round']} halted ({halt.get('code')}: {halt.get('reason')}); {ADMIN_NEXT}",
            )
        head = trial["head"]
        if head["round"] >= trial.get("final_round", trial["rounds"]):
            if self.admin_ledger is None:
                return self._outcome(
                    trial,
                    rnd,
                    "complete_trial",
                    "waiting",
                    reason="every round is finalized; completing needs the admin identity",
                )
            return self._submit(
                self.admin_ledger, trial, rnd, "complete_trial", {"trial_id": trial_id}
            )
        try:
            self._query("get_trial_keys", {"trial_id": trial_id})
        except ContractError as exc:
            if exc.code != "NOT_FOUND":
                raise
            return self._outcome(
                trial,
                rnd,
                "open_round",
                "waiting",
                waiting_for=["an enrolled hospital's silo agent"],
                reason="no trial keys yet: an enrolled hospital must record_trial_keys",
            )
        next_round = head["round"] + 1
        return self._submit(
            self.ledger,
            trial,
            None,
            "open_round",
            {"trial_id": trial_id, "round": next_round},
            round_number=next_round,
        )

    # -- who is still expected ---------------------------------------------------------------
    def _waiting_for(self, trial: dict[str, Any], rnd: dict[str, Any]) -> list[str]:
        return expected(self._query, trial, rnd)

    # -- aggregation -------------------------------------------------------------------------
    def _aggregate(self, trial: dict[str, Any], rnd: dict[str, Any]) -> StepOutcome:
        trial_id, r, a = trial["trial_id"], rnd["round"], rnd["attempt"]
        submissions = {
            u["msp_id"]: u
            for u in self._query(
                "get_submissions", {"trial_id": trial_id, "round": r, "attempt": a}
            )
        }
        step_id = None
        try:
            if not trial["he"]["enabled"]:
                raise _Unusable(
                    "the trial has homomorphic encryption switched off; the coordinator aggregates only encrypted updates"
                )
            acceptance = self._query(
                "get_acceptance", {"trial_id": trial_id, "round": r, "attempt": a}
            )
            inputs = []
            for msp_id in rnd["accepted"]:
                update = submissions.get(msp_id)
                if update is None or not update["revealed"]:
                    raise _Unusable(
                        f"accepted update of {msp_id} has no revealed submission on the ledger"
                    )
                inputs.append(
                    {
                        "msp_id": msp_id,
                        "content_id": update["content_id"],
                        "sha256": update["sha256"],
                        # The contract's (capped) aggregation weight, applied here: silos
                        # encrypt their plain parameter delta.
                        "weight": acceptance["candidates"][msp_id]["weight"],
                    }
                )
            # Sorted by sha256: the order every silo uses to recompute the same aggregate bytes.
            inputs.sort(key=lambda item: item["sha256"])
            if [item["sha256"] for item in inputs] != sorted(rnd["accepted_sha256s"]):
                raise _Unusable(
                    "the accepted submissions do not match the round's accepted_sha256s"
                )
            keys = self._query("get_trial_keys", {"trial_id": trial_id})
            step_id = self._step_started(trial_id, "aggregate", r, a, {"updates": inputs})
            aggregate_bytes = self._compute_aggregate(trial, rnd, keys, inputs)
            stored = self.store.put(aggregate_bytes)
        except _Unusable as exc:
            return self._abandon(trial, rnd, step_id, str(exc))
        except (StoreError, BcflError) as exc:
            # Store or ledger unreachable: try again on the next pass.
            self._step_finished(
                step_id, "failed", detail={"code": exc.code, "message": exc.message}
            )
            log.warning("trial %s round %s: aggregation postponed: %s", trial_id, r, exc.message)
            return self._outcome(
                trial, rnd, "aggregate", "failed", code=exc.code, message=exc.message
            )
        args = {
            "trial_id": trial_id,
            "round": r,
            "content_id": stored.content_id,
            "sha256": stored.sha256,
            "update_sha256s": [item["sha256"] for item in inputs],
        }
        self._step_finished(
            step_id, "stored", detail={"content_id": stored.content_id, "sha256": stored.sha256}
        )
        return self._submit(
            self.ledger,
            trial,
            rnd,
            "record_aggregate",
            args,
            detail={
                "content_id": stored.content_id,
                "sha256": stored.sha256,
                "summed": len(inputs),
            },
        )

    def _compute_aggregate(
        self,
        trial: dict[str, Any],
        rnd: dict[str, Any],
        keys: dict[str, Any],
        inputs: list[dict[str, Any]],
    ) -> bytes:
        from privacy import he  # TenSEAL is loaded only when there is something to sum

        preset = trial["he"]["preset"]
        try:
            context_bytes = self._fetch(
                keys["public_context"], "the trial's public context", rnd, trial, max_bytes=16 << 20
            )
            context = he.load_public_context(context_bytes, preset)
        except (UpdateFormatError, PrivacyError) as exc:
            raise _Unusable(f"the trial's public context: {exc.message}") from exc
        current: dict[str, Any] = {}

        def updates() -> Any:
            # One update in memory at a time; each must be a single silo's update, not an aggregate.
            for item in inputs:
                current.update(item)
                blob = self._fetch(
                    item,
                    f"the accepted update of {item['msp_id']}",
                    rnd,
                    trial,
                    max_bytes=he.MAX_CONTAINER_BYTES,
                )
                he.decode_container(blob, context.preset, kind=he.Kind.UPDATE)
                yield blob

        try:
            return he.aggregate(context, updates(), weights=[item["weight"] for item in inputs])
        except (UpdateFormatError, PrivacyError) as exc:
            raise _Unusable(
                f"the accepted update of {current.get('msp_id')} ({current.get('content_id')}): {exc.message}"
            ) from exc

    def _fetch(
        self,
        ref: dict[str, Any],
        what: str,
        rnd: dict[str, Any],
        trial: dict[str, Any],
        *,
        max_bytes: int,
    ) -> bytes:
        try:
            data = self.store.get(ref["content_id"], max_bytes=max_bytes)
        except StoreIntegrityError as exc:
            raise _Unusable(
                f"{what} ({ref['content_id']}) is corrupted in the store: {exc.message}"
            ) from exc
        except StoreError as exc:
            # A missing artifact may still be on its way (IPFS); after a phase's length, give up.
            waited = int(self.clock()) - int(rnd["phase_changed_at"])
            if (
                exc.code in ("BAD_CONTENT_ID", "ARTIFACT_TOO_LARGE")
                or waited > trial["phase_seconds"]["reveal"]
            ):
                raise _Unusable(
                    f"{what} ({ref['content_id']}) cannot be fetched: {exc.message}"
                ) from exc
            raise
        digest = hashlib.sha256(data).hexdigest()
        if digest != ref["sha256"]:
            raise _Unusable(
                f"{what} ({ref['content_id']}) hashes to {digest}, but the ledger records {ref['sha256']}"
            )
        return data

    def _abandon(
        self, trial: dict[str, Any], rnd: dict[str, Any], step_id: int | None, reason: str
    ) -> StepOutcome:
        """The accepted updates can never be summed: halt the round on the ledger, with the reason."""
        log.error(
            "trial %s round %s: cannot aggregate: %s", trial["trial_id"], rnd["round"], reason
        )
        self._step_finished(step_id, "failed", detail={"reason": reason})
        if self.admin_ledger is None:
            return self._outcome(
                trial,
                rnd,
                "aggregate",
                "failed",
                reason=reason,
                action_needed="the admin must abort the round (the scheduler holds no admin identity)",
            )
        args = {
            "trial_id": trial["trial_id"],
            "round": rnd["round"],
            "reason": f"aggregation impossible: {reason}"[:MAX_REASON],
        }
        return self._submit(
            self.admin_ledger, trial, rnd, "abort_round", args, detail={"reason": reason}
        )

    # -- transactions and bookkeeping ----------------------------------------------------------
    def _submit(
        self,
        ledger: Any,
        trial: dict[str, Any],
        rnd: dict[str, Any] | None,
        function: str,
        args: dict[str, Any],
        *,
        detail: dict[str, Any] | None = None,
        round_number: int | None = None,
    ) -> StepOutcome:
        trial_id = trial["trial_id"]
        r = rnd["round"] if rnd is not None else round_number
        a = rnd["attempt"] if rnd is not None else None
        step_id = self._step_started(trial_id, function, r, a, detail)
        try:
            result = ledger.submit(function, args)
        except ContractError as exc:
            status = (
                "waiting"
                if exc.code == "TOO_EARLY"
                else "raced"
                if exc.code in RACED_CODES
                else "failed"
            )
            self._step_finished(step_id, status, detail={"code": exc.code, "message": exc.message})
            level = logging.INFO if status != "failed" else logging.WARNING
            log.log(
                level, "trial %s: %s refused (%s): %s", trial_id, function, exc.code, exc.message
            )
            return StepOutcome(
                trial_id, function, status, r, a, detail={"code": exc.code, "message": exc.message}
            )
        except BcflError as exc:
            self._step_finished(
                step_id, "failed", detail={"code": exc.code, "message": exc.message}
            )
            log.warning("trial %s: %s failed (%s): %s", trial_id, function, exc.code, exc.message)
            return StepOutcome(
                trial_id,
                function,
                "failed",
                r,
                a,
                detail={"code": exc.code, "message": exc.message},
            )
        if function == "open_round" and isinstance(result.result, dict):
            a = result.result.get("attempt")
        self._step_finished(
            step_id,
            "done",
            tx_id=result.tx_id,
            block_number=result.block_number,
            detail={"event": result.event_name},
        )
        log.info(
            "trial %s round %s: %s -> %s (block %s)",
            trial_id,
            r,
            function,
            result.event_name,
            result.block_number,
        )
        return StepOutcome(
            trial_id,
            function,
            "done",
            r,
            a,
            tx_id=result.tx_id,
            detail=dict(detail or {}, event=result.event_name, block_number=result.block_number),
        )

    def _query(self, function: str, args: dict[str, Any]) -> Any:
        return self.ledger.evaluate(function, args)

    def _outcome(
        self,
        trial: dict[str, Any],
        rnd: dict[str, Any] | None,
        action: str,
        status: str,
        **detail: Any,
    ) -> StepOutcome:
        return StepOutcome(
            trial["trial_id"],
            action,
            status,
            None if rnd is None else rnd["round"],
            None if rnd is None else rnd["attempt"],
            detail=detail,
        )

    def _step_started(
        self, trial_id: str, step: str, r: int | None, a: int | None, detail: dict[str, Any] | None
    ) -> int | None:
        if self.database is None:
            return None
        return self.database.step_started(trial_id, step, r, a, detail)

    def _step_finished(self, step_id: int | None, status: str, **kwargs: Any) -> None:
        if self.database is not None and step_id is not None:
            self.database.step_finished(step_id, status, **kwargs)

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "poll_interval": self.poll_interval,
            "ticks": self._ticks,
            "last_tick_at": self._last_tick_at,
            "last_error": self._last_error,
            "ledger_height": self._height,
            "trials": dict(self._trials),
            "recent_steps": [] if self.database is None else self.database.steps(limit=25),
            "settlement": {"configured": False}
            if self.settlement is None
            else self.settlement.status(),
        }
