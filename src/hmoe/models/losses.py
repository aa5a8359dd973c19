"""Losses and the train wrapper: per-task BCE, Combined-Pair ranking loss, IPW of repeat exposure.

Models return logits ``[B, K]`` only; everything about the objective lives here, in
``TrainWrapper(model, loss_config)(batch) -> (loss, outputs)``.

Legend: ``B`` batch, ``K`` tasks, ``P`` positives, ``N`` negatives.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from hmoe.config import Config, ConfigError, FrozenMap, config
from hmoe.models.torchrec_tables import TorchRecIdTables
from hmoe.schema import EXPOSURE, LABELS, WEIGHT

__all__ = [
    "IPWConfig",
    "LossConfig",
    "RankingLossConfig",
    "TrainWrapper",
    "bce_per_task",
    "combined_pair_loss",
    "embedding_tables",
    "fused_table_modules",
    "fused_table_parameters",
    "ipw_weights",
    "pairwise_ranking_loss",
    "regularization_loss",
]

POSITIVE_THRESHOLD = 0.5  # labels are {0, 1}; anything above this counts as a positive


@config
class RankingLossConfig(Config):
    """Combined-Pair (paper §5.1): ``alpha * BCE + (1 - alpha) * pair``.

    ``alpha`` is the weight of BCE (the ranking-loss repo's best values are 0.6–0.9).
    ``tasks``: the tasks that get the pair term (empty: every task).
    """

    enabled: bool = False  # add the pair term to BCE (Combined-Pair)
    alpha: float = 0.8
    tasks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")


@config
class IPWConfig(Config):
    """Inverse-propensity weights that down-weight the positives of repeated exposure (paper §5.2).

    Showing an ad again raises its click probability beyond what the user's interest explains
    (the user has seen it, recognises it, clicks by habit or by mistake), so a positive on the
    ``k``-th repeat (``k`` = earlier exposures of the same (user, ad), ``batch["exposure"]``) is
    weaker evidence of interest than one on the first exposure. With ``rho_k >= 1`` the click
    propensity at ``k`` relative to the first exposure (``rho_0 = 1``), a positive's weight is:

    1. the inverse propensity ``1 / rho_k`` (1 at ``k = 0``, below 1 from ``k = 1`` on);
    2. clipped to ``[min_weight, 1]``: the floor bounds the variance a few large ``rho_k`` would
       add (no positive counts less than ``min_weight`` of a first-exposure one);
    3. renormalised to mean 1 over the task's positives in the batch, so IPW moves weight from
       repeat-exposure positives to first-exposure ones and leaves the positive / negative
       balance alone. Negatives keep weight 1 and the pair term is never weighted.

    Every valid config gives a weight that is non-increasing in ``k`` and strictly below the
    first exposure's from ``k = 1`` on (``rho`` increasing from ``k = 0`` to 1, ``min_weight < 1``);
    the checks below refuse settings that would up-weight or flatten repeats.

    Why this weight, on positives only: when the click odds are the interest odds ``o(x)`` times
    ``rho_k`` (a click logit additive in ``log rho_k``, as ``exposure_inflation`` plants with
    ``rho_k = (1 + k) ** inflation``), BCE with positives weighted ``w`` and negatives 1 is
    minimised, for each (x, k), at odds ``w * rho_k * o(x)``; ``w = 1 / rho_k`` leaves ``o(x)``.
    Weighting the negatives by the same factor would cancel it. Step 3 multiplies every positive
    of the batch by one constant ``c``: the optimum becomes ``c * o(x)``, a logit shift shared by
    all rows (the ranking is unchanged, the calibration is not). Where the floor binds
    (``rho_k > 1 / min_weight``) the optimum keeps ``rho_k * min_weight`` of the inflation, so a
    floor that binds for many positives (heavy-tailed ``k``) leaves part of the bias in place.
    The estimate is pointwise: a correlation between ``k`` and the interest does not change it,
    but it does make a ranking of the interest that drops the exposure term lose what ``k``
    says about the interest.

    Estimators of ``rho_k``:

    * ``power`` (default, needs no fitting): ``rho_k = (1 + k) ** exponent``, ``exponent > 0``.
    * ``table``: ``rho_k = propensities[min(floor(k), len - 1)] / propensities[0]``, e.g. the
      click rate at exposure index ``k`` over the click rate at the first exposure, fitted on
      the train logs; at least two entries, non-decreasing, the second above the first.
    """

    enabled: bool = False  # re-weight the positives of repeated exposure
    # how rho_k is estimated: power law or a fitted table
    estimator: Literal["power", "table"] = "power"
    exponent: float = 0.5  # power estimator: rho_k = (1 + k) ** exponent
    propensities: tuple[float, ...] = ()  # table estimator: click rate by exposure index
    min_weight: float = 0.1  # floor of a positive's weight before the renormalisation (step 2)
    tasks: tuple[str, ...] = ()  # the tasks whose positives are re-weighted (empty: every task)

    def __post_init__(self) -> None:
        if not 0.0 < self.min_weight < 1.0:
            raise ConfigError(f"min_weight must be in (0, 1), got {self.min_weight}")
        if self.exponent <= 0.0:
            raise ConfigError(
                f"exponent must be > 0 (repeats are down-weighted by (1 + k) ** -exponent), "
                f"got {self.exponent}; set enabled: false to switch IPW off"
            )
        if any(p <= 0.0 for p in self.propensities):
            raise ConfigError(f"propensities must be > 0, got {list(self.propensities)}")
        if self.estimator == "table":
            _check_propensity_table(self.propensities)


def _check_propensity_table(propensities: Sequence[float]) -> None:
    """A table estimator down-weights repeats only if ``rho`` rises at once and never falls."""
    if len(propensities) < 2:
        raise ConfigError(
            "estimator 'table' needs propensities with at least two entries (the first "
            f"exposure's, then each repeat's), got {list(propensities)}"
        )
    falls = any(later < earlier for earlier, later in itertools.pairwise(propensities))
    if falls or propensities[1] <= propensities[0]:
        raise ConfigError(
            "propensities must be non-decreasing with the second above the first (repeated "
            f"exposure inflates the click propensity), got {list(propensities)}"
        )


@config
class LossConfig(Config):
    """The training objective.

    ``task_weights``: weight per task name (missing tasks weigh 1). ``use_sample_weight``:
    multiply each sample's BCE by ``batch["weight"]`` (data weights or logged propensities).
    ``positive_weight``: the BCE weight of every positive (beta_pos of the ranking-loss paper's
    sparsity simulation, spec §5.1: positives down-weighted to mimic sparser clicks; the pair
    term stays unweighted). ``embedding_l2``: ``embedding_l2 * sum(W^2)`` over every
    ``nn.Embedding``/``EmbeddingBag`` table (whole tables, as FuxiCTR's embedding regulariser);
    modules that define ``regularization_loss()`` (e.g. GwPFM's pair weights) add theirs too.
    """

    task_weights: Mapping[str, float] = FrozenMap()
    ranking: RankingLossConfig = RankingLossConfig()
    ipw: IPWConfig = IPWConfig()
    use_sample_weight: bool = True
    positive_weight: float = 1.0
    embedding_l2: float = 0.0

    def __post_init__(self) -> None:
        negative = {k: v for k, v in self.task_weights.items() if v < 0.0}
        if negative:
            raise ConfigError(f"task_weights must be >= 0, got {negative}")
        if self.embedding_l2 < 0.0:
            raise ConfigError(f"embedding_l2 must be >= 0, got {self.embedding_l2}")
        if self.positive_weight <= 0.0:
            raise ConfigError(f"positive_weight must be > 0, got {self.positive_weight}")


def bce_per_task(
    logits_BK: torch.Tensor, labels_BK: torch.Tensor, weight_BK: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over the batch of ``weight * BCE`` per task: ``[K]``."""
    loss_BK = F.binary_cross_entropy_with_logits(logits_BK, labels_BK, reduction="none")
    if weight_BK is not None:
        loss_BK = loss_BK * weight_BK
    return loss_BK.mean(dim=0)


class _MeanPairSoftplus(torch.autograd.Function):
    """``mean_{i, j} softplus(neg_j - pos_i)`` with the closed-form gradient of paper §5.1:
    ``d/d neg_j = sum_i sigmoid(neg_j - pos_i) / (P N)`` (and minus the row sums for ``pos_i``).

    Recomputing the sigmoid in backward instead of saving the ``[P, N]`` difference keeps the
    memory at O(P + N) and is ~1.5x faster on CPU than autograd through ``softplus``.
    """

    @staticmethod
    def forward(ctx, pos_P: torch.Tensor, neg_N: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(pos_P, neg_N)
        return F.softplus(neg_N.unsqueeze(0) - pos_P.unsqueeze(1)).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos_P, neg_N = ctx.saved_tensors
        sigmoid_PN = torch.sigmoid(neg_N.unsqueeze(0) - pos_P.unsqueeze(1))
        scale = grad / sigmoid_PN.numel()
        return -sigmoid_PN.sum(dim=1) * scale, sigmoid_PN.sum(dim=0) * scale


def pairwise_ranking_loss(logits_B: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
    """Mean over in-batch (positive i, negative j) pairs of ``-log sigmoid(z_i - z_j)``.

    A batch without both classes has no pair: the result is 0 (not NaN) and gives no gradient.
    """
    positive_B = labels_B > POSITIVE_THRESHOLD
    pos_P, neg_N = logits_B[positive_B], logits_B[~positive_B]
    if pos_P.numel() == 0 or neg_N.numel() == 0:
        return logits_B.new_zeros(())
    # -log sigmoid(z_i - z_j) = softplus(z_j - z_i)
    return _MeanPairSoftplus.apply(pos_P, neg_N)


def mix_bce_and_pair(bce: torch.Tensor, pair: torch.Tensor, alpha: float) -> torch.Tensor:
    """The Combined-Pair mix ``alpha * bce + (1 - alpha) * pair`` (elementwise, any shape)."""
    return alpha * bce + (1.0 - alpha) * pair


def combined_pair_loss(
    logits_B: torch.Tensor,
    labels_B: torch.Tensor,
    alpha: float,
    weight_B: torch.Tensor | None = None,
) -> torch.Tensor:
    """``alpha * BCE_w + (1 - alpha) * pair`` for one task (the pair term is unweighted)."""
    bce = bce_per_task(
        logits_B.unsqueeze(1),
        labels_B.unsqueeze(1),
        None if weight_B is None else weight_B[:, None],
    )[0]
    return mix_bce_and_pair(bce, pairwise_ranking_loss(logits_B, labels_B), alpha)


def ipw_weights(
    exposure_B: torch.Tensor, config: IPWConfig, mask_B: torch.Tensor | None = None
) -> torch.Tensor:
    """IPW weights ``[B]`` from earlier-exposure counts (estimator: see ``IPWConfig``).

    Inverse propensities ``1 / rho_k`` are clipped to ``[min_weight, 1]`` and renormalised to
    mean 1 over ``mask_B`` (the task's positives; default: every sample); samples outside the
    mask get 1, which is what makes the weighted optimum the interest's odds (``IPWConfig``).
    Negative counts are treated as 0 (a first exposure).
    """
    counts_B = exposure_B.clamp(min=0.0)
    if config.estimator == "power":
        inverse_B = (1.0 + counts_B).pow(-config.exponent)
    else:
        table = torch.tensor(config.propensities, dtype=exposure_B.dtype, device=exposure_B.device)
        index_B = counts_B.floor().long().clamp(max=len(config.propensities) - 1)
        inverse_B = table[0] / table[index_B]
    weight_B = inverse_B.clamp(min=config.min_weight, max=1.0)
    mask_B = torch.ones_like(weight_B, dtype=torch.bool) if mask_B is None else mask_B
    if not bool(mask_B.any()):
        return torch.ones_like(weight_B)
    weight_B = weight_B / weight_B[mask_B].mean()
    return torch.where(mask_B, weight_B, torch.ones_like(weight_B))


def embedding_tables(model: nn.Module) -> list[nn.Parameter]:
    """The weight of every ``nn.Embedding`` / ``nn.EmbeddingBag`` of ``model`` (what
    ``embedding_l2`` covers), each once."""
    seen: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            seen.setdefault(id(module.weight), module.weight)
    return list(seen.values())


def fused_table_modules(model: nn.Module) -> list[TorchRecIdTables]:
    """The ``torchrec`` backend's table collections of ``model`` (one per embedding set)."""
    return [m for m in model.modules() if isinstance(m, TorchRecIdTables)]


def fused_table_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The id tables FBGEMM trains inside the backward: no other optimizer may hold them."""
    return [p for m in fused_table_modules(model) for p in m.parameters()]


def regularization_loss(model: nn.Module, embedding_l2: float) -> torch.Tensor:
    """Embedding L2 plus every submodule's own ``regularization_loss()``."""
    first = next(model.parameters(), None)
    total = torch.zeros((), device=None if first is None else first.device)
    for module in model.modules():
        own = getattr(module, "regularization_loss", None)
        if callable(own):
            total = total + own()
    if embedding_l2 > 0.0:
        for weight in embedding_tables(model):
            total = total + embedding_l2 * weight.square().sum()
    return total


def _task_flags(selected: Sequence[str], tasks: Sequence[str], what: str) -> list[bool]:
    unknown = sorted(set(selected) - set(tasks))
    if unknown:
        raise ConfigError(f"{what}: unknown task(s) {unknown}; the model's tasks are {list(tasks)}")
    return [not selected or t in selected for t in tasks]


class TrainWrapper(nn.Module):
    """The model plus its objective: ``forward(batch) -> (loss, outputs)``.

    ``outputs`` holds ``logits`` ``[B, K]`` (with graph), and detached ``probabilities``
    ``[B, K]``, ``task_losses`` ``[K]`` (what each task contributes before its task weight),
    ``bce`` ``[K]``, ``pair`` ``[K]`` (0 where off or the batch has one class) and
    ``regularization`` ``[]``.

    Args:
        model: maps a Batch to logits ``[B, K]``.
        loss_config: the objective.
        tasks: task names in label order; default ``model.tasks``.
        embedding_l2_by_optimizer: leave ``embedding_l2`` out of the loss's graph; the
            optimizer must then be built on ``param_groups()`` with a coupled L2 (torch's
            ``Adam``, not ``AdamW``). Same gradient, but no per-step squared copy of every
            table and its backward: on Criteo-sized tables that halved the step rate. The
            reported loss and ``regularization`` still include the term's value.

    Example:
        >>> wrapper = TrainWrapper(model, LossConfig(), tasks=("click",))  # doctest: +SKIP
        >>> loss, outputs = wrapper(batch)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        loss_config: LossConfig,
        tasks: Sequence[str] | None = None,
        *,
        embedding_l2_by_optimizer: bool = False,
    ) -> None:
        super().__init__()
        self.embedding_l2_by_optimizer = embedding_l2_by_optimizer
        # looked up once: the per-step L2 value must not walk the module tree
        self._tables = embedding_tables(model)
        tasks = tuple(tasks if tasks is not None else getattr(model, "tasks", ()))
        if not tasks:
            raise ValueError("TrainWrapper needs the task names (pass tasks= or set model.tasks)")
        self.model, self.config, self.tasks = model, loss_config, tasks
        _task_flags(tuple(loss_config.task_weights), tasks, "task_weights")
        weights = [loss_config.task_weights.get(t, 1.0) for t in tasks]
        self.register_buffer("task_weight_K", torch.tensor(weights), persistent=False)
        ranking, ipw = loss_config.ranking, loss_config.ipw
        ranked = _task_flags(ranking.tasks, tasks, "ranking.tasks")
        self.ranked_tasks = [k for k, on in enumerate(ranked) if on and ranking.enabled]
        weighted = _task_flags(ipw.tasks, tasks, "ipw.tasks")
        self.ipw_tasks = [k for k, on in enumerate(weighted) if on and ipw.enabled]

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: with ``embedding_l2_by_optimizer``, the id tables get
        ``weight_decay + 2 * embedding_l2`` (the gradient of ``embedding_l2 * sum(W^2)`` as a
        coupled L2) and every other parameter ``weight_decay``; otherwise one group. The
        ``torchrec`` backend's fused tables are in no group (FBGEMM trains them)."""
        fused = {id(p) for p in fused_table_parameters(self)}
        params = [p for p in self.parameters() if id(p) not in fused]
        l2 = self.config.embedding_l2
        if not (self.embedding_l2_by_optimizer and l2 > 0.0):
            return [{"params": params, "weight_decay": weight_decay}]
        tables = {id(w) for w in self._tables}
        decayed = [p for p in params if id(p) in tables]
        rest = [p for p in params if id(p) not in tables]
        groups = [
            {"params": decayed, "weight_decay": weight_decay + 2 * l2},
            {"params": rest, "weight_decay": weight_decay},
        ]
        return [g for g in groups if g["params"]]

    def _embedding_l2_value(self) -> torch.Tensor:
        """``embedding_l2 * sum(W^2)`` without a graph (a dot product: no squared copy)."""
        total = self.task_weight_K.new_zeros(())
        l2 = self.config.embedding_l2
        if l2 > 0.0:
            with torch.no_grad():
                for w in self._tables:
                    total = total + w.flatten().dot(w.flatten())
        return l2 * total

    def sample_weights(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Per-sample, per-task BCE weights ``[B, K]`` (None when every weight is 1)."""
        labels_BK = batch[LABELS]
        weight_BK = None
        if self.config.use_sample_weight and WEIGHT in batch:
            weight_BK = batch[WEIGHT].unsqueeze(1).expand_as(labels_BK)
        if self.config.positive_weight != 1.0:
            beta_BK = torch.where(
                labels_BK > POSITIVE_THRESHOLD,
                torch.full_like(labels_BK, self.config.positive_weight),
                torch.ones_like(labels_BK),
            )
            weight_BK = beta_BK if weight_BK is None else weight_BK * beta_BK
        if not self.ipw_tasks:
            return weight_BK
        if EXPOSURE not in batch:
            raise ValueError(f"IPW is enabled but the batch has no {EXPOSURE!r} column")
        columns = [torch.ones_like(labels_BK[:, 0])] * labels_BK.shape[1]
        for k in self.ipw_tasks:
            positive_B = labels_BK[:, k] > POSITIVE_THRESHOLD
            columns[k] = ipw_weights(batch[EXPOSURE], self.config.ipw, positive_B)
        ipw_BK = torch.stack(columns, dim=1)
        return ipw_BK if weight_BK is None else weight_BK * ipw_BK

    def forward(
        self, batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits_BK = self.model(batch)
        labels_BK = batch[LABELS]
        if logits_BK.shape != labels_BK.shape:
            raise ValueError(
                f"model returned logits of shape {tuple(logits_BK.shape)}, labels are "
                f"{tuple(labels_BK.shape)} (tasks {list(self.tasks)})"
            )
        bce_K = bce_per_task(logits_BK, labels_BK, self.sample_weights(batch))
        pair_K = torch.zeros_like(bce_K)
        task_loss_K = bce_K
        if self.ranked_tasks:
            alpha = self.config.ranking.alpha
            pairs = [
                pairwise_ranking_loss(logits_BK[:, k], labels_BK[:, k])
                if k in self.ranked_tasks
                else bce_K.new_zeros(())
                for k in range(len(self.tasks))
            ]
            pair_K = torch.stack(pairs)
            ranked_K = torch.tensor([k in self.ranked_tasks for k in range(len(self.tasks))])
            task_loss_K = torch.where(
                ranked_K.to(bce_K.device), mix_bce_and_pair(bce_K, pair_K, alpha), bce_K
            )
        if self.embedding_l2_by_optimizer:
            reg = regularization_loss(self.model, 0.0) + self._embedding_l2_value()
        else:
            reg = regularization_loss(self.model, self.config.embedding_l2)
        loss = (self.task_weight_K * task_loss_K).sum() + reg
        outputs = {
            "logits": logits_BK,
            "probabilities": torch.sigmoid(logits_BK).detach(),
            "task_losses": task_loss_K.detach(),
            "bce": bce_K.detach(),
            "pair": pair_K.detach(),
            "regularization": reg.detach(),
        }
        return loss, outputs
