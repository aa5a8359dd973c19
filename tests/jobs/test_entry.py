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

    from hmoe.platform import tune as tune_module

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
