"""NaN metrics are never silent: a NaN early-stopping metric fails the run, other NaNs warn once."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from hmoe.models.losses import IPWConfig, LossConfig, TrainWrapper
from hmoe.platform.core.failures import DegenerateMetricWarning, DegenerateRunError
from hmoe.platform.training.runtime import StandaloneRuntime
from hmoe.platform.training.train_loop import (
    EvalData,
    LoopHooks,
    _nan_metrics,
    evaluate,
    run_loop,
)
from hmoe.schema import EXPOSURE, LABELS
from tests.platform.test_train_loop import (
    IPW_CLICK,
    SCHEMA,
    _data,
    _ItemModel,
    _loop_sizes,
    _run,
    _settings,
)


class _Recorder:
    """A MetricLogger that keeps what it is given."""

    seconds = 0.0

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics, step):
        self.logged.append((step, dict(metrics)))


def _loop(val, test, settings, logger=None):
    torch.manual_seed(settings.seed)
    model = _ItemModel()
    runtime = StandaloneRuntime(_data(128, 0), 32, settings.seed, torch.device("cpu"))
    hooks = LoopHooks(logger=logger) if logger is not None else None
    wrapper = TrainWrapper(model, LossConfig())
    data = EvalData(val=val, test=test)
    run_loop(model, wrapper, SCHEMA, runtime, data, settings, hooks, **_loop_sizes())
    return runtime


def test_a_nan_early_stopping_metric_fails_the_run_after_logging_its_epoch():
    val = _data(96, 1)
    val[LABELS][:, 1] = 1.0  # every validation row is a "like": AUC is undefined for it
    logger = _Recorder()
    with pytest.warns(DegenerateMetricWarning) as caught, pytest.raises(DegenerateRunError) as err:
        _loop(val, _data(96, 2), _settings(early_stopping_metric="val_auc"), logger)
    warned = sorted(str(w.message).split(" is NaN")[0] for w in caught)
    assert warned == ["val_auc_like", "val_gauc_like"]
    message = str(err.value)
    assert "early-stopping metric val_auc is NaN after epoch 1" in message
    assert "96 row(s), 96 positive for task like" in message and "val_logloss" in message
    assert "val_auc_click" not in message  # click has both classes
    assert [step for step, _ in logger.logged] == [1]  # the failed epoch (1-based) is logged
    assert "train_loss" in logger.logged[0][1]


def test_a_nan_metric_that_does_not_stop_the_run_warns_once():
    val = _data(96, 1)
    val[LABELS][:, 1] = 0.0  # no "like" in validation: val_auc_like NaN every epoch
    test = {k: v[1:2] for k, v in _data(96, 2).items()}  # a 1-row test split
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runtime = _loop(val, test, _settings(early_stopping_metric="val_logloss", epochs=3))
    assert len(runtime.reports) == 3  # the run itself goes on
    messages = [str(w.message) for w in caught if w.category is DegenerateMetricWarning]
    val_like = [m for m in messages if m.startswith("val_auc_like is NaN")]
    assert len(val_like) == 1 and "0 positive for task like" in val_like[0]
    assert sum(m.startswith("test_auc_click is NaN") for m in messages) == 1
    assert any("test split has 1 row(s)" in m for m in messages)


def test_a_nan_ipw_logloss_names_the_nan_exposure_counts_of_positives():
    val = _data(96, 1)
    positive = torch.nonzero(val[LABELS][:, 0] > 0.5).squeeze(1)
    val[EXPOSURE][positive[:3]] = math.nan
    ipw = LossConfig(ipw=IPWConfig(enabled=True, exponent=1.0, min_weight=0.1))
    settings = _settings(early_stopping_metric="val_ipw_logloss", epochs=1)
    with pytest.warns(DegenerateMetricWarning), pytest.raises(DegenerateRunError) as err:
        _run(settings, loss=ipw, val=val)
    message = str(err.value)
    assert "val_ipw_logloss_click is NaN: 3 positive row(s) have a NaN exposure count" in message
    assert f"{len(positive)} positive for task click" in message


def test_a_split_without_positives_keeps_the_ipw_logloss_defined():
    # why the NaN hint does not blame missing positives: every IPW weight is then 1
    val = _data(96, 1)
    val[LABELS][:, 0] = 0.0
    out = evaluate(_ItemModel(), val, SCHEMA, "val", torch.device("cpu"), 16, False, IPW_CLICK)
    assert math.isfinite(out["val_ipw_logloss_click"])
    assert out["val_ipw_logloss_click"] == pytest.approx(out["val_logloss_click"])


def test_a_nan_ipw_logloss_with_clean_exposure_blames_the_outputs_or_an_empty_split():
    val = _data(96, 1)
    metrics = {"val_ipw_logloss_click": math.nan, "val_ipw_logloss_like": 0.5}
    reasons = _nan_metrics(metrics, "val", val, SCHEMA.tasks)
    assert list(reasons) == ["val_ipw_logloss_click"]
    assert "model's outputs are not finite" in reasons["val_ipw_logloss_click"]
    empty = {key: value[:0] for key, value in val.items()}
    reasons = _nan_metrics({"test_ipw_logloss_like": math.nan}, "test", empty, SCHEMA.tasks)
    assert "test split has 0 row(s)" in reasons["test_ipw_logloss_like"]
    assert "no rows is undefined" in reasons["test_ipw_logloss_like"]
