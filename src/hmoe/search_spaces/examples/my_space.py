"""An example of your own search space, for ``hmoe tune --space FILE.py:FUNCTION``.

Copy it anywhere and edit it: like the shipped spaces it only calls ``trial.suggest_*``, and
each parameter name is a dotted ExperimentConfig path (``hmoe tune --help``'s ``--set`` paths).
``hmoe tune`` samples it and applies the samples to the config before any trial, so a path or
a value the config does not accept is refused at once, naming it.
"""

from __future__ import annotations

from typing import Any


def space(trial: Any) -> None:
    """The learning rate, the batch size and how many MLP experts the mix has."""
    trial.suggest_float("train.lr", 1e-4, 1e-2, log=True)
    trial.suggest_categorical("train.batch_size", [128, 256, 512])
    trial.suggest_int("model.experts.counts.mlp", 1, 3)
