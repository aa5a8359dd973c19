"""The Python job API: submit a job spec to a Ray cluster's Jobs API and follow it.

    job = hmoe.jobs.submit("ml100k_full.yaml", address="http://127.0.0.1:8265")
    job.wait(timeout=3600)
    print(job.result().best_metrics)
    hmoe.jobs.resume(job.submission_id)  # a stopped or failed search, from its Tune state

``submit`` validates the spec completely (schema, preset, space, override paths, dataset,
and the cluster's CPUs/GPUs) before anything is sent, so a refused spec leaves no job behind.
The job runs ``python -m hmoe.jobs.entry`` on the cluster; the code reaches the cluster as the
installed package or, with ``runtime.ship_package``, as Ray ``py_modules`` (never the
repository root as ``working_dir``). Token authentication: the client sends
``Authorization: Bearer <token>`` read from ``token_file``, ``$RAY_AUTH_TOKEN``,
``$RAY_AUTH_TOKEN_PATH``, the local head's record (``hmoe cluster up``) or
``~/.ray/auth_token``, in that order. The ``hmoe submit`` / ``hmoe jobs`` commands are a thin
layer over this module.

Every Jobs API failure is a ``JobError``: ``JobNotFoundError`` for an id the cluster does not
know, ``JobStateError`` for an action the job's state does not allow (deleting a running job,
resuming a finished one); both are the user's to fix. A search's Ray Tune state lives in
``<storage>/<job id>`` (recorded as the job's ``hmoe.storage`` metadata and the parent run's
``hmoe.storage`` tag); ``resume`` submits a new job that restores it into the same MLflow
parent run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shlex
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hmoe.config import ConfigError
from hmoe.jobs.entry import TAG_JOB_ID, decode_spec, encode_spec, parse_result
from hmoe.jobs.services.cluster import default_state_dir, default_token_file, read_head
from hmoe.jobs.spec import JobSpec, load_job, validate
from hmoe.platform.tracking.runs import TAG_PARENT

__all__ = [
    "Job",
    "JobClient",
    "JobError",
    "JobNotFoundError",
    "JobProgress",
    "JobResult",
    "JobSpec",
    "JobStateError",
    "get_job",
    "job_status",
    "list_jobs",
    "load_job",
    "resume",
    "submit",
]

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
POLL_S = 1.0
ENTRY_MODULE = "hmoe.jobs.entry"
STOP_WAIT_ENV = "RAY_JOB_STOP_WAIT_TIME_S"  # read by Ray's job supervisor
DATA_ROOT_ENV = "HMOE_DATA_ROOT"
PACKAGE_EXCLUDES = ("__pycache__", "*.pyc")
MAX_NODES = 10_000
HTTP_TIMEOUT_S = 30.0
CAPACITY_SLACK = 1e-9  # float sums of fractional CPUs
NOT_FOUND = "status code 404"  # how Ray's SDK words an unknown job id in its RuntimeError
SPEC_FLAG = "--spec"
RESUME_FLAG = "--resume"
META_NAME = "hmoe.name"
META_KIND = "hmoe.kind"
META_TRACKING_URI = "hmoe.tracking_uri"
META_EXPERIMENT = "hmoe.experiment"
META_STORAGE = "hmoe.storage"
META_NUM_SAMPLES = "hmoe.num_samples"
META_RESUMES = "hmoe.resumes"  # the job whose search a resumed job continues
METRIC_BEST = "val_auc"  # the headline metric ``jobs status`` reports
TRIAL_ENDED = ("FINISHED", "FAILED")  # MLflow statuses of a trial that will not run again
# how long a detaching follower waits for the log stream's read to end once cancelled
DETACH_WAIT_S = 5.0


class JobError(RuntimeError):
    """A Jobs API call failed or a job did not succeed; the message says which job and why."""


class JobNotFoundError(JobError):
    """The cluster knows no job of that id (a user mistake: exit code 2 in the CLI)."""


class JobStateError(JobError):
    """The job's state does not allow the action (e.g. deleting a running job; exit code 2)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobProgress:
    """Where a job stands: Ray's status plus its search's progress read from MLflow.

    ``trials_finished``: trial runs that ended (FINISHED or FAILED) of ``trials_total``;
    ``best_val_auc``: the best ``val_auc`` of its trial runs so far; ``mlflow_url``: the parent
    run in the MLflow UI (the tracking URI for a file store); ``mlflow_error``: why MLflow could
    not be read (the other MLflow fields are then ``None``).
    """

    job_id: str
    name: str | None
    kind: str | None
    status: str
    message: str
    start_time: float | None
    end_time: float | None
    storage: str | None
    resumes: str | None
    trials_finished: int | None
    trials_total: int | None
    best_val_auc: float | None
    parent_run_id: str | None
    tracking_uri: str | None
    mlflow_url: str | None
    mlflow_error: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobResult:
    """What a finished job produced (written by ``hmoe.jobs.entry``).

    ``parent_run_id``: the MLflow search run (the training run for a single run), whose
    children are the trials; ``best_*``: the best trial's run, Tune trial id, sampled
    parameters and metrics; ``model_version``: the registered model version of the best trial.
    """

    job_id: str
    name: str
    kind: str
    status: str
    tracking_uri: str
    experiment: str
    dataset: str
    parent_run_id: str
    best_run_id: str | None
    best_trial_id: str | None
    best_params: dict[str, Any]
    best_metrics: dict[str, float]
    num_trials: int
    num_errors: int
    model_uri: str | None
    registered_model: str | None
    model_version: str | None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobResult:
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise JobError(f"the job's result lacks {missing}")
        return cls(**{n: data[n] for n in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _token(token_file: str | Path | None, state_dir: Path) -> str | None:
    if token_file is not None:
        return Path(token_file).expanduser().read_text().strip()
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    candidates = [os.environ.get("RAY_AUTH_TOKEN_PATH")]
    head = read_head(state_dir)
    candidates += [head.token_file if head else None, str(default_token_file())]
    for path in candidates:
        if path and Path(path).expanduser().is_file():
            return Path(path).expanduser().read_text().strip()
    return None


def _address(address: str | None, state_dir: Path) -> str:
    if address:
        return address
    env = os.environ.get("RAY_ADDRESS", "")
    if env.startswith(("http://", "https://")):
        return env
    head = read_head(state_dir)
    if head is None:
        raise ConfigError(
            "no cluster address: pass --address http://HOST:8265 (the dashboard), set "
            "RAY_ADDRESS, or start a local head with `hmoe cluster up`"
        )
    return head.dashboard_url


class JobClient:
    """A Jobs API connection (``address``: the dashboard URL, default: the local head)."""

    def __init__(
        self,
        address: str | None = None,
        *,
        token_file: str | Path | None = None,
        state_dir: str | Path | None = None,
    ) -> None:
        from ray.job_submission import JobSubmissionClient

        state = Path(state_dir) if state_dir is not None else default_state_dir()
        self.address = _address(address, state)
        token = _token(token_file, state)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.sdk = JobSubmissionClient(self.address, headers=dict(self._headers))

    def resources(self) -> dict[str, float]:
        """Total logical resources of the cluster's alive nodes (``{"CPU": 8.0, ...}``)."""
        url = f"{self.address.rstrip('/')}/api/v0/nodes?limit={MAX_NODES}"
        request = urllib.request.Request(url, headers=self._headers)
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            nodes = json.loads(response.read())["data"]["result"]["result"]
        total: dict[str, float] = {}
        for node in nodes:
            if node.get("state") == "ALIVE":
                for key, value in node.get("resources_total", {}).items():
                    total[key] = total.get(key, 0.0) + float(value)
        return total

    def check_capacity(self, spec: JobSpec) -> None:
        """Refuse a job the cluster cannot run at all (``ConfigError`` naming the numbers)."""
        have = self.resources()
        res = spec.resources
        shape = f"{res.concurrent_trials} trial(s) at once x {res.workers} worker(s)"
        for kind, need, extra in (
            ("CPU", spec.cpus_needed(), " + Tune trial drivers + 1 for Ray Data + driver_cpus"),
            ("GPU", spec.gpus_needed(), ""),
        ):
            if need > have.get(kind, 0.0) + CAPACITY_SLACK:
                raise ConfigError(
                    f"JobSpec.resources: the job needs {need:g} {kind}s ({shape} x "
                    f"{kind.lower()}s_per_worker{extra}) but the cluster at {self.address} "
                    f"has {have.get(kind, 0.0):g}"
                )

    def submit(
        self, spec: JobSpec, *, check_paths: bool = True, check_resources: bool = True
    ) -> Job:
        """Validate ``spec`` fully, then submit it; nothing is submitted when a check fails."""
        validate(spec, check_paths=check_paths)
        if check_resources:
            self.check_capacity(spec)
        return self._send(spec, resumes=None)

    def _send(self, spec: JobSpec, resumes: str | None) -> Job:
        """Submit ``spec``; ``resumes``: the job whose stored search this one continues."""
        submission_id = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        storage_id = resumes or submission_id
        argv = [spec.runtime.python, "-m", ENTRY_MODULE, "--job-id", submission_id]
        argv += [SPEC_FLAG, encode_spec(spec)]
        argv += [RESUME_FLAG, storage_id] if resumes else []
        metadata = {
            META_NAME: spec.name,
            META_KIND: spec.kind,
            META_TRACKING_URI: spec.tracking.uri,
            META_EXPERIMENT: spec.tracking.experiment,
            META_STORAGE: f"{spec.storage.rstrip('/')}/{storage_id}",
        }
        if spec.search is not None:
            metadata[META_NUM_SAMPLES] = str(spec.search.num_samples)
        if resumes:
            metadata[META_RESUMES] = resumes
        _call(
            "submit",
            submission_id,
            self.sdk.submit_job,
            entrypoint=" ".join(shlex.quote(a) for a in argv),
            submission_id=submission_id,
            runtime_env=runtime_env(spec),
            metadata=metadata,
            entrypoint_num_cpus=spec.resources.driver_cpus or None,
        )
        return Job(submission_id, self)

    def job(self, submission_id: str) -> Job:
        return Job(submission_id, self)

    def list(self) -> list[Any]:
        """Every job the cluster knows, oldest first (Ray ``JobDetails``)."""
        return sorted(_call("list", "jobs", self.sdk.list_jobs), key=lambda d: d.start_time or 0)

    def resume(self, submission_id: str) -> Job:
        """Submit a job that continues the search of the ended job ``submission_id`` from its
        Ray Tune state, into the same MLflow parent run (only unfinished trials run)."""
        info = self.job(submission_id).info()
        status = str(info.status.value)
        if status not in ("FAILED", "STOPPED"):
            raise JobStateError(
                f"job {submission_id} is {status}: only a STOPPED or FAILED search can be resumed"
            )
        spec, storage_id = _spec_of(info)
        if spec.search is None:
            raise JobStateError(
                f"job {submission_id} is a single training run, not a search: resume its MLflow "
                "run with `hmoe train --resume RUN_ID` instead"
            )
        return self._send(spec, resumes=storage_id or submission_id)


def _call(action: str, job_id: str, func: Any, *args: Any, **kwargs: Any) -> Any:
    """A Jobs API call whose failure is a ``JobError`` (``JobNotFoundError`` for an unknown id)."""
    try:
        return func(*args, **kwargs)
    except RuntimeError as err:
        if NOT_FOUND in str(err):
            raise JobNotFoundError(f"no job {job_id!r} on this cluster") from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise JobError(f"{action} {job_id}: {first}") from err


@contextlib.contextmanager
def _ctrl_c_stops(loop: asyncio.AbstractEventLoop, step: asyncio.Future) -> Iterator[list[int]]:
    """While ``loop`` runs ``step``: a Ctrl-C is recorded in the list yielded and stops the
    loop, instead of raising a KeyboardInterrupt inside the stream's code (aiohttp, Ray), where
    the interrupt may be swallowed or turned into an ended stream.

    Only on the main thread (the only one Python runs signal handlers in) and only where a
    Ctrl-C would raise a KeyboardInterrupt anyway: an ignored SIGINT or a program's own handler
    stays as it was. The previous handler is restored on the way out, whatever happens.
    """
    pressed: list[int] = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield pressed
        return

    def stop_unless_done() -> None:
        # a press just after the step ended must not stop the next run of the loop
        if not step.done():
            loop.stop()

    def on_sigint(signum: int, frame: Any) -> None:
        pressed.append(signum)
        loop.call_soon_threadsafe(stop_unless_done)  # wakes the loop's select() too

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def _spec_of(info: Any) -> tuple[JobSpec, str | None]:
    """The spec an hmoe job was submitted with and the job whose storage it used, read back
    from its entrypoint."""
    argv = shlex.split(info.entrypoint or "")
    if ENTRY_MODULE not in argv or SPEC_FLAG not in argv:
        raise JobStateError(f"job {info.submission_id} was not submitted by hmoe")
    spec = decode_spec(argv[argv.index(SPEC_FLAG) + 1])
    storage = argv[argv.index(RESUME_FLAG) + 1] if RESUME_FLAG in argv else None
    return spec, storage


def runtime_env(spec: JobSpec) -> dict[str, Any]:
    """The job's Ray ``runtime_env``: env vars, optional pip extras and ``py_modules``."""
    env_vars = {STOP_WAIT_ENV: str(spec.runtime.stop_grace_s)}
    if spec.dataset.raw_root is not None:
        env_vars[DATA_ROOT_ENV] = spec.dataset.raw_root
    env: dict[str, Any] = {"env_vars": env_vars | dict(spec.runtime.env_vars)}
    if spec.runtime.pip:
        env["pip"] = list(spec.runtime.pip)
    if spec.runtime.ship_package:
        import hmoe

        env["py_modules"] = [str(Path(hmoe.__file__).parent)]
        env["excludes"] = list(PACKAGE_EXCLUDES)
    return env


class Job:
    """A submitted job: ``status``, ``progress``, ``logs``, ``follow``, ``wait``, ``stop``,
    ``delete``, ``resume``, ``result``."""

    def __init__(self, submission_id: str, client: JobClient) -> None:
        self.submission_id = submission_id
        self.client = client

    def __repr__(self) -> str:
        return f"Job({self.submission_id!r}, address={self.client.address!r})"

    def info(self) -> Any:
        """Ray's ``JobDetails`` of the job (``JobNotFoundError`` for an unknown id)."""
        return _call("get", self.submission_id, self.client.sdk.get_job_info, self.submission_id)

    def status(self) -> str:
        """``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED`` or ``STOPPED``."""
        return str(self.info().status.value)

    def logs(self) -> str:
        return _call("logs", self.submission_id, self.client.sdk.get_job_logs, self.submission_id)

    def follow(self) -> Iterator[str]:
        """Yield log chunks as the job writes them, until it ends.

        Closing the iterator (or Ctrl-C while it waits) detaches from the log stream; the job
        keeps running. One Ctrl-C while it waits for a chunk raises exactly one
        ``KeyboardInterrupt`` here, wherever in the stream's code the signal arrives.
        """
        self.info()  # an unknown id is a JobNotFoundError, not an error of the stream
        chunks = self.client.sdk.tail_job_logs(self.submission_id)
        loop = asyncio.new_event_loop()
        pending: asyncio.Future | None = None
        try:
            while True:
                pending = asyncio.ensure_future(chunks.__anext__(), loop=loop)
                with _ctrl_c_stops(loop, pending) as pressed:
                    try:
                        chunk = loop.run_until_complete(pending)
                    # after Ctrl-C the step may end in anything (a stopped loop, a cancelled or
                    # swallowed read, an ended stream): then only the press counts
                    except StopAsyncIteration:
                        if not pressed:
                            return
                    except BaseException:
                        if not pressed:
                            raise
                if pressed:
                    raise KeyboardInterrupt
                yield chunk
        finally:
            # interrupted while waiting for a chunk, the generator is still running: cancel
            # that step first, or aclose() fails ("asynchronous generator is already running");
            # bounded, for a stream that ignores the cancellation
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    loop.run_until_complete(asyncio.wait({pending}, timeout=DETACH_WAIT_S))
                    if pending.done() and not pending.cancelled():
                        pending.exception()  # read, or asyncio logs it as never retrieved
            with contextlib.suppress(RuntimeError, StopAsyncIteration):
                loop.run_until_complete(chunks.aclose())
            loop.close()

    def wait(self, timeout: float | None = None, poll_s: float = POLL_S) -> str:
        """Block until the job ends; its final status. ``TimeoutError`` after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (status := self.status()) not in TERMINAL:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.submission_id} still {status} after {timeout} s")
            time.sleep(poll_s)
        return status

    def stop(self) -> bool:
        """Ask the job to stop (SIGTERM; its runs end KILLED); False if it had already ended."""
        return bool(_call("stop", self.submission_id, self.client.sdk.stop_job, self.submission_id))

    def delete(self) -> None:
        """Delete an ended job and its logs from the cluster (``JobStateError`` if running)."""
        status = self.status()
        if status not in TERMINAL:
            raise JobStateError(
                f"job {self.submission_id} is {status}: stop it first "
                f"(hmoe jobs stop {self.submission_id})"
            )
        _call("delete", self.submission_id, self.client.sdk.delete_job, self.submission_id)

    def resume(self) -> Job:
        """A new job continuing this stopped or failed search (see ``JobClient.resume``)."""
        return self.client.resume(self.submission_id)

    def progress(self) -> JobProgress:
        """Ray's status and, for a search, its trials and best ``val_auc`` from MLflow."""
        info = self.info()
        meta = dict(info.metadata or {})
        uri = meta.get(META_TRACKING_URI)
        total = meta.get(META_NUM_SAMPLES)
        found = dict.fromkeys(_MLFLOW_FIELDS)
        if uri:
            # a resumed job continues the runs tagged with the id of the job that started them
            search_job = meta.get(META_RESUMES) or self.submission_id
            found |= _mlflow_progress(uri, meta.get(META_EXPERIMENT, ""), search_job)
        return JobProgress(
            **job_status(info, self.submission_id),
            storage=meta.get(META_STORAGE),
            resumes=meta.get(META_RESUMES),
            tracking_uri=uri,
            trials_total=int(total) if total else None,
            trials_finished=found["trials_finished"],
            best_val_auc=found["best_val_auc"],
            parent_run_id=found["parent_run_id"],
            mlflow_url=found["mlflow_url"],
            mlflow_error=found["mlflow_error"],
        )

    def result(self) -> JobResult:
        """The result of a SUCCEEDED job; ``JobError`` with Ray's reason otherwise."""
        info = self.info()
        status = str(info.status.value)
        if status != "SUCCEEDED":
            raise JobError(f"job {self.submission_id} is {status}: {info.message or ''}".strip())
        data = parse_result(self.logs())
        if data is None:
            raise JobError(f"job {self.submission_id} succeeded but logged no result line")
        return JobResult.from_dict(data)


def submit(
    spec: JobSpec | Mapping[str, Any] | str | Path,
    address: str | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    check_paths: bool = True,
    check_resources: bool = True,
    token_file: str | Path | None = None,
    state_dir: str | Path | None = None,
) -> Job:
    """Validate and submit a job spec (a ``JobSpec``, a mapping or a YAML path).

    Args:
        spec: the job; ``overrides`` sets dotted paths of it first (``{"tracking.uri": ...}``).
        address: the cluster's dashboard URL (default: ``$RAY_ADDRESS``, then the local head).
        check_paths: check the dataset paths on this machine (off for a remote cluster whose
            paths exist only there).
        check_resources: refuse a job needing more CPUs/GPUs than the cluster has.
        token_file, state_dir: where the auth token and the local head's record are.
    """
    job_spec = load_job(spec, overrides)
    validate(job_spec, check_paths=check_paths)  # before connecting: a bad spec needs no cluster
    client = JobClient(address, token_file=token_file, state_dir=state_dir)
    return client.submit(job_spec, check_paths=check_paths, check_resources=check_resources)


def job_status(info: Any, job_id: str | None = None) -> dict[str, Any]:
    """What Ray knows of a job (a ``JobDetails`` or ``JobInfo``): ``job_id``, ``name``,
    ``kind``, ``status``, ``message`` and ``start_time``/``end_time`` in seconds (or ``None``);
    the one place ``hmoe jobs list`` and ``Job.progress`` read them from."""
    meta = dict(info.metadata or {})
    return {
        "job_id": job_id or getattr(info, "submission_id", None) or getattr(info, "job_id", None),
        "name": meta.get(META_NAME),
        "kind": meta.get(META_KIND),
        "status": str(info.status.value),
        "message": (info.message or "").strip(),
        "start_time": info.start_time / 1e3 if info.start_time else None,
        "end_time": info.end_time / 1e3 if info.end_time else None,
    }


_MLFLOW_FIELDS = ("trials_finished", "best_val_auc", "parent_run_id", "mlflow_url", "mlflow_error")


def _mlflow_progress(uri: str, experiment: str, job_id: str) -> dict[str, Any]:
    """The job's parent run (tagged with its id), finished trials, best ``val_auc``, UI link."""
    try:
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return {"mlflow_error": f"no experiment {experiment!r} in {uri} yet"}
        ids = [exp.experiment_id]
        runs = client.search_runs(
            ids, f"tags.`{TAG_JOB_ID}` = '{job_id}'", order_by=["attributes.start_time ASC"]
        )
        parents = [r for r in runs if TAG_PARENT not in r.data.tags]
        if not parents:
            return {"mlflow_error": f"no MLflow run of job {job_id} in {uri} yet"}
        parent = parents[0]
        trials = client.search_runs(ids, f"tags.`{TAG_PARENT}` = '{parent.info.run_id}'")
    except Exception as err:  # a status line must not fail because MLflow is down
        return {"mlflow_error": f"{type(err).__name__}: {str(err).strip()[:200]}"}
    ended = [t for t in trials if t.info.status in TRIAL_ENDED]
    scores = [t.data.metrics[METRIC_BEST] for t in trials if METRIC_BEST in t.data.metrics]
    if not trials and METRIC_BEST in parent.data.metrics:  # a single training run
        scores = [parent.data.metrics[METRIC_BEST]]
    url = uri
    if uri.startswith(("http://", "https://")):
        url = f"{uri.rstrip('/')}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}"
    return {
        "trials_finished": len(ended) if trials else None,
        "best_val_auc": max(scores) if scores else None,
        "parent_run_id": parent.info.run_id,
        "mlflow_url": url,
    }


def get_job(
    submission_id: str,
    address: str | None = None,
    *,
    token_file: str | Path | None = None,
    state_dir: str | Path | None = None,
) -> Job:
    """A handle on an existing job of the cluster at ``address``."""
    return JobClient(address, token_file=token_file, state_dir=state_dir).job(submission_id)


def resume(
    submission_id: str,
    address: str | None = None,
    *,
    token_file: str | Path | None = None,
    state_dir: str | Path | None = None,
) -> Job:
    """Resume the stopped or failed search job ``submission_id`` as a new job: Ray Tune restores
    it from the job's storage and finishes only the unfinished trials, in the same MLflow
    parent run. ``JobStateError`` for a running, succeeded or single-run job."""
    client = JobClient(address, token_file=token_file, state_dir=state_dir)
    return client.resume(submission_id)


def list_jobs(
    address: str | None = None,
    *,
    token_file: str | Path | None = None,
    state_dir: str | Path | None = None,
) -> list[Any]:
    """Every job of the cluster at ``address``, oldest first."""
    return JobClient(address, token_file=token_file, state_dir=state_dir).list()
