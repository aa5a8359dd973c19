"""Load: 8 ``hmoe train`` on one new store and 2 ``hmoe tune`` on another, all at once on one
Ray cluster (``hmoe cluster up``, joined through ``RAY_ADDRESS``): every process exits 0, every
run and trial is FINISHED, nothing is left RUNNING, nothing is lost. The wall time is printed
(``pytest -s``)."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.jobs.test_own_ray import hmoe_argv
from tests.platform.prepared import write_prepared
from tests.platform.test_store import scrubbed_env

TRAINS = 8
SEARCHES = 2
TRIALS = 2
HEAD_CPUS = 12  # 8 trains x 1 worker + 2 searches x (1 worker + 0.01 Tune driver) + ingest
TIMEOUT_S = 1800


def _finish_all(procs: list[subprocess.Popen], logs: list) -> None:
    """Wait for every process; kill those still running when the wait or a check fails."""
    try:
        for proc, log in zip(procs, logs, strict=True):
            proc.wait(timeout=TIMEOUT_S)
            assert proc.returncode == 0, log.read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()  # its private Ray shares its fate
                proc.wait()


def _spawn(argv: list[str], cwd, env: dict[str, str], log) -> subprocess.Popen:
    cwd.mkdir(exist_ok=True)
    with log.open("w") as out:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.load
@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(TIMEOUT_S)
def test_eight_trains_on_a_new_store_and_two_searches_on_one_cluster(tmp_path, short_tmp):
    """All ten at once on one ``hmoe cluster up`` head (one private Ray per process is
    ``test_own_ray``'s; here the shared store and the shared cluster are under load)."""
    from mlflow import MlflowClient

    from hmoe.jobs.services.cluster import read_head

    state, token = tmp_path / "state", tmp_path / "token"
    up = subprocess.run(
        hmoe_argv("cluster", "up", "--port", "0", "--dashboard-port", "0",
                  "--num-cpus", str(HEAD_CPUS), "--token-file", str(token),
                  "--state-dir", str(state)),
        env=scrubbed_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr[-3000:]
    train_uri = f"sqlite:///{tmp_path / 'trains.db'}"
    search_uri = f"sqlite:///{tmp_path / 'searches.db'}"
    try:
        head = read_head(state)
        data = write_prepared(tmp_path / "tiny")
        env = scrubbed_env(
            RAY_TMPDIR=str(short_tmp()),  # nothing to find there: only RAY_ADDRESS joins
            RAY_ADDRESS=head.gcs_address,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=head.token_file,
        )
        train = hmoe_argv("train", "--preset", "debug", "--data", str(data),
                          "--tracking-uri", train_uri, "--set", "train.epochs=1")  # fmt: skip
        procs, logs = [], []
        started = time.monotonic()
        for i in range(TRAINS):
            logs.append(tmp_path / f"train{i}.log")
            procs.append(_spawn(train, tmp_path / f"t{i}", env, logs[-1]))
        for i in range(SEARCHES):
            search = hmoe_argv(
                "tune", "--preset", "debug", "--space", "smoke", "--data", str(data),
                "--num-samples", str(TRIALS), "--tracking-uri", search_uri,
                "--set", "train.epochs=1", "--set", f"train.seed={i}",  # two distinct searches
            )  # fmt: skip
            logs.append(tmp_path / f"search{i}.log")
            procs.append(_spawn(search, tmp_path / f"s{i}", env, logs[-1]))
        _finish_all(procs, logs)
        print(f"\n{TRAINS} trains + {SEARCHES} searches: {time.monotonic() - started:.0f} s wall")
    finally:
        down = subprocess.run(
            hmoe_argv("cluster", "down", "--state-dir", str(state)),
            env=scrubbed_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
        )  # fmt: skip
        assert down.returncode == 0, down.stderr[-3000:]

    client = MlflowClient(train_uri)
    runs = client.search_runs([client.get_experiment_by_name("hmoe").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * TRAINS
    versions = client.search_model_versions("name = 'hmoe-best'")
    assert sorted(int(v.version) for v in versions) == list(range(1, TRAINS + 1))

    client = MlflowClient(search_uri)
    runs = client.search_runs([client.get_experiment_by_name("hmoe").experiment_id])
    parents = [r for r in runs if r.data.tags.get("hmoe.role") == "search"]
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == SEARCHES and len(trials) == SEARCHES * TRIALS
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * len(runs)
