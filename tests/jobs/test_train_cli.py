"""``hmoe train`` end to end on the session Ray cluster, and its fail-fast argument checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
@pytest.mark.parametrize("backend", ["torch", "torchrec"])
def test_train_two_workers_survives_a_killed_worker_and_tracks_everything(
    ray_cluster, tmp_path, monkeypatch, capsys, backend
):
    """2 workers, 2 epochs; the last worker is SIGKILLed in the middle of epoch 2 (step 6 of
    4 steps per epoch): the worker group restarts from the epoch-1 checkpoint and finishes.
    With ``torchrec`` the id tables are sharded across the 2 workers: the plan is logged and
    every worker's shards come back from the sharded checkpoint."""
    if backend == "torchrec":
        pytest.importorskip("torchrec")
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
        "model.embedding.backend": backend,
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
    assert run.data.metrics["worker_peak_rss_gb"] > 0.1  # the largest of both workers'
    check_run_contents(client, run_id, epochs=2)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert ("sharding_plan.json" in artifacts) == (backend == "torchrec")
    if backend == "torchrec":  # per embedding set, its tables as placed (no row-wise on CPU)
        plan = json.loads(Path(client.download_artifacts(run_id, "sharding_plan.json")).read_text())
        kinds = {t["sharding_type"] for tables in plan.values() for t in tables.values()}
        assert plan and kinds <= {"table_wise", "column_wise", "table_column_wise"}
    check_registered_model_reproduces_val_auc(uri, client, "cli-test-best", "1", run_id, data)


def test_metrics_table_and_tune_report_print_every_task_and_split(capsys):
    from types import SimpleNamespace

    from hmoe.jobs.commands.train import metrics_table
    from hmoe.jobs.commands.tune import report

    per_task = {
        "click": {"val_auc": 0.71, "val_gauc": 0.65, "val_logloss": 0.6, "test_auc": 0.7},
        "like": {"val_auc": 0.81, "test_auc": 0.8, "test_logloss": 0.4},
    }
    table = metrics_table(per_task).splitlines()
    assert table[0].split() == ["task", "split", "auc", "gauc", "logloss"]
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in table[2:]}
    assert rows[("click", "val")] == ["0.7100", "0.6500", "0.6000"]
    assert rows[("like", "test")] == ["0.8000", "nan", "0.4000"]
    result = SimpleNamespace(
        search_name="debug-smoke-1", num_trials=3, num_errors=1,
        errors={"trial_2": "InfeasibleTrial: infeasible sample\nmore"}, best_trial_id="t1",
        best_params={"train.lr": 0.01}, best_per_task=per_task, parent_run_id="p",
        best_run_id="c", registered_model="hmoe-best", model_version="2",
    )  # fmt: skip
    assert report(result) == 0
    out = capsys.readouterr().out
    assert "3 trials, 1 failed" in out and "failed trial_2: InfeasibleTrial" in out
    assert "MLflow parent run id: p; best trial run id: c" in out and "version 2" in out
