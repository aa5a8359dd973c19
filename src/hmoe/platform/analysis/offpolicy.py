"""Off-policy evaluation on logged bandit data, and metrics weighted by inverse propensities.

* ``ipw_estimate``: the inverse-propensity-weighted (IPW) value of an evaluation policy from
  rows logged by a behaviour policy, ``V = mean_i(r_i * pi_e(a_i | x_i) / pi_b(a_i | x_i))``
  (Horvitz-Thompson; unbiased when ``pi_b > 0`` wherever ``pi_e > 0``); ``snipw_estimate`` is
  its self-normalised variant (divides by the mean weight instead of 1: biased, lower variance).
* ``dm_estimate`` / ``dr_estimate``: the direct method (the evaluation policy's expected reward
  under a fitted reward model ``q_hat``) and doubly robust (DM plus the IPW-weighted residual of
  the logged action: unbiased if either the propensities or ``q_hat`` are right).
* ``thompson_slate_distribution``: the action distribution of a context-free Bernoulli Thompson
  sampling policy that shows the top ``len_list`` of one Beta draw per action, estimated by
  Monte Carlo with a seeded ``numpy.random.RandomState`` (the obp / Open Bandit convention, so
  the same seed gives the same draws as obp's ``BernoulliTS.compute_batch_action_dist``).
* ``weighted_auc`` / ``weighted_logloss``: AUC and logloss where row ``i`` counts ``w_i`` times,
  e.g. ``w = 1 / propensity`` estimates the metric under a uniform logging policy.

Legend: ``N`` logged rows, ``A`` actions, ``L`` slate positions, ``S`` Monte Carlo draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hmoe.platform.core import metrics
from hmoe.platform.core.metrics import LOGLOSS_EPS

__all__ = [
    "dm_estimate",
    "dr_estimate",
    "importance_weights",
    "ipw_estimate",
    "snipw_estimate",
    "thompson_slate_distribution",
    "weighted_auc",
    "weighted_logloss",
]

# draws per chunk in thompson_slate_distribution: bounds memory at about 8 * CHUNK * A bytes
SIMULATION_CHUNK = 10_000


def importance_weights(pi_e: np.ndarray, pi_b: np.ndarray) -> np.ndarray:
    """``pi_e / pi_b`` per row ``[N]``; raises if a logged propensity is not in (0, 1]."""
    pi_e_N = np.asarray(pi_e, dtype=np.float64).ravel()
    pi_b_N = np.asarray(pi_b, dtype=np.float64).ravel()
    if pi_e_N.shape != pi_b_N.shape:
        raise ValueError(f"pi_e {pi_e_N.shape} and pi_b {pi_b_N.shape} differ in length")
    if np.any((pi_b_N <= 0.0) | (pi_b_N > 1.0)):
        raise ValueError("logged propensities pi_b must lie in (0, 1]")
    return pi_e_N / pi_b_N


def ipw_estimate(reward: np.ndarray, pi_e: np.ndarray, pi_b: np.ndarray) -> float:
    """IPW value ``mean(r * pi_e / pi_b)`` of the evaluation policy; NaN on no rows."""
    reward_N = np.asarray(reward, dtype=np.float64).ravel()
    weight_N = importance_weights(pi_e, pi_b)
    if reward_N.shape != weight_N.shape:
        raise ValueError(f"reward {reward_N.shape} and propensities {weight_N.shape} differ")
    return float(np.mean(reward_N * weight_N)) if reward_N.size else math.nan


def snipw_estimate(reward: np.ndarray, pi_e: np.ndarray, pi_b: np.ndarray) -> float:
    """Self-normalised IPW ``sum(r * w) / sum(w)``; NaN when every weight is 0."""
    reward_N = np.asarray(reward, dtype=np.float64).ravel()
    weight_N = importance_weights(pi_e, pi_b)
    total = float(weight_N.sum())
    return float((reward_N * weight_N).sum() / total) if total > 0.0 else math.nan


def _direct_rows(pi_e: np.ndarray, q_hat: np.ndarray) -> np.ndarray:
    pi_e_NA = np.asarray(pi_e, dtype=np.float64)
    q_hat_NA = np.asarray(q_hat, dtype=np.float64)
    if pi_e_NA.ndim != 2 or pi_e_NA.shape != q_hat_NA.shape:
        raise ValueError(f"pi_e {pi_e_NA.shape} and q_hat {q_hat_NA.shape} must be equal [N, A]")
    return (pi_e_NA * q_hat_NA).sum(axis=1)


def dm_estimate(pi_e: np.ndarray, q_hat: np.ndarray) -> float:
    """Direct method ``mean_i sum_a pi_e(a | x_i) q_hat(x_i, a)``; both ``[N, A]``."""
    rows_N = _direct_rows(pi_e, q_hat)
    return float(rows_N.mean()) if rows_N.size else math.nan


def dr_estimate(
    reward: np.ndarray,
    action: np.ndarray,
    pi_b: np.ndarray,
    pi_e: np.ndarray,
    q_hat: np.ndarray,
) -> float:
    """Doubly robust: the DM row plus ``pi_e(a_i) / pi_b(a_i) * (r_i - q_hat(x_i, a_i))``.

    ``pi_e`` and ``q_hat`` are ``[N, A]`` (the rows' own slate position already chosen);
    ``reward``, ``action`` (column index into ``A``) and ``pi_b`` are ``[N]``.
    """
    direct_N = _direct_rows(pi_e, q_hat)
    rows = np.arange(direct_N.size)
    action_N = np.asarray(action, dtype=np.int64).ravel()
    reward_N = np.asarray(reward, dtype=np.float64).ravel()
    pi_e_NA, q_hat_NA = np.asarray(pi_e, np.float64), np.asarray(q_hat, np.float64)
    weight_N = importance_weights(pi_e_NA[rows, action_N], pi_b)
    residual_N = reward_N - q_hat_NA[rows, action_N]
    return float(np.mean(direct_N + weight_N * residual_N)) if direct_N.size else math.nan


def thompson_slate_distribution(
    alpha: Sequence[float],
    beta: Sequence[float],
    *,
    len_list: int,
    n_sim: int,
    random_state: int,
) -> np.ndarray:
    """``[A, L]``: how often each action lands at each slate position under Bernoulli TS.

    Each of ``n_sim`` rounds draws ``theta_a ~ Beta(alpha_a, beta_a)`` for every action (one
    ``RandomState.beta`` call per round in obp; drawing the rounds in chunks of a 2-D call
    consumes the generator in the same row-major order, so the draws are identical) and shows
    the actions in descending ``theta`` order; the result is the fraction of rounds with action
    ``a`` at position ``l``. Each round is ordered by the same ``argsort(...)[::-1]`` as obp's,
    so even ties between draws (probability ~0 for continuous Beta draws) resolve alike.
    """
    alpha_A = np.asarray(alpha, dtype=np.float64)
    beta_A = np.asarray(beta, dtype=np.float64)
    if alpha_A.ndim != 1 or alpha_A.shape != beta_A.shape:
        raise ValueError(f"alpha {alpha_A.shape} and beta {beta_A.shape} must be equal 1-D")
    num_actions = alpha_A.size
    if not 1 <= len_list <= num_actions:
        raise ValueError(f"len_list must be in [1, {num_actions}], got {len_list}")
    if n_sim < 1:
        raise ValueError(f"n_sim must be >= 1, got {n_sim}")
    rng = np.random.RandomState(random_state)
    counts_AL = np.zeros((num_actions, len_list), dtype=np.int64)
    for start in range(0, n_sim, SIMULATION_CHUNK):
        rounds = min(SIMULATION_CHUNK, n_sim - start)
        theta_SA = rng.beta(alpha_A, beta_A, size=(rounds, num_actions))
        # per row: default argsort ascending, then reversed, as obp's argsort()[::-1]
        shown_SL = np.argsort(theta_SA, axis=1)[:, ::-1][:, :len_list]
        for position in range(len_list):
            counts_AL[:, position] += np.bincount(shown_SL[:, position], minlength=num_actions)
    return counts_AL / n_sim


def _weights(labels_N: np.ndarray, weights: np.ndarray) -> np.ndarray:
    weight_N = np.asarray(weights, dtype=np.float64).ravel()
    if weight_N.shape != labels_N.shape:
        raise ValueError(f"weights {weight_N.shape} and labels {labels_N.shape} differ")
    if np.any(weight_N < 0.0) or not np.all(np.isfinite(weight_N)):
        raise ValueError("weights must be finite and >= 0")
    return weight_N


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float:
    """ROC-AUC where each positive-negative pair counts ``w_pos * w_neg`` (ties count half).

    Equals ``metrics.auc`` for equal weights and the AUC of a data set with row ``i`` repeated
    ``w_i`` times for integer weights. NaN when either class has zero total weight.
    """
    positive_N = np.asarray(labels, dtype=np.float64).ravel() > 0.5
    score_N = np.asarray(scores, dtype=np.float64).ravel()
    weight_N = _weights(positive_N, weights)
    pos_weight_N = np.where(positive_N, weight_N, 0.0)
    neg_weight_N = np.where(positive_N, 0.0, weight_N)
    total_pos, total_neg = float(pos_weight_N.sum()), float(neg_weight_N.sum())
    if total_pos <= 0.0 or total_neg <= 0.0:
        return math.nan
    # G = distinct scores, ascending: a group's positives beat the negatives of lower groups
    # and tie (half a win) with the negatives of their own group
    _, group_N = np.unique(score_N, return_inverse=True)
    pos_G = np.bincount(group_N, weights=pos_weight_N)
    neg_G = np.bincount(group_N, weights=neg_weight_N)
    neg_below_G = np.cumsum(neg_G) - neg_G
    return float((pos_G * (neg_below_G + 0.5 * neg_G)).sum() / (total_pos * total_neg))


def weighted_logloss(
    labels: np.ndarray, probs: np.ndarray, weights: np.ndarray, eps: float = LOGLOSS_EPS
) -> float:
    """``sum(w * BCE) / sum(w)`` with probabilities clipped as ``metrics.logloss``, the weights
    checked (finite, >= 0, one per row) first."""
    label_N = np.asarray(labels, dtype=np.float64).ravel()
    return metrics.weighted_logloss(label_N, probs, _weights(label_N, weights), eps)
