"""Checks of a run against its dataset and its cluster, before Ray starts or MLflow records it.

Each refuses, with one line naming the numbers and the fix (``ConfigError``, so the CLI exits
with code 2), a run that would otherwise finish "successfully" having learnt nothing, crash in a
worker, or wait forever:

* a split with no rows (validation drives early stopping, test gives the final metrics);
* a batch size that gives no optimizer step: the train split is split evenly across the
  workers, and a multi-worker run drops each worker's partial last batch (every rank must take
  the same number of DDP steps), so ``rows // workers < batch_size`` means zero steps;
* early stopping (its metric or its guard) on an AUC-type metric while a task has one class in
  the validation split (the metric would be NaN every epoch), or on a metric the dataset or the
  run cannot give (``val_ipw_logloss`` without ``loss.ipw``);
* a model built around a behaviour-sequence encoder on a dataset without sequences (it would
  quietly train as a plain DNN);
* more CPUs or GPUs than the connected Ray cluster has (without a Ray yet: more GPUs than this
  machine has).

``hmoe.train`` and ``hmoe.tune`` (and so submitted jobs) call ``check_run`` and
``check_resources`` first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hmoe.config import ConfigError
from hmoe.platform.core.metrics import IPW_LOGLOSS, split_metric_name
from hmoe.platform.core.ray_start import RAY_ADDRESS_ENV
from hmoe.platform.experiment import ExperimentConfig, TrainConfig
from hmoe.schema import METRIC_SPLITS, FeatureSchema

__all__ = [
    "AUC_METRICS",
    "SEQUENCE_MODEL_KINDS",
    "check_resources",
    "check_run",
    "label_counts",
    "split_row_counts",
]

# metrics undefined on a split where a task has only one class
AUC_METRICS = ("auc", "gauc")
# sequence encoders that are the model itself (DIN, DIN+, SASRec): without a sequence in the
# data the model is a plain DNN. TIM is one part of the hmoe presets, which also run on
# datasets without sequences (Criteo), so it is not listed.
SEQUENCE_MODEL_KINDS = ("din", "din_plus", "sasrec")
CAPACITY_SLACK = 1e-6  # float rounding of fractional CPU / GPU requests


def check_run(cfg: ExperimentConfig) -> None:
    """Every check of ``cfg`` against its prepared dataset (``ConfigError`` on the first)."""
    from hmoe.platform.data.reader import feature_schema, load_manifest

    manifest = load_manifest(cfg.data.path)
    schema = feature_schema(manifest)
    rows = split_row_counts(manifest)
    _check_splits(rows, cfg.data.path)
    _check_steps(cfg.train, rows["train"])
    _check_sequences(cfg, schema)
    _check_early_stopping(cfg, schema, manifest)


def split_row_counts(manifest: Mapping[str, Any]) -> dict[str, int]:
    """Rows per prepared split, from the manifest's shard list (what the readers read)."""
    return {
        split: sum(int(shard["rows"]) for shard in shards)
        for split, shards in manifest["shards"].items()
    }


def label_counts(
    data_dir: str | Path, split: str, tasks: tuple[str, ...], manifest: Mapping[str, Any]
) -> dict[str, tuple[int, int]]:
    """``{task: (rows, positives)}`` of a prepared split: from the manifest's ``label_counts``
    when it has them, else by reading only the label columns of the split's shards."""
    recorded = manifest.get("label_counts", {}).get(split, {})
    if all(task in recorded for task in tasks):
        return {t: (int(recorded[t]["rows"]), int(recorded[t]["positives"])) for t in tasks}
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from hmoe.platform.core import storage
    from hmoe.platform.data.spec import label_column

    columns = [label_column(task) for task in tasks]
    rows, positives = 0, dict.fromkeys(tasks, 0)
    for shard in manifest["shards"][split]:
        # pyarrow opens an s3:// URI itself
        table = pq.read_table(storage.join(data_dir, shard["path"]), columns=columns)
        rows += table.num_rows
        for task, column in zip(tasks, columns, strict=True):
            positives[task] += int(pc.sum(pc.greater(table[column], 0.5)).as_py() or 0)
    return {task: (rows, positives[task]) for task in tasks}


def _check_splits(rows: Mapping[str, int], data_dir: str) -> None:
    empty = [split for split, count in rows.items() if count == 0]
    if empty:
        raise ConfigError(
            f"the {' and '.join(empty)} split(s) of {data_dir} have no rows: training needs "
            "train rows, validation rows for early stopping and test rows for the final "
            "metrics; prepare the dataset again with a non-zero split fraction for each"
        )


def _check_steps(train: TrainConfig, train_rows: int) -> None:
    workers, batch = train.num_workers, train.batch_size
    per_worker = train_rows // workers
    if workers == 1 or per_worker >= batch:
        return  # one worker keeps its partial last batch: at least one step
    fix = (
        f"set train.batch_size to at most {per_worker} or use fewer workers"
        if per_worker
        else f"use at most {train_rows} workers"
    )
    raise ConfigError(
        f"train.batch_size={batch} gives no optimizer step: the train split's {train_rows} rows "
        f"across train.num_workers={workers} are {per_worker} per worker, and a multi-worker "
        f"run drops each worker's partial last batch; {fix}"
    )


def _check_sequences(cfg: ExperimentConfig, schema: FeatureSchema) -> None:
    kind = cfg.model.encoder.sequence.kind
    if kind in SEQUENCE_MODEL_KINDS and not schema.sequences:
        raise ConfigError(
            f"preset {cfg.preset} is built around a behaviour-sequence encoder "
            f"(model.encoder.sequence.kind={kind}) but the dataset {cfg.data.path} has no "
            "behaviour sequence, so it would train as a plain DNN; use a dataset with a "
            "sequence (`sequences:` in its spec) or a preset without one (e.g. dnn)"
        )


def _check_early_stopping(
    cfg: ExperimentConfig, schema: FeatureSchema, manifest: Mapping[str, Any]
) -> None:
    """The metric that picks the best epoch and the guard that may also stop training: both
    are read every epoch, so either one that the run cannot give fails after the first."""
    watched = {"train.early_stopping_metric": cfg.train.early_stopping_metric}
    if cfg.train.early_stopping_guard is not None:
        watched["train.early_stopping_guard"] = cfg.train.early_stopping_guard
    for field, metric in watched.items():
        _check_watched_metric(cfg, schema, manifest, field, metric)


def _check_watched_metric(
    cfg: ExperimentConfig,
    schema: FeatureSchema,
    manifest: Mapping[str, Any],
    field: str,
    metric: str,
) -> None:
    """That the run and its dataset give the validation ``metric`` that config ``field``
    watches every epoch."""
    setting = f"{field}={metric}"  # as the errors name it
    _split, name, task = split_metric_name(metric)
    if task and task not in schema.tasks:
        raise ConfigError(
            f"{setting} names task {task!r}, but the dataset's tasks are {list(schema.tasks)}"
        )
    if name == IPW_LOGLOSS:
        _check_ipw_metric(cfg, setting, task)
    if name == "gauc" and schema.user_field is None:
        raise ConfigError(
            f"{setting} needs a user field, and the dataset {cfg.data.path} has none; use "
            "val_auc or val_logloss"
        )
    if name not in AUC_METRICS:
        return
    tasks = (task,) if task else schema.tasks
    counts = label_counts(cfg.data.path, METRIC_SPLITS["val"], tasks, manifest)
    single = [
        f"{t}: {positives} of {rows} rows positive"
        for t, (rows, positives) in counts.items()
        if positives in (0, rows)
    ]
    if single:
        raise ConfigError(
            f"{setting} is undefined (NaN) on this validation split, where a task has one "
            f"class ({'; '.join(single)}): set {field}=val_logloss or prepare a validation "
            "split that holds both classes"
        )


def _check_ipw_metric(cfg: ExperimentConfig, setting: str, task: str) -> None:
    """The IPW logloss exists only for the tasks whose positives ``loss.ipw`` re-weights."""
    ipw = cfg.loss.ipw
    if not ipw.enabled:
        raise ConfigError(
            f"{setting} weights the validation positives with the repeated-exposure IPW "
            "weights, and loss.ipw.enabled is false: set loss.ipw.enabled=true or choose "
            "val_logloss"
        )
    if task and ipw.tasks and task not in ipw.tasks:
        raise ConfigError(
            f"{setting} names task {task!r}, but loss.ipw.tasks re-weights only {list(ipw.tasks)}"
        )


def check_resources(train: TrainConfig, data_cpus: float, extra_cpus: float = 0.0) -> None:
    """Refuse a run whose workers can never be placed (Ray would wait for them forever).

    Args:
        train: the workers and their CPUs / GPUs.
        data_cpus: CPUs Ray Data ingest needs beside the workers.
        extra_cpus: CPUs of anything else per run (a Tune trial's driver).
    """
    workers = train.num_workers
    cpus = workers * train.cpus_per_worker + extra_cpus + data_cpus
    gpus = workers * train.gpus_per_worker
    ray = sys.modules.get("ray")  # not imported: certainly not initialised
    connected = ray is not None and ray.is_initialized()
    if not connected and os.environ.get(RAY_ADDRESS_ENV):
        return  # the cluster it will join is checked once connected (this machine is not it)
    if connected:
        have = ray.cluster_resources()
        where = "the connected Ray cluster has"
        needs = {"CPU": cpus, "GPU": gpus}
    else:
        # a local Ray is started with as many logical CPUs as the run needs (ensure_ray), but
        # it cannot make GPUs
        import torch

        have = {"GPU": float(torch.cuda.device_count())}
        where = "this machine has (torch.cuda.device_count())"
        needs = {"GPU": gpus}
    shapes = {
        "CPU": f"{workers} worker(s) x {train.cpus_per_worker:g} + {data_cpus:g} for Ray Data"
        + (f" + {extra_cpus:g} for the trial driver" if extra_cpus else ""),
        "GPU": f"{workers} worker(s) x {train.gpus_per_worker:g}",
    }
    fixes = {
        "CPU": "lower train.cpus_per_worker or --workers, or connect to a larger cluster",
        "GPU": "lower --gpus-per-worker or --workers, or run where there are GPUs",
    }
    for kind, need in needs.items():
        available = float(have.get(kind, 0.0))
        if need > available + CAPACITY_SLACK:
            raise ConfigError(
                f"the run needs {need:g} {kind}s ({shapes[kind]}) but {where} {available:g}; "
                f"{fixes[kind]}"
            )
