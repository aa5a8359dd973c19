"""The heterogeneous expert mix (a count per kind) and how the experts are combined."""

from __future__ import annotations

from typing import Any

# the kinds the hmoe preset mixes; fm is left out (DeepFM's expert, not part of the paper's mix)
SEARCHED_KINDS = ("gwpfm", "ipnn", "dcnv2", "mlp")
MAX_EXPERTS_PER_KIND = 2
COMBINE_METHODS = ("mean", "sum", "gate")


def experts(trial: Any) -> None:
    """Expert counts per kind (0..2 each; all zero is infeasible and fails the trial) and the
    combination (mean, sum or softmax gate)."""
    for kind in SEARCHED_KINDS:
        trial.suggest_int(f"model.experts.counts.{kind}", 0, MAX_EXPERTS_PER_KIND)
    trial.suggest_categorical("model.combine.method", list(COMBINE_METHODS))
