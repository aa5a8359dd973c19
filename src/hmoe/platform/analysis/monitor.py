"""What the training loop logs about collapse and entanglement while a model trains.

``monitor_metrics(wrapper, batch, cfg, epoch)`` is called by rank 0 once per epoch; it returns
``ia_{set}_{field}`` (information abundance of every field table of every embedding set) and,
for a multi-task model, ``grad_cos_{a}_{b}`` (cosine between the two tasks' gradients on the
shared parameters, on ``batch``), or nothing on the epochs the config skips. Both are cheap: one
pass over each table (a ``D x D`` Gram matrix) and one extra forward/backward on one batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from hmoe.config import Config, ConfigError, config
from hmoe.platform.analysis.access import gradient_conflict_metrics
from hmoe.platform.analysis.collapse import CollapseConfig, information_abundance_metrics

__all__ = ["MonitorConfig", "monitor_metrics"]


@config
class MonitorConfig(Config):
    """The per-epoch monitor (cheap enough to leave on).

    Args:
        information_abundance: log ``ia_{set}_{field}`` (watch dimensional collapse happen).
        gradient_conflict: log ``grad_cos_{a}_{b}`` for multi-task models.
        every_n_epochs: log after epochs ``1, 1 + n, 1 + 2n, ...`` and the others not at all.
        spectrum: how the singular values are computed.
    """

    information_abundance: bool = True
    gradient_conflict: bool = True
    every_n_epochs: int = 1
    spectrum: CollapseConfig = CollapseConfig()

    def __post_init__(self) -> None:
        if self.every_n_epochs < 1:
            raise ConfigError(f"every_n_epochs must be >= 1, got {self.every_n_epochs}")


def monitor_metrics(
    wrapper: nn.Module,
    batch: Mapping[str, torch.Tensor] | None,
    cfg: MonitorConfig,
    epoch: int,
) -> dict[str, float]:
    """The monitor's metrics for the end of ``epoch``.

    Args:
        wrapper: the ``TrainWrapper`` (not DDP-wrapped; its ``model`` is the bare ranker).
        batch: one batch on the model's device for the gradient conflict (``None`` skips it).
        cfg: what to log and how often.
        epoch: the 0-based epoch that just ended.
    """
    if epoch % cfg.every_n_epochs != 0:
        return {}
    metrics: dict[str, float] = {}
    if cfg.information_abundance:
        with torch.no_grad():
            metrics |= information_abundance_metrics(wrapper.model, cfg.spectrum)
    if cfg.gradient_conflict and batch is not None:
        metrics |= gradient_conflict_metrics(wrapper, batch)
    return metrics
