"""The job entry point learns the MLflow run it ends on failure from the API, not its output."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import hmoe
from hmoe.jobs import entry
from hmoe.jobs.spec import example_path, load_job

RUN_ID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("search", [True, False])
def test_a_failed_job_ends_the_run_the_api_named(tmp_path: Path, monkeypatch, search: bool):
    import ray

    from hmoe.platform.search import tune as tune_module

    data = yaml.safe_load(example_path("smoke").read_text())
    (tmp_path / "manifest.json").write_text("{}")
    data["dataset"] = {"prepared": str(tmp_path)}
    if not search:
        del data["search"]
    spec = load_job(data)

    def failing_call(*args, run_started, progress, **kwargs):
        progress("a line that names no run")  # the run id only ever comes through run_started
        run_started(RUN_ID)
        raise RuntimeError("the fit failed")

    ended = []
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: None)
    # run_job installs SIGTERM handlers: keep this process's own
    monkeypatch.setattr(entry.signal, "signal", lambda *args: None)
    monkeypatch.setattr(hmoe, "train", failing_call, raising=False)
    monkeypatch.setattr(hmoe, "tune", failing_call, raising=False)
    monkeypatch.setattr(
        tune_module, "end_search_runs", lambda uri, run_id, *rest: ended.append(run_id) or []
    )
    assert entry.run_job(spec, "job-1") == 1
    assert ended == [RUN_ID]


def test_a_run_and_a_search_give_the_same_result_fields():
    import dataclasses

    from hmoe.jobs.api import JobResult
    from hmoe.platform.api import TrainResult
    from hmoe.platform.search.tune import TuneResult

    def filled(cls, **given):
        return cls(**({f.name: None for f in dataclasses.fields(cls)} | given))

    run = filled(TrainResult, run_id=RUN_ID, metrics={"val_auc": 0.7}, model_version="3")
    search = filled(TuneResult, parent_run_id=RUN_ID, best_run_id="b", num_trials=4)
    job = {"job_id": "j", "name": "n", "kind": "train", "status": "SUCCEEDED",
           "tracking_uri": "u", "experiment": "e", "dataset": "d"}  # fmt: skip
    from_run = entry._run_fields(run)
    assert sorted(from_run) == sorted(entry.RUN_FIELDS) == sorted(entry._run_fields(search))
    result = JobResult.from_dict(job | from_run)
    assert result.parent_run_id == result.best_run_id == RUN_ID and result.num_trials == 1
    assert result.best_metrics == {"val_auc": 0.7} and result.model_version == "3"
    assert JobResult.from_dict(job | entry._run_fields(search)).best_run_id == "b"


def test_job_status_reads_what_ray_knows_once_for_list_and_progress():
    from types import SimpleNamespace

    from hmoe.jobs.api import META_KIND, META_NAME, job_status

    status = SimpleNamespace(value="RUNNING")
    info = SimpleNamespace(
        submission_id="raysubmit_1", job_id=None, status=status, message=" started \n",
        metadata={META_NAME: "smoke", META_KIND: "search"}, start_time=1500, end_time=None,
    )  # fmt: skip
    assert job_status(info) == {
        "job_id": "raysubmit_1", "name": "smoke", "kind": "search", "status": "RUNNING",
        "message": "started", "start_time": 1.5, "end_time": None,
    }  # fmt: skip
    assert job_status(info, "other")["job_id"] == "other"
