"""Session fixtures for the cluster tests: a Ray head and an MLflow server as real processes.

Both are started through the CLI (``hmoe cluster up``, ``hmoe ui``) on free loopback ports
with a private state dir and auth token, and stopped through it (``hmoe cluster down``,
``hmoe ui --stop``), which signals only their own sessions; teardown then checks that no
process of either session is left. The head is a second cluster beside the session's
``ray_cluster`` fixture: its own ``--temp-dir`` keeps ``ray.init()`` in this process from
finding it, and nothing here calls ``ray.init``. The smoke job runs once per session and is
shared by the submission and browser tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hmoe.jobs.services.processes import free_port, session_members

HEAD_CPUS = 4  # 2 concurrent smoke trials (1 worker + 0.01 Tune driver each) + 1 Ray Data
JOB_TIMEOUT_S = 480
CLI_TIMEOUT_S = 240


def hmoe_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the ``hmoe`` CLI in a subprocess (the same entry point users run)."""
    return subprocess.run(
        [sys.executable, "-m", "hmoe.jobs.cli", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env or dict(os.environ, RAY_USAGE_STATS_ENABLED="0"),
    )


@dataclass(frozen=True)
class Services:
    state_dir: Path
    token_file: Path
    dashboard_url: str
    head_pid: int
    tracking_uri: str
    server_pid: int


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Services:
    from hmoe.jobs.services.cluster import read_head
    from hmoe.jobs.services.mlflow_server import read_server

    root = tmp_path_factory.mktemp("cluster")
    state, token = root / "state", root / "token"
    up = hmoe_cli(
        "cluster", "up", "--port", "0", "--dashboard-port", "0", "--num-cpus", str(HEAD_CPUS),
        "--token-file", str(token), "--state-dir", str(state),
    )  # fmt: skip
    if up.returncode != 0:
        pytest.fail(f"hmoe cluster up failed:\n{up.stdout}\n{up.stderr}")
    head = read_head(state)
    ui = hmoe_cli("ui", "--port", str(free_port()), "--root", str(root / "mlflow"),
                  "--state-dir", str(state))  # fmt: skip
    if ui.returncode != 0:
        hmoe_cli("cluster", "down", "--state-dir", str(state))
        pytest.fail(f"hmoe ui failed:\n{ui.stdout}\n{ui.stderr}")
    server = read_server(state)
    yield Services(
        state_dir=state,
        token_file=token,
        dashboard_url=head.dashboard_url,
        head_pid=head.pid,
        tracking_uri=server.url,
        server_pid=server.pid,
    )
    down = hmoe_cli("cluster", "down", "--state-dir", str(state))
    stop = hmoe_cli("ui", "--stop", "--state-dir", str(state))
    assert down.returncode == 0 and stop.returncode == 0, (down.stderr, stop.stderr)
    assert session_members(head.pid) == [], "Ray head processes survived `hmoe cluster down`"
    assert session_members(server.pid) == [], "MLflow processes survived `hmoe ui --stop`"


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.platform.prepared import write_prepared

    return write_prepared(tmp_path_factory.mktemp("prepared") / "tiny")


SMOKE_SPACE = {
    "train.lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2},
    "model.combine.method": {"type": "categorical", "choices": ["mean", "gate"]},
}


def smoke_overrides(services: Services, prepared: Path, experiment: str, storage: Path) -> dict:
    """The shipped smoke job pointed at the test's data, server and storage."""
    return {
        "dataset": {"prepared": str(prepared)},
        "tracking.uri": services.tracking_uri,
        "tracking.experiment": experiment,
        "tracking.registered_model": f"{experiment}-best",
        "storage": str(storage),
        "resources.concurrent_trials": 2,  # both trials at once (see HEAD_CPUS)
        "search.space": SMOKE_SPACE,  # the shipped smoke space, written as a user's own
    }


@dataclass(frozen=True)
class FinishedJob:
    job: object  # hmoe.jobs.Job
    status: str
    experiment: str


@pytest.fixture(scope="session")
def smoke_job(
    services: Services, tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory
) -> FinishedJob:
    import hmoe.jobs
    from hmoe.jobs.spec import example_path

    experiment = f"smoke-{uuid.uuid4().hex[:6]}"
    storage = tmp_path_factory.mktemp("runs")
    job = hmoe.jobs.submit(
        example_path("smoke"),
        services.dashboard_url,
        overrides=smoke_overrides(services, tiny_prepared, experiment, storage),
        token_file=services.token_file,
    )
    status = job.wait(timeout=JOB_TIMEOUT_S)
    return FinishedJob(job=job, status=status, experiment=experiment)


@pytest.fixture
def short_tmp() -> Iterator[Callable[[], Path]]:
    """Makes Ray temp dirs short enough for Ray's unix socket paths (at most 107 characters);
    they are removed after the test."""
    made: list[Path] = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="hr", dir="/tmp")))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
