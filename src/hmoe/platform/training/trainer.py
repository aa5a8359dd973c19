"""One training run of an ExperimentConfig: standalone, or as a Ray Train ``TorchTrainer``.

``train_loop_per_worker`` is the Ray Train entry point: it rebuilds the config strictly from
the dict the driver logged, streams its shard of the train split, and (rank 0) evaluates,
logs to the MLflow run and logs the model. ``train_standalone`` runs the same loop in-process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hmoe.platform.core.metrics import metric_mode
from hmoe.platform.data.batches import (
    Batch,
    input_columns,
    load_schema,
    make_collate,
    read_split,
    split_dataset,
    split_megabytes,
    split_rows,
)
from hmoe.platform.experiment import ExperimentConfig
from hmoe.platform.tracking.runs import MlflowRun, NullLogger
from hmoe.platform.training.runtime import RayRuntime, StandaloneRuntime
from hmoe.platform.training.train_loop import (
    EpochEndHook,
    EvalData,
    LoopHooks,
    LoopOutcome,
    epoch_score,
    run_loop,
)
from hmoe.schema import FeatureSchema

_LOG = logging.getLogger(__name__)
# Ray Train's own INFO lines (worker group start, each report with every metric, each
# checkpoint) would outnumber the epoch lines in a search's log; they stay in Train's log files
TRAIN_LOG_LEVEL = "WARNING"
# of train.node_resource per worker: a sliver, so one unit on a node admits any worker count
NODE_RESOURCE_PER_WORKER = 0.001

__all__ = [
    "build_model",
    "make_trainer",
    "steps_per_epoch",
    "train_loop_per_worker",
    "train_standalone",
]


def build_model(cfg: ExperimentConfig, schema: FeatureSchema) -> tuple[nn.Module, nn.Module]:
    """(model, TrainWrapper(model, loss)), initialised from ``cfg.train.seed``."""
    from hmoe.models.losses import TrainWrapper
    from hmoe.models.zoo import build

    torch.manual_seed(cfg.train.seed)
    model = build(cfg.model, schema)
    # torch's Adam applies weight decay as a coupled L2, so it can carry the embedding L2
    # (AdamW's decoupled decay is a different regulariser: there the loss keeps it)
    by_optimizer = cfg.train.optimizer == "adam"
    wrapper = TrainWrapper(
        model, cfg.loss, tasks=schema.tasks, embedding_l2_by_optimizer=by_optimizer
    )
    return model, wrapper


def steps_per_epoch(cfg: ExperimentConfig, train_rows: int, world_size: int) -> int:
    """Optimizer steps in one epoch of each of ``world_size`` workers (the schedule's unit)."""
    return max(1, math.ceil(train_rows / world_size / cfg.train.batch_size))


def _model_hook(
    run: MlflowRun, cfg: ExperimentConfig, names: Sequence[str]
) -> Callable[[nn.Module, Batch], Mapping[str, str]]:
    def log(model: nn.Module, example: Batch) -> Mapping[str, str]:
        from hmoe.platform.tracking.registry import log_model

        model_uri, fmt = log_model(
            run, model, example, names, cfg.tracking.model_format, cfg.data.path
        )
        return {"model_uri": model_uri, "format": fmt}

    return log


def _hooks(
    cfg: ExperimentConfig,
    schema: FeatureSchema,
    run_id: str | None,
    progress: Callable[[str], None] | None,
    epoch_end: EpochEndHook | None,
) -> LoopHooks:
    if run_id is None:
        return LoopHooks(logger=NullLogger(), progress=progress, on_epoch_end=epoch_end)
    run = MlflowRun(cfg.tracking.uri, run_id)
    on_final = _model_hook(run, cfg, input_columns(schema)) if cfg.tracking.log_model else None
    return LoopHooks(logger=run, on_final=on_final, progress=progress, on_epoch_end=epoch_end)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker entry point; ``loop_config`` = {experiment: dict, run_id: str | None,
    epoch_end: EpochEndHook | None}."""
    cfg = ExperimentConfig.from_dict(loop_config["experiment"])
    schema = load_schema(cfg.data.path)
    runtime = RayRuntime(
        make_collate(schema),
        cfg.train.batch_size,
        cfg.train.seed,
        cfg.data.shuffle_buffer_rows,
    )
    eval_data = EvalData(val=None)
    hooks = LoopHooks()
    if runtime.rank == 0:
        eval_data = EvalData(
            val=read_split(cfg.data.path, "val", schema),
            test=read_split(cfg.data.path, "test", schema),
        )
        epoch_end = loop_config.get("epoch_end")
        hooks = _hooks(cfg, schema, loop_config.get("run_id"), _worker_progress(), epoch_end)
    model, wrapper = build_model(cfg, schema)
    steps = steps_per_epoch(cfg, split_rows(cfg.data.path, "train"), runtime.world_size)
    run_loop(
        model, wrapper, schema, runtime, eval_data, cfg.train, hooks,
        eval_batch_size=cfg.data.eval_batch_size, steps_per_epoch=steps,
    )  # fmt: skip


def _worker_progress() -> Callable[[str], None]:
    """Rank 0's epoch lines, each once and named by the Train run (``train-<trial id>``).

    Not ``print``: Ray Train patches a worker's ``print`` into its root logger *and* tees it
    to the original stdout whenever something (MLflow) has wrapped ``sys.stdout``, so every
    printed line reached the log twice. A logger reaches Train's console handler once, and its
    application log file too.
    """
    import ray.train

    name = ray.train.get_context().get_experiment_name()

    def say(line: str) -> None:
        _LOG.info("[%s] %s", name, line)

    return say


def train_standalone(
    cfg: ExperimentConfig,
    device: torch.device | str = "cpu",
    run_id: str | None = None,
    checkpoint_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    epoch_end: EpochEndHook | None = None,
) -> LoopOutcome:
    """The same loop in this process, no Ray: the whole train split in memory.

    ``epoch_end``: extra per-epoch metrics (the analysis monitor of ``train.monitor``: the
    caller composes it, as ``hmoe.train`` does)."""
    schema = load_schema(cfg.data.path)
    device = torch.device(device)
    train = read_split(cfg.data.path, "train", schema)
    runtime = StandaloneRuntime(
        train, cfg.train.batch_size, cfg.train.seed, device, checkpoint_dir=checkpoint_dir
    )
    eval_data = EvalData(
        val=read_split(cfg.data.path, "val", schema),
        test=read_split(cfg.data.path, "test", schema),
    )
    model, wrapper = build_model(cfg, schema)
    steps = steps_per_epoch(cfg, int(train["labels"].shape[0]), 1)
    hooks = _hooks(cfg, schema, run_id, progress, epoch_end)
    return run_loop(
        model, wrapper, schema, runtime, eval_data, cfg.train, hooks,
        eval_batch_size=cfg.data.eval_batch_size, steps_per_epoch=steps,
    )  # fmt: skip


def make_trainer(
    cfg: ExperimentConfig,
    run_id: str | None,
    name: str,
    storage_path: str,
    callbacks: Sequence[Any] = (),
    epoch_end: EpochEndHook | None = None,
) -> Any:
    """A ``TorchTrainer`` for ``cfg``: the train split streamed and split across workers.

    ``name`` must be deterministic: running again with the same name and storage resumes the
    run from its latest checkpoint (Ray Train V2 has no ``restore``). A lost worker restarts
    the worker group from that checkpoint up to ``train.max_failures`` times; a deterministic
    error (``hmoe.platform.core.failures``) ends the run at once. ``epoch_end`` travels to
    rank 0 (pickled by reference) and adds its metrics to every epoch.
    """
    import ray.train

    from hmoe.platform.training.retries import FailFastTorchTrainer

    limit = cfg.data.materialize_train_max_mb
    in_memory = limit > 0 and split_megabytes(cfg.data.path, "train") <= limit
    train = split_dataset(cfg.data.path, "train", in_memory=in_memory)
    t = cfg.train
    resources = {"CPU": t.cpus_per_worker} | (
        {"GPU": t.gpus_per_worker} if t.gpus_per_worker else {}
    )
    if t.node_resource is not None:
        resources[t.node_resource] = NODE_RESOURCE_PER_WORKER
    return FailFastTorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": cfg.to_dict(),
            "run_id": run_id,
            "epoch_end": epoch_end,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers,
            use_gpu=t.gpus_per_worker > 0,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            # the best checkpoints by the epoch's own early-stopping value; Ray Train V2 also
            # always keeps the latest, which resumes the run (and holds the best weights too)
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=t.checkpoints_to_keep,
                checkpoint_score_attribute=epoch_score(t.early_stopping_metric),
                checkpoint_score_order=metric_mode(t.early_stopping_metric),
            ),
            callbacks=list(callbacks),
            logging_config=ray.train.LoggingConfig(log_level=TRAIN_LOG_LEVEL),
        ),
        datasets={"train": train},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
