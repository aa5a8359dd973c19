"""One Ray per independent process: ``hmoe data synth``, ``data prepare`` and ``train`` started
as fresh processes (scrubbed environment, no Ray or MLflow state inherited) start a Ray of
their own, and join another only when ``RAY_ADDRESS`` names it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from hmoe.jobs.services.processes import LOOPBACK, free_port, spawn, stop_session
from tests.platform.prepared import write_prepared
from tests.platform.test_store import scrubbed_env

CLI_TIMEOUT_S = 900
HEAD_START_TIMEOUT_S = 180
STAGGER_S = 1.5  # the second train starts while the first one's Ray is starting
STOP_GRACE_S = 10.0
CHEAP_TRAIN = ("--set", "train.epochs=1", "--set", "tracking.log_model=false")


def hmoe_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "hmoe.jobs.cli", *args]


def test_failed_synth_leaves_no_staging_folder(tmp_path, monkeypatch):
    from hmoe.platform.data import synth

    def broken(*args: object) -> None:
        raise RuntimeError("a block failed")

    monkeypatch.setattr(synth, "start_ray", lambda: None)
    monkeypatch.setattr(synth, "_run_blocks", broken)
    with pytest.raises(RuntimeError, match="a block failed"):
        synth.synthesize(tmp_path / "logs", rows=100, seed=0, config=synth.SynthConfig(items=50))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_dashboard_url_in_ray_address_is_refused_with_the_fix(monkeypatch):
    import ray

    from hmoe.platform.core.ray_start import start_ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    with pytest.raises(ValueError, match="set RAY_ADDRESS to its GCS address HOST:PORT"):
        start_ray()


def test_a_local_start_that_runs_out_of_time_is_retried(monkeypatch):
    """Ray's startup timeouts on a busy machine are retried; other errors are not."""
    import ray

    from hmoe.platform.core import ray_start

    calls = []

    def init(**kwargs: object) -> None:
        calls.append(kwargs["address"])
        if len(calls) == 1:
            raise Exception("The current node timed out during startup. This could happen ...")
        if len(calls) == 2:
            raise Exception("The last 20 lines of /tmp/x/logs/dashboard.log (it contains ...")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray, "init", init)
    assert ray_start.start_ray(2) is True
    assert calls == ["local"] * 3  # a private Ray, never the machine's latest cluster

    def broken(**kwargs: object) -> None:
        calls.append(kwargs["address"])
        raise ValueError("something else")

    calls.clear()
    monkeypatch.setattr(ray, "init", broken)
    with pytest.raises(ValueError, match="something else"):
        ray_start.start_ray(2)
    assert len(calls) == 1


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(2 * CLI_TIMEOUT_S)
def test_synth_and_prepare_start_their_own_ray_in_a_fresh_process(tmp_path, short_tmp):
    env = scrubbed_env(RAY_TMPDIR=str(short_tmp()))
    synth = subprocess.run(
        hmoe_argv("data", "synth", "--out", "logs/", "--rows", "1000"),
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
    )  # fmt: skip
    assert synth.returncode == 0, synth.stderr[-3000:]
    assert (tmp_path / "logs" / "spec.yaml").is_file()
    assert not (tmp_path / ".logs.partial").exists()
    prepare = subprocess.run(
        hmoe_argv("data", "prepare", "logs/spec.yaml", "--out", "prepared", "--quiet"),
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
    )  # fmt: skip
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    assert (tmp_path / "prepared" / "manifest.json").is_file()


def _sessions(ray_tmp: Path) -> set[str]:
    return {p.name for p in (ray_tmp / "ray").glob("session_2*")}


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(HEAD_START_TIMEOUT_S + CLI_TIMEOUT_S)
def test_trains_started_together_each_start_a_ray_of_their_own(tmp_path, short_tmp):
    """Two ``hmoe train`` started 1.5 s apart beside a ``ray start`` head that shares their
    Ray temp dir (so a plain ``ray.init()`` would join it) both finish, each on its own Ray."""
    ray_tmp = short_tmp()
    env = scrubbed_env(RAY_TMPDIR=str(ray_tmp))
    ray_exe = str(Path(sys.executable).parent / "ray")
    head_argv = [ray_exe, "start", "--head", "--block", f"--node-ip-address={LOOPBACK}",
                 f"--port={free_port()}", "--include-dashboard=false", "--num-cpus=1",
                 f"--ray-client-server-port={free_port()}", "--disable-usage-stats"]  # fmt: skip
    head = spawn(head_argv, env, tmp_path / "head.log")
    procs: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while not (ray_tmp / "ray" / "ray_current_cluster").exists():
            assert time.monotonic() < deadline and head.poll() is None, (
                tmp_path / "head.log"
            ).read_text()[-3000:]
            time.sleep(0.5)
        before = _sessions(ray_tmp)
        data = write_prepared(tmp_path / "tiny")
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            argv = hmoe_argv("train", "--preset", "debug", "--data", str(data), *CHEAP_TRAIN)
            pipe = subprocess.PIPE
            proc = subprocess.Popen(argv, cwd=tmp_path / name, env=env, text=True, stdout=pipe,
                                    stderr=pipe)  # fmt: skip
            procs.append(proc)
            time.sleep(STAGGER_S)
        outs = [p.communicate(timeout=CLI_TIMEOUT_S) for p in procs]
        for p, (out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, (out[-2000:], err[-3000:])
        assert len(_sessions(ray_tmp) - before) == 2  # neither joined the head nor each other
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()  # its private Ray shares its fate
                proc.wait()
        stop_session(head.pid, STOP_GRACE_S, leader=head)


# train -> tune -> analyze in one process: each call leaves no Ray behind, so the search sizes
# its own (a train's Ray of os.cpu_count() CPUs is one short of a search's 1.01 + 1 on 2 cores)
API_SEQUENCE = """
import sys
import ray
import hmoe
from hmoe.platform.analysis.api import analyze

sets = {"train.epochs": 1, "train.batch_size": 128, "tracking.model_format": "pickle"}
run = hmoe.train("debug", sys.argv[1], sets, register=False)
left = [ray.is_initialized()]
found = hmoe.tune("debug", "smoke", sys.argv[1], 1, sets)
left.append(ray.is_initialized())
report = analyze(run.run_id, "collapse", "plots")
print("LEFT", left, "TRIALS", found.num_trials, found.num_errors, "PLOTS", len(report.plots))
"""


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(CLI_TIMEOUT_S)
def test_train_tune_and_analyze_in_one_process_leave_no_ray_behind(tmp_path, short_tmp):
    data = write_prepared(tmp_path / "tiny")
    env = scrubbed_env(RAY_TMPDIR=str(short_tmp()))
    done = subprocess.run(
        [sys.executable, "-c", API_SEQUENCE, str(data)], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("LEFT")][-1]
    assert line.startswith("LEFT [False, False] TRIALS 1 0 PLOTS"), line
    assert not line.endswith("PLOTS 0")
