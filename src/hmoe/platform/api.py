"""The Python API behind ``hmoe train``: one run on Ray Train, tracked in MLflow.

``train(...)`` validates everything first (an unknown ``--set`` key, a config the dataset or
the cluster cannot run: ``hmoe.platform.preflight``; all before Ray starts), creates the
MLflow run (name ``{preset}-{config_hash}``, tags of the run-identity contract),
fits a ``TorchTrainer`` and returns a ``TrainResult``. ``hmoe.tune`` lives in ``tune``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hmoe.config import apply_overrides
from hmoe.platform.batches import MANIFEST
from hmoe.platform.cluster import api_server_env
from hmoe.platform.experiment import ExperimentConfig, build_experiment, run_name
from hmoe.platform.failures import failure_reason
from hmoe.platform.preflight import check_resources, check_run
from hmoe.platform.processes import LOOPBACK, free_port
from hmoe.platform.tracking import (
    TAG_CONFIG_HASH,
    TAG_DATASET_HASH,
    TAG_FAILURE,
    TAG_GIT_COMMIT,
    TAG_MODEL_URI,
    TAG_PRESET,
    TAG_SPACE,
    MlflowRun,
    git_commit,
    resolve_tracking_uri,
)

__all__ = ["TrainResult", "dataset_hash", "ensure_ray", "metrics_by_task", "resolve", "train"]

DATASET_HASH_LENGTH = 12
DATA_CPUS = 1.0  # logical CPUs left to Ray Data ingest, or it stalls on its resource budget


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What one run produced.

    ``metrics``: the final report (best-epoch ``best_*``, ``test_*`` of the restored best
    weights, the last epoch's ``val_*``); ``per_task``: ``{task: {"val_auc": ..., ...}}``.
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
    blob = (Path(data_dir) / MANIFEST).read_bytes()
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
    """Make the tracking store and the run storage absolute (workers run elsewhere)."""
    storage = Path(cfg.train.storage_path).expanduser()
    storage = storage if storage.is_absolute() else (base or Path.cwd()) / storage
    return apply_overrides(
        cfg,
        {
            "tracking.uri": resolve_tracking_uri(cfg.tracking.uri, base),
            "train.storage_path": str(storage.resolve()),
        },
    )


def ensure_ray(cpus_needed: float) -> None:
    """Start a local Ray sized for ``cpus_needed`` plus ingest, or check the connected one."""
    import ray

    if not ray.is_initialized():
        cpus = max(os.cpu_count() or 1, int(cpus_needed + DATA_CPUS + 0.999))
        # the dashboard serves the State API that Train V2's placement-group cleaner polls;
        # without it every run prints a stream of "Failed to query ... actor state" warnings.
        # Without api_server_env the placement groups of ASHA-stopped trials stay reserved
        # whenever another Ray runs on the machine, and later trials starve.
        dashboard_port = free_port()
        ray.init(
            num_cpus=cpus,
            include_dashboard=True,
            dashboard_host=LOOPBACK,
            dashboard_port=dashboard_port,
            runtime_env={"env_vars": api_server_env(dashboard_port)},
            configure_logging=False,
        )
        return
    total = ray.cluster_resources().get("CPU", 0.0)
    if total - cpus_needed < DATA_CPUS:
        raise ValueError(
            f"the Ray cluster has {total:g} CPUs; the run needs {cpus_needed:g} for its workers "
            f"plus {DATA_CPUS:g} free for Ray Data ingest (lower train.cpus_per_worker or "
            "train.num_workers)"
        )


def run_tags(cfg: ExperimentConfig, space: str | None = None) -> dict[str, str]:
    tags = {
        TAG_PRESET: cfg.preset,
        TAG_CONFIG_HASH: cfg.config_hash(),
        TAG_DATASET_HASH: dataset_hash(cfg.data.path),
        TAG_GIT_COMMIT: git_commit(),
    }
    if space is not None:
        tags[TAG_SPACE] = space
    return tags


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
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``preset`` on the prepared dataset ``data`` with Ray Train; track it in MLflow.

    Args:
        preset: a model preset name (``hmoe.models.zoo.PRESETS``).
        data: a prepared dataset directory (``hmoe data prepare``).
        overrides: dotted ExperimentConfig paths -> values (``{"train.lr": 3e-3}``).
        workers, gpus_per_worker, tracking_uri, experiment, registered_model: shortcuts for
            ``train.num_workers``, ``train.gpus_per_worker``, ``tracking.*``.
        register: register the trained model in the MLflow Model Registry.
        progress: called with one line per stage (the CLI prints them).
    """
    cfg = build_experiment(
        preset,
        data,
        overrides,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        tracking_uri=tracking_uri,
        experiment=experiment,
        registered_model=registered_model,
    )
    cfg = resolve(cfg)
    check_run(cfg)
    check_resources(cfg.train, DATA_CPUS)
    say = progress or (lambda line: None)
    run = MlflowRun.create(cfg.tracking.uri, cfg.tracking.experiment, run_name(cfg), run_tags(cfg))
    run.log_config(cfg.to_dict())
    say(f"MLflow run {run.run_id} ({run_name(cfg)}) in {cfg.tracking.uri}")
    try:
        ensure_ray(cfg.train.num_workers * cfg.train.cpus_per_worker)
        from hmoe.platform.trainer import make_trainer

        trainer = make_trainer(cfg, run.run_id, f"train-{run.run_id}", cfg.train.storage_path)
        result = trainer.fit()
    except BaseException as err:
        run.set_tags({TAG_FAILURE: failure_reason(err)})
        run.finish("FAILED")
        raise
    return _finish_run(cfg, run, dict(result.metrics or {}), register)


def _finish_run(
    cfg: ExperimentConfig, run: MlflowRun, metrics: dict[str, float], register: bool
) -> TrainResult:
    from hmoe.platform.batches import load_schema
    from hmoe.platform.model_registry import register_model

    tags = run.tags()
    model_uri = tags.get(TAG_MODEL_URI)
    version = None
    if register and model_uri is not None:
        version = register_model(cfg.tracking.uri, model_uri, cfg.tracking.registry_name)
    run.finish("FINISHED")
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


def _history(run: MlflowRun, final: Mapping[str, float]) -> list[dict[str, float]]:
    """Per-epoch values of the main metrics, read back from MLflow."""
    epochs: dict[int, dict[str, float]] = {}
    for key in ("train_loss", "val_auc", "val_logloss", "train_samples_per_s"):
        if key not in final:
            continue
        for m in run.client.get_metric_history(run.run_id, key):
            epochs.setdefault(m.step, {"epoch": float(m.step)})[key] = m.value
    return [epochs[step] for step in sorted(epochs)]
