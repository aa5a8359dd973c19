"""The Python job API: submit a job spec to a Ray cluster's Jobs API and follow it.

    job = hmoe.jobs.submit("ml100k_full.yaml", address="http://127.0.0.1:8265")
    job.wait(timeout=3600)
    print(job.result().best_metrics)

``submit`` validates the spec completely (schema, preset, space, override paths, dataset,
and the cluster's CPUs/GPUs) before anything is sent, so a refused spec leaves no job behind.
The job runs ``python -m hmoe.jobs.entry`` on the cluster; the code reaches the cluster as the
installed package or, with ``runtime.ship_package``, as Ray ``py_modules`` (never the
repository root as ``working_dir``). Token authentication: the client sends
``Authorization: Bearer <token>`` read from ``token_file``, ``$RAY_AUTH_TOKEN``,
``$RAY_AUTH_TOKEN_PATH``, the local head's record (``hmoe cluster up``) or
``~/.ray/auth_token``, in that order. The ``hmoe submit`` / ``hmoe jobs`` commands are a thin
layer over this module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shlex
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hmoe.config import ConfigError
from hmoe.jobs.entry import encode_spec, parse_result
from hmoe.jobs.spec import JobSpec, load_job, validate
from hmoe.platform.cluster import default_state_dir, default_token_file, read_head

__all__ = ["Job", "JobClient", "JobError", "JobResult", "get_job", "list_jobs", "submit"]

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
POLL_S = 1.0
ENTRY_MODULE = "hmoe.jobs.entry"
STOP_WAIT_ENV = "RAY_JOB_STOP_WAIT_TIME_S"  # read by Ray's job supervisor
DATA_ROOT_ENV = "HMOE_DATA_ROOT"
PACKAGE_EXCLUDES = ("__pycache__", "*.pyc")
MAX_NODES = 10_000
HTTP_TIMEOUT_S = 30.0
CAPACITY_SLACK = 1e-9  # float sums of fractional CPUs


class JobError(RuntimeError):
    """A job did not succeed (or has no result); the message has its status and Ray's reason."""


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
        submission_id = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        entrypoint = " ".join(
            [
                shlex.quote(spec.runtime.python),
                "-m",
                ENTRY_MODULE,
                "--job-id",
                submission_id,
                "--spec",
                encode_spec(spec),
            ]
        )
        self.sdk.submit_job(
            entrypoint=entrypoint,
            submission_id=submission_id,
            runtime_env=runtime_env(spec),
            metadata={
                "hmoe.name": spec.name,
                "hmoe.kind": spec.kind,
                "hmoe.tracking_uri": spec.tracking.uri,
                "hmoe.experiment": spec.tracking.experiment,
            },
            entrypoint_num_cpus=spec.resources.driver_cpus or None,
        )
        return Job(submission_id, self)

    def job(self, submission_id: str) -> Job:
        return Job(submission_id, self)

    def list(self) -> list[Any]:
        """Every job the cluster knows, oldest first (Ray ``JobDetails``)."""
        return sorted(self.sdk.list_jobs(), key=lambda d: d.start_time or 0)


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
    """A submitted job: ``status``, ``logs``, ``follow``, ``wait``, ``stop``, ``result``."""

    def __init__(self, submission_id: str, client: JobClient) -> None:
        self.submission_id = submission_id
        self.client = client

    def __repr__(self) -> str:
        return f"Job({self.submission_id!r}, address={self.client.address!r})"

    def info(self) -> Any:
        return self.client.sdk.get_job_info(self.submission_id)

    def status(self) -> str:
        """``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED`` or ``STOPPED``."""
        return str(self.client.sdk.get_job_status(self.submission_id).value)

    def logs(self) -> str:
        return self.client.sdk.get_job_logs(self.submission_id)

    def follow(self) -> Iterator[str]:
        """Yield log chunks as the job writes them, until it ends."""
        chunks = self.client.sdk.tail_job_logs(self.submission_id)
        loop = asyncio.new_event_loop()
        try:
            while True:
                try:
                    yield loop.run_until_complete(chunks.__anext__())
                except StopAsyncIteration:
                    return
        finally:
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
        return bool(self.client.sdk.stop_job(self.submission_id))

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


def get_job(
    submission_id: str,
    address: str | None = None,
    *,
    token_file: str | Path | None = None,
    state_dir: str | Path | None = None,
) -> Job:
    """A handle on an existing job of the cluster at ``address``."""
    return JobClient(address, token_file=token_file, state_dir=state_dir).job(submission_id)


def list_jobs(
    address: str | None = None,
    *,
    token_file: str | Path | None = None,
    state_dir: str | Path | None = None,
) -> list[Any]:
    """Every job of the cluster at ``address``, oldest first."""
    return JobClient(address, token_file=token_file, state_dir=state_dir).list()
