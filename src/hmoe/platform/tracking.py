"""MLflow tracking: one small interface, batched logging, runs nested under a search's parent.

Only rank 0 of a training run logs. Metrics go out as one ``log_batch`` call per epoch (one
request instead of one per metric, which is what Tune's ``MLflowLoggerCallback`` does), and the
time spent in tracking calls is measured so that its overhead can be reported. The resolved
config is logged flat as params (``train.lr``) and whole as ``config.json``; runs carry the tags
of the run-identity contract (``hmoe.preset``, ``hmoe.space``, ``hmoe.config_hash``,
``hmoe.dataset_hash``, ``hmoe.git_commit``, and ``mlflow.parentRunId`` for trials).
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "CONFIG_ARTIFACT",
    "DEFAULT_TRACKING_URI",
    "MetricLogger",
    "MlflowRun",
    "NullLogger",
    "flatten",
    "git_commit",
    "resolve_tracking_uri",
]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
CONFIG_ARTIFACT = "config.json"
MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit for params
MAX_PARAM_VALUE_CHARS = 6000  # MLflow's limit for one param value
TAG_PRESET = "hmoe.preset"
TAG_SPACE = "hmoe.space"
TAG_CONFIG_HASH = "hmoe.config_hash"
TAG_DATASET_HASH = "hmoe.dataset_hash"
TAG_GIT_COMMIT = "hmoe.git_commit"
TAG_TRIAL_ID = "hmoe.trial_id"
TAG_SEARCH = "hmoe.search"
TAG_MODEL_URI = "hmoe.model_uri"
TAG_MODEL_FORMAT = "hmoe.model_format"
TAG_FAILURE = "hmoe.failure_reason"
TAG_PARENT = "mlflow.parentRunId"


class MetricLogger(Protocol):
    """What the training loop needs from a tracker (rank 0 only)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    @property
    def seconds(self) -> float: ...


class NullLogger:
    """A logger that drops everything (standalone runs without tracking, ranks > 0)."""

    seconds = 0.0

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        del metrics, step


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}`` (the dotted paths of apply_overrides)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def resolve_tracking_uri(uri: str, base: Path | None = None) -> str:
    """Make a relative ``sqlite:///file.db`` absolute against ``base`` (default: the cwd).

    Ray workers and Tune trials run in other directories, so the driver resolves the default
    embedded store once and passes the absolute URI down.
    """
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = (base or Path.cwd()) / uri[len(prefix) :]
        return prefix + str(path.resolve())
    if "://" not in uri and not uri.startswith("sqlite"):
        return Path(base or Path.cwd()).joinpath(uri).resolve().as_uri()
    return uri


def git_commit() -> str:
    """The commit of the checkout hmoe runs from, or ``"unknown"`` for an installed wheel."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _artifact_root(uri: str) -> str | None:
    """An absolute artifact folder beside a sqlite store (MLflow would use the process cwd)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        return (Path(uri[len(prefix) :]).parent / "mlartifacts").resolve().as_uri()
    return None


def experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (with a stable artifact root) when missing."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_root(uri))
    except MlflowException:  # created by a concurrent trial in between
        return client.get_experiment_by_name(name).experiment_id


class MlflowRun:
    """One MLflow run reached through ``MlflowClient`` (no fluent global state).

    Args:
        uri: tracking URI (absolute; see ``resolve_tracking_uri``).
        run_id: the run to log into.

    Example:
        >>> run = MlflowRun.create(uri, "exp", "debug-1a2b3c4d", tags={})  # doctest: +SKIP
        >>> run.log_metrics({"val_auc": 0.71}, step=0)  # doctest: +SKIP
    """

    def __init__(self, uri: str, run_id: str) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        self.run_id = run_id
        self.client = MlflowClient(uri)
        self.seconds = 0.0  # time spent in tracking calls (the overhead we report)

    @classmethod
    def create(cls, uri: str, experiment: str, run_name: str, tags: Mapping[str, str]) -> MlflowRun:
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        exp_id = experiment_id(client, experiment, uri)
        run = client.create_run(exp_id, run_name=run_name, tags=dict(tags))
        return cls(uri, run.info.run_id)

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """All metrics of one step in a single ``log_batch`` request (non-finite ones skipped)."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [
            Metric(key, float(value), stamp, step)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and math.isfinite(float(value))
        ]
        with self._timed():
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The resolved config flat as params, and whole as the ``config.json`` artifact."""
        from mlflow.entities import Param

        params = [
            Param(key, json.dumps(value) if isinstance(value, (list, dict)) else str(value))
            for key, value in sorted(flatten(config).items())
        ]
        params = [Param(p.key, p.value[:MAX_PARAM_VALUE_CHARS]) for p in params]
        with self._timed():
            for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
                chunk = params[start : start + MAX_PARAMS_PER_BATCH]
                self.client.log_batch(self.run_id, params=chunk, synchronous=True)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / CONFIG_ARTIFACT
                path.write_text(json.dumps(config, indent=2, sort_keys=True))
                self.client.log_artifact(self.run_id, str(path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        with self._timed():
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, str(value))

    def finish(self, status: str = "FINISHED") -> None:
        with self._timed():
            self.client.set_terminated(self.run_id, status=status)

    def metrics(self) -> dict[str, float]:
        """The latest value of every metric of the run."""
        return dict(self.client.get_run(self.run_id).data.metrics)

    def tags(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.tags)
