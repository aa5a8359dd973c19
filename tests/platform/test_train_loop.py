"""The standalone training loop: learning, determinism, early stopping, resume, schedules."""

from __future__ import annotations

import importlib.util
import json
import math
import runpy
import subprocess
import sys

import pytest
import torch
from torch import nn

from hmoe.models.losses import IPWConfig, LossConfig, TrainWrapper
from hmoe.models.testing import random_batch, tiny_schema
from hmoe.platform.core.metrics import gauc
from hmoe.platform.experiment import TrainConfig
from hmoe.platform.training.runtime import StandaloneRuntime
from hmoe.platform.training.train_loop import (
    EvalData,
    LoopHooks,
    _lr_factor,
    evaluate,
    run_loop,
)
from hmoe.schema import EXPOSURE, LABELS, OOV_INDEX
from tests.conftest import REPO_ROOT

SCHEMA = tiny_schema(("click", "like"))
EVAL_BATCH_SIZE = 64
STEPS_PER_EPOCH = 4  # 128 train rows in batches of 32


class _ItemModel(nn.Module):
    """A learnable per-item score per task: enough to fit a planted item effect."""

    tasks = ("click", "like")

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(20, 2)
        nn.init.zeros_(self.table.weight)

    def forward(self, batch):
        return self.table(batch["item"])


def _data(rows: int, seed: int):
    batch = random_batch(SCHEMA, rows, torch.Generator().manual_seed(seed))
    # planted signal: even items are clicked and liked
    positive = (batch["item"] % 2 == 0).float()
    batch[LABELS] = torch.stack([positive, positive], dim=1)
    return batch


def _settings(**changes) -> TrainConfig:
    base = dict(
        epochs=3,
        batch_size=32,
        lr=0.05,
        weight_decay=0.0,
        optimizer="adam",
        lr_schedule="constant",
        warmup_steps=0,
        grad_clip_norm=1.0,
        early_stopping_metric="val_auc",
        early_stopping_patience=0,
        use_bf16=True,
        seed=7,
        monitor=None,
    )
    return TrainConfig(**(base | changes))


def _loop_sizes() -> dict[str, int]:
    return {"eval_batch_size": EVAL_BATCH_SIZE, "steps_per_epoch": STEPS_PER_EPOCH}


def _run(settings: TrainConfig, checkpoint_dir=None, hooks=None, loss=None, val=None):
    torch.manual_seed(settings.seed)
    model = _ItemModel()
    runtime = StandaloneRuntime(
        _data(128, 0), 32, settings.seed, torch.device("cpu"), checkpoint_dir=checkpoint_dir
    )
    data = EvalData(val=_data(96, 1) if val is None else val, test=_data(96, 2))
    wrapper = TrainWrapper(model, loss or LossConfig())
    outcome = run_loop(model, wrapper, SCHEMA, runtime, data, settings, hooks, **_loop_sizes())
    return outcome, runtime


def test_loop_learns_the_planted_signal_and_reports_every_metric():
    _outcome, runtime = _run(_settings())
    assert len(runtime.reports) == 3
    first, last = runtime.reports[0], runtime.reports[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["val_auc"] > 0.95 and last["test_auc_click"] > 0.95
    for key in ("val_auc_click", "val_gauc_like", "val_logloss", "epoch_val_auc", "best_epoch"):
        assert key in last
    assert "test_auc" not in first  # test metrics only at the end, on the best weights
    # this process's peak so far: a torch process holds well over 0.1 GiB, and a peak never falls
    assert 0.1 < first["worker_peak_rss_gb"] <= last["worker_peak_rss_gb"] < 64


def test_best_weights_are_copied_before_the_last_epoch_and_never_in_it(monkeypatch):
    states = []
    report = StandaloneRuntime.report

    def keep_state(self, metrics, state, write_shards=None):
        states.append(state)
        report(self, metrics, state, write_shards)

    monkeypatch.setattr(StandaloneRuntime, "report", keep_state)
    outcome, _ = _run(_settings(epochs=3, early_stopping_metric="val_logloss"))
    own = [h["val_logloss"] for h in outcome.history]
    assert own == sorted(own, reverse=True)  # the scenario: every epoch improves
    # epochs 1 and 2 keep a copy in case a later one is worse; the last is the model itself
    assert [s["state"]["best_model"] is None for s in states] == [False, False, True]
    assert outcome.final["best_epoch"] == 3


def test_a_long_epoch_says_how_far_it_is_inside_the_epoch(monkeypatch):
    from hmoe.platform.training import train_loop

    monkeypatch.setattr(train_loop, "PROGRESS_EVERY_S", 0.0)  # every step counts as long
    lines: list[str] = []
    _run(_settings(epochs=2), hooks=LoopHooks(progress=lines.append))
    inside = [line for line in lines if "  step " in line]
    assert [line.split("  ")[:2] for line in inside] == [
        [f"epoch {e}/2", f"step {s}/{STEPS_PER_EPOCH}"] for e in (1, 2) for s in range(1, 5)
    ]
    assert all("train_loss=" in line and "train_samples_per_s=" in line for line in inside)
    assert len(lines) == len(inside) + 2  # and each epoch's own line at its end


def test_evaluate_leaves_padding_and_out_of_vocabulary_users_out_of_gauc():
    data = _data(96, 1)
    data["user"] = torch.arange(96) % 6  # ids 0 (padding) and 1 (OOV) name no single user
    model = _ItemModel()
    nn.init.normal_(model.table.weight, generator=torch.Generator().manual_seed(0))
    out = evaluate(model, data, SCHEMA, "val", torch.device("cpu"), 32)
    logits = model(data)[:, 0].detach().numpy()
    known = data["user"].numpy() > OOV_INDEX
    labels = data[LABELS][:, 0].numpy()
    expected = gauc(labels[known], logits[known], data["user"].numpy()[known])
    assert out["val_gauc_click"] == pytest.approx(expected)
    assert out["val_gauc_click"] != pytest.approx(gauc(labels, logits, data["user"].numpy()))


def test_loop_is_deterministic_for_a_seed():
    a, _ = _run(_settings())
    b, _ = _run(_settings())
    assert a.final["val_logloss"] == b.final["val_logloss"]
    assert torch.equal(a.model.table.weight, b.model.table.weight)
    c, _ = _run(_settings(seed=8))
    assert c.final["val_logloss"] != a.final["val_logloss"]


class _Logger:
    seconds = 0.0

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step):
        self.logged.append((step, dict(metrics)))


def test_early_stopping_restores_the_best_epoch_and_every_metric_means_that_epoch():
    # a huge learning rate with no clipping makes validation worse after the first epoch
    logger = _Logger()
    outcome, runtime = _run(
        _settings(
            epochs=6,
            lr=50.0,
            grad_clip_norm=None,
            early_stopping_metric="val_logloss",
            early_stopping_patience=1,
        ),
        hooks=LoopHooks(logger=logger),
    )
    assert len(runtime.reports) < 6
    own = [h["val_logloss"] for h in outcome.history]  # each epoch's own value
    best_epoch = own.index(min(own)) + 1  # 1-based
    assert best_epoch < len(own)  # the scenario: the last epoch is not the best
    final = runtime.reports[-1]
    assert final["best_epoch"] == best_epoch
    assert [r["epoch"] for r in runtime.reports] == list(range(1, len(own) + 1))
    # the headline and every report to Tune: the best epoch so far; its own value apart
    assert final["val_logloss"] == min(own)
    assert final["val_auc_click"] == outcome.history[best_epoch - 1]["val_auc_click"]
    so_far = [min(own[: i + 1]) for i in range(len(own))]
    assert [r["val_logloss"] for r in runtime.reports] == so_far
    assert [r["epoch_val_logloss"] for r in runtime.reports] == own
    # MLflow: the history has every epoch's own value at step = epoch, then the headline
    steps = [(step, m["val_logloss"]) for step, m in logger.logged if "val_logloss" in m]
    assert steps == [*enumerate(own, start=1), (len(own), min(own))]
    assert "test_logloss" in logger.logged[-1][1] and "best_epoch" in logger.logged[-1][1]


IPW_CLICK = IPWConfig(enabled=True, exponent=0.7, min_weight=0.3, tasks=("click",))


def _reference_ipw_logloss(labels, logits, exposure, ipw: IPWConfig) -> float:
    """Row by row: clip((1 + k) ** -exponent, min_weight, 1) on positives, renormalised to mean 1
    over every positive of the split, 1 on negatives, then sum(w * bce) / sum(w)."""
    raw = []
    for label, k in zip(labels, exposure, strict=True):
        inverse = (1.0 + max(k, 0.0)) ** -ipw.exponent
        raw.append(min(max(inverse, ipw.min_weight), 1.0) if label > 0.5 else None)
    clipped = [w for w in raw if w is not None]
    mean = sum(clipped) / len(clipped)
    total_weight = total_loss = 0.0
    for label, logit, w in zip(labels, logits, raw, strict=True):
        weight = 1.0 if w is None else w / mean
        p = min(max(1.0 / (1.0 + math.exp(-logit)), 1e-7), 1.0 - 1e-7)
        total_loss += weight * -(label * math.log(p) + (1.0 - label) * math.log(1.0 - p))
        total_weight += weight
    return total_loss / total_weight


def test_the_ipw_logloss_matches_a_row_by_row_reference():
    torch.manual_seed(3)
    model = _ItemModel()
    nn.init.normal_(model.table.weight)
    data = _data(50, 4)
    data[LABELS][::3, 0] = 1.0 - data[LABELS][::3, 0]  # both exposure levels of each label
    out = evaluate(model, data, SCHEMA, "val", torch.device("cpu"), 16, False, IPW_CLICK)
    logits = model(data)[:, 0].tolist()
    labels, exposure = data[LABELS][:, 0].tolist(), data[EXPOSURE].tolist()
    expected = _reference_ipw_logloss(labels, logits, exposure, IPW_CLICK)
    assert out["val_ipw_logloss_click"] == pytest.approx(expected, rel=1e-6)
    assert out["val_ipw_logloss"] == out["val_ipw_logloss_click"]
    assert "val_ipw_logloss_like" not in out  # loss.ipw.tasks leaves "like" unweighted
    assert out["val_ipw_logloss_click"] != pytest.approx(out["val_logloss_click"])
    unweighted = evaluate(model, data, SCHEMA, "val", torch.device("cpu"), 16, False)
    assert not any("ipw" in key for key in unweighted)


def test_early_stopping_on_the_ipw_logloss_picks_the_epoch_with_the_lowest_weighted_loss():
    # validation: first-exposure positives say odd items, repeat positives say even items
    # (the planted training signal), so the IPW logloss, which trusts first exposures most,
    # gets worse as training fits the even items
    val = _data(96, 1)
    first = torch.arange(96) % 2 == 0
    val[EXPOSURE] = torch.where(first, 0.0, 5.0)
    odd = (val["item"] % 2 == 1).float()
    val[LABELS][first] = odd[first].unsqueeze(1).expand(-1, 2)
    outcome, runtime = _run(
        _settings(epochs=4, early_stopping_metric="val_ipw_logloss", early_stopping_patience=4),
        loss=LossConfig(ipw=IPWConfig(enabled=True, exponent=2.0, min_weight=0.05)),
        val=val,
    )
    own = [h["val_ipw_logloss"] for h in outcome.history]
    assert len(own) == 4
    best_epoch = own.index(min(own)) + 1
    assert best_epoch < len(own)  # the scenario: the last epoch is not the best
    final = runtime.reports[-1]
    assert final["best_epoch"] == best_epoch
    assert final["val_ipw_logloss"] == min(own)
    assert [r["epoch_val_ipw_logloss"] for r in runtime.reports] == own


def test_the_guard_metric_also_stops_training_and_the_best_epoch_stays_the_metrics():
    # val_logloss improves every epoch while val_auc sits at 1.0 from the first epoch on
    base = dict(epochs=6, lr=0.5, early_stopping_metric="val_logloss", early_stopping_patience=2)
    unguarded, _ = _run(_settings(**base))
    losses = [h["val_logloss"] for h in unguarded.history]
    aucs = [h["val_auc"] for h in unguarded.history]
    assert len(losses) == 6 and losses == sorted(losses, reverse=True)  # the scenario
    # reference: the first epoch by which either metric has gone 2 epochs without improving
    stop = next(
        n
        for n in range(1, 7)
        if n - 1 - max(range(n), key=lambda i: (aucs[i], -i)) >= 2
        or n - 1 - min(range(n), key=lambda i: (losses[i], i)) >= 2
    )
    guarded, runtime = _run(_settings(**base, early_stopping_guard="val_auc"))
    assert stop == 3 and len(guarded.history) == stop
    assert runtime.reports[-1]["best_epoch"] == losses[:stop].index(min(losses[:stop])) + 1


class _Crash(Exception):
    pass


def test_resume_from_checkpoint_continues_where_it_stopped(tmp_path, monkeypatch):
    full, _ = _run(_settings(epochs=3))
    report = StandaloneRuntime.report

    def crash_after_two_epochs(self, metrics, state, write_shards=None):
        report(self, metrics, state, write_shards)
        if metrics["epoch"] == 2:
            raise _Crash

    monkeypatch.setattr(StandaloneRuntime, "report", crash_after_two_epochs)
    with pytest.raises(_Crash):
        _run(_settings(epochs=3), checkpoint_dir=tmp_path)
    monkeypatch.setattr(StandaloneRuntime, "report", report)
    resumed, runtime = _run(_settings(epochs=3), checkpoint_dir=tmp_path)
    assert [r["epoch"] for r in runtime.reports] == [3]
    assert resumed.final["val_logloss"] == pytest.approx(full.final["val_logloss"], rel=1e-6)
    assert len(resumed.history) == 3


def test_hooks_receive_metrics_and_the_final_model():
    logged, finals, lines = [], [], []

    class _Logger:
        seconds = 0.0

        def log_metrics(self, metrics, step):
            logged.append((step, dict(metrics)))

    hooks = LoopHooks(
        logger=_Logger(),
        on_final=lambda model, example: finals.append((model, example)) or {},
        progress=lines.append,
    )
    _run(_settings(epochs=2), hooks=hooks)
    assert [step for step, _ in logged] == [1, 2, 2]  # the last step: own, then headline
    assert len(finals) == 1 and finals[0][1][LABELS].shape[1] == 2
    assert lines[0].startswith("epoch 1/2") and "val_auc=" in lines[0]


@pytest.mark.parametrize(("schedule", "end"), [("constant", 1.0), ("cosine", 0.0), ("linear", 0.0)])
def test_lr_schedules_with_warmup(schedule, end):
    s = _settings(lr_schedule=schedule, warmup_steps=2, epochs=2)
    assert _lr_factor(0, s, 6) == pytest.approx(0.5)
    assert _lr_factor(1, s, 6) == pytest.approx(1.0)
    assert _lr_factor(12, s, 6) == pytest.approx(end, abs=1e-9)
    if schedule == "cosine":
        assert _lr_factor(7, s, 6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


@pytest.mark.slow
def test_gpu_check_smoke_on_cpu_imports_neither_ray_nor_mlflow(tmp_path):
    out = tmp_path / "gpu_check.json"
    argv = ["gpu_check", "--device", "cpu", "--rows", "256", "--batch-size", "128"]
    argv += ["--epochs", "2", "--out", str(out)]
    script = tmp_path / "run_gpu_check.py"
    script.write_text(
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        "    runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        # pyarrow comes with the data package (a core dependency); Ray and MLflow must not
        "heavy = {'ray', 'mlflow'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"hmoe", "dcnv2"}
    for r in results.values():
        assert r["samples_per_s"] > 0 and 0.0 <= r["val_auc"] <= 1.0 and r["parameters"] > 0
    # the torchrec part beside it: FBGEMM's CPU build runs row-wise Adagrad, not Adam
    fused = json.loads(out.read_text())["torchrec"]
    if importlib.util.find_spec("torchrec") is not None:
        assert {p: set(r) for p, r in fused.items()} == {p: {"rowwise_adagrad"} for p in results}
        assert "adam left out (CUDA only)" in result.stdout
        assert fused["hmoe"]["rowwise_adagrad"]["ms_per_step"] > 0


def test_gpu_check_without_cuda_skips_with_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the check would run")
    gpu_check = runpy.run_path(str(REPO_ROOT / "benchmarks" / "gpu_check.py"))
    assert gpu_check["main"]([]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("gpu_check skipped: no CUDA device")


def test_monitor_logs_collapse_and_gradient_conflict_every_epoch():
    from hmoe.models.zoo import build, get_preset
    from hmoe.platform.analysis.monitor import CollapseMonitor, MonitorConfig
    from hmoe.platform.training.train_loop import LoopHooks

    preset = get_preset("debug")
    torch.manual_seed(0)
    model = build(preset.model, SCHEMA)
    runtime = StandaloneRuntime(_data(128, 0), 32, 0, torch.device("cpu"))
    data = EvalData(val=_data(96, 1), test=_data(96, 2))
    # the loop knows only the epoch-end hook; the analysis monitor is one
    hooks = LoopHooks(on_epoch_end=CollapseMonitor(MonitorConfig()))
    wrapper = TrainWrapper(model, preset.loss)
    run_loop(model, wrapper, SCHEMA, runtime, data, _settings(epochs=2), hooks, **_loop_sizes())
    max_dim = max(t.shape[1] for tables in model.embedding_tables() for t in tables.values())
    for report in runtime.reports:
        ia = [v for k, v in report.items() if k.startswith("diagnostics/ia_")]
        assert ia, sorted(report)
        # information abundance lies between 1 (rank one) and the embedding dimension
        assert all(1.0 - 1e-6 <= v <= max_dim + 1e-6 for v in ia)
        assert any(k.startswith("diagnostics/grad_cos_") for k in report), sorted(report)
    assert not any("ia_" in k for k in _run(_settings(epochs=1))[1].reports[0])


def test_the_embedding_l2_rides_only_on_a_coupled_l2_optimizer():
    from hmoe.platform.training.train_loop import _make_optimizer

    model = _ItemModel()
    cfg = LossConfig(embedding_l2=0.01)
    wrapper = TrainWrapper(model, cfg, embedding_l2_by_optimizer=True)
    adam = _make_optimizer(wrapper, _settings(weight_decay=1e-4))
    assert [g["weight_decay"] for g in adam.param_groups] == [1e-4 + 0.02]
    with pytest.raises(ValueError, match="coupled L2"):
        _make_optimizer(wrapper, _settings(optimizer="adamw"))
    in_loss = _make_optimizer(TrainWrapper(model, cfg), _settings(optimizer="adamw"))
    assert [g["weight_decay"] for g in in_loss.param_groups] == [0.0]


@pytest.mark.parametrize(("optimizer", "by_optimizer"), [("adam", True), ("adamw", False)])
def test_hmoe_train_puts_the_embedding_l2_on_adam_only(optimizer, by_optimizer, tmp_path):
    from hmoe.platform.data.batches import load_schema
    from hmoe.platform.experiment import build_experiment
    from hmoe.platform.training.trainer import build_model
    from tests.platform.prepared import write_prepared

    data = write_prepared(tmp_path / "tiny")
    cfg = build_experiment("debug", data, {"train.optimizer": optimizer})
    _, wrapper = build_model(cfg, load_schema(data))
    assert wrapper.embedding_l2_by_optimizer is by_optimizer
