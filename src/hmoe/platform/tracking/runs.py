"""MLflow tracking: one small interface, batched logging, runs nested under a search's parent.

Only rank 0 of a training run logs. Metrics go out as one ``log_batch`` call per epoch (one
request instead of one per metric, which is what Tune's ``MLflowLoggerCallback`` does), and the
time spent in tracking calls is measured so that its overhead can be reported. A run logs as
params only what tells runs apart (a search's sampled values and a few headline knobs: the
compare view stays readable); the whole resolved config is the ``config.json`` artifact, which
``hmoe train --resume`` and the analysis read back. Runs carry the tags of the run-identity
contract (``hmoe.preset``, ``hmoe.space``, ``hmoe.config_hash``, ``hmoe.dataset_hash``,
``hmoe.git_commit``, and ``mlflow.parentRunId`` for trials), MLflow's source tags, and the
prepared dataset as an MLflow dataset input (name, digest = dataset hash, source = its folder).

The store follows MLflow's convention (``tracking_uri``): an explicit URI, else
``MLFLOW_TRACKING_URI``, else ``./mlflow.db``. A new sqlite store is created under a file lock
beside the database (``<db>.lock``): MLflow creates the tables and runs its migrations without
one, and two processes doing it at once leave a store that no later command can open. Every run
records the process that owns it (``hmoe.host``, ``hmoe.pid``, ``hmoe.process_start``); a RUNNING
run whose process is gone is ended as KILLED the next time a run is created (``end_orphans``,
also ``hmoe runs gc``), so a killed ``hmoe train`` leaves no run RUNNING forever.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from hmoe.platform.core.host import alive, file_lock

__all__ = [
    "CONFIG_ARTIFACT",
    "DEFAULT_TRACKING_URI",
    "TRACKING_URI_ENV",
    "MetricLogger",
    "MlflowRun",
    "NullLogger",
    "Orphan",
    "StoreError",
    "end_orphans",
    "flatten",
    "fluent_store",
    "git_commit",
    "open_store",
    "owner_gone",
    "owner_tags",
    "resolve_tracking_uri",
    "share_runs_view",
    "tracking_uri",
]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable, read by every hmoe command
SQLITE_PREFIX = "sqlite:///"
LOCK_SUFFIX = ".lock"  # the store-creation lock file beside the sqlite database
MIGRATION_LEFTOVER_PREFIX = "_alembic_tmp_"  # tables of an interrupted sqlite migration
SEARCH_PAGE = 1000  # runs / experiments per search request while looking for orphans
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
TAG_SOURCE_NAME = "mlflow.source.name"  # MLflow's own tags: the UI's Source and User columns
TAG_SOURCE_TYPE = "mlflow.source.type"
TAG_SOURCE_COMMIT = "mlflow.source.git.commit"
TAG_USER = "mlflow.user"
SOURCE_TYPE_LOCAL = "LOCAL"
DATASET_SOURCE_TYPE = "local"  # MLflow's LocalArtifactDatasetSource: source = {"uri": path}
DATASET_CONTEXT_TAG = "mlflow.data.context"
DATASET_CONTEXT = "training"
# the MLflow UI's shared views: an experiment tag holding the view as JSON, opened by the URL
# parameter viewStateShareKey (what the UI's own "Share" button writes)
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
SHARED_VIEW_URL_PARAM = "viewStateShareKey"
DEFAULT_UI_URL = "http://127.0.0.1:5000"  # where `hmoe ui` and `mlflow ui` serve by default
TAG_HOST = "hmoe.host"  # the machine of the process that owns a run
TAG_PID = "hmoe.pid"  # ... that process (for Tune trials: the search's driver)
TAG_PROCESS_START = "hmoe.process_start"  # its start time, so a reused pid is not mistaken
STATUS_RUNNING = "RUNNING"
STATUS_KILLED = "KILLED"
_LOG = logging.getLogger(__name__)
_OPENED: set[str] = set()  # stores this process has opened (created under the lock) already


class StoreError(ValueError):
    """The tracking store cannot be used as it is; the message says how to repair it."""


class MetricLogger(Protocol):
    """What the training loop needs from a tracker (rank 0 only)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    @property
    def seconds(self) -> float: ...


class NullLogger:
    """A logger that drops everything (standalone runs without tracking, ranks > 0)."""

    seconds = 0.0

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        del metrics, step

    def log_text(self, text: str, artifact_file: str) -> None:
        del text, artifact_file


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


def tracking_uri(
    uri: str | None = None, default: str = DEFAULT_TRACKING_URI, base: Path | None = None
) -> str:
    """The store to use, MLflow's way: ``uri`` (``--tracking-uri``), else the
    ``MLFLOW_TRACKING_URI`` environment variable, else ``default`` (``./mlflow.db``); made
    absolute (``resolve_tracking_uri``)."""
    chosen = uri or os.environ.get(TRACKING_URI_ENV) or default
    return resolve_tracking_uri(chosen, base)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``None`` for other stores)."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    return Path(uri[len(SQLITE_PREFIX) :].split("?", 1)[0])


def open_store(uri: str) -> Any:
    """An ``MlflowClient`` on ``uri``; a sqlite store is created (or checked) under its lock.

    MLflow builds the tables and runs its migrations the first time a process touches a
    store; this does that once per process, holding ``<db>.lock``, so processes started
    together wait for the first instead of migrating the same file at once. A store that is
    half-created or out of date raises ``StoreError`` with the command that repairs it.
    """
    from mlflow import MlflowClient

    path = sqlite_path(uri)
    if path is None or uri in _OPENED:
        return MlflowClient(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + LOCK_SUFFIX)):
        try:
            client = MlflowClient(uri)  # builds the tracking store: tables, migrations
            client.search_registered_models(max_results=1)  # the registry store
        except Exception as err:  # MLflow, SQLAlchemy and alembic each raise their own types
            message = _broken_store(path, uri, err)
            if message is None:
                raise
            raise StoreError(message) from err
    _OPENED.add(uri)
    return client


def _broken_store(path: Path, uri: str, err: Exception) -> str | None:
    """The one-line repair message for a half-created / out-of-date store, else ``None``."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master")]
            version = None
            if "alembic_version" in tables:
                found = db.execute("SELECT version_num FROM alembic_version").fetchone()
                version = found[0] if found else None
    except sqlite3.Error:
        return None
    leftovers = sorted(t for t in tables if t.startswith(MIGRATION_LEFTOVER_PREFIX))
    schema_error = "schema" in str(err).lower() or type(err).__module__.startswith("alembic")
    if not leftovers and not schema_error:
        return None
    drop = "; ".join(f"DROP TABLE {t}" for t in leftovers)
    steps = f"sqlite3 {path} '{drop}', then " if leftovers else ""
    cause = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    return (
        f"the MLflow store {path} is half-created or out of date (schema version "
        f"{version or 'none'}{', leftover tables ' + ', '.join(leftovers) if leftovers else ''}: "
        f"{cause}); back it up, then run {steps}mlflow db upgrade {uri} "
        f"(or delete {path} if it holds no runs you need)"
    )


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks after boot, from /proc), if known."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces; field 22 counts from after its ")"
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tags(pid: int | None = None) -> dict[str, str]:
    """The tags that name the process owning a run (default: this process)."""
    pid = os.getpid() if pid is None else pid
    tags = {TAG_HOST: socket.gethostname(), TAG_PID: str(pid)}
    start = _process_start(pid)
    if start is not None:
        tags[TAG_PROCESS_START] = start
    return tags


def owner_gone(tags: Mapping[str, str]) -> bool:
    """Whether the run's owning process (on this host) has ended; unknown owners are alive."""
    if tags.get(TAG_HOST) != socket.gethostname() or not str(tags.get(TAG_PID, "")).isdigit():
        return False
    pid = int(tags[TAG_PID])
    if not alive(pid):
        return True
    recorded = tags.get(TAG_PROCESS_START)
    current = _process_start(pid)
    return recorded is not None and current is not None and recorded != current


@dataclasses.dataclass(frozen=True)
class Orphan:
    """A RUNNING run whose owning process has ended (``end_orphans`` marks it KILLED)."""

    run_id: str
    run_name: str
    experiment_id: str
    host: str
    pid: str

    @property
    def reason(self) -> str:
        return f"process {self.pid} on {self.host} ended without finishing the run"


def end_orphans(uri: str, dry_run: bool = False) -> list[Orphan]:
    """End every RUNNING run of this host whose owning process is gone as KILLED.

    Each gets ``hmoe.failure_reason`` = "process <pid> on <host> ended without finishing the
    run". Runs of other hosts, and runs without an owner tag, are left alone.
    """
    client = open_store(uri)
    host = socket.gethostname()
    # host names cannot hold quotes, so the filter needs no escaping
    query = f"attributes.status = '{STATUS_RUNNING}' and tags.`{TAG_HOST}` = '{host}'"
    orphans = []
    for run in _search_runs(client, query):
        if owner_gone(run.data.tags):
            orphans.append(
                Orphan(
                    run_id=run.info.run_id,
                    run_name=run.info.run_name or "",
                    experiment_id=run.info.experiment_id,
                    host=host,
                    pid=run.data.tags[TAG_PID],
                )
            )
    for orphan in [] if dry_run else orphans:
        client.set_tag(orphan.run_id, TAG_FAILURE, orphan.reason)
        client.set_terminated(orphan.run_id, status=STATUS_KILLED)
        _LOG.warning("marked MLflow run %s KILLED: %s", orphan.run_id, orphan.reason)
    return orphans


def _search_runs(client: Any, query: str) -> Iterator[Any]:
    experiments, token = [], None
    while True:
        page = client.search_experiments(max_results=SEARCH_PAGE, page_token=token)
        experiments += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    if not experiments:
        return
    token = None
    while True:
        page = client.search_runs(
            experiments, filter_string=query, max_results=SEARCH_PAGE, page_token=token
        )
        yield from page
        token = page.token
        if not token:
            return


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
        self.uri = uri
        self.run_id = run_id
        self.client = open_store(uri)
        self.seconds = 0.0  # time spent in tracking calls (the overhead we report)
        self._stamp = 0  # last metric timestamp (ms) sent, see log_metrics

    @classmethod
    def create(
        cls,
        uri: str,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str],
        owner: Mapping[str, str] | None = None,
    ) -> MlflowRun:
        """A new RUNNING run owned by ``owner`` (``owner_tags()``: this process); orphans of
        processes that died on this host are ended first."""
        client = open_store(uri)
        end_orphans(uri)
        exp_id = experiment_id(client, experiment, uri)
        all_tags = dict(tags) | dict(owner if owner is not None else owner_tags())
        run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
        return cls(uri, run.info.run_id)

    def claim(self, owner: Mapping[str, str] | None = None) -> None:
        """Make ``owner`` (default: this process) the owner of this run again and mark it
        RUNNING (a resumed run or search); a previous failure reason is dropped."""
        with self._timed():
            for key, value in dict(owner if owner is not None else owner_tags()).items():
                self.client.set_tag(self.run_id, key, value)
            if TAG_FAILURE in self.client.get_run(self.run_id).data.tags:
                self.client.delete_tag(self.run_id, TAG_FAILURE)
            self.client.update_run(self.run_id, status=STATUS_RUNNING)

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """All metrics of one step in a single ``log_batch`` request (non-finite ones skipped).

        Timestamps strictly increase from call to call: a value logged again at the same step
        (a run's headline metrics at its last step) is then the one MLflow shows as latest.
        """
        from mlflow.entities import Metric

        stamp = max(int(time.time() * 1000), self._stamp + 1)
        self._stamp = stamp
        batch = [
            Metric(key, float(value), stamp, step)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and math.isfinite(float(value))
        ]
        with self._timed():
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def log_config(self, config: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        """``params`` (dotted paths -> values) as MLflow params, and the whole resolved
        ``config`` as the ``config.json`` artifact."""
        from mlflow.entities import Param

        params = [
            Param(key, json.dumps(value) if isinstance(value, (list, dict)) else str(value))
            for key, value in sorted(params.items())
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

    def log_text(self, text: str, artifact_file: str) -> None:
        """``text`` as the run's artifact ``artifact_file`` (e.g. the sharding plan)."""
        with self._timed():
            self.client.log_text(self.run_id, text, artifact_file)

    def log_dataset(self, name: str, digest: str, folder: str, profile: Mapping[str, Any]) -> None:
        """The prepared dataset as the run's MLflow dataset input (the UI's Dataset column)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(
            name=name,
            digest=digest,
            source_type=DATASET_SOURCE_TYPE,
            source=json.dumps({"uri": folder}),
            profile=json.dumps(profile, sort_keys=True),
        )
        context = [InputTag(key=DATASET_CONTEXT_TAG, value=DATASET_CONTEXT)]
        with self._timed():
            self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags=context)])

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


def share_runs_view(
    uri: str,
    experiment_id: str,
    key: str,
    *,
    columns: Mapping[str, Iterable[str]],
    order_by: tuple[str, str],
    ascending: bool,
    expanded: Iterable[str] = (),
) -> str:
    """Save a view of the experiment's run list (its columns, its order, expanded parent runs)
    as an MLflow shared view named ``key``; returns the URL that opens it.

    ``columns``: ``{"metrics": [...], "params": [...], "tags": [...], "attributes": [...]}``;
    ``order_by``: ``(kind, name)``, e.g. ``("metrics", "val_auc")``.
    """

    def column(kind: str, name: str) -> str:
        return f"{kind}.`{name}`"  # the UI's canonical column key

    view = {
        "selectedColumns": [column(kind, n) for kind, names in columns.items() for n in names],
        "orderByKey": column(*order_by),
        "orderByAsc": ascending,
        "runsExpanded": {run_id: True for run_id in expanded},
    }
    client = open_store(uri)
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG_PREFIX + key, json.dumps(view))
    base = uri if uri.startswith(("http://", "https://")) else DEFAULT_UI_URL
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{SHARED_VIEW_URL_PARAM}={key}"


@contextlib.contextmanager
def fluent_store(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for a block, then restore it exactly.

    ``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` in this process's
    environment; restoring only the URI would leave that variable set, and every later command
    and subprocess of this process would then track into that store.
    """
    import mlflow

    previous_uri = mlflow.get_tracking_uri()
    previous_env = os.environ.get(TRACKING_URI_ENV)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous_uri)
        if previous_env is None:
            os.environ.pop(TRACKING_URI_ENV, None)
        else:
            os.environ[TRACKING_URI_ENV] = previous_env
