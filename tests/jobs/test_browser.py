"""The MLflow UI of the test server, in headless Chromium: the smoke search's parent run in the
experiment's run list (its trials folded beneath it); the search's shared view (the link
``hmoe tune`` prints) with its trials, ``val_auc`` and the searched params as columns, nothing
added by hand; a trial's page; every trial by name in the compare view. Screenshots of the
view, the trial and the compare view are kept as test artifacts (``mlflow-*.png`` in
``$HMOE_TEST_ARTIFACTS``, default: this session's pytest temp folder; ``docs/images/`` holds
copies).

Needs Debian's ``chromium`` (``apt-get install -y chromium``); skipped when it is absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from tests.jobs.conftest import FinishedJob, Services

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
    "--virtual-time-budget=20000",  # let the single-page app fetch and render the runs
)
BROWSER_TIMEOUT_S = 120
BROWSER_ATTEMPTS = 3
ARTIFACTS_ENV = "HMOE_TEST_ARTIFACTS"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("headless Chromium not installed (apt-get install -y chromium)")
    return found


def _browse(url: str, profile: Path, action: str) -> str:
    """Run Chromium once with a fresh profile; ``action``: ``--dump-dom`` or ``--screenshot=P``."""
    out = subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", action, url],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT_S,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _page_text(url: str, profile: Path, expected: list[str]) -> str:
    """The page's text once it shows every ``expected`` string. Chromium's virtual-time budget
    can run out before the single-page app has fetched and rendered on a loaded machine, so a
    page missing some of them is loaded again (a fresh profile each time); the caller's asserts
    judge the last load."""
    text = ""
    for attempt in range(BROWSER_ATTEMPTS):
        text = _text(_browse(url, profile.with_name(f"{profile.name}-{attempt}"), "--dump-dom"))
        if all(item in text for item in expected):
            break
    return text


def _text(dom: str) -> str:
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


@pytest.fixture
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get(ARTIFACTS_ENV)
    folder = Path(root) if root else tmp_path_factory.getbasetemp() / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_mlflow_ui_shows_the_search_and_its_trials(
    smoke_job: FinishedJob, services: Services, tmp_path: Path, artifacts: Path
):
    from mlflow import MlflowClient

    assert smoke_job.status == "SUCCEEDED", smoke_job.job.logs()[-3000:]
    result = smoke_job.job.result()
    client = MlflowClient(services.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    exp_id = parent.info.experiment_id
    trials = client.search_runs(
        [exp_id], filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'"
    )
    assert len(trials) == result.num_trials

    runs_url = f"{services.tracking_uri}/#/experiments/{exp_id}/runs"
    counted = f"{1 + len(trials)} matching runs"
    listing = _page_text(runs_url, tmp_path / "p1", [parent.info.run_name, counted])
    assert parent.info.run_name in listing
    # the trials are nested: one visible row, every run counted
    assert counted in listing
    for trial in trials:
        assert trial.info.run_name not in listing

    # the search's shared view: trials expanded, headline metrics and searched params shown
    view_url = f"{runs_url}?viewStateShareKey={parent.info.run_name}"
    columns = ("val_auc", "test_auc", "train.lr", "model.combine.method")
    value = trials[0].data.metrics["val_auc"]  # its cell fills in after the rows
    wanted = [*(t.info.run_name for t in trials), *columns, f"{value:.4f}"[:5]]
    view = _page_text(view_url, tmp_path / "p4", wanted)
    for trial in trials:
        assert trial.info.run_name in view  # "lr=... method=... · debug · <trial id>"
        assert trial.info.run_name.split(" · ")[-1] == trial.data.tags["hmoe.trial_id"]
    for column in columns:
        assert column in view, column
    # a value, not just a header (the UI trims trailing zeros: 0.5 shows as "0.5")
    assert any(form in view for form in {f"{value:.4f}"[:5], f"{value:.3g}", f"{value:g}"}), value
    _browse(view_url, tmp_path / "p5", f"--screenshot={artifacts / 'mlflow-runs.png'}")

    trial_url = f"{services.tracking_uri}/#/experiments/{exp_id}/runs/{trials[0].info.run_id}"
    page = _page_text(trial_url, tmp_path / "p6", [trials[0].info.run_name, "val_auc"])
    assert trials[0].info.run_name in page and "val_auc" in page
    _browse(trial_url, tmp_path / "p7", f"--screenshot={artifacts / 'mlflow-trial.png'}")

    ids = [result.parent_run_id, *(t.info.run_id for t in trials)]
    query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([exp_id])})
    compare_url = f"{services.tracking_uri}/#/compare-runs?{query}"
    compared = _page_text(compare_url, tmp_path / "p2", [f"Comparing {len(ids)} Runs"])
    assert f"Comparing {len(ids)} Runs" in compared
    for run in [parent, *trials]:
        assert run.info.run_name in compared and run.info.run_id in compared

    shot = artifacts / "mlflow-compare.png"
    _browse(compare_url, tmp_path / "p3", f"--screenshot={shot}")
    assert shot.stat().st_size > 10_000, f"{shot} looks empty"
    print(f"screenshot: {shot}")
