"""The Python API behind ``hmoe train``: one run on Ray Train, tracked in MLflow.

``train(...)`` validates everything first (an unknown ``--set`` key, a config the dataset or
the cluster cannot run: ``hmoe.platform.training.preflight``; all before Ray starts), creates the
MLflow run (name ``{preset}-{config_hash}``, tags of the run-identity contract), fits a
``TorchTrainer`` and returns a ``TrainResult``. ``resume(run_id)`` continues a run that did not
finish from its latest checkpoint, into the same MLflow run: the config is the run's logged
``config.json`` and the Ray Train run (``train-{run_id}`` in the same storage) is the same, so
Ray Train V2 restores its checkpoint. ``hmoe.tune`` lives in ``tune``.

A call leaves the process as it found it: a local Ray that a call starts (``ray_for``) is shut
down when it returns, so ``train``, ``tune`` and ``analyze`` work in any order in one process
(a Ray sized for one call would otherwise be too small for the next). A Ray the caller (or a
Ray Job) connected to beforehand is used and left running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from hmoe.config import apply_overrides
from hmoe.platform.core import storage
from hmoe.platform.core.failures import failure_reason
from hmoe.platform.experiment import (
    ExperimentConfig,
    build_experiment,
    logged_params,
    run_name,
)
from hmoe.platform.tracking.runs import (
    CONFIG_ARTIFACT,
    SOURCE_TYPE_LOCAL,
    STATUS_RUNNING,
    TAG_CONFIG_HASH,
    TAG_DATASET_HASH,
    TAG_FAILURE,
    TAG_GIT_COMMIT,
    TAG_HOST,
    TAG_MODEL_URI,
    TAG_PID,
    TAG_PRESET,
    TAG_SEARCH,
    TAG_SOURCE_COMMIT,
    TAG_SOURCE_NAME,
    TAG_SOURCE_TYPE,
    TAG_SPACE,
    TAG_TRIAL_ID,
    TAG_USER,
    MlflowRun,
    end_orphans,
    git_commit,
    open_store,
    owner_gone,
    resolve_tracking_uri,
)
from hmoe.platform.tracking.runs import tracking_uri as store_uri
from hmoe.platform.training.preflight import check_resources, check_run
from hmoe.schema import MANIFEST

__all__ = [
    "TrainResult",
    "dataset_hash",
    "ensure_ray",
    "metrics_by_task",
    "ray_for",
    "record_run",
    "resolve",
    "resolved_experiment",
    "resume",
    "tracking_option",
    "train",
]

DATASET_HASH_LENGTH = 12
TRACKING_URI_PATH = "tracking.uri"
CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train V2's checkpoint folders in a run's storage
FINISHED = "FINISHED"
UNKNOWN = "unknown"  # git_commit's answer outside a checkout; also a user without a name
DATA_CPUS = 1.0  # logical CPUs left to Ray Data ingest, or it stalls on its resource budget


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What one run produced.

    ``metrics``: the final report (``best_epoch``, 1-based, and that epoch's ``val_*`` and
    ``test_*``: the best epoch's weights are restored); ``per_task``: ``{task: {"val_auc":
    ..., ...}}``; ``history``: every epoch's own values.
    """

    run_id: str | None
    run_name: str
    config: ExperimentConfig
    metrics: dict[str, float]
    per_task: dict[str, dict[str, float]]
    history: list[dict[str, float]]
    model_uri: str | None
    registered_model: str | None
    model_version: str | None


def dataset_hash(data_dir: str | Path) -> str:
    """The manifest's ``dataset_hash`` (written by ``prepare``), else a hash of the manifest."""
    blob = storage.read_bytes(storage.join(data_dir, MANIFEST))
    recorded = json.loads(blob).get("dataset_hash")
    if isinstance(recorded, str) and recorded:
        return recorded
    return hashlib.sha256(blob).hexdigest()[:DATASET_HASH_LENGTH]


def metrics_by_task(metrics: Mapping[str, float], tasks: tuple[str, ...]) -> dict[str, dict]:
    """``{"val_auc_click": x}`` -> ``{"click": {"val_auc": x}}``."""
    out: dict[str, dict[str, float]] = {task: {} for task in tasks}
    for key, value in metrics.items():
        for task in tasks:
            if key.endswith(f"_{task}") and key.split("_")[0] in ("val", "test", "best"):
                out[task][key[: -len(task) - 1]] = value
    return out


def resolve(cfg: ExperimentConfig, base: Path | None = None) -> ExperimentConfig:
    """Make the tracking store and the run storage absolute (workers run elsewhere; an
    ``s3://`` storage is kept as is)."""
    return apply_overrides(
        cfg,
        {
            "tracking.uri": resolve_tracking_uri(cfg.tracking.uri, base),
            "train.storage_path": storage.absolute(cfg.train.storage_path, base),
        },
    )


def ensure_ray(cpus_needed: float) -> None:
    """Connect to Ray (``ray_start.start_ray``: a private local Ray sized for ``cpus_needed``
    plus ingest, or the cluster ``RAY_ADDRESS`` names) and check its CPUs."""
    import ray

    from hmoe.platform.core.ray_start import start_ray

    start_ray(max(os.cpu_count() or 1, int(cpus_needed + DATA_CPUS + 0.999)))
    total = ray.cluster_resources().get("CPU", 0.0)
    if total - cpus_needed < DATA_CPUS:
        raise ValueError(
            f"the Ray cluster has {total:g} CPUs; the run needs {cpus_needed:g} for its workers "
            f"plus {DATA_CPUS:g} free for Ray Data ingest (lower train.cpus_per_worker or "
            "train.num_workers)"
        )


@contextlib.contextmanager
def ray_for(cpus_needed: float) -> Iterator[None]:
    """``ensure_ray`` for the span of one API call: a Ray that was not running before is shut
    down at the end, so no call changes what the next one finds."""
    import ray

    started = not ray.is_initialized()
    try:
        ensure_ray(cpus_needed)
        yield
    finally:
        if started:
            ray.shutdown()


def tracking_option(uri: str | None, overrides: Mapping[str, Any] | None) -> str | None:
    """The ``tracking_uri`` shortcut MLflow's way: ``uri``, else a ``tracking.uri`` override
    (kept: ``None``), else ``MLFLOW_TRACKING_URI``, else ``./mlflow.db``."""
    if uri is None and TRACKING_URI_PATH in (overrides or {}):
        return None
    return store_uri(uri)


def resolved_experiment(
    preset: str,
    data: str | Path,
    overrides: Mapping[str, Any] | None,
    *,
    workers: int | None,
    gpus_per_worker: float | None,
    tracking_uri: str | None,
    experiment: str | None,
    registered_model: str | None,
) -> ExperimentConfig:
    """The config of a ``train`` or ``tune`` call: ``build_experiment`` with the call's
    shortcuts, the tracking store chosen as ``tracking_option`` says, then ``resolve``d."""
    cfg = build_experiment(
        preset,
        data,
        overrides,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        tracking_uri=tracking_option(tracking_uri, overrides),
        experiment=experiment,
        registered_model=registered_model,
    )
    return resolve(cfg)


def run_tags(cfg: ExperimentConfig, space: str | None = None) -> dict[str, str]:
    """The run-identity tags and MLflow's source tags (``hmoe tune`` for a search's runs)."""
    commit = git_commit()
    tags = {
        TAG_PRESET: cfg.preset,
        TAG_CONFIG_HASH: cfg.config_hash(),
        TAG_DATASET_HASH: dataset_hash(cfg.data.path),
        TAG_GIT_COMMIT: commit,
        TAG_SOURCE_NAME: "hmoe train" if space is None else "hmoe tune",
        TAG_SOURCE_TYPE: SOURCE_TYPE_LOCAL,
        TAG_USER: _user(),
    }
    if commit != UNKNOWN:
        tags[TAG_SOURCE_COMMIT] = commit
    if space is not None:
        tags[TAG_SPACE] = space
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return UNKNOWN


def record_run(run: MlflowRun, cfg: ExperimentConfig, searched: Mapping[str, Any]) -> None:
    """A new run's params (headline knobs and the ``searched`` values), its ``config.json``
    and its dataset input (name, digest = dataset hash, source = the prepared folder)."""
    run.log_config(cfg.to_dict(), logged_params(cfg, searched))
    manifest = json.loads(storage.read_bytes(storage.join(cfg.data.path, MANIFEST)))
    name = str(manifest.get("name") or cfg.data.path.rstrip("/").rsplit("/", 1)[-1])
    profile = {"rows": manifest.get("rows", {})}
    run.log_dataset(name, dataset_hash(cfg.data.path), cfg.data.path, profile)


def train(
    preset: str,
    data: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    registered_model: str | None = None,
    register: bool = True,
    tags: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
    run_started: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``preset`` on the prepared dataset ``data`` with Ray Train; track it in MLflow.

    Args:
        preset: a model preset name (``hmoe.models.zoo.PRESETS``).
        data: a prepared dataset directory (``hmoe data prepare``).
        overrides: dotted ExperimentConfig paths -> values (``{"train.lr": 3e-3}``).
        workers, gpus_per_worker, tracking_uri, experiment, registered_model: shortcuts for
            ``train.num_workers``, ``train.gpus_per_worker``, ``tracking.*``; the store is
            ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``./mlflow.db``.
        register: register the trained model in the MLflow Model Registry.
        tags: extra MLflow tags of the run (a job's id).
        progress: called with one line per stage (the CLI prints them).
        run_started: called with the MLflow run id as soon as the run exists, so that a caller
            can find the run again if this call fails before it returns.
    """
    cfg = resolved_experiment(preset, data, overrides, workers=workers,
                              gpus_per_worker=gpus_per_worker, tracking_uri=tracking_uri,
                              experiment=experiment, registered_model=registered_model)  # fmt: skip
    check_run(cfg)
    check_resources(cfg.train, DATA_CPUS)
    say = progress or (lambda line: None)
    all_tags = run_tags(cfg) | dict(tags or {})
    run = MlflowRun.create(cfg.tracking.uri, cfg.tracking.experiment, run_name(cfg), all_tags)
    record_run(run, cfg, {})
    say(f"MLflow run {run.run_id} ({run_name(cfg)}) in {cfg.tracking.uri}")
    if run_started is not None:
        run_started(run.run_id)
    return _fit(cfg, run, register)


def _fit(cfg: ExperimentConfig, run: MlflowRun, register: bool) -> TrainResult:
    """Fit the Ray Train run ``train-{run_id}`` (resumed when its storage holds one)."""
    try:
        with ray_for(cfg.train.num_workers * cfg.train.cpus_per_worker):
            check_resources(cfg.train, DATA_CPUS)  # a cluster joined through RAY_ADDRESS
            from hmoe.platform.analysis.monitor import epoch_end_hook
            from hmoe.platform.training.run_storage import mark
            from hmoe.platform.training.trainer import make_trainer

            name = train_run_name(run.run_id)
            # the marker names the MLflow run, for hmoe runs prune
            mark(Path(cfg.train.storage_path) / name, run.run_id, cfg.tracking.uri)
            # the run composes training with the analysis monitor of train.monitor
            monitor = epoch_end_hook(cfg.train.monitor)
            trainer = make_trainer(cfg, run.run_id, name, cfg.train.storage_path, epoch_end=monitor)
            result = trainer.fit()
    except BaseException as err:
        run.set_tags({TAG_FAILURE: failure_reason(err)})
        run.finish("FAILED")
        raise
    return _finish_run(cfg, run, dict(result.metrics or {}), register)


def train_run_name(run_id: str) -> str:
    """The Ray Train run of MLflow run ``run_id`` (deterministic, so it can be resumed)."""
    return f"train-{run_id}"


def resume(
    run_id: str,
    *,
    tracking_uri: str | None = None,
    register: bool = True,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Resume the ``hmoe train`` run ``run_id`` from its latest checkpoint, in the same run.

    The config is the run's logged ``config.json``. A FINISHED run, a run whose process is
    still alive, and a run without a checkpoint are refused (``ValueError``, one line).
    """
    from mlflow.exceptions import MlflowException

    from hmoe.platform.experiment import ExperimentConfig

    uri = store_uri(tracking_uri)
    client = open_store(uri)
    end_orphans(uri)  # a run whose process was killed is RUNNING until now
    try:
        info = client.get_run(run_id)
    except MlflowException as err:
        raise ValueError(f"no MLflow run {run_id} in {uri}") from err
    tags = info.data.tags
    if info.info.status == FINISHED:
        raise ValueError(f"run {run_id} is FINISHED: there is nothing to resume")
    if info.info.status == STATUS_RUNNING and not owner_gone(tags):
        owner = f"process {tags.get(TAG_PID, '?')} on {tags.get(TAG_HOST, '?')}"
        raise ValueError(f"run {run_id} is still RUNNING in {owner}; stop that first")
    try:
        config = client.download_artifacts(run_id, CONFIG_ARTIFACT)
    except MlflowException as err:
        raise ValueError(f"run {run_id} has no {CONFIG_ARTIFACT}: it is not an hmoe run") from err
    # the store it is resumed from, even if the logged one has moved since
    cfg = apply_overrides(
        ExperimentConfig.from_dict(json.loads(Path(config).read_text())), {TRACKING_URI_PATH: uri}
    )
    if TAG_TRIAL_ID in tags:
        raise ValueError(
            f"run {run_id} is a trial of search {tags.get(TAG_SEARCH, '?')}: resume the search "
            "(hmoe tune ... --resume)"
        )
    recorded = tags.get(TAG_DATASET_HASH)
    if recorded is not None and dataset_hash(cfg.data.path) != recorded:
        raise ValueError(
            f"the dataset {cfg.data.path} changed since run {run_id} started (hash {recorded} -> "
            f"{dataset_hash(cfg.data.path)}): it cannot be resumed (train again)"
        )
    check_run(cfg)
    folder = storage.join(cfg.train.storage_path, train_run_name(run_id))
    saved = any(name.startswith(CHECKPOINT_PREFIX) for name in storage.list_names(folder))
    if not saved:
        raise ValueError(
            f"run {run_id} has no checkpoint in {folder}: it cannot be resumed (train again)"
        )
    run = MlflowRun(uri, run_id)
    run.claim()
    (progress or (lambda line: None))(
        f"resuming MLflow run {run_id} ({info.info.run_name}) from its checkpoint in {folder}"
    )
    return _fit(cfg, run, register)


def _finish_run(
    cfg: ExperimentConfig, run: MlflowRun, metrics: dict[str, float], register: bool
) -> TrainResult:
    from hmoe.platform.data.batches import load_schema
    from hmoe.platform.tracking.registry import register_model

    tags = run.tags()
    model_uri = tags.get(TAG_MODEL_URI)
    version = None
    if register and model_uri is not None:
        about = registration(cfg, run.run_id, metrics)
        version = register_model(cfg.tracking.uri, model_uri, cfg.tracking.registry_name, about)
    run.finish(FINISHED)
    history = _history(run, metrics)
    tasks = load_schema(cfg.data.path).tasks
    return TrainResult(
        run_id=run.run_id,
        run_name=run_name(cfg),
        config=cfg,
        metrics=metrics,
        per_task=metrics_by_task(metrics, tasks),
        history=history,
        model_uri=model_uri,
        registered_model=cfg.tracking.registry_name if version else None,
        model_version=version,
    )


def registration(
    cfg: ExperimentConfig, run_id: str, metrics: Mapping[str, float], search: str | None = None
) -> Any:
    """The ``Registration`` of run ``run_id``'s model: its early-stopping metric (the best
    epoch's) and dataset."""
    from hmoe.platform.tracking.registry import Registration

    metric = cfg.train.early_stopping_metric
    return Registration(
        run_id=run_id,
        dataset_hash=dataset_hash(cfg.data.path),
        metric=metric,
        value=float(metrics.get(metric, math.nan)),
        search=search,
    )


def _history(run: MlflowRun, final: Mapping[str, float]) -> list[dict[str, float]]:
    """Per-epoch values of the main metrics, read back from MLflow (step = 1-based epoch; the
    first value of a step is the epoch's own, a later one the run's headline)."""
    epochs: dict[int, dict[str, float]] = {}
    for key in ("train_loss", "val_auc", "val_logloss", "train_samples_per_s"):
        if key not in final:
            continue
        history = run.client.get_metric_history(run.run_id, key)
        # newest first, so the earliest value of each step is written last and stays
        for m in sorted(history, key=lambda m: (m.step, m.timestamp), reverse=True):
            epochs.setdefault(m.step, {"epoch": float(m.step)})[key] = m.value
    return [epochs[step] for step in sorted(epochs)]
