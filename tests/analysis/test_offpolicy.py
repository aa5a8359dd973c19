"""Off-policy estimators and propensity-weighted metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hmoe.platform.analysis import offpolicy
from hmoe.platform.analysis.offpolicy import (
    dm_estimate,
    dr_estimate,
    ipw_estimate,
    snipw_estimate,
    thompson_slate_distribution,
    weighted_auc,
    weighted_logloss,
)
from hmoe.platform.core.metrics import auc, logloss

# four logged rows: weights pi_e / pi_b = 2, 0.4, 0.2, 0.5; reward * weight = 2, 0, 0.2, 0
REWARD = np.array([1.0, 0.0, 1.0, 0.0])
PI_E = np.array([0.5, 0.2, 0.1, 0.4])
PI_B = np.array([0.25, 0.5, 0.5, 0.8])


def test_ipw_by_hand() -> None:
    assert ipw_estimate(REWARD, PI_E, PI_B) == pytest.approx(2.2 / 4)


def test_snipw_by_hand() -> None:
    assert snipw_estimate(REWARD, PI_E, PI_B) == pytest.approx(2.2 / 3.1)


def test_ipw_of_the_logging_policy_is_the_mean_reward() -> None:
    assert ipw_estimate(REWARD, PI_B, PI_B) == pytest.approx(REWARD.mean())


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_ipw_rejects_propensities_outside_0_1(bad: float) -> None:
    with pytest.raises(ValueError, match="propensities"):
        ipw_estimate(REWARD, PI_E, np.array([0.25, bad, 0.5, 0.8]))


def test_ipw_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="differ"):
        ipw_estimate(REWARD[:3], PI_E, PI_B)


# two rows, two actions: the rows' pi_e and reward-model predictions q_hat
DR_PI_E = np.array([[0.25, 0.75], [1.0, 0.0]])
DR_Q_HAT = np.array([[0.2, 0.4], [0.1, 0.3]])


def test_dm_by_hand() -> None:
    # rows: 0.25 * 0.2 + 0.75 * 0.4 = 0.35 and 1 * 0.1 = 0.1
    assert dm_estimate(DR_PI_E, DR_Q_HAT) == pytest.approx((0.35 + 0.1) / 2)


def test_dr_by_hand() -> None:
    # logged actions 1 and 0 at pi_b 0.5: residual terms 0.75 / 0.5 * (1 - 0.4) = 0.9 and
    # 1 / 0.5 * (0 - 0.1) = -0.2, added to the DM rows 0.35 and 0.1
    got = dr_estimate(
        np.array([1.0, 0.0]), np.array([1, 0]), np.array([0.5, 0.5]), DR_PI_E, DR_Q_HAT
    )
    assert got == pytest.approx((0.35 + 0.9 + 0.1 - 0.2) / 2)


def test_dr_with_a_zero_reward_model_is_ipw() -> None:
    pi_e = np.array([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1]])
    reward, action, pi_b = np.array([1.0, 1.0, 0.0]), np.array([0, 1, 1]), np.full(3, 0.5)
    got = dr_estimate(reward, action, pi_b, pi_e, np.zeros_like(pi_e))
    assert got == pytest.approx(ipw_estimate(reward, pi_e[np.arange(3), action], pi_b))


def test_weighted_auc_by_hand() -> None:
    # positives (0.9, w1) and (0.3, w3); negatives (0.8, w2), (0.3, w1), (0.1, w4):
    # 1 * (2 + 1 + 4) + 3 * (0 + 0.5 * 1 + 4) = 20.5 over (1 + 3) * (2 + 1 + 4) = 28 pairs
    labels = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.3, 0.3, 0.1])
    weights = np.array([1.0, 2.0, 3.0, 1.0, 4.0])
    assert weighted_auc(labels, scores, weights) == pytest.approx(20.5 / 28)


def test_weighted_auc_equals_auc_of_repeated_rows() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200), 1)  # many ties
    repeats = rng.integers(0, 4, 200)
    expected = auc(np.repeat(labels, repeats), np.repeat(scores, repeats))
    assert weighted_auc(labels, scores, repeats.astype(float)) == pytest.approx(expected)
    assert weighted_auc(labels, scores, np.full(200, 80.0)) == pytest.approx(auc(labels, scores))


def test_weighted_auc_nan_without_weighted_positives() -> None:
    assert math.isnan(weighted_auc(np.array([1, 0]), np.array([0.5, 0.2]), np.array([0.0, 1.0])))


def test_weighted_logloss_by_hand() -> None:
    expected = (3 * -math.log(0.8) + 1 * -math.log(0.6)) / 4
    got = weighted_logloss(np.array([1, 0]), np.array([0.8, 0.4]), np.array([3.0, 1.0]))
    assert got == pytest.approx(expected)
    labels, probs = np.array([1, 0, 0]), np.array([0.7, 0.2, 0.9])
    assert weighted_logloss(labels, probs, np.ones(3)) == pytest.approx(logloss(labels, probs))


def test_weighted_metrics_reject_negative_weights() -> None:
    with pytest.raises(ValueError, match="weights"):
        weighted_logloss(np.array([1, 0]), np.array([0.8, 0.4]), np.array([1.0, -1.0]))


def _one_round_at_a_time(alpha, beta, len_list, n_sim, seed) -> np.ndarray:
    """The policy's definition: one Beta draw per action per round, top ``len_list`` shown."""
    rng = np.random.RandomState(seed)
    counts = np.zeros((len(alpha), len_list))
    for _ in range(n_sim):
        shown = rng.beta(np.asarray(alpha, float), np.asarray(beta, float)).argsort()[::-1]
        for position in range(len_list):
            counts[shown[position], position] += 1
    return counts / n_sim


def test_thompson_chunked_draws_equal_one_round_at_a_time(monkeypatch) -> None:
    monkeypatch.setattr(offpolicy, "SIMULATION_CHUNK", 7)  # several chunks and a partial one
    alpha, beta = [2.0, 5.0, 1.0, 3.0, 8.0], [30.0, 40.0, 5.0, 60.0, 90.0]
    got = thompson_slate_distribution(alpha, beta, len_list=3, n_sim=50, random_state=12345)
    np.testing.assert_array_equal(got, _one_round_at_a_time(alpha, beta, 3, 50, 12345))
    np.testing.assert_allclose(got.sum(axis=0), 1.0)  # every position shows one action


def test_thompson_certain_prior_ranks_by_mean() -> None:
    # Beta(9000, 1000) ~ 0.9 > Beta(5000, 5000) ~ 0.5 > Beta(1000, 9000) ~ 0.1, every round
    got = thompson_slate_distribution(
        [1000.0, 9000.0, 5000.0], [9000.0, 1000.0, 5000.0], len_list=2, n_sim=100, random_state=0
    )
    np.testing.assert_array_equal(got, [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])


def test_thompson_rejects_bad_slate() -> None:
    with pytest.raises(ValueError, match="len_list"):
        thompson_slate_distribution([1.0, 1.0], [1.0, 1.0], len_list=3, n_sim=10, random_state=0)
