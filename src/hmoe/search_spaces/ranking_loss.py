"""The Combined-Pair auxiliary ranking loss: on or off, and its BCE weight alpha."""

from __future__ import annotations

from typing import Any

ALPHA_RANGE = (0.5, 1.0)  # the ranking-loss repo's best alphas are 0.6-0.9


def ranking_loss(trial: Any) -> None:
    """``loss.ranking.enabled``; when on, ``loss.ranking.alpha`` (conditional parameter)."""
    if trial.suggest_categorical("loss.ranking.enabled", [True, False]):
        trial.suggest_float("loss.ranking.alpha", *ALPHA_RANGE)
