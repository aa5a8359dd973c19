"""Jobs on a real local head with a real MLflow server: the smoke search end to end, refused
specs, and a stopped job. The head and the server come from ``conftest.services``."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from hmoe.config import ConfigError
from hmoe.jobs.entry import RESULT_MARKER
from tests.jobs.conftest import JOB_TIMEOUT_S, SMOKE_SPACE, FinishedJob, Services, hmoe_cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STOP_POLL_S = 1.0
STOP_WAIT_S = 240
SIGINT_WAIT_S = 60.0  # for the follower to detach after its one Ctrl-C


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
    assert {c.data.tags[TAG_JOB_ID] for c in children} == {job.submission_id}
    assert parent.data.tags["hmoe.storage"].startswith(job.progress().storage)

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
    result = smoke_job.job.result()
    assert "trials: 2/2 finished" in status.stdout, status.stdout
    assert f"best val_auc so far: {result.best_metrics['val_auc']:.4f}" in status.stdout
    assert f"/runs/{result.parent_run_id}" in status.stdout
    printed = hmoe_cli("jobs", "result", job_id, *flags)
    assert printed.returncode == 0, printed.stderr
    assert result.parent_run_id in printed.stdout
    as_json = {
        action: json.loads(hmoe_cli("jobs", action, *ids, "--json", *flags).stdout)
        for action, ids in (("list", ()), ("status", (job_id,)), ("result", (job_id,)))
    }
    listed_job = next(j for j in as_json["list"] if j["job_id"] == job_id)
    assert set(listed_job) == {"job_id", "status", "kind", "name", "start_time", "end_time",
                               "message"}  # fmt: skip
    assert (listed_job["status"], listed_job["kind"]) == ("SUCCEEDED", "tune")
    assert as_json["status"]["best_val_auc"] == result.best_metrics["val_auc"]
    assert as_json["status"]["mlflow_url"].startswith(services.tracking_uri)
    assert as_json["result"] == result.to_dict()
    unknown = hmoe_cli("jobs", "result", "no-such-job", *flags)
    assert unknown.returncode == 2, unknown.stderr
    assert unknown.stderr.strip() == "hmoe jobs: error: no job 'no-such-job' on this cluster"
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


def _spec_file(services: Services, prepared: Path, experiment: str, storage: Path,
               path: Path) -> Path:  # fmt: skip
    """The smoke job as a YAML file pointed at the test's data, server and storage."""
    import yaml

    from hmoe.jobs.spec import example_path

    data = yaml.safe_load(example_path("smoke").read_text())
    data["dataset"] = {"prepared": str(prepared)}
    data["tracking"] |= {"uri": services.tracking_uri, "experiment": experiment}
    data["storage"] = str(storage)
    path.write_text(yaml.safe_dump(data))
    return path


def _trials(client, experiment: str) -> tuple[list, list]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return [r for r in runs if r not in trials], trials


def _ctrl_c_as_in_a_terminal() -> None:
    """Run in the follower before it starts: SIGINT's default action. A test run started in the
    background (``&`` without job control, ``nohup``) ignores SIGINT, and its children inherit
    that, so the follower would ignore the Ctrl-C as any such background command does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_followed_job_survives_ctrl_c_is_stopped_then_resumed(
    services: Services, tiny_prepared: Path, tmp_path: Path, smoke_job: FinishedJob
):
    """``hmoe submit`` follows by default; Ctrl-C detaches (130) and the job runs on; a stop
    ends its runs KILLED with the job's id and reason; ``hmoe jobs resume`` reruns only the
    unfinished trial into the same parent run; then delete, and ids the cluster lacks."""
    import hmoe.jobs
    from hmoe.jobs.entry import TAG_JOB_ID, TAG_RESUME_JOB_ID

    del smoke_job  # run after it: the head has CPUs for one job at a time
    experiment = f"stop-{uuid.uuid4().hex[:6]}"
    spec = _spec_file(services, tiny_prepared, experiment, tmp_path / "runs", tmp_path / "j.yaml")
    flags = ["--state-dir", str(services.state_dir)]
    # one trial at a time, six epochs each (an overrides.<config path> set at submission): the
    # second trial must still be running when Ctrl-C and the stop arrive after the first has
    # finished; with two epochs an idle machine finished it first
    argv = [sys.executable, "-m", "hmoe.jobs.cli", "submit", str(spec), *flags,
            "--set", "overrides.train.epochs=6"]  # fmt: skip
    log = tmp_path / "submit.log"
    with log.open("w") as out:
        follow = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, text=True,
            preexec_fn=_ctrl_c_as_in_a_terminal,
        )  # fmt: skip
    client = _client(services.tracking_uri)
    deadline = time.monotonic() + STOP_WAIT_S * 2
    trials: list = []
    while time.monotonic() < deadline and follow.poll() is None:
        _, trials = _trials(client, experiment)
        if sorted(t.info.status for t in trials) == ["FINISHED", "RUNNING"]:
            break
        time.sleep(STOP_POLL_S)
    assert len(trials) == 2 and follow.poll() is None, log.read_text()[-4000:]
    job_id = re.search(r"submitted (\S+) to ", log.read_text()).group(1)
    job = hmoe.jobs.get_job(job_id, services.dashboard_url, token_file=services.token_file)
    assert job.submission_id in {t.data.tags[TAG_JOB_ID] for t in trials}

    follow.send_signal(signal.SIGINT)  # one Ctrl-C
    assert follow.wait(timeout=SIGINT_WAIT_S) == 130, log.read_text()[-4000:]
    text = log.read_text()
    assert "keeps running" in text and f"hmoe jobs stop {job_id}" in text, text[-2000:]
    assert "aclose" not in text and "Traceback" not in text, text[-4000:]
    assert job.status() == "RUNNING"
    refused = hmoe_cli("jobs", "delete", job_id, *flags)
    assert refused.returncode == 2 and "stop it first" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    stop = hmoe_cli("jobs", "stop", job_id, *flags)
    assert stop.returncode == 0 and f"{job_id}: STOPPED" in stop.stdout, stop.stderr
    (parent,), trials = _trials(client, experiment)
    assert parent.info.status == "KILLED" and parent.data.tags[TAG_JOB_ID] == job_id
    assert job_id in parent.data.tags["hmoe.failure_reason"]
    finished = [t for t in trials if t.info.status == "FINISHED"]
    killed = [t for t in trials if t.info.status == "KILLED"]
    assert len(finished) == 1 and len(killed) == 1, [t.info.status for t in trials]
    assert job_id in killed[0].data.tags["hmoe.failure_reason"]
    assert {t.data.tags[TAG_JOB_ID] for t in trials} == {job_id}
    status = hmoe_cli("jobs", "status", job_id, "--json", *flags)
    assert status.returncode == 0, status.stderr
    progress = json.loads(status.stdout)
    assert (progress["status"], progress["trials_finished"], progress["trials_total"]) == (
        "STOPPED", 1, 2,
    )  # fmt: skip

    resumed = hmoe_cli("jobs", "resume", job_id, "--no-wait", *flags)
    assert resumed.returncode == 0, (resumed.stdout[-3000:], resumed.stderr[-3000:])
    new_id = re.search(r"submitted (\S+) to ", resumed.stdout).group(1)
    new = hmoe.jobs.get_job(new_id, services.dashboard_url, token_file=services.token_file)
    assert new.wait(timeout=JOB_TIMEOUT_S) == "SUCCEEDED", new.logs()[-4000:]
    (after,), trials = _trials(client, experiment)
    assert after.info.run_id == parent.info.run_id and after.info.status == "FINISHED"
    assert "hmoe.failure_reason" not in after.data.tags
    assert after.data.tags[TAG_RESUME_JOB_ID] == new_id
    assert len(trials) == 2 and {t.info.status for t in trials} == {"FINISHED"}
    again = next(t for t in trials if t.info.run_id == finished[0].info.run_id)
    assert again.info.end_time == finished[0].info.end_time  # the finished trial did not rerun
    progress = json.loads(hmoe_cli("jobs", "status", new_id, "--json", *flags).stdout)
    assert (progress["trials_finished"], progress["trials_total"]) == (2, 2)
    assert progress["resumes"] == job_id and progress["parent_run_id"] == parent.info.run_id
    assert progress["best_val_auc"] == max(t.data.metrics["val_auc"] for t in trials)

    deleted = hmoe_cli("jobs", "delete", job_id, *flags)
    assert deleted.returncode == 0, deleted.stderr
    gone = hmoe_cli("jobs", "status", job_id, *flags)
    assert gone.returncode == 2 and gone.stderr.strip() == (
        f"hmoe jobs: error: no job {job_id!r} on this cluster"
    )
