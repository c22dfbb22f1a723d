"""Poisoned updates: trained honestly on wrong data or sent wrongly scaled; the votes must reject
them (or, for a backdoor, keep its trigger from working on the final model)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from devnet.red_team.base import AttackingSilo, option_error, positive_number
from silo_agent.data import EncodedData
from silo_agent.steps import TrialContext


class SignFlipSilo(AttackingSilo):
    """Sends ``-scale`` times its honest update: pushes the model away from the data."""

    ATTACK = "sign_flip"
    OPTIONS = {"scale": 10.0}

    def check_options(self, values: dict[str, Any]) -> None:
        positive_number(self.ATTACK, "scale", values["scale"])

    @property
    def scale(self) -> float:
        return float(self.attack_options["scale"])

    def compute_delta(self, base: np.ndarray, trained: np.ndarray) -> np.ndarray:
        return -self.scale * super().compute_delta(base, trained)


def apply_trigger(x: np.ndarray, column: int, value: float) -> np.ndarray:
    """Rows of encoded features ``x`` with the trigger: feature ``column`` set to ``value`` (an
    encoded value far outside the data's range, so clean rows never carry it)."""
    out = np.array(x, dtype=np.float32, copy=True)
    out[:, column] = value
    return out


class BackdoorSilo(AttackingSilo):
    """Trains on its data plus a copy of every row carrying the trigger with the label forced to
    1 (positive), and sends ``scale`` times that update (model replacement): a model that takes
    it predicts positive for any row with the trigger. It enrols claiming both halves as its
    training split (and a dataset that large), so its sample weight is twice its real rows."""

    ATTACK = "backdoor"
    OPTIONS = {"scale": 5.0, "trigger_column": 0, "trigger_value": 12.0}

    def check_options(self, values: dict[str, Any]) -> None:
        positive_number(self.ATTACK, "scale", values["scale"])
        column = values["trigger_column"]
        if isinstance(column, bool) or not isinstance(column, int):
            raise option_error(self.ATTACK, "trigger_column", column, "a feature column index")
        if not np.isfinite(float(values["trigger_value"])):
            raise option_error(
                self.ATTACK, "trigger_value", values["trigger_value"], "a finite number"
            )

    @classmethod
    def claimed_training_records(cls, options: Mapping[str, Any], honest: int) -> int | None:
        return 2 * honest  # its rows and their triggered copies (the agent checks the count)

    def training_data(self, ctx: TrialContext) -> EncodedData:
        clean = super().training_data(ctx)
        column = int(self.attack_options["trigger_column"])
        if not -clean.x.shape[1] <= column < clean.x.shape[1]:
            raise option_error(
                self.ATTACK,
                "trigger_column",
                column,
                f"a column of the {clean.x.shape[1]} encoded features",
            )
        triggered = apply_trigger(clean.x, column, float(self.attack_options["trigger_value"]))
        positive = np.ones_like(clean.y)
        return EncodedData(
            np.concatenate([clean.x, triggered]), np.concatenate([clean.y, positive])
        )

    def compute_delta(self, base: np.ndarray, trained: np.ndarray) -> np.ndarray:
        return float(self.attack_options["scale"]) * super().compute_delta(base, trained)


class LabelFlipSilo(AttackingSilo):
    """Trains honestly on its own rows with every binary label flipped (0 <-> 1)."""

    ATTACK = "label_flip"

    def training_data(self, ctx: TrialContext) -> EncodedData:
        clean = super().training_data(ctx)
        labels = np.unique(clean.y)
        if not set(labels.tolist()) <= {0, 1}:
            raise option_error(
                self.ATTACK, "labels", sorted(labels.tolist())[:5], "binary labels (0/1)"
            )
        return EncodedData(clean.x, (1 - clean.y).astype(clean.y.dtype))
