"""The shared MLflow store: MLflow's URI convention, creation under a lock, orphan runs.

Processes here are fresh interpreters (``subprocess``) with ``MLFLOW_TRACKING_URI`` and
``RAY_ADDRESS`` scrubbed from their environment; none of these tests starts Ray.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hmoe.jobs.cli import EXIT_USER_ERROR, main
from tests.conftest import REPO_ROOT
from tests.platform.prepared import write_prepared

CONCURRENT_CREATORS = 4
SUBPROCESS_TIMEOUT_S = 240
START_DELAY_S = 8.0  # every creator imports MLflow first, then all touch the store at once


def scrubbed_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])
    return env | extra


def run_python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=scrubbed_env(**env),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )


def test_tracking_uri_follows_mlflow_convention(tmp_path, monkeypatch):
    from hmoe.platform.analysis.api import _tracking_uri
    from hmoe.platform.api import tracking_option
    from hmoe.platform.tracking.runs import tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve()}/env.db"
    assert tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"  # the flag wins
    assert _tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/env.db"  # hmoe analyze
    # a --set tracking.uri is kept as given (it is the flag's dotted path)
    assert tracking_option(None, {"tracking.uri": "sqlite:///set.db"}) is None
    assert tracking_option(None, {}) == f"sqlite:///{tmp_path.resolve()}/env.db"


def test_a_calls_config_takes_its_shortcuts_and_is_resolved(tmp_path, monkeypatch):
    """``train`` and ``tune`` build their config alike: the shortcuts applied, the store chosen
    as ``tracking_option`` says, the store and the run storage absolute."""
    from hmoe.platform.api import resolved_experiment

    data = write_prepared(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    cfg = resolved_experiment("debug", data, None, workers=2, gpus_per_worker=None,
                              tracking_uri=None, experiment="exp",
                              registered_model="model")  # fmt: skip
    assert cfg.tracking.uri == f"sqlite:///{tmp_path.resolve()}/env.db"
    assert (cfg.train.num_workers, cfg.tracking.experiment) == (2, "exp")
    assert cfg.tracking.registered_model == "model"
    assert Path(cfg.train.storage_path).is_absolute()
    # a --set tracking.uri wins over MLFLOW_TRACKING_URI and is made absolute too
    kept = resolved_experiment("debug", data, {"tracking.uri": "sqlite:///set.db"}, workers=None,
                               gpus_per_worker=None, tracking_uri=None, experiment=None,
                               registered_model=None)  # fmt: skip
    assert kept.tracking.uri == f"sqlite:///{tmp_path.resolve()}/set.db"


def test_train_tracks_into_mlflow_tracking_uri(tmp_path, monkeypatch):
    """``hmoe.train`` without ``tracking_uri`` logs into ``MLFLOW_TRACKING_URI``'s store."""
    from mlflow import MlflowClient

    import hmoe.platform.api as api

    data = write_prepared(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    env_store = tmp_path / "elsewhere" / "env.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{env_store}")

    def no_ray(cpus: float) -> None:
        raise RuntimeError("stop before Ray")

    monkeypatch.setattr(api, "ensure_ray", no_ray)
    with pytest.raises(RuntimeError, match="stop before Ray"):
        api.train("debug", data)
    assert not (tmp_path / "mlflow.db").exists()
    client = MlflowClient(f"sqlite:///{env_store}")
    (run,) = client.search_runs([client.get_experiment_by_name("hmoe").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["hmoe.pid"] == str(os.getpid())
    assert run.data.tags["hmoe.host"] == socket.gethostname()


def test_concurrent_first_use_of_a_new_store_creates_it_once(tmp_path):
    """Processes touching a new sqlite store at the same moment all succeed (no half-made
    schema): without the lock MLflow's table creation and migrations race."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.time() + START_DELAY_S
    code = (
        "import time; from hmoe.platform.tracking.runs import MlflowRun;"
        f"time.sleep(max(0.0, {start} - time.time()));"
        f"run = MlflowRun.create({uri!r}, 'race', 'r', {{}}); run.finish();"
        "print('created', run.run_id)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=scrubbed_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(CONCURRENT_CREATORS)
    ]
    outs = [p.communicate(timeout=SUBPROCESS_TIMEOUT_S) for p in procs]
    failed = [err[-600:] for p, (_, err) in zip(procs, outs, strict=True) if p.returncode != 0]
    assert failed == []
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert len(runs) == CONCURRENT_CREATORS
    assert (tmp_path / "mlflow.db.lock").exists()


def _half_upgraded_store(path: Path) -> str:
    """A store whose recorded schema is one migration behind, with a migration's leftover."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{path}"
    MlflowClient(uri).search_experiments()  # a complete store
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '84291f40a231'")
        db.execute("CREATE TABLE _alembic_tmp_experiments (x INTEGER)")
    return uri


def test_half_upgraded_store_is_one_line_with_the_fix(tmp_path):
    uri = _half_upgraded_store(tmp_path / "old.db")
    data = write_prepared(tmp_path / "tiny")
    code = (
        "import sys; from hmoe.jobs.cli import main;"
        f"sys.exit(main(['train', '--preset', 'debug', '--data', {str(data)!r},"
        f"'--tracking-uri', {uri!r}]))"
    )
    out = run_python(code, tmp_path)
    assert out.returncode == EXIT_USER_ERROR, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("hmoe train: error:")]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"mlflow db upgrade {uri}" in lines[0]
    assert "DROP TABLE _alembic_tmp_experiments" in lines[0]
    assert "half-created or out of date" in lines[0]


def _orphan(tmp_path: Path, uri: str) -> tuple[str, int]:
    """A run created by a process that is then SIGKILLed: (run id, its pid)."""
    code = (
        "import os, signal; from hmoe.platform.tracking.runs import MlflowRun;"
        f"run = MlflowRun.create({uri!r}, 'orphans', 'killed', {{}});"
        "print(run.run_id, os.getpid(), flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    )
    out = run_python(code, tmp_path)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    run_id, pid = out.stdout.split()
    return run_id, int(pid)


def test_runs_of_a_killed_process_are_ended_by_gc_and_by_the_next_run(tmp_path, capsys):
    from mlflow import MlflowClient

    from hmoe.platform.tracking.runs import TAG_FAILURE, MlflowRun, end_orphans

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id, pid = _orphan(tmp_path, uri)
    alive = MlflowRun.create(uri, "orphans", "alive", {})  # owned by this (live) process
    assert client.get_run(run_id).info.status == "KILLED"  # the next run creation ended it
    reason = client.get_run(run_id).data.tags[TAG_FAILURE]
    assert reason == f"process {pid} on {socket.gethostname()} ended without finishing the run"

    second, pid2 = _orphan(tmp_path, uri)
    assert [o.run_id for o in end_orphans(uri, dry_run=True)] == [second]
    assert client.get_run(second).info.status == "RUNNING"  # a dry run changes nothing
    assert main(["runs", "gc", "--tracking-uri", uri, "--dry-run"]) == 0
    assert client.get_run(second).info.status == "RUNNING"
    assert main(["runs", "gc", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert f"marked KILLED: run {second}" in out and f"process {pid2} on" in out
    assert client.get_run(second).info.status == "KILLED"
    assert client.get_run(alive.run_id).info.status == "RUNNING"  # its process is alive
    assert main(["runs", "gc", "--tracking-uri", uri]) == 0
    assert "0 orphan run(s)" in capsys.readouterr().out


def test_a_reused_pid_does_not_keep_a_run_alive():
    from hmoe.platform.tracking.runs import TAG_PROCESS_START, owner_gone, owner_tags

    mine = owner_tags()
    assert not owner_gone(mine)
    if TAG_PROCESS_START in mine:  # Linux: the start time tells a reused pid apart
        assert owner_gone(mine | {TAG_PROCESS_START: "1"})
    assert not owner_gone(mine | {"hmoe.host": "another-host"})  # not ours to judge
    assert not owner_gone({})  # runs of other tools are left alone


@pytest.fixture
def logged_run(tmp_path, monkeypatch):
    """A tracked ``hmoe train`` run (config logged, no training): (uri, run)."""
    from hmoe.platform.api import record_run, resolve, run_tags
    from hmoe.platform.experiment import build_experiment, run_name
    from hmoe.platform.tracking.runs import MlflowRun

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = resolve(build_experiment("debug", write_prepared(tmp_path / "tiny"), tracking_uri=uri))
    run = MlflowRun.create(uri, "resume", run_name(cfg), run_tags(cfg))
    record_run(run, cfg, {})
    return uri, run


def test_resume_refuses_a_finished_run(logged_run, capsys):
    uri, run = logged_run
    run.finish("FINISHED")
    assert main(["train", "--resume", run.run_id, "--tracking-uri", uri]) == EXIT_USER_ERROR
    assert "is FINISHED: there is nothing to resume" in capsys.readouterr().err


def test_resume_refuses_a_run_without_checkpoint_and_other_config_flags(logged_run, capsys):
    uri, run = logged_run
    run.finish("KILLED")
    assert main(["train", "--resume", run.run_id, "--tracking-uri", uri]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "has no checkpoint in" in err and f"train-{run.run_id}" in err
    argv = ["train", "--resume", run.run_id, "--preset", "debug", "--set", "train.lr=0.1"]
    assert main(argv) == EXIT_USER_ERROR
    assert "drop --preset, --set" in capsys.readouterr().err
    assert main(["train", "--preset", "debug"]) == EXIT_USER_ERROR
    assert "--preset and --data are required" in capsys.readouterr().err
    assert main(["train", "--resume", "nosuchrun", "--tracking-uri", uri]) == EXIT_USER_ERROR
    assert "no MLflow run nosuchrun" in capsys.readouterr().err


def test_resume_refuses_a_run_whose_process_is_alive(logged_run, capsys):
    uri, run = logged_run  # RUNNING, owned by this process
    assert main(["train", "--resume", run.run_id, "--tracking-uri", uri]) == EXIT_USER_ERROR
    assert f"is still RUNNING in process {os.getpid()}" in capsys.readouterr().err


def test_resume_refuses_a_run_whose_dataset_changed(logged_run, capsys):
    uri, run = logged_run
    run.finish("KILLED")
    config = Path(run.client.download_artifacts(run.run_id, "config.json")).read_text()
    manifest = Path(json.loads(config)["data"]["path"]) / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"dataset_hash": "re-made"}))
    assert main(["train", "--resume", run.run_id, "--tracking-uri", uri]) == EXIT_USER_ERROR
    assert "changed since run" in capsys.readouterr().err


def test_runs_prune_deletes_only_the_storage_of_runs_that_are_over(tmp_path, capsys):
    from mlflow import MlflowClient

    from hmoe.jobs.commands import runs
    from hmoe.platform import experiment
    from hmoe.platform.tracking.runs import MlflowRun
    from hmoe.platform.training.run_storage import mark

    assert runs.DEFAULT_STORAGE == experiment.DEFAULT_STORAGE
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "hmoe_runs"
    folders = {}
    for status in ("FINISHED", "KILLED", "RUNNING", "DELETED"):
        run = MlflowRun.create(uri, "prune", status.lower(), {})
        # a train run at the top, a job's search one level down, as hmoe lays them out
        folder = storage / (f"train-{run.run_id}" if status != "KILLED" else "job1/search")
        mark(folder, run.run_id, uri)
        (folder / "checkpoint_000000").mkdir()
        (folder / "checkpoint_000000" / "state.pt").write_bytes(b"x" * 1000)
        if status == "DELETED":
            MlflowClient(uri).delete_run(run.run_id)
        elif status != "RUNNING":
            run.finish(status)
        folders[status] = folder
    foreign = storage / "not-hmoe"
    foreign.mkdir()

    argv = ["runs", "prune", "--storage", str(storage)]
    assert main([*argv, "--dry-run"]) == 0
    assert "would delete" in capsys.readouterr().out and all(f.exists() for f in folders.values())
    assert main([*argv, "--min-age-days", "1"]) == 0  # everything is younger
    assert all(f.exists() for f in folders.values())
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert [f.exists() for f in folders.values()] == [False, True, True, False], out
    assert "2 run folder(s)" in out and foreign.exists()
    assert main([*argv, "--include-unfinished"]) == 0
    assert not folders["KILLED"].exists() and folders["RUNNING"].exists() and foreign.exists()
