"""Ranking metrics per task, exactly as the papers define them (numpy only, no Ray, no torch).

* AUC: ROC-AUC over all rows (ties get average ranks, as ``sklearn.metrics.roc_auc_score``).
* GAUC: per-user AUC over the users that have both labels, weighted by the user's row count
  (the FuxiCTR / STEM definition).
* logloss: binary cross-entropy with probabilities clipped to ``[eps, 1 - eps]``, eps = 1e-7.

* IPW logloss (``ipw_logloss``): logloss with a weight per row, self-normalised
  (``sum(w * l) / sum(w)``); the training loop computes it with the repeated-exposure IPW
  weights of ``loss.ipw`` (``hmoe.models.losses.ipw_weights``) for the tasks IPW applies to.

Names follow the platform contract ``{split}_{metric}_{task}`` (``val_auc_click``) plus
``{split}_{metric}`` = the mean over tasks (``val_auc`` is the default search objective).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "IPW_LOGLOSS",
    "LOGLOSS_EPS",
    "METRIC_MODES",
    "auc",
    "gauc",
    "logloss",
    "metric_mode",
    "split_metric_name",
    "task_metrics",
    "weighted_logloss",
]

LOGLOSS_EPS = 1e-7  # FuxiCTR's clipping of predicted probabilities
METRIC_MODES = {"auc": "max", "gauc": "max", "logloss": "min"}
# the IPW-weighted logloss: a two-word metric name, so it is parsed before the single words
IPW_LOGLOSS = "ipw_logloss"
# a weighted logloss is minimised like the plain one
_MODES = {**METRIC_MODES, IPW_LOGLOSS: METRIC_MODES["logloss"]}


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of ``scores`` with ties sharing their average rank."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC via the Mann-Whitney statistic; NaN when only one class is present."""
    labels = np.asarray(labels, dtype=np.float64).ravel() > 0.5
    scores = np.asarray(scores, dtype=np.float64).ravel()
    num_pos = int(labels.sum())
    num_neg = labels.size - num_pos
    if num_pos == 0 or num_neg == 0:
        return math.nan
    rank_sum = float(_average_ranks(scores)[labels].sum())
    return (rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg)


def gauc(
    labels: np.ndarray,
    scores: np.ndarray,
    users: np.ndarray,
    ignore_users: Sequence[int] = (),
) -> float:
    """Per-user AUC averaged with weights = the user's row count, over users with both labels.

    Rows whose user id is in ``ignore_users`` are left out: ids such as the encoder's shared
    out-of-vocabulary id stand for many users, and scoring them as one user would turn GAUC
    into the plain AUC of everyone unseen in training (most of a temporal split's test rows).

    Vectorised: one lexsort by (user, score), tie-averaged ranks within each user, and
    per-user rank sums with ``bincount``. NaN when no user has both labels.
    """
    labels = np.asarray(labels, dtype=np.float64).ravel() > 0.5
    scores = np.asarray(scores, dtype=np.float64).ravel()
    users = np.asarray(users).ravel()
    if len(ignore_users):
        kept = ~np.isin(users, np.asarray(ignore_users))
        labels, scores, users = labels[kept], scores[kept], users[kept]
    if labels.size == 0:
        return math.nan
    order = np.lexsort((scores, users))
    user_s, score_s, label_s = users[order], scores[order], labels[order]
    _, user_idx, user_counts = np.unique(user_s, return_inverse=True, return_counts=True)
    position = np.arange(1, labels.size + 1, dtype=np.float64)
    # a run = equal (user, score); every row of a run gets the run's average position
    new_run = np.ones(labels.size, dtype=bool)
    new_run[1:] = (user_s[1:] != user_s[:-1]) | (score_s[1:] != score_s[:-1])
    run_id = np.cumsum(new_run) - 1
    run_mean = np.bincount(run_id, weights=position) / np.bincount(run_id)
    user_start = np.concatenate(([0], np.cumsum(user_counts)[:-1]))
    rank = run_mean[run_id] - user_start[user_idx]
    num_pos = np.bincount(user_idx, weights=label_s.astype(np.float64))
    num_neg = user_counts - num_pos
    pos_rank_sum = np.bincount(user_idx, weights=rank * label_s)
    valid = (num_pos > 0) & (num_neg > 0)
    if not valid.any():
        return math.nan
    per_user = (pos_rank_sum[valid] - num_pos[valid] * (num_pos[valid] + 1) / 2.0) / (
        num_pos[valid] * num_neg[valid]
    )
    weights = user_counts[valid].astype(np.float64)
    return float((per_user * weights).sum() / weights.sum())


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy of probabilities clipped to ``[eps, 1 - eps]``."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    probs = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1.0 - eps)
    if labels.size == 0:
        return math.nan
    return float(-np.mean(labels * np.log(probs) + (1.0 - labels) * np.log1p(-probs)))


def weighted_logloss(
    labels: np.ndarray, probs: np.ndarray, weights: np.ndarray, eps: float = LOGLOSS_EPS
) -> float:
    """Weighted binary cross-entropy ``sum(w * l) / sum(w)`` of probabilities clipped to
    ``[eps, 1 - eps]``; NaN on no rows or when every weight is 0."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    probs = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1.0 - eps)
    weights = np.asarray(weights, dtype=np.float64).ravel()
    total = float(weights.sum())
    if labels.size == 0 or total <= 0.0:
        return math.nan
    losses = -(labels * np.log(probs) + (1.0 - labels) * np.log1p(-probs))
    return float((weights * losses).sum() / total)


def split_metric_name(name: str) -> tuple[str, str, str]:
    """``(split, metric, task)`` of a metric name: ``val_auc_click`` -> ``("val", "auc",
    "click")``, ``val_ipw_logloss`` -> ``("val", "ipw_logloss", "")`` (the mean over tasks).
    ``metric`` is ``""`` when the name holds none that is known."""
    split, _, rest = name.partition("_")
    if rest == IPW_LOGLOSS or rest.startswith(f"{IPW_LOGLOSS}_"):
        return split, IPW_LOGLOSS, rest.removeprefix(IPW_LOGLOSS).removeprefix("_")
    metric, _, task = rest.partition("_")
    return split, (metric if metric in METRIC_MODES else ""), task


def metric_mode(name: str) -> str:
    """``"max"`` or ``"min"`` for a metric name such as ``val_auc`` or ``val_logloss_click``,
    read with ``split_metric_name``."""
    _split, metric, _task = split_metric_name(name)
    if not metric:
        raise ValueError(
            f"cannot tell whether {name!r} is maximised or minimised: "
            f"expected a name like val_auc, val_gauc_click, val_logloss or val_ipw_logloss"
        )
    return _MODES[metric]


def task_metrics(
    split: str,
    tasks: Sequence[str],
    logits_BK: np.ndarray,
    labels_BK: np.ndarray,
    users_B: np.ndarray | None,
    ignore_users: Sequence[int] = (),
) -> dict[str, float]:
    """Every metric per task plus the mean over tasks, named ``{split}_{metric}[_{task}]``.

    Args:
        split: ``val`` or ``test`` (or ``train``), the metric-name prefix.
        tasks: task names in label-column order.
        logits_BK: raw model outputs (before the sigmoid).
        labels_BK: 0/1 labels.
        users_B: the user id per row for GAUC; ``None`` leaves GAUC out.
        ignore_users: user ids that name no single user (padding, out-of-vocabulary): their
            rows are left out of GAUC.
    """
    logits_BK = np.asarray(logits_BK, dtype=np.float64).reshape(len(labels_BK), len(tasks))
    labels_BK = np.asarray(labels_BK, dtype=np.float64).reshape(len(labels_BK), len(tasks))
    probs_BK = 1.0 / (1.0 + np.exp(-logits_BK))
    out: dict[str, float] = {}
    names = ["auc", "logloss"] + (["gauc"] if users_B is not None else [])
    per_metric: dict[str, list[float]] = {name: [] for name in names}
    for k, task in enumerate(tasks):
        values = {
            "auc": auc(labels_BK[:, k], logits_BK[:, k]),
            "logloss": logloss(labels_BK[:, k], probs_BK[:, k]),
        }
        if users_B is not None:
            values["gauc"] = gauc(labels_BK[:, k], logits_BK[:, k], users_B, ignore_users)
        for name, value in values.items():
            out[f"{split}_{name}_{task}"] = value
            per_metric[name].append(value)
    for name, values in per_metric.items():
        out[f"{split}_{name}"] = float(np.mean(values))
    return out
