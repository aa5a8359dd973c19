"""``hmoe train`` end to end on the session Ray cluster, and its fail-fast argument checks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hmoe.jobs.cli import EXIT_USER_ERROR, main
from tests.platform.prepared import write_prepared


def test_unknown_set_key_fails_before_ray_starts(tmp_path):
    data = write_prepared(tmp_path / "tiny")
    code = (
        "import sys; from hmoe.jobs.cli import main;"
        f"rc = main(['train', '--preset', 'debug', '--data', {str(data)!r},"
        "'--set', 'train.learning_rate=0.1']);"
        "print('ray imported' if 'ray' in sys.modules else 'no ray'); sys.exit(rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == EXIT_USER_ERROR
    assert "learning_rate" in out.stderr and "valid keys" in out.stderr
    assert out.stdout.strip() == "no ray"
    assert not (tmp_path / "mlflow.db").exists()  # nothing tracked either


def test_malformed_set_and_missing_data_are_user_errors(tmp_path, capsys):
    assert main(["train", "--preset", "debug", "--data", str(tmp_path), "--set", "x"]) == 2
    assert "PATH=VALUE" in capsys.readouterr().err
    assert main(["train", "--preset", "debug", "--data", str(tmp_path / "none")]) == 2
    assert "prepared dataset" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.slow
def test_train_two_workers_survives_a_killed_worker_and_tracks_everything(
    ray_cluster, tmp_path, monkeypatch, capsys
):
    """2 workers, 2 epochs; the last worker is SIGKILLed in the middle of epoch 2 (step 6 of
    4 steps per epoch): the worker group restarts from the epoch-1 checkpoint and finishes."""
    from mlflow import MlflowClient

    from tests.platform.mlflow_checks import (
        check_registered_model_reproduces_val_auc,
        check_run_contents,
    )

    data = write_prepared(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    sets = {
        "train.epochs": 2,
        "train.batch_size": 64,
        "train.lr": 0.01,
        "train.cpus_per_worker": 0.5,  # 2 workers + 1 CPU left to Ray Data on 2 logical CPUs
        "train.fail_at_step": 6,
    }
    argv = ["train", "--preset", "debug", "--data", str(data), "--workers", "2"]
    argv += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    assert main([*argv, "--experiment", "cli-test"]) == 0
    out = capsys.readouterr().out
    assert "MLflow run id:" in out and "test" in out and "registered model: cli-test-best" in out
    run_id = out.split("MLflow run id:")[1].split()[0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["resumed_from_epoch"] == 1.0  # restarted from the checkpoint
    check_run_contents(client, run_id, epochs=2)
    check_registered_model_reproduces_val_auc(uri, client, "cli-test-best", "1", run_id, data)
