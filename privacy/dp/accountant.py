"""A silo's privacy accountant, persisted to a file, and the hospital's own epsilon budget."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcfl_common.canonical import canonical_json
from bcfl_common.errors import PrivacyBudgetExceeded, PrivacyError
from bcfl_common.files import write_atomic
from privacy.dp.policy import DPPlan, DPPolicy, from_micro_epsilon, to_micro_epsilon

STATE_FORMAT = "bcfl-dp-accountant/1"
HistoryEntry = tuple[float, float, int]  # Opacus: (noise_multiplier, sample_rate, steps)


def epsilon_of(history: Sequence[HistoryEntry], *, delta: float, accountant: str) -> float:
    """Epsilon of a composition, computed by Opacus' own accountant of the same kind."""
    if not history:
        return 0.0
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return float(acc.get_epsilon(delta=delta))


def _merge(history: list[HistoryEntry], entry: HistoryEntry) -> list[HistoryEntry]:
    """Append like Opacus does: consecutive steps with the same mechanism are one entry."""
    out = list(history)
    if out and out[-1][0] == entry[0] and out[-1][1] == entry[1]:
        out[-1] = (entry[0], entry[1], out[-1][2] + entry[2])
    else:
        out.append(entry)
    return out


@dataclass(frozen=True)
class PrivacyBudget:
    """The hospital's own limit on epsilon for a trial, in ledger units (micro-epsilon)."""

    limit_micro: int

    def __post_init__(self) -> None:
        if not isinstance(self.limit_micro, int) or self.limit_micro < 0:
            raise PrivacyError(f"budget: got {self.limit_micro!r}, expected micro-epsilon >= 0")

    @classmethod
    def from_epsilon(cls, epsilon: float) -> PrivacyBudget:
        return cls(to_micro_epsilon(epsilon, round_up=False))

    @property
    def epsilon(self) -> float:
        return from_micro_epsilon(self.limit_micro)


@dataclass(frozen=True)
class RoundCost:
    """What a round costs: epsilon now, after the round, and the difference (all micro-epsilon)."""

    spent_micro: int
    after_micro: int

    @property
    def cost_micro(self) -> int:
        return self.after_micro - self.spent_micro

    @property
    def cost(self) -> float:
        return from_micro_epsilon(self.cost_micro)


class PrivacyAccountant:
    """Epsilon spent by one silo in one trial, kept in a JSON file that survives restarts.

    The file holds the trial's policy, the silo's plan (its noise multiplier, computed once) and
    the Opacus-compatible history of ``(noise_multiplier, sample_rate, steps)``; epsilon is always
    recomputed from that history by Opacus. Every change is a locked read-modify-write with an
    atomic replace, so a crash leaves either the old or the new state.
    """

    def __init__(self, path: Path, state: dict[str, Any]):
        self.path = path
        self._state = state

    # construction -------------------------------------------------------------------------
    @classmethod
    def create(
        cls, path: str | Path, *, trial_id: str, policy: DPPolicy, plan: DPPlan
    ) -> PrivacyAccountant:
        """Start accounting for a trial; refuses to overwrite an existing file."""
        path = Path(path)
        state = {
            "format": STATE_FORMAT,
            "trial_id": trial_id,
            "policy": policy.to_dict(),
            "plan": plan.to_dict(),
            "history": [],
            "rounds": [],
        }
        with _locked(path):
            if path.exists():
                raise PrivacyError(
                    f"accountant file: {path} already exists, expected a new file "
                    "(open it instead; deleting it would forget spent epsilon)"
                )
            _write_atomic(path, state)
        return cls(path, state)

    @classmethod
    def open(cls, path: str | Path) -> PrivacyAccountant:
        path = Path(path)
        return cls(path, _read(path))

    @classmethod
    def open_or_create(
        cls, path: str | Path, *, trial_id: str, policy: DPPolicy, plan: DPPlan
    ) -> PrivacyAccountant:
        """Open the trial's accountant, or create it; an existing file must be for the same trial
        and policy (its plan, and so its noise multiplier, is kept)."""
        path = Path(path)
        if not path.exists():
            return cls.create(path, trial_id=trial_id, policy=policy, plan=plan)
        acc = cls.open(path)
        if acc.trial_id != trial_id or acc.policy != policy:
            raise PrivacyError(
                f"accountant file {path}: holds trial {acc.trial_id!r} with policy "
                f"{acc.policy.to_dict()}, expected trial {trial_id!r} with {policy.to_dict()}"
            )
        return acc

    # reading ------------------------------------------------------------------------------
    @property
    def trial_id(self) -> str:
        return str(self._state["trial_id"])

    @property
    def policy(self) -> DPPolicy:
        return DPPolicy.from_dict(self._state["policy"])

    @property
    def plan(self) -> DPPlan:
        return DPPlan(**self._state["plan"])

    @property
    def noise_multiplier(self) -> float:
        return float(self._state["plan"]["noise_multiplier"])

    @property
    def history(self) -> list[HistoryEntry]:
        return [(float(s), float(q), int(n)) for s, q, n in self._state["history"]]

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._state["rounds"]]

    def reload(self) -> None:
        self._state = _read(self.path)

    def epsilon(self) -> float:
        """Epsilon spent so far (at the policy's delta)."""
        return epsilon_of(self.history, delta=self.policy.delta, accountant=self.policy.accountant)

    def spent_micro(self) -> int:
        return to_micro_epsilon(self.epsilon())

    def cost_of_round(
        self,
        steps: int | None = None,
        *,
        noise_multiplier: float | None = None,
        sample_rate: float | None = None,
    ) -> RoundCost:
        """What the next round would cost: epsilon after its steps minus epsilon now. Defaults are
        the plan's steps per round, noise multiplier and sample rate."""
        entry = self._entry(steps, noise_multiplier, sample_rate)
        policy = self.policy
        history = self.history
        after = epsilon_of(_merge(history, entry), delta=policy.delta, accountant=policy.accountant)
        now = epsilon_of(history, delta=policy.delta, accountant=policy.accountant)
        return RoundCost(to_micro_epsilon(now), to_micro_epsilon(after))

    # charging -----------------------------------------------------------------------------
    def check_round(
        self, budget: PrivacyBudget, steps: int | None = None, **mechanism: float
    ) -> RoundCost:
        """Raise PrivacyBudgetExceeded if the round would take epsilon over ``budget``."""
        cost = self.cost_of_round(steps, **mechanism)
        if cost.after_micro > budget.limit_micro:
            raise PrivacyBudgetExceeded(
                f"privacy budget: round would bring epsilon from {from_micro_epsilon(cost.spent_micro)} "
                f"to {from_micro_epsilon(cost.after_micro)} (cost {cost.cost}), expected at most the "
                f"hospital's budget {budget.epsilon} for trial {self.trial_id!r}",
                detail={
                    "trial_id": self.trial_id,
                    "spent_micro_epsilon": cost.spent_micro,
                    "after_micro_epsilon": cost.after_micro,
                    "budget_micro_epsilon": budget.limit_micro,
                },
            )
        return cost

    def charge_round(
        self,
        round_index: int,
        *,
        budget: PrivacyBudget,
        steps: int | None = None,
        noise_multiplier: float | None = None,
        sample_rate: float | None = None,
    ) -> RoundCost:
        """Record a round's steps if, and only if, the budget allows it. On refusal nothing is
        written. Reloads the file under a lock first, so two processes cannot double-spend."""
        if not isinstance(round_index, int) or round_index < 0:
            raise PrivacyError(f"round_index: got {round_index!r}, expected an integer >= 0")
        with _locked(self.path):
            self._state = _read(self.path)
            entry = self._entry(steps, noise_multiplier, sample_rate)
            cost = self.check_round(
                budget, entry[2], noise_multiplier=entry[0], sample_rate=entry[1]
            )
            state = dict(self._state)
            state["history"] = [list(h) for h in _merge(self.history, entry)]
            state["rounds"] = [
                *self._state["rounds"],
                {
                    "round": round_index,
                    "noise_multiplier": entry[0],
                    "sample_rate": entry[1],
                    "steps": entry[2],
                    "epsilon_micro_after": cost.after_micro,
                },
            ]
            _write_atomic(self.path, state)
            self._state = state
        return cost

    def withdraw_round(self, round_index: int, reason: str) -> bool:
        """Take back the charge of a training whose update was destroyed without ever being
        disclosed (committed under a hiding commitment at most, never revealed, its bytes
        deleted): DP bounds what is released, and nothing of it was. The history is rebuilt
        from the remaining rounds; the withdrawal is kept in the file. False if not charged."""
        with _locked(self.path):
            self._state = _read(self.path)
            kept = [r for r in self._state["rounds"] if r["round"] != round_index]
            gone = [r for r in self._state["rounds"] if r["round"] == round_index]
            if not gone:
                return False
            history: list[HistoryEntry] = []
            for r in kept:
                history = _merge(history, (r["noise_multiplier"], r["sample_rate"], r["steps"]))
            state = dict(self._state)
            state["history"] = [list(h) for h in history]
            state["rounds"] = kept
            state["withdrawn"] = [
                *self._state.get("withdrawn", []),
                *({**r, "reason": reason} for r in gone),
            ]
            _write_atomic(self.path, state)
            self._state = state
        return True

    def _entry(
        self, steps: int | None, noise_multiplier: float | None, sample_rate: float | None
    ) -> HistoryEntry:
        plan = self.plan
        steps = plan.steps_per_round if steps is None else steps
        sigma = plan.noise_multiplier if noise_multiplier is None else float(noise_multiplier)
        q = plan.sample_rate if sample_rate is None else float(sample_rate)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise PrivacyError(f"steps: got {steps!r}, expected an integer >= 1")
        if not sigma > 0 or not 0 < q <= 1:
            raise PrivacyError(
                f"mechanism: got noise multiplier {sigma!r} and sample rate {q!r}, "
                "expected a noise multiplier > 0 and a sample rate in (0, 1]"
            )
        return (sigma, q, steps)


def _read(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise PrivacyError(f"accountant file: {path} does not exist") from None
    except ValueError as exc:
        raise PrivacyError(f"accountant file {path}: not valid JSON ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise PrivacyError(
            f"accountant file {path}: format {state.get('format') if isinstance(state, dict) else None!r}, "
            f"expected {STATE_FORMAT!r}"
        )
    return state


def _write_atomic(path: Path, state: dict[str, Any]) -> None:
    write_atomic(path, canonical_json(state))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
