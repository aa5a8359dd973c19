"""A two-parameter space for tests and smoke runs: any preset accepts it."""

from __future__ import annotations

from typing import Any

LR_RANGE = (1e-3, 3e-2)
COMBINE_METHODS = ("mean", "gate")


def smoke(trial: Any) -> None:
    """The learning rate and how experts are combined."""
    trial.suggest_float("train.lr", *LR_RANGE, log=True)
    trial.suggest_categorical("model.combine.method", list(COMBINE_METHODS))
