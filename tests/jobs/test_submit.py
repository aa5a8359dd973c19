"""Jobs on a real local head with a real MLflow server: the smoke search end to end, refused
specs, and a stopped job. The head and the server come from ``conftest.services``."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest

from hmoe.config import ConfigError
from hmoe.jobs.entry import RESULT_MARKER
from tests.jobs.conftest import (
    JOB_TIMEOUT_S,
    SMOKE_SPACE,
    FinishedJob,
    Services,
    hmoe_cli,
    smoke_overrides,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STOP_POLL_S = 1.0
STOP_WAIT_S = 240


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def test_smoke_job_succeeds_and_result_matches_mlflow(smoke_job: FinishedJob, services):
    from hmoe.jobs.entry import RESULT_ARTIFACT, TAG_JOB_ID

    job = smoke_job.job
    assert smoke_job.status == "SUCCEEDED", job.logs()[-4000:]
    result = job.result()
    client = _client(services.tracking_uri)

    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[TAG_JOB_ID] == job.submission_id
    assert client.get_experiment(parent.info.experiment_id).name == smoke_job.experiment
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'",
    )
    assert len(children) == result.num_trials == 2
    assert result.num_errors == 0
    assert {c.info.status for c in children} == {"FINISHED"}
    assert all("val_auc" in c.data.metrics for c in children)

    best = client.get_run(result.best_run_id)
    assert best.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert best.data.metrics["val_auc"] == pytest.approx(result.best_metrics["val_auc"])
    assert best.data.metrics["val_auc"] == max(c.data.metrics["val_auc"] for c in children)
    for path, value in result.best_params.items():
        assert best.data.params[path] == str(value)
    assert sorted(result.best_params) == sorted(SMOKE_SPACE)  # the spec's own search.space

    # the job's log: each epoch line once, naming its trial, and no Ray Data progress bar
    logs = job.logs()
    epochs = re.findall(r"\[train-(\w+)\] epoch 1/1 ", logs)
    assert len(epochs) == 2 and len(set(epochs)) == 2, logs[-4000:]
    assert "row/s" not in logs and "\x1b[A" not in logs

    version = client.get_model_version(result.registered_model, result.model_version)
    assert version.run_id == result.best_run_id
    assert result.registered_model == f"{smoke_job.experiment}-best"

    artifact = Path(client.download_artifacts(result.parent_run_id, RESULT_ARTIFACT))
    import json

    assert json.loads(artifact.read_text())["best_run_id"] == result.best_run_id


def test_cli_lists_and_reports_the_job(smoke_job: FinishedJob, services: Services):
    job_id = smoke_job.job.submission_id
    flags = ("--state-dir", str(services.state_dir))
    listed = hmoe_cli("jobs", "list", *flags)
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout and "SUCCEEDED" in listed.stdout
    status = hmoe_cli("jobs", "status", job_id, *flags)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    result = hmoe_cli("jobs", "result", job_id, *flags)
    assert result.returncode == 0, result.stderr
    assert smoke_job.job.result().parent_run_id in result.stdout
    followed = hmoe_cli("jobs", "logs", job_id, "--follow", *flags)  # ends with the job
    assert followed.returncode == 0 and RESULT_MARKER in followed.stdout
    cluster = hmoe_cli("cluster", "status", *flags)
    assert cluster.returncode == 0, cluster.stderr
    assert "CPU 4" in cluster.stdout and services.dashboard_url in cluster.stdout


def _set(data: dict, dotted: str, value: object) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    if value is DELETE:
        del data[leaf]
    else:
        data[leaf] = value


DELETE = object()
BAD_SPECS = {
    "unknown key": ("resources.wrkers", 2, r"JobSpec\.resources: unknown key\(s\) \['wrkers'\]"),
    "wrong type": ("resources.workers", "two", r"JobSpec\.resources\.workers: expected an int"),
    "negative workers": ("resources.workers", -1, r"resources\.workers must be in 1\.\.1024"),
    "too many GPUs": ("resources.gpus_per_worker", 64, r"gpus_per_worker must be in 0\.\.8"),
    "missing dataset": ("dataset", DELETE, r"JobSpec: missing required key 'dataset'"),
    "dataset not there": (
        "dataset.prepared",
        "/nonexistent/tiny",
        r"dataset\.prepared: .*no manifest",
    ),
    "unknown override": ("overrides.train.lrr", 0.1, r"JobSpec\.overrides: .*'lrr'"),
    "more CPUs than the head": ("resources.workers", 4, r"needs 5\.01 CPUs .* has 4"),
    "a GPU on a CPU head": ("resources.gpus_per_worker", 1, r"needs 1 GPUs .* has 0"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_malformed_spec_is_refused_and_nothing_submitted(
    services: Services, tiny_prepared: Path, tmp_path: Path, case: str
):
    import yaml

    import hmoe.jobs
    from hmoe.jobs.spec import example_path

    path, value, message = BAD_SPECS[case]
    data = yaml.safe_load(example_path("smoke").read_text())
    data["dataset"] = {"prepared": str(tiny_prepared)}
    data["tracking"]["uri"] = services.tracking_uri
    if path.startswith("overrides."):
        data["overrides"][path.removeprefix("overrides.")] = value
    else:
        _set(data, path, value)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(data))

    def submitted() -> list[str]:
        jobs = hmoe.jobs.list_jobs(services.dashboard_url, token_file=services.token_file)
        return [j.submission_id for j in jobs]

    before = submitted()
    with pytest.raises(ConfigError, match=message):
        hmoe.jobs.submit(spec_file, services.dashboard_url, token_file=services.token_file)
    assert submitted() == before


def test_stopped_job_leaves_no_running_mlflow_run(
    services: Services, tiny_prepared: Path, tmp_path: Path, smoke_job: FinishedJob
):
    import hmoe.jobs
    from hmoe.jobs.spec import example_path

    del smoke_job  # run after it: the head has CPUs for one job at a time
    experiment = f"stop-{uuid.uuid4().hex[:6]}"
    overrides = smoke_overrides(services, tiny_prepared, experiment, tmp_path) | {
        "search.num_samples": 4,
        "overrides": {"train.epochs": 3},
    }
    job = hmoe.jobs.submit(example_path("smoke"), services.dashboard_url, overrides=overrides,
                           token_file=services.token_file)  # fmt: skip
    client = _client(services.tracking_uri)
    deadline = time.monotonic() + STOP_WAIT_S
    running: list = []
    while not running and time.monotonic() < deadline and job.status() in ("PENDING", "RUNNING"):
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            found = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
            running = [r for r in found if "mlflow.parentRunId" in r.data.tags]
        time.sleep(STOP_POLL_S)
    assert running, f"no trial run started; job {job.status()}:\n{job.logs()[-3000:]}"

    assert job.stop()
    assert job.wait(timeout=JOB_TIMEOUT_S) == "STOPPED"
    runs = client.search_runs([exp.experiment_id])
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    assert {r.info.status for r in runs if "mlflow.parentRunId" not in r.data.tags} == {"KILLED"}
    with pytest.raises(hmoe.jobs.JobError, match="STOPPED"):
        job.result()
