"""Interest entanglement: where each embedding table places a user relative to an item, per task.

For test (user, item) pairs whose user and item are both frequent in training, every embedding
table gives the distance ``||E_user[u] - E_item[i]||``. Two tasks ``a`` and ``b`` disagree on a
pair when the reference for ``a`` puts it far (distance above its ``high_percentile``) while the
reference for ``b`` puts it near (at most its ``low_percentile``): the *conflict subset*. A table
shared by both tasks (MMoE / PLE) has to place those pairs near and far at once and piles them up
in the middle; a per-task table (STEM) can reproduce each task's placement. The gradient conflict
(cosine between per-task gradients on shared parameters) is the training-time view of the same
tension.

Legend for shape suffixes: ``N`` pairs, ``V`` vocabulary, ``D`` dim, ``K`` tasks.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hmoe.config import Config, ConfigError, config
from hmoe.platform.analysis.access import shared_parameters, task_losses
from hmoe.platform.analysis.collapse import metric_name

__all__ = [
    "BAND_NAMES",
    "EntanglementConfig",
    "GroupConflict",
    "conflict_subset",
    "distance_bands",
    "frequent_pair_mask",
    "gradient_conflict",
    "gradient_conflict_by_group",
    "gradient_conflict_metrics",
    "user_item_distances",
]

BAND_NAMES = ("near", "middle", "far")


@config
class EntanglementConfig(Config):
    """The entanglement analysis (defaults = the RecScope notebook, mode 0).

    Args:
        tasks: ``(a, b)``: conflict = far for ``a`` and near for ``b``; ``None`` = the schema's
            first two tasks.
        frequency_percentile: keep pairs whose user and item occur in training more often than
            this percentile of the per-user / per-item training counts.
        high_percentile: "far" for task ``a`` = distance above this percentile.
        low_percentile: "near" for task ``b`` = distance at most this percentile; also the
            colour bands of the histograms (near / middle / far).
        num_bins: equal-width histogram bins.
        split: the prepared split the pairs come from.
        max_pairs: analyse at most this many pairs (the first ones of the split).
    """

    tasks: tuple[str, str] | None = None
    frequency_percentile: float = 60.0
    high_percentile: float = 60.0
    low_percentile: float = 40.0
    num_bins: int = 39
    split: str = "test"
    max_pairs: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("frequency_percentile", "high_percentile", "low_percentile"):
            value = getattr(self, name)
            if not 0.0 <= value <= 100.0:
                raise ConfigError(f"{name} must be in [0, 100], got {value}")
        if self.low_percentile > self.high_percentile:
            raise ConfigError(
                f"low_percentile {self.low_percentile} > high_percentile {self.high_percentile}"
            )
        if self.tasks is not None and self.tasks[0] == self.tasks[1]:
            raise ConfigError(f"tasks must be two different tasks, got {list(self.tasks)}")
        if self.num_bins < 1 or self.max_pairs < 1:
            raise ConfigError("num_bins and max_pairs must be >= 1")


def user_item_distances(
    user_table_VD: torch.Tensor | np.ndarray,
    item_table_VD: torch.Tensor | np.ndarray,
    user_ids_N: np.ndarray,
    item_ids_N: np.ndarray,
) -> np.ndarray:
    """Euclidean distance between each pair's user row and item row, ``[N]``."""
    users = torch.as_tensor(user_table_VD).detach().to(device="cpu", dtype=torch.float64)
    items = torch.as_tensor(item_table_VD).detach().to(device="cpu", dtype=torch.float64)
    if users.dim() != 2 or items.dim() != 2 or users.shape[1] != items.shape[1]:
        raise ValueError(
            f"user and item tables must be [V, D] of one D, got {tuple(users.shape)}, "
            f"{tuple(items.shape)}"
        )
    user_ids = torch.as_tensor(np.asarray(user_ids_N), dtype=torch.long)
    item_ids = torch.as_tensor(np.asarray(item_ids_N), dtype=torch.long)
    return (users[user_ids] - items[item_ids]).norm(dim=1).numpy()


def frequent_pair_mask(
    train_user_ids: np.ndarray,
    train_item_ids: np.ndarray,
    user_ids_N: np.ndarray,
    item_ids_N: np.ndarray,
    percentile: float,
) -> np.ndarray:
    """Pairs whose user and item each occur in training more often than ``percentile`` of the
    training counts (over the users, resp. items, seen in training), ``[N]`` bool."""
    return _frequent(train_user_ids, user_ids_N, percentile) & _frequent(
        train_item_ids, item_ids_N, percentile
    )


def _frequent(train_ids: np.ndarray, ids_N: np.ndarray, percentile: float) -> np.ndarray:
    seen, counts = np.unique(np.asarray(train_ids), return_counts=True)
    if seen.size == 0:
        return np.zeros(len(ids_N), dtype=bool)
    threshold = np.percentile(counts, percentile)
    frequent = seen[counts > threshold]
    return np.isin(np.asarray(ids_N), frequent)


def conflict_subset(
    far_task_distances_N: np.ndarray,
    near_task_distances_N: np.ndarray,
    high_percentile: float,
    low_percentile: float,
) -> np.ndarray:
    """Pairs the first reference places far (> its ``high_percentile``) while the second places
    near (<= its ``low_percentile``), ``[N]`` bool."""
    far = np.asarray(far_task_distances_N, dtype=np.float64)
    near = np.asarray(near_task_distances_N, dtype=np.float64)
    if far.shape != near.shape or far.ndim != 1:
        raise ValueError(f"distance vectors must be 1-d of equal length: {far.shape}, {near.shape}")
    if far.size == 0:
        return np.zeros(0, dtype=bool)
    return (far > np.percentile(far, high_percentile)) & (
        near <= np.percentile(near, low_percentile)
    )


def distance_bands(
    distances_N: np.ndarray, low_percentile: float, high_percentile: float
) -> np.ndarray:
    """0 = near (<= low percentile), 1 = middle, 2 = far (> high percentile), ``[N]`` int."""
    distances = np.asarray(distances_N, dtype=np.float64)
    if distances.size == 0:
        return np.zeros(0, dtype=np.int64)
    low = np.percentile(distances, low_percentile)
    high = np.percentile(distances, high_percentile)
    return np.where(distances <= low, 0, np.where(distances > high, 2, 1)).astype(np.int64)


def _dense(grad: torch.Tensor | None, param: torch.Tensor) -> torch.Tensor:
    """A gradient as a dense tensor: zeros when the loss does not reach ``param``, densified
    when the table produces sparse gradients (``use_sparse_gradients``)."""
    if grad is None:
        return torch.zeros_like(param)
    return grad.to_dense() if grad.is_sparse else grad


def gradient_conflict(
    task_losses: Mapping[str, torch.Tensor], shared_parameters: Sequence[torch.Tensor]
) -> dict[str, float]:
    """Cosine between the per-task gradients on ``shared_parameters``, per pair of tasks.

    Returns ``{"grad_cos_{a}_{b}": cosine}`` for every pair in the mapping's order (negative =
    the tasks pull the shared parameters apart). The graph is kept (``retain_graph``), so the
    caller can still backpropagate the summed loss. A task whose gradient on the shared
    parameters is zero conflicts with nothing: its cosines are 0.
    """
    params = [p for p in shared_parameters if p.requires_grad]
    if not params:
        raise ValueError("gradient_conflict needs at least one shared parameter with a gradient")
    if len(task_losses) < 2:
        raise ValueError(f"gradient_conflict needs >= 2 task losses, got {list(task_losses)}")
    flat = {}
    for task, loss in task_losses.items():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        flat[task] = torch.cat(
            [_dense(g, p).reshape(-1) for g, p in zip(grads, params, strict=True)]
        )
    result = {}
    for (a, grad_a), (b, grad_b) in itertools.combinations(flat.items(), 2):
        norms = grad_a.norm() * grad_b.norm()
        cosine = (grad_a @ grad_b) / norms if norms > 0 else torch.zeros(())
        result[metric_name("grad_cos", a, b)] = float(cosine)
    return result


def gradient_conflict_metrics(
    wrapper: nn.Module, batch: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """``{"grad_cos_{a}_{b}": cosine}`` of the per-task gradients on the shared parameters for
    one batch (empty for a single task or a model that shares nothing), for the training
    loop to log once per epoch; it leaves no gradient behind."""
    if len(wrapper.tasks) < 2:
        return {}
    shared = shared_parameters(wrapper.model)
    if not shared:
        return {}
    was_training = wrapper.training
    wrapper.eval()  # no dropout noise in the directions, no batch-norm statistics update
    try:
        return gradient_conflict(task_losses(wrapper, batch), shared)
    finally:
        wrapper.train(was_training)


@dataclass(frozen=True)
class GroupConflict:
    """Two tasks' gradients on one parameter group (a table, an expert): their cosine (0 when
    either is zero) and each one's norm."""

    cosine: float
    norm_a: float
    norm_b: float


def gradient_conflict_by_group(
    loss_a: torch.Tensor, loss_b: torch.Tensor, groups: Mapping[str, Sequence[torch.Tensor]]
) -> dict[str, GroupConflict]:
    """``gradient_conflict`` of two task losses per parameter group: where in the model the
    tasks pull apart. One backward per task; the graph is kept. A parameter may sit in several
    groups; a group without a parameter that needs a gradient is left out."""
    kept = {name: [p for p in params if p.requires_grad] for name, params in groups.items()}
    kept = {name: params for name, params in kept.items() if params}
    if not kept:
        raise ValueError("gradient_conflict_by_group needs a group with a trainable parameter")
    unique = list({id(p): p for params in kept.values() for p in params}.values())
    position = {id(p): i for i, p in enumerate(unique)}
    grads = []
    for loss in (loss_a, loss_b):
        raw = torch.autograd.grad(loss, unique, retain_graph=True, allow_unused=True)
        grads.append([_dense(g, p).reshape(-1) for g, p in zip(raw, unique, strict=True)])
    out = {}
    for name, params in kept.items():
        a, b = (torch.cat([g[position[id(p)]] for p in params]).double() for g in grads)
        norm_a, norm_b = float(a.norm()), float(b.norm())
        cosine = float(a @ b) / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else 0.0
        out[name] = GroupConflict(cosine=cosine, norm_a=norm_a, norm_b=norm_b)
    return out
