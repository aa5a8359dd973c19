"""Optuna define-by-run search spaces; parameter names are dotted ExperimentConfig paths.

Each space is a function ``space(trial) -> None`` that only calls ``trial.suggest_*``. The
same function runs under plain Optuna and under Ray Tune's ``OptunaSearch(space=fn)``; the
sampled ``{path: value}`` dict is applied to the base ExperimentConfig with
``hmoe.config.apply_overrides``, the one path the CLI's ``--set`` takes too (every expert kind's
count, such as ``model.experts.counts.fm``, is a key whether or not the preset sets it).
Names use ``.``, never ``/`` (Ray unflattens on ``/``). An infeasible sample (e.g. zero
experts) is not clipped: the config rejects it and the trial fails with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hmoe.search_spaces.embeddings import embeddings
from hmoe.search_spaces.experts import experts
from hmoe.search_spaces.full import full
from hmoe.search_spaces.ranking_loss import ranking_loss
from hmoe.search_spaces.smoke import smoke

__all__ = ["SPACES", "embeddings", "experts", "full", "ranking_loss", "smoke"]

SPACES: dict[str, Callable[[Any], None]] = {
    "smoke": smoke,
    "embeddings": embeddings,
    "experts": experts,
    "ranking_loss": ranking_loss,
    "full": full,
}
