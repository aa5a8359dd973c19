"""``hmoe train --resume RUN_ID``: a run whose process was SIGKILLed after its first
checkpoint is finished from that checkpoint, in the same MLflow run (fresh processes)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from tests.jobs.test_own_ray import hmoe_argv
from tests.platform.prepared import write_prepared
from tests.platform.test_store import scrubbed_env

EPOCHS = 6
CHECKPOINT_TIMEOUT_S = 600
CLI_TIMEOUT_S = 900
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of registered checkpoints


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(CHECKPOINT_TIMEOUT_S + CLI_TIMEOUT_S)
def test_a_killed_train_resumes_from_its_checkpoint_into_the_same_run(tmp_path, short_tmp):
    from mlflow import MlflowClient

    data = write_prepared(tmp_path / "tiny")
    env = scrubbed_env(RAY_TMPDIR=str(short_tmp()), PYTHONUNBUFFERED="1")
    sets = {
        "train.epochs": EPOCHS,
        "train.batch_size": 16,  # 32 steps per epoch: the run outlasts the kill below
        "train.early_stopping_patience": 0,
        "tracking.log_model": "false",
    }
    argv = hmoe_argv("train", "--preset", "debug", "--data", str(data))
    argv += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + CHECKPOINT_TIMEOUT_S
    run_id, snapshot = None, None
    try:
        while True:
            assert first.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            if run_id is None and (found := re.search(r"MLflow run (\w+) ", log.read_text())):
                run_id = found.group(1)
                snapshot = tmp_path / "hmoe_runs" / f"train-{run_id}" / SNAPSHOT
            # the controller records a reported checkpoint after the report: kill once it has
            if snapshot is not None and snapshot.exists() and "checkpoint_" in snapshot.read_text():
                break
            time.sleep(0.2)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # what a SIGKILL leaves
    assert not re.search(rf"epoch {EPOCHS}/{EPOCHS}", log.read_text())

    resumed = subprocess.run(
        hmoe_argv("train", "--resume", run_id), cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=CLI_TIMEOUT_S,
    )  # fmt: skip
    assert resumed.returncode == 0, (resumed.stdout[-2000:], resumed.stderr[-3000:])
    assert f"resuming MLflow run {run_id}" in resumed.stdout
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["resumed_from_epoch"] >= 1.0  # started from the checkpoint
    steps = sorted({m.step for m in client.get_metric_history(run_id, "train_loss")})
    assert steps == list(range(1, EPOCHS + 1))  # both processes' epochs (1-based), in one run
    assert "hmoe.failure_reason" not in run.data.tags
    assert run.data.tags["hmoe.pid"] != str(first.pid)  # owned by the resuming process
    assert any(key.startswith("test_auc") for key in run.data.metrics)  # completed
