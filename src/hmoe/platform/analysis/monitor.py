"""What the training loop logs about collapse and entanglement while a model trains.

``monitor_metrics(wrapper, batch, cfg, epoch)`` is called by rank 0 once per epoch; it returns
``ia_{set}_{field}`` (information abundance of every field table of every embedding set) and,
for a multi-task model, ``grad_cos_{a}_{b}`` (cosine between the two tasks' gradients on the
shared parameters, on ``batch``), or nothing on the epochs the config skips. Both are cheap: one
pass over each table (a ``D x D`` Gram matrix) and one extra forward/backward on one batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from hmoe.platform.analysis.collapse import information_abundance_metrics
from hmoe.platform.analysis.entanglement import gradient_conflict_metrics
from hmoe.platform.experiment import MonitorConfig

__all__ = ["CollapseMonitor", "MonitorConfig", "epoch_end_hook", "monitor_metrics"]


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


@dataclass(frozen=True)
class CollapseMonitor:
    """The training loop's epoch-end hook (``EpochEndHook`` of the training loop): the monitor's
    metrics under ``cfg``. The loop knows only the hook, so training never imports analysis;
    whatever composes a run (``hmoe.train``, ``hmoe.tune``) hands it over. It is pickled by
    reference into each Ray Train worker."""

    cfg: MonitorConfig

    def __call__(
        self, train_module: nn.Module, batch: Mapping[str, torch.Tensor] | None, epoch: int
    ) -> dict[str, float]:
        return monitor_metrics(train_module, batch, self.cfg, epoch)


def epoch_end_hook(cfg: MonitorConfig | None) -> CollapseMonitor | None:
    """The hook of a run's ``train.monitor`` (``None``: the run logs no diagnostics)."""
    return None if cfg is None else CollapseMonitor(cfg)
