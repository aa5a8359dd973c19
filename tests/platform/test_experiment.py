"""ExperimentConfig: built from a preset, strict overrides, round-trip, run identity."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hmoe.config import ConfigError, apply_overrides
from hmoe.models.zoo import PRESETS
from hmoe.platform.experiment import ExperimentConfig, build_experiment, run_name


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from tests.platform.prepared import write_prepared

    return write_prepared(tmp_path_factory.mktemp("prepared") / "tiny")


def test_every_preset_builds_an_experiment(data_dir):
    for name in PRESETS:
        cfg = build_experiment(name, data_dir)
        assert cfg.preset == name and cfg.model == PRESETS[name]().model
    assert len(PRESETS) == 14


def test_round_trip_and_run_name(data_dir):
    cfg = build_experiment("debug", data_dir, {"train.lr": 0.003}, workers=2)
    again = ExperimentConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.config_hash() == cfg.config_hash()
    assert cfg.train.num_workers == 2 and cfg.train.lr == 0.003
    assert run_name(cfg) == f"debug-{cfg.config_hash()}"
    assert run_name(build_experiment("debug", data_dir)) != run_name(cfg)


def test_a_trial_run_name_leads_with_the_sampled_values_that_differ(data_dir):
    from hmoe.platform.experiment import TRIAL_NAME_VALUES_CHARS, trial_run_name

    base = build_experiment("hmoe", data_dir)
    sampled = {
        "train.lr": 0.0031234,
        "train.batch_size": base.train.batch_size,  # the preset's value: left out
        "model.experts.counts.mlp": 3,
        "model.embedding.dims.mlp": 8,  # a second "mlp": both keep their parent key
    }
    name = trial_run_name(base, sampled, "8f2a1_00003")
    assert name == "dims.mlp=8 counts.mlp=3 lr=0.00312 · hmoe · 8f2a1_00003"
    long = {f"model.experts.counts.kind{i}": 1000 + i for i in range(20)}
    values, preset, trial = trial_run_name(base, long, "t1").split(" · ")
    assert len(values) == TRIAL_NAME_VALUES_CHARS and values.endswith("…")
    assert (preset, trial) == ("hmoe", "t1")
    assert trial_run_name(base, {}, "t1") == "hmoe · t1"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.learning_rate": 0.1}, "learning_rate"),
        ({"model.experts.counts.mlp": -1}, "counts"),
        ({"train.epochs": 0}, "train.epochs"),
        ({"train.early_stopping_metric": "val_loss"}, "early_stopping_metric"),
        ({"train.early_stopping_guard": "train_loss"}, "early_stopping_guard"),
        ({"tracking.model_format": "onnx"}, "model_format"),
        ({"model.use_sparse_gradients": True}, "use_sparse_gradients"),
        (
            {"model.embedding.backend": "torchrec", "model.embedding.table_optimizer": "adam"},
            r"table_optimizer='adam' needs CUDA \(train.gpus_per_worker > 0\)",
        ),
        ({"model.embedding.table_l2": 0.1}, "read only with"),
    ],
)
def test_invalid_overrides_name_the_problem(data_dir, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_experiment("debug", data_dir, overrides)


def test_torchrec_tables_may_train_on_gpus_with_any_table_optimizer(data_dir):
    for optimizer in ("rowwise_adagrad", "adam"):
        overrides = {
            "model.embedding.backend": "torchrec",
            "model.embedding.table_optimizer": optimizer,
            "train.gpus_per_worker": 1,
        }
        cfg = build_experiment("debug", data_dir, overrides)
        assert cfg.model.embedding.table_optimizer == optimizer


def test_unknown_preset_and_option(data_dir):
    with pytest.raises(ConfigError, match="nope"):
        build_experiment("nope", data_dir)
    with pytest.raises(ConfigError, match="cpus"):
        build_experiment("debug", data_dir, cpus=3)


def test_every_expert_kind_is_an_override_path_of_any_preset(data_dir):
    cfg = build_experiment("dcnv2", data_dir)
    assert "gwpfm" not in cfg.model.experts.counts
    assert build_experiment("dcnv2", data_dir, {"model.experts.counts.gwpfm": 2}).model.experts
    out = apply_overrides(cfg, {"model.experts.counts.gwpfm": 2, "train.lr": 0.01})
    assert out.model.experts.counts["gwpfm"] == 2 and out.train.lr == 0.01
    assert out.model.experts.counts["dcnv2"] == cfg.model.experts.counts["dcnv2"]
    with pytest.raises(ConfigError, match="not_a_field"):
        apply_overrides(cfg, {"train.not_a_field": 1})
    with pytest.raises(ConfigError, match=r"'cin' is not a key of model\.experts\.counts"):
        apply_overrides(cfg, {"model.experts.counts.cin": 1})
    with pytest.raises(ConfigError, match="no expert at all"):
        apply_overrides(cfg, {f"model.experts.counts.{k}": 0 for k in cfg.model.experts.counts})


def test_import_hmoe_is_cheap_and_api_is_lazy():
    code = (
        "import sys, hmoe; assert 'torch' not in sys.modules and 'ray' not in sys.modules;"
        "f = hmoe.train; assert callable(f) and callable(hmoe.tune);"
        "assert 'ray' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
