"""Ethereum settlement of finalized rounds: pay the ledger's rewards, anchor the round's ledger digest, record the transaction on the ledger.

What every party recomputes the same way (the auditor from the ledger alone)
============================================================================
* :func:`ledger_round_digest`: the round's *ledger digest*, anchored on chain with its payment::

      sha256_hex(canonical_json({"format": "bcfl.ledger.round.v1",
                                 "round": round record without "disputes",
                                 "acceptance": acceptance record,
                                 "round_rewards": round_rewards record without "settlement"}))

  over the records ``get_round`` / ``get_acceptance`` / ``get_rewards`` return for the finalized
  attempt. The two fields left out are the only ones the contract may still write after a round
  finalizes (a late dissenting attestation; the settlement itself), so the digest never moves.
* :func:`settlement_round`: the on-chain round slot of (round, attempt). The settlement contract
  keys rounds by (trial, uint64 round) and settles each at most once, but a rollback can finalize
  the same round number again as a new attempt, which the ledger credits again. Attempt 1 is the
  round number itself; a later attempt ``a`` is ``(a << 32) | round`` (rounds are at most 1000,
  so the two ranges never meet).
* :func:`round_payouts`: what is paid: every non-zero ledger reward, one ledger reward point =
  one whole reward token (``10**18`` base units); hospitals with a zero reward are not listed.

The step (:class:`SettlementStep`), run by the scheduler after its round steps in every pass:
for each trial whose settlement is switched on (coordinator database: the contract's trial
record has no place for it) and not halted, each ``round_rewards`` that is ``credited`` and has
no ``settlement`` yet, oldest first: ``settle_rewards`` (idempotent: the client finds a
settlement already on chain and the contract refuses a second one), then ``record_settlement``
on the ledger as the coordinator. A crash anywhere in between is completed by the next pass
after a restart, which finds the round still unrecorded, and never pays twice.

SETTLEMENT_CHAIN_CHANGED (the node serves another or a reset chain) and SETTLEMENT_CONFLICT (the
round is settled on chain with other data, or the ledger records another transaction) halt
settlement for the trial: logged, kept in the database, shown by the scheduler status API and
``GET /api/v1/trials/{trial_id}/settlement``, until the admin switches settlement on again.
Training never waits for settlement. Other failures (node unreachable, receipt timeout, a
missing payee address) are retried with a growing delay.

Fault injection (tests only, off by default): ``BCFL_TEST_SETTLEMENT_FAULT`` set to
``before-send`` (everything computed, nothing sent), ``after-submit`` (the transaction was
accepted by the node, no receipt yet) or ``after-settle`` (paid on chain, not yet recorded on the
ledger) makes the coordinator kill itself with SIGKILL at that point, as ``kill -9`` would.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bcfl_common.canonical import canonical_json, sha256_hex
from bcfl_common.errors import BcflError, ContractError, SettlementError
from consortium.settlement import (
    CODE_CHAIN_CHANGED,
    CODE_CONFLICT,
    TOKEN_DECIMALS,
    PayeeDirectory,
    RoundRewards,
    Settlement,
    open_settlement,
)
from coordinator.scheduler import StepOutcome

log = logging.getLogger(__name__)

DIGEST_FORMAT = "bcfl.ledger.round.v1"
TOKEN_UNITS_PER_REWARD = 10**TOKEN_DECIMALS
ATTEMPT_SHIFT = 32
FAULT_ENV = "BCFL_TEST_SETTLEMENT_FAULT"
FAULT_POINTS = ("before-send", "after-submit", "after-settle")
# Codes after which settling this trial again would pay against the wrong chain or data.
HALTING_CODES = frozenset({CODE_CHAIN_CHANGED, CODE_CONFLICT})
RETRY_FIRST = 5.0
RETRY_MAX = 300.0


# ---------------------------------------------------------------------------------------------
# The definitions an auditor recomputes
# ---------------------------------------------------------------------------------------------


def ledger_round_digest(
    round_record: dict[str, Any], acceptance: dict[str, Any], round_rewards: dict[str, Any]
) -> str:
    """sha256 (hex) of a finalized round's ledger records; see the module docstring."""
    return sha256_hex(
        canonical_json(
            {
                "format": DIGEST_FORMAT,
                "round": {k: v for k, v in round_record.items() if k != "disputes"},
                "acceptance": acceptance,
                "round_rewards": {k: v for k, v in round_rewards.items() if k != "settlement"},
            }
        )
    )


def settlement_round(round_number: int, attempt: int) -> int:
    """The on-chain round slot of (round, attempt): the round itself for attempt 1."""
    if not 1 <= round_number < 1 << ATTEMPT_SHIFT or attempt < 1:
        raise ValueError(
            f"round {round_number} attempt {attempt}: expected round >= 1 and attempt >= 1"
        )
    return round_number if attempt == 1 else (attempt << ATTEMPT_SHIFT) | round_number


def round_payouts(round_rewards: dict[str, Any]) -> dict[str, int]:
    """MSP id -> token base units paid for a round (non-zero ledger rewards, 1 point = 1 token)."""
    return {
        msp: int(points) * TOKEN_UNITS_PER_REWARD
        for msp, points in sorted(round_rewards["rewards"].items())
        if points
    }


def read_round_records(
    ledger: Any, trial_id: str, round_number: int, attempt: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(round, acceptance, round_rewards) of one attempt, read through the contract's queries."""
    where = {"trial_id": trial_id, "round": round_number, "attempt": attempt}
    rnd = ledger.evaluate("get_round", where)
    acceptance = ledger.evaluate("get_acceptance", where)
    rewards = next(
        (
            r
            for r in ledger.evaluate("get_rewards", {"trial_id": trial_id})["rounds"]
            if r["round"] == round_number and r["attempt"] == attempt
        ),
        None,
    )
    if rewards is None:
        raise ContractError(
            f"round {round_number} attempt {attempt} of trial {trial_id!r} has no round_rewards record",
            code="NOT_FOUND",
            detail=where,
        )
    return rnd, acceptance, rewards


def chain_rewards(
    trial_id: str, rnd: dict[str, Any], acceptance: dict[str, Any], round_rewards: dict[str, Any]
) -> RoundRewards:
    """What the settlement contract is asked to pay and anchor for one finalized round attempt."""
    return RoundRewards(
        trial=trial_id,
        round=settlement_round(rnd["round"], rnd["attempt"]),
        ledger_digest=ledger_round_digest(rnd, acceptance, round_rewards),
        rewards=round_payouts(round_rewards),
    )


class SettlementSwitchBody(BaseModel):
    """``PUT /api/v1/admin/trials/{trial_id}/settlement``: settle the trial's finalized rounds on Ethereum, or stop."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool
    reason: str | None = Field(default=None, max_length=1024)


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------


def _fault(point: str) -> None:
    """The documented fault-injection points (see the module docstring); no-ops unless the variable is set."""
    if os.environ.get(FAULT_ENV) == point:
        log.critical("%s=%s: killing the coordinator now (fault injection)", FAULT_ENV, point)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class SettlementStep:
    """Settles finalized rounds of opted-in trials; ``ledger`` acts as the coordinator."""

    def __init__(
        self,
        ledger: Any,
        settlement: Settlement,
        payees: PayeeDirectory,
        *,
        database: Any,
        clock: Callable[[], float] = time.time,
    ):
        if database is None:
            raise ValueError(
                "the settlement step needs the coordinator database (the per-trial switch lives there)"
            )
        self.ledger = ledger
        self.settlement = settlement
        self.payees = payees
        self.database = database
        self.clock = clock
        self._retry: dict[
            str, tuple[float, int, dict[str, Any]]
        ] = {}  # trial -> (not before, failures, error)
        self._last: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_config(cls, config: Any, ledger: Any, database: Any) -> SettlementStep | None:
        """The step for a coordinator configuration, or None when settlement is not configured."""
        if not config.settlement_url:
            return None
        payees = PayeeDirectory.load(config.settlement_payees)
        if fault := os.environ.get(FAULT_ENV):
            if fault not in FAULT_POINTS:
                raise SettlementError(
                    f"{FAULT_ENV}={fault!r}; expected one of {list(FAULT_POINTS)} or unset",
                    code="SETTLEMENT_CONFIG",
                )
            log.warning("%s=%s: settlement fault injection is ON (tests only)", FAULT_ENV, fault)
        return cls(ledger, open_settlement(config.settlement_url), payees, database=database)

    def close(self) -> None:
        self.settlement.close()

    # -- passes ------------------------------------------------------------------------------
    def tick(self) -> list[StepOutcome]:
        """Settle what is due for every opted-in trial; one outcome per trial with anything to report."""
        outcomes = []
        for row in self.database.trial_settlements(enabled=True):
            outcome = self.settle_trial(row["trial_id"], row)
            if outcome is not None:
                outcomes.append(outcome)
                self._last[row["trial_id"]] = outcome.to_dict()
        return outcomes

    def retry_now(self, trial_id: str | None = None) -> None:
        """Forget the retry delay (of one trial, or all): the next pass tries again at once."""
        if trial_id is None:
            self._retry.clear()
        else:
            self._retry.pop(trial_id, None)

    def settle_trial(self, trial_id: str, row: dict[str, Any] | None = None) -> StepOutcome | None:
        row = row or self.database.trial_settlement(trial_id)
        if row is None or not row["enabled"]:
            return None
        if row["halted"] is not None:
            halted = row["halted"]
            return StepOutcome(
                trial_id,
                "settle",
                "halted",
                halted["round"],
                halted["attempt"],
                detail={"code": halted["code"], "message": halted["message"]},
            )
        retry = self._retry.get(trial_id)
        if retry is not None and self.clock() < retry[0]:
            return StepOutcome(
                trial_id, "settle", "waiting", detail={"retry_at": retry[0], "last_error": retry[2]}
            )
        try:
            due = self.due_rounds(trial_id)
        except BcflError as exc:
            return self._failed(trial_id, None, None, exc)
        if not due:
            self._retry.pop(trial_id, None)
            return None
        outcome = None
        for rr in due:
            outcome = self._settle_round(trial_id, rr)
            if outcome.status != "done":
                return outcome
        self._retry.pop(trial_id, None)
        return outcome

    def due_rounds(self, trial_id: str) -> list[dict[str, Any]]:
        """The trial's credited round_rewards without a recorded settlement, oldest first."""
        due = [
            r
            for r in self._round_rewards(trial_id)
            if r["status"] == "credited" and r["settlement"] is None
        ]
        return sorted(due, key=lambda r: (r["round"], r["attempt"]))

    def _settle_round(self, trial_id: str, rr: dict[str, Any]) -> StepOutcome:
        r, a = rr["round"], rr["attempt"]
        step_id = None
        try:
            rnd, acceptance, rewards = read_round_records(self.ledger, trial_id, r, a)
            if rnd["phase"] != "FINALIZED":  # credited rewards come only from a finalized round
                raise SettlementError(
                    f"round {r} attempt {a} of trial {trial_id!r} has credited rewards but is "
                    f"{rnd['phase']}",
                    code=CODE_CONFLICT,
                )
            request = chain_rewards(trial_id, rnd, acceptance, rewards)
            step_id = self._step_started(
                trial_id,
                r,
                a,
                {
                    "chain_round": request.round,
                    "ledger_digest": request.ledger_digest,
                    "payouts": {m: str(v) for m, v in request.rewards.items()},
                },
            )
            _fault("before-send")

            def submitted(tx_hash: str) -> None:
                self._step_note(step_id, {"eth_tx_hash": tx_hash, "submitted_at": time.time()})
                log.info(
                    "trial %s round %s attempt %s: settlement transaction %s sent",
                    trial_id,
                    r,
                    a,
                    tx_hash,
                )
                _fault("after-submit")

            record = self.settlement.settle_rewards(request, self.payees, on_submitted=submitted)
            _fault("after-settle")
        except BcflError as exc:  # settlement refused or failed, or the ledger could not be read
            self._step_finished(step_id, "failed", {"code": exc.code, "message": exc.message})
            return self._failed(trial_id, r, a, exc)
        except (
            Exception
        ) as exc:  # a client bug or an unexpected node answer: retried, never fatal to training
            log.exception(
                "trial %s round %s attempt %s: settlement failed unexpectedly", trial_id, r, a
            )
            error = SettlementError(f"{type(exc).__name__}: {exc}", code="SETTLEMENT_INTERNAL")
            self._step_finished(step_id, "failed", {"code": error.code, "message": error.message})
            return self._failed(trial_id, r, a, error)
        return self._record(trial_id, rr, record, step_id)

    def _record(
        self, trial_id: str, rr: dict[str, Any], record: Any, step_id: int | None
    ) -> StepOutcome:
        r, a = rr["round"], rr["attempt"]
        detail = {
            "eth_tx_hash": record.tx_hash,
            "chain_id": record.chain_id,
            "chain_round": record.round,
            "block_number": record.block_number,
            "already_settled": record.already_settled,
            "total": str(record.total),
        }
        args = {
            "trial_id": trial_id,
            "round": r,
            "attempt": a,
            "chain_id": record.chain_id,
            "tx_hash": record.tx_hash,
        }
        try:
            result = self.ledger.submit("record_settlement", args)
        except ContractError as exc:
            if exc.code == "ALREADY_EXISTS":
                recorded = next(
                    (
                        x["settlement"]
                        for x in self._round_rewards(trial_id)
                        if x["round"] == r and x["attempt"] == a
                    ),
                    None,
                )
                if (
                    recorded is not None
                    and recorded["tx_hash"] == record.tx_hash
                    and recorded["chain_id"] == record.chain_id
                ):
                    self._step_finished(step_id, "raced", dict(detail, code=exc.code))
                    return StepOutcome(
                        trial_id,
                        "settle",
                        "done",
                        r,
                        a,
                        detail=dict(detail, recorded_by_another=True),
                    )
                conflict = SettlementError(
                    f"round {r} attempt {a} of trial {trial_id!r}: the ledger records settlement {recorded}, "
                    f"but the chain holds {record.tx_hash} on chain {record.chain_id}",
                    code=CODE_CONFLICT,
                    detail={"ledger": recorded, "chain": detail},
                )
                self._step_finished(
                    step_id, "failed", {"code": conflict.code, "message": conflict.message}
                )
                return self._failed(trial_id, r, a, conflict)
            self._step_finished(step_id, "failed", {"code": exc.code, "message": exc.message})
            return self._failed(trial_id, r, a, exc)
        except BcflError as exc:
            self._step_finished(step_id, "failed", {"code": exc.code, "message": exc.message})
            return self._failed(trial_id, r, a, exc)
        self._step_finished(
            step_id, "done", detail, tx_id=result.tx_id, block_number=result.block_number
        )
        log.info(
            "trial %s round %s attempt %s: settled on chain %s by %s%s; recorded on the ledger (tx %s)",
            trial_id,
            r,
            a,
            record.chain_id,
            record.tx_hash,
            " (already on chain)" if record.already_settled else "",
            result.tx_id,
        )
        return StepOutcome(trial_id, "settle", "done", r, a, tx_id=result.tx_id, detail=detail)

    def _round_rewards(self, trial_id: str) -> list[dict[str, Any]]:
        return self.ledger.evaluate("get_rewards", {"trial_id": trial_id})["rounds"]

    def _failed(self, trial_id: str, r: int | None, a: int | None, exc: BcflError) -> StepOutcome:
        error = {"code": exc.code, "message": exc.message}
        if exc.code in HALTING_CODES:
            log.error(
                "trial %s round %s attempt %s: settlement HALTED for this trial (%s): %s",
                trial_id,
                r,
                a,
                exc.code,
                exc.message,
            )
            self.database.halt_trial_settlement(trial_id, exc.code, exc.message, round=r, attempt=a)
            self._retry.pop(trial_id, None)
            return StepOutcome(trial_id, "settle", "halted", r, a, detail=error)
        failures = self._retry.get(trial_id, (0.0, 0, {}))[1] + 1
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (failures - 1))
        self._retry[trial_id] = (self.clock() + delay, failures, error)
        log.warning(
            "trial %s round %s attempt %s: settlement failed (%s), retrying in %.0f s: %s",
            trial_id,
            r,
            a,
            exc.code,
            delay,
            exc.message,
        )
        return StepOutcome(trial_id, "settle", "failed", r, a, detail=dict(error, retry_in=delay))

    # -- bookkeeping -------------------------------------------------------------------------
    def _step_started(self, trial_id: str, r: int, a: int, detail: dict[str, Any]) -> int | None:
        return self.database.step_started(trial_id, "settle", r, a, detail)

    def _step_note(self, step_id: int | None, detail: dict[str, Any]) -> None:
        if step_id is not None:
            self.database.step_finished(step_id, "submitted", detail=detail)

    def _step_finished(
        self,
        step_id: int | None,
        status: str,
        detail: dict[str, Any],
        *,
        tx_id: str | None = None,
        block_number: int | None = None,
    ) -> None:
        if step_id is not None:
            self.database.step_finished(
                step_id, status, tx_id=tx_id, block_number=block_number, detail=detail
            )

    # -- status ------------------------------------------------------------------------------
    def trial_status(self, trial_id: str) -> dict[str, Any]:
        """The switch, any halt, the last outcome and the rounds still to settle (read from the ledger)."""
        row = self.database.trial_settlement(trial_id)
        status: dict[str, Any] = {
            "trial_id": trial_id,
            "configured": True,
            "enabled": bool(row and row["enabled"]),
            "switch": row,
            "halted": None if row is None else row["halted"],
            "last_outcome": self._last.get(trial_id),
            "retry": None,
        }
        if trial_id in self._retry:
            at, failures, error = self._retry[trial_id]
            status["retry"] = {"at": at, "failures": failures, "error": error}
        try:
            rounds = self._round_rewards(trial_id)
            enrolled = [
                e["msp_id"] for e in self.ledger.evaluate("get_enrolments", {"trial_id": trial_id})
            ]
        except BcflError as exc:
            status["ledger_error"] = exc.to_dict()
            return status
        status["rounds"] = [
            {
                "round": r["round"],
                "attempt": r["attempt"],
                "status": r["status"],
                "chain_round": settlement_round(r["round"], r["attempt"]),
                "settlement": r["settlement"],
            }
            for r in rounds
        ]
        status["unsettled"] = [
            (r["round"], r["attempt"])
            for r in rounds
            if r["status"] == "credited" and r["settlement"] is None
        ]
        known = dict(self.payees.items())
        status["missing_payees"] = sorted(m for m in enrolled if m not in known)
        return status

    def status(self) -> dict[str, Any]:
        trials = {}
        for row in self.database.trial_settlements():
            entry: dict[str, Any] = {
                "enabled": row["enabled"],
                "halted": row["halted"],
                "last_outcome": self._last.get(row["trial_id"]),
            }
            if row["trial_id"] in self._retry:
                at, failures, error = self._retry[row["trial_id"]]
                entry["retry"] = {"at": at, "failures": failures, "error": error}
            trials[row["trial_id"]] = entry
        deployment = getattr(self.settlement, "deployment", None)
        return {
            "configured": True,
            "endpoint": getattr(self.settlement, "endpoint", None),
            "chain_id": getattr(deployment, "chain_id", None),
            "contract": getattr(deployment, "settlement", None),
            "payees": len(self.payees),
            "fault_injection": os.environ.get(FAULT_ENV) or None,
            "trials": trials,
        }
