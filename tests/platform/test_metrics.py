"""Metrics against closed forms, hand-computed cases and slow references (sklearn, a loop)."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from hmoe.models.losses import IPWConfig
from hmoe.platform.core.metrics import (
    METRIC_MODES,
    auc,
    gauc,
    logloss,
    metric_mode,
    split_metric_name,
    task_metrics,
)
from hmoe.platform.data.spec import load_spec
from hmoe.platform.data.synth_model import KNOWN_TASKS
from hmoe.platform.experiment import TrainConfig
from hmoe.platform.training.train_loop import ipw_logloss_metrics
from hmoe.schema import EXPOSURE, LABELS


def _slow_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive outranks a random negative (ties count 1/2)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _slow_gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> float:
    total, weight = 0.0, 0
    for u in np.unique(users):
        m = users == u
        if labels[m].min() == labels[m].max():
            continue
        total += _slow_auc(labels[m], scores[m]) * m.sum()
        weight += m.sum()
    return total / weight


def test_auc_hand_case():
    # positives at 0.8, 0.4; negatives at 0.5, 0.1: pairs won 1+1+0+1 of 4
    assert auc(np.array([1, 0, 1, 0]), np.array([0.8, 0.5, 0.4, 0.1])) == pytest.approx(0.75)


def test_auc_with_ties_matches_sklearn_and_loop():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(size=500) + labels, 1)  # rounding makes many ties
    expected = sklearn_metrics.roc_auc_score(labels, scores)
    assert auc(labels, scores) == pytest.approx(expected, abs=1e-12)
    assert auc(labels[:60], scores[:60]) == pytest.approx(_slow_auc(labels[:60], scores[:60]))


def test_auc_one_class_is_nan():
    assert math.isnan(auc(np.ones(4), np.arange(4.0)))


def test_gauc_hand_case_weighted_by_user_rows():
    # user 1 (3 rows): AUC 1.0; user 2 (2 rows): AUC 0.0; user 3 (2 rows, one class): skipped
    labels = np.array([1, 0, 0, 1, 0, 1, 1])
    scores = np.array([0.9, 0.2, 0.1, 0.1, 0.9, 0.5, 0.6])
    users = np.array([1, 1, 1, 2, 2, 3, 3])
    assert gauc(labels, scores, users) == pytest.approx((3 * 1.0 + 2 * 0.0) / 5)


def test_gauc_matches_slow_reference_with_ties():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 30, 800)
    labels = rng.integers(0, 2, 800)
    scores = np.round(rng.normal(size=800) + 0.5 * labels, 1)
    assert gauc(labels, scores, users) == pytest.approx(_slow_gauc(labels, scores, users))


def test_gauc_of_one_user_equals_auc():
    rng = np.random.default_rng(2)
    labels, scores = rng.integers(0, 2, 100), rng.normal(size=100)
    assert gauc(labels, scores, np.zeros(100)) == pytest.approx(auc(labels, scores))


def test_gauc_leaves_out_ids_that_name_many_users():
    # id 1 (out-of-vocabulary) would be scored as one user with AUC 0.0; user 5 has AUC 1.0
    labels = np.array([1, 0, 1, 0, 1, 0])
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.3])
    users = np.array([1, 1, 1, 1, 5, 5])
    assert gauc(labels, scores, users) == pytest.approx((4 * 0.0 + 2 * 1.0) / 6)
    assert gauc(labels, scores, users, ignore_users=(0, 1)) == pytest.approx(1.0)
    assert math.isnan(gauc(labels, scores, users, ignore_users=(1, 5)))


def test_logloss_closed_form_and_clipping():
    assert logloss(np.array([1, 0]), np.array([0.8, 0.2])) == pytest.approx(-math.log(0.8))
    # a confident wrong prediction is clipped at eps = 1e-7, not infinite
    assert logloss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-7))


def test_task_metrics_names_and_means():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, (200, 2)).astype(float)
    logits = rng.normal(size=(200, 2)) + labels
    users = rng.integers(0, 10, 200)
    out = task_metrics("val", ("click", "like"), logits, labels, users)
    for metric in ("auc", "logloss", "gauc"):
        assert f"val_{metric}_click" in out and f"val_{metric}_like" in out
        mean = (out[f"val_{metric}_click"] + out[f"val_{metric}_like"]) / 2
        assert out[f"val_{metric}"] == pytest.approx(mean)
    assert out["val_auc_like"] == pytest.approx(auc(labels[:, 1], logits[:, 1]))
    probs = 1 / (1 + np.exp(-logits[:, 0]))
    assert out["val_logloss_click"] == pytest.approx(logloss(labels[:, 0], probs))
    assert "test_gauc" not in task_metrics("test", ("click", "like"), logits, labels, None)


@pytest.mark.parametrize(
    ("name", "mode"),
    [("val_auc", "max"), ("val_gauc_click", "max"), ("val_logloss", "min"), ("test_auc_x", "max")],
)
def test_metric_mode(name, mode):
    assert metric_mode(name) == mode


def test_metric_mode_unknown_is_a_clear_error():
    with pytest.raises(ValueError, match="val_loss"):
        metric_mode("val_loss")


def _scanned_mode(name: str) -> str | None:
    """The mode of the first known metric word after the split, a parser independent of
    ``split_metric_name``; ``None`` when no word is known."""
    for part in name.split("_")[1:]:
        if part in METRIC_MODES:
            return METRIC_MODES[part]
    return None


def _shipped_tasks() -> set[str]:
    specs = Path(str(resources.files("hmoe.platform.data") / "specs"))
    paths = sorted(specs.glob("*.yaml"))
    assert len(paths) >= 5  # a moved specs folder must not pass with nothing to check
    return {label.task for path in paths for label in load_spec(path).labels} | set(KNOWN_TASKS)


def _produced_metric_names(split: str, tasks: tuple[str, ...]) -> set[str]:
    """Every metric name the training loop reports for ``split``: ``task_metrics`` with GAUC
    and the IPW logloss of every task, each per task and as the mean."""
    rng = np.random.default_rng(0)
    labels_BK = np.tile([[0.0], [1.0]], (4, len(tasks)))
    logits_BK = rng.normal(size=labels_BK.shape)
    users_B = np.repeat([1, 2], 4)
    names = set(task_metrics(split, tasks, logits_BK, labels_BK, users_B))
    data = {LABELS: torch.from_numpy(labels_BK), EXPOSURE: torch.arange(len(labels_BK))}
    ipw = IPWConfig(enabled=True, exponent=0.5, min_weight=0.3)
    return names | set(ipw_logloss_metrics(split, tasks, logits_BK, data, ipw))


def test_metric_mode_agrees_with_split_metric_name_on_every_produced_name():
    tasks = tuple(sorted(_shipped_tasks()))
    assert {"click", "income", "five_star"} <= set(tasks)
    checked = 0
    for split in ("train", "val", "test"):
        names = _produced_metric_names(split, tasks)
        assert {f"{split}_ipw_logloss", f"{split}_ipw_logloss_click", f"{split}_gauc"} <= names
        for name in sorted(names):
            got_split, metric, task = split_metric_name(name)
            assert (got_split, task in ("", *tasks)) == (split, True), name
            assert metric_mode(name) == _scanned_mode(name), name
            assert metric_mode(name) == ("min" if "logloss" in metric else "max"), name
            if split == "val":  # what train.early_stopping_metric accepts
                assert TrainConfig(early_stopping_metric=name).early_stopping_metric == name
            checked += 1
    assert checked == 3 * (len(tasks) + 1) * 4


@pytest.mark.parametrize("name", ["val_loss", "val", "val_", "auc", "train_ipw", "val_ipw_auc"])
def test_metric_mode_refuses_what_split_metric_name_cannot_read(name):
    assert split_metric_name(name)[1] == ""
    with pytest.raises(ValueError, match="cannot tell"):
        metric_mode(name)
