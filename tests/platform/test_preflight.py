"""Runs that would learn nothing, crash in a worker or wait forever: refused before Ray starts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types

import pytest
import torch

from hmoe.config import ConfigError
from hmoe.jobs.cli import EXIT_USER_ERROR, main
from hmoe.platform.experiment import TrainConfig, build_experiment
from hmoe.platform.training.preflight import check_resources, check_run, label_counts
from tests.platform.prepared import SPLIT_ROWS, write_prepared


def _all_positive_in_valid(split, batch):
    return torch.ones(len(batch["item"])) if split == "valid" else batch["item"] % 2 == 0


def test_zero_steps_per_epoch_exits_2_before_ray_or_mlflow_start(tmp_path):
    """2 workers of 256 train rows each and batch 512: every worker's only batch is partial
    and dropped, so the run took no step and reported train_loss=0.0 as FINISHED."""
    data = write_prepared(tmp_path / "tiny")
    code = (
        "import sys; from hmoe.jobs.cli import main;"
        f"rc = main(['train', '--preset', 'debug', '--data', {str(data)!r}, '--workers', '2',"
        "'--set', 'train.batch_size=512']);"
        "print('ray imported' if 'ray' in sys.modules else 'no ray'); sys.exit(rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == EXIT_USER_ERROR, out.stderr
    assert out.stdout.strip() == "no ray"
    error = out.stderr.strip()
    assert error.count("\n") == 0 and error.startswith("hmoe train: error: ")
    assert "train.batch_size=512 gives no optimizer step" in error
    assert "512 rows across train.num_workers=2 are 256 per worker" in error
    assert "at most 256" in error
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "hmoe_runs").exists()


def test_one_worker_keeps_its_partial_batch_and_passes(tmp_path):
    data = write_prepared(tmp_path / "tiny")
    check_run(build_experiment("debug", data, {"train.batch_size": 4096}))  # 1 worker: 1 step
    check_run(build_experiment("debug", data, {"train.batch_size": 256}, workers=2))


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_an_empty_split_is_refused(tmp_path, split):
    data = write_prepared(tmp_path / "tiny", rows=SPLIT_ROWS | {split: 0})
    with pytest.raises(ConfigError, match=rf"the {split} split\(s\) of .* have no rows"):
        check_run(build_experiment("debug", data))


def test_tune_refuses_an_empty_split_before_anything_starts(tmp_path, monkeypatch, capsys):
    data = write_prepared(tmp_path / "tiny", rows=SPLIT_ROWS | {"test": 0})
    monkeypatch.chdir(tmp_path)
    argv = ["tune", "--preset", "debug", "--space", "smoke", "--data", str(data)]
    assert main([*argv, "--num-samples", "2"]) == EXIT_USER_ERROR
    assert "the test split(s)" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "hmoe_runs").exists()


def test_one_class_validation_is_refused_for_auc_early_stopping_only(tmp_path):
    data = write_prepared(tmp_path / "tiny", ("click", "like"), labels=_all_positive_in_valid)
    for metric in ("val_auc", "val_gauc_like"):
        with pytest.raises(ConfigError) as err:
            check_run(build_experiment("debug", data, {"train.early_stopping_metric": metric}))
        assert f"train.early_stopping_metric={metric} is undefined (NaN)" in str(err.value)
        assert "256 of 256 rows positive" in str(err.value) and "val_logloss" in str(err.value)
    check_run(build_experiment("debug", data, {"train.early_stopping_metric": "val_logloss"}))
    assert label_counts(data, "valid", ("click",), json.loads((data / "manifest.json").read_text()))
    with pytest.raises(ConfigError, match=r"names task 'clik', but the dataset's tasks"):
        check_run(build_experiment("debug", data, {"train.early_stopping_metric": "val_auc_clik"}))


def test_ipw_logloss_early_stopping_is_refused_without_ipw(tmp_path):
    data = write_prepared(tmp_path / "tiny", ("click", "like"))
    key = "train.early_stopping_metric"
    metric = {key: "val_ipw_logloss"}
    off = metric | {"loss.ipw.enabled": False}  # the debug preset has IPW on
    with pytest.raises(ConfigError, match=r"val_ipw_logloss weights .* loss.ipw.enabled is false"):
        check_run(build_experiment("debug", data, off))
    check_run(build_experiment("debug", data, metric | {"loss.ipw.enabled": True}))
    only_click = {"loss.ipw.enabled": True, "loss.ipw.tasks": ["click"]}
    check_run(build_experiment("debug", data, only_click | {key: "val_ipw_logloss_click"}))
    with pytest.raises(ConfigError, match=r"loss.ipw.tasks re-weights only \['click'\]"):
        check_run(build_experiment("debug", data, only_click | {key: "val_ipw_logloss_like"}))


def test_the_early_stopping_guard_is_checked_as_the_metric_is(tmp_path):
    """The guard is read every epoch too: one the run cannot give fails after the first."""
    data = write_prepared(tmp_path / "tiny", ("click", "like"), labels=_all_positive_in_valid)
    key = "train.early_stopping_guard"
    logloss = {"train.early_stopping_metric": "val_logloss"}  # defined on one-class data
    ipw_guard = logloss | {key: "val_ipw_logloss"}
    refused = rf"{re.escape(key)}=val_ipw_logloss weights .* loss.ipw.enabled is false"
    with pytest.raises(ConfigError, match=refused):
        check_run(build_experiment("debug", data, ipw_guard | {"loss.ipw.enabled": False}))
    check_run(build_experiment("debug", data, ipw_guard | {"loss.ipw.enabled": True}))
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}=val_auc is undefined \(NaN\)"):
        check_run(build_experiment("debug", data, logloss | {key: "val_auc"}))


def test_label_counts_come_from_the_manifest_when_it_has_them(tmp_path):
    data = write_prepared(tmp_path / "tiny")
    manifest = json.loads((data / "manifest.json").read_text())
    read = label_counts(data, "valid", ("click",), manifest)
    rows, positives = read["click"]
    assert rows == SPLIT_ROWS["valid"] and 0 < positives < rows  # read from the shards
    manifest["label_counts"] = {"valid": {"click": {"rows": 256, "positives": 0}}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert label_counts(data, "valid", ("click",), manifest) == {"click": (256, 0)}
    with pytest.raises(ConfigError, match="click: 0 of 256 rows positive"):
        check_run(build_experiment("debug", data))


@pytest.mark.parametrize("preset", ["din", "din_plus", "sasrec"])
def test_a_sequence_model_refuses_a_dataset_without_sequences(tmp_path, preset):
    data = write_prepared(tmp_path / "tiny", sequences=False)
    with pytest.raises(ConfigError, match=rf"preset {preset} is built around a behaviour-seq"):
        check_run(build_experiment(preset, data))
    check_run(build_experiment(preset, write_prepared(tmp_path / "with_sequences")))


def test_presets_that_only_use_a_sequence_when_there_is_one_pass(tmp_path):
    data = write_prepared(tmp_path / "tiny", sequences=False)
    for preset in ("dnn", "hmoe", "debug"):  # hmoe also trains on Criteo, which has none
        check_run(build_experiment(preset, data))


def test_gpus_this_machine_lacks_are_refused_with_the_numbers(tmp_path, monkeypatch, capsys):
    """Without a GPU, ``--gpus-per-worker 1`` waited forever for its placement group."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if "ray" in sys.modules:  # the session cluster of other tests is not "this machine"
        monkeypatch.setattr(sys.modules["ray"], "is_initialized", lambda: False)
    data = write_prepared(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--preset", "debug", "--data", str(data), "--gpus-per-worker", "1"]
    assert main([*argv, "--workers", "2", "--set", "train.batch_size=64"]) == EXIT_USER_ERROR
    error = capsys.readouterr().err
    assert "the run needs 2 GPUs (2 worker(s) x 1) but this machine has" in error
    assert "--gpus-per-worker" in error and not (tmp_path / "mlflow.db").exists()
    check_resources(TrainConfig(num_workers=4), data_cpus=1.0)  # CPUs: a local Ray is sized


def test_a_cluster_to_join_is_not_judged_by_this_machine(monkeypatch):
    """With RAY_ADDRESS the GPUs are the cluster's: checked once connected, not here."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    if "ray" in sys.modules:
        monkeypatch.setattr(sys.modules["ray"], "is_initialized", lambda: False)
    check_resources(TrainConfig(gpus_per_worker=1, num_workers=2), data_cpus=1.0)
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(ConfigError, match="this machine has"):
        check_resources(TrainConfig(gpus_per_worker=1, num_workers=2), data_cpus=1.0)


def test_resources_are_checked_against_the_connected_cluster(monkeypatch):
    cluster = types.SimpleNamespace(
        is_initialized=lambda: True, cluster_resources=lambda: {"CPU": 2.0, "GPU": 1.0}
    )
    monkeypatch.setitem(sys.modules, "ray", cluster)
    with pytest.raises(ConfigError) as err:
        check_resources(TrainConfig(num_workers=2), data_cpus=1.0)
    expected = "needs 3 CPUs (2 worker(s) x 1 + 1 for Ray Data) but the connected Ray cluster has 2"
    assert expected in str(err.value)
    with pytest.raises(ConfigError, match=r"needs 2 GPUs \(2 worker\(s\) x 1\) .* has 1"):
        check_resources(TrainConfig(gpus_per_worker=1, num_workers=2, cpus_per_worker=0.5), 1.0)
    check_resources(TrainConfig(gpus_per_worker=1, cpus_per_worker=0.5), 1.0, extra_cpus=0.01)
    with pytest.raises(ConfigError, match=r"\+ 0.5 for the trial driver"):
        check_resources(TrainConfig(cpus_per_worker=1.0), 1.0, extra_cpus=0.5)


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_a_non_finite_set_value_exits_2_naming_the_key(tmp_path, monkeypatch, capsys, value):
    data = write_prepared(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--preset", "debug", "--data", str(data), "--set", f"train.lr={value}"]
    assert main(argv) == EXIT_USER_ERROR
    error = capsys.readouterr().err.strip()
    assert error.startswith("hmoe train: error: ExperimentConfig.train.lr: expected a finite")
    assert not (tmp_path / "mlflow.db").exists()
