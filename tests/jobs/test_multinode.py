"""Two Ray nodes, object storage and a shared MLflow server, end to end, as a real cluster runs.

The head comes from ``hmoe cluster up``, a second node joins it with ``hmoe cluster up --join``
(its own temp dir and ports, 1 CPU and the custom resource ``worker_node``), the MLflow server
stores its proxied artifacts in S3 (moto), and the data, the checkpoints and Tune's state live
in S3 too. One search of one trial runs its Train worker on the second node
(``train.node_resource``); once a checkpoint is in S3 the second node is killed (its whole
process session, SIGKILL), and the trial must finish on the head from that checkpoint
(``train.max_failures``) and log its model through the server. Everything is checked in this
one search: it is the slow part of the suite's cluster tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from hmoe.jobs.services.processes import free_port, session_members
from tests.jobs.conftest import CLI_TIMEOUT_S, hmoe_cli

# ~4 min on an idle 2-core box, over 10 min when the box is loaded: three services, synth and
# prepare on the cluster, 3 epochs twice placed, model logging
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1500)]

NODE_RESOURCE = "worker_node"
HEAD_CPUS = 2  # the trial's Train worker after the loss (1) + Ray Data ingest (1)
NODE_CPUS = 1  # the Train worker (cpus_per_worker 1)
EPOCHS = 3
NODE_WAIT_S = 60.0
MAX_FAILURES = 3  # the lost node, and a worker-group start that still waited for it
SEARCH_TIMEOUT_S = 900
POLL_S = 0.5
TRAIN_WORKER = "RayTrainWorker"
REGISTERED = "/checkpoint_manager_snapshot.json"  # Ray Train V2's record of its checkpoints


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = hmoe_cli(*argv, env=env)
    assert done.returncode == 0, f"hmoe {' '.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done


def _train_workers(dashboard: str) -> list:
    from ray.util.state import list_actors

    return list_actors(address=dashboard, filters=[("class_name", "=", TRAIN_WORKER)])


def _forget_ray_token() -> None:
    """Ray keeps the first auth token a process loads; this test's head has a token of its
    own, so the cache goes before the State API calls and again after them (private API)."""
    from ray._raylet import AuthenticationTokenLoader

    AuthenticationTokenLoader.instance().reset_cache()


def _node_ids(dashboard: str) -> dict[str, str]:
    """``{"head" | "worker": node_id}`` of the alive nodes."""
    from ray.util.state import list_nodes

    out = {}
    for node in list_nodes(address=dashboard, detail=True):
        if node.state == "ALIVE":
            out["worker" if NODE_RESOURCE in node.resources_total else "head"] = node.node_id
    return out


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-6000:]


def _kill_session(pid: int) -> None:
    for member in session_members(pid):
        os.kill(member, signal.SIGKILL)


def test_a_search_on_two_nodes_reads_and_checkpoints_to_s3_and_survives_losing_a_node(
    s3_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from mlflow.tracking import MlflowClient

    from hmoe.jobs.services.cluster import read_head, read_node
    from hmoe.jobs.services.mlflow_server import read_server
    from hmoe.platform.tracking.runs import TAG_TRIAL_ID

    bucket = s3_server.bucket(f"hmoe-cluster-{uuid.uuid4().hex[:6]}")
    name = bucket.removeprefix("s3://")
    state, token, mlflow_root = tmp_path / "state", tmp_path / "token", tmp_path / "mlflow"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")  # the AWS variables of s3_server
    # -- the cluster, as docs/cluster.md starts it (the MLflow server starts meanwhile)
    artifacts = f"{bucket}/mlflow"
    ui = subprocess.Popen(
        [sys.executable, "-m", "hmoe.jobs.cli", "ui", "--port", str(free_port()), "--root",
         str(mlflow_root), "--artifacts-destination", artifacts, "--state-dir", str(state)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    head = node = search = None
    try:
        _run(["cluster", "up", "--port", "0", "--dashboard-port", "0", "--num-cpus", str(HEAD_CPUS),
              "--token-file", str(token), "--state-dir", str(state)], env)  # fmt: skip
        head = read_head(state)
        joined = _run(["cluster", "up", "--join", head.gcs_address, "--num-cpus", str(NODE_CPUS),
                       "--resources", json.dumps({NODE_RESOURCE: 1}), "--token-file", str(token),
                       "--state-dir", str(state)], env)  # fmt: skip
        assert f"joined to {head.gcs_address}" in joined.stdout
        node = read_node(state)
        assert node.temp_dir != head.temp_dir
        started = ui.communicate(timeout=CLI_TIMEOUT_S)[0]
        assert ui.returncode == 0, started
        server = read_server(state)
        assert server.artifacts == artifacts
        for key, value in head.client_env().items():
            monkeypatch.setenv(key, value)  # the State API calls below send the token
        _forget_ray_token()  # an earlier test's cluster may have left its token in the cache
        nodes = _node_ids(head.dashboard_url)
        deadline = time.monotonic() + NODE_WAIT_S
        while set(nodes) != {"head", "worker"} and time.monotonic() < deadline:
            time.sleep(1.0)  # the joined node reaches the State API a moment after `up` returns
            nodes = _node_ids(head.dashboard_url)
        assert set(nodes) == {"head", "worker"}
        client = env | head.client_env() | {"RAY_ADDRESS": head.gcs_address}
        # -- raw logs in S3 -> prepared shards + manifest in S3, on the cluster
        raw, data = f"{bucket}/raw/synth", f"{bucket}/prepared/synth"
        _run(["data", "synth", "--out", raw, "--rows", "3000", "--tasks", "click"], client)
        assert "raw/synth/spec.yaml" in s3_server.keys(name, "raw/synth/")
        _run(["data", "prepare", f"{raw}/spec.yaml", "--out", data, "--quiet"], client)
        prepared = s3_server.keys(name, "prepared/synth/")
        assert "prepared/synth/manifest.json" in prepared and len(prepared) > 3
        # -- the search: its Train worker asks for the second node's resource
        runs = f"{bucket}/runs"
        experiment = f"multinode-{uuid.uuid4().hex[:6]}"
        # to a file: a pipe nobody reads fills up with Ray's log lines and blocks the search
        log = (tmp_path / "search.log").open("w")
        search = subprocess.Popen(
            [sys.executable, "-m", "hmoe.jobs.cli", "tune", "--preset", "debug", "--space",
             "smoke", "--data", data, "--num-samples", "1", "--scheduler", "fifo",
             "--tracking-uri", server.url, "--experiment", experiment,
             "--set", f"train.storage_path={runs}", "--set", f"train.node_resource={NODE_RESOURCE}",
             "--set", f"train.epochs={EPOCHS}", "--set", "train.early_stopping_patience=0",
             "--set", f"train.max_failures={MAX_FAILURES}", "--set", "train.batch_size=256"],
            env=client, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + SEARCH_TIMEOUT_S
        on_worker = False
        while time.monotonic() < deadline and search.poll() is None:
            alive = [a for a in _train_workers(head.dashboard_url) if a.state == "ALIVE"]
            on_worker |= any(a.node_id == nodes["worker"] for a in alive)
            # written once the controller has registered a checkpoint (its files alone may
            # still be uploading: a kill then restarts the run from scratch)
            checkpoints = [k for k in s3_server.keys(name, "runs/") if k.endswith(REGISTERED)]
            if on_worker and checkpoints:
                break
            time.sleep(POLL_S)
        ended = "" if search.poll() is None else _tail(tmp_path / "search.log")
        assert on_worker, f"the Train worker never ran on the second node\n{ended}"
        assert checkpoints, f"no checkpoint reached S3 before the search ended\n{ended}"
        assert not ended, f"the trial finished before the node could be lost\n{ended}"
        # -- lose the second node mid-trial
        _kill_session(node.pid)
        on_head = False
        while search.poll() is None and time.monotonic() < deadline:
            alive = [a for a in _train_workers(head.dashboard_url) if a.state == "ALIVE"]
            on_head |= any(a.node_id == nodes["head"] for a in alive)
            time.sleep(POLL_S)
        if search.poll() is None:
            search.kill()
        search.wait()
        output = (tmp_path / "search.log").read_text(errors="replace")
        assert search.returncode == 0, _tail(tmp_path / "search.log")
        assert on_head, "no Train worker restarted on the head"
        assert "1 trials, 0 failed" in output
        # -- the trial resumed from its checkpoint in S3 and logged its model through MLflow
        tracking = MlflowClient(server.url)
        exp = tracking.get_experiment_by_name(experiment)
        runs_found = tracking.search_runs([exp.experiment_id])
        trials = [r for r in runs_found if TAG_TRIAL_ID in r.data.tags]
        assert len(trials) == 1, [r.info.run_name for r in runs_found]
        trial = trials[0]
        assert trial.info.status == "FINISHED"
        assert trial.data.metrics["resumed_from_epoch"] >= 1
        steps = [m.step for m in tracking.get_metric_history(trial.info.run_id, "val_auc")]
        assert set(steps) == set(range(1, EPOCHS + 1))  # each epoch once (1-based), resumed or not
        assert exp.artifact_location.startswith("mlflow-artifacts:")
        stored = s3_server.keys(name, "mlflow/")
        assert any(k.endswith("/MLmodel") for k in stored), stored[:20]
        assert not (mlflow_root / "artifacts").exists()  # the server kept no local copy
        checkpoints = [k for k in s3_server.keys(name, "runs/") if "/checkpoint_" in k]
        assert any("tuner.pkl" in k for k in s3_server.keys(name, "runs/"))
        assert checkpoints
    finally:
        for process in (search, ui):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()
        if search is not None:
            log.close()
        down = hmoe_cli("cluster", "down", "--state-dir", str(state), env=env)
        stop = hmoe_cli("ui", "--stop", "--state-dir", str(state), env=env)
        monkeypatch.undo()
        _forget_ray_token()  # later tests load their own clusters' tokens
    assert down.returncode == 0 and stop.returncode == 0, (down.stderr, stop.stderr)
    assert head is None or session_members(head.pid) == []
    assert node is None or session_members(node.pid) == []
