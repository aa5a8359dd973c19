"""The training loop, written once for every place it runs (see ``runtime``).

Per epoch: stream the train batches (shuffled, sharded under DDP), bf16 autocast on CUDA,
gradient clipping, a per-step learning-rate schedule; then rank 0 evaluates the whole
validation split (materialised once, in memory), logs the epoch's metrics in one batched MLflow
call, and every rank reports (a checkpoint from rank 0). Early stopping watches one validation
metric; at the end rank 0 restores the best epoch's weights, evaluates the test split and hands
the model to ``on_final`` (MLflow model logging). A restarted worker group resumes from the
latest checkpoint. On CPU the loop is deterministic for a seed.

With several workers and TorchRec id tables (``model.embedding.backend="torchrec"``) the tables
are sharded across the workers instead of replicated (``hmoe.platform.training.sharding``): every
rank writes its shards into each checkpoint, and rank 0 evaluates, monitors and logs an unsharded
copy that every rank helps to fill after each epoch.

One meaning per metric: epochs are 1-based wherever they are shown (``epoch``, ``best_epoch``,
the MLflow step). MLflow keeps every epoch's own ``val_*`` in the metric history (step =
epoch); when the run ends, the best epoch's ``val_*`` are logged once more at the last step, so
a run's headline ``val_*`` (MLflow's latest value) and its ``test_*`` both describe the best
epoch, whose weights the run keeps. Reports to Ray (Tune, ASHA, Optuna) carry the best epoch so
far as ``val_*`` and the epoch's own early-stopping value as ``epoch_<metric>`` (the checkpoint
score). Per-feature diagnostics (information abundance, gradient conflict) are logged under
``diagnostics/``, a group of their own in MLflow's charts.

A NaN metric is never silent: a per-task AUC, GAUC or logloss that is NaN (a split too small or
with one class) warns once with the split's label counts, and a NaN early-stopping metric ends
the run with ``DegenerateRunError`` (no best epoch could be chosen or restored), after logging
that epoch's metrics.

Legend: ``B`` batch, ``K`` tasks.
"""

from __future__ import annotations

import contextlib
import copy
import math
import resource
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from hmoe.models.losses import (
    POSITIVE_THRESHOLD,
    IPWConfig,
    TrainWrapper,
    fused_table_modules,
    fused_table_parameters,
    ipw_weights,
)
from hmoe.models.torchrec_tables import place_fused_tables
from hmoe.platform.core.failures import DegenerateMetricWarning, DegenerateRunError
from hmoe.platform.core.metrics import (
    IPW_LOGLOSS,
    metric_mode,
    task_metrics,
    weighted_logloss,
)
from hmoe.platform.data.batches import Batch, iter_minibatches
from hmoe.platform.experiment import TrainConfig
from hmoe.platform.tracking.runs import MetricLogger, NullLogger
from hmoe.platform.training.runtime import Runtime
from hmoe.platform.training.sharding import PLAN_ARTIFACT, ShardedTraining, has_torchrec_tables
from hmoe.schema import EXPOSURE, LABELS, OOV_INDEX, PAD_INDEX, FeatureSchema

__all__ = ["EpochEndHook", "EvalData", "LoopHooks", "LoopOutcome", "run_loop"]

SPLIT_NAMES = {"val": "validation", "test": "test"}  # metric prefix -> split, for messages
VAL_PREFIX = "val_"
EPOCH_SCORE_PREFIX = "epoch_"  # epoch_<metric>: an epoch's own value, the checkpoint score
DIAGNOSTICS_PREFIX = "diagnostics/"  # MLflow groups metrics by the part before "/"
PROGRESS_EVERY_S = 60.0  # a line at most this often inside an epoch (an epoch at scale: hours)


def epoch_score(metric: str) -> str:
    """The reported key of an epoch's own value of ``metric`` (Ray Train's checkpoint score)."""
    return f"{EPOCH_SCORE_PREFIX}{metric}"


@dataclass(kw_only=True)
class EvalData:
    """Validation and test splits, materialised in memory on rank 0."""

    val: Batch | None
    test: Batch | None = None


class EpochEndHook(Protocol):
    """Extra metrics at the end of an epoch, on rank 0 (the analysis monitor is one).

    Called with the bare ``TrainWrapper`` (not DDP-wrapped, so no collective runs), the first
    validation mini-batch on the device (``None`` without a validation split) and the 0-based
    epoch; what it returns is logged under ``diagnostics/``.
    """

    def __call__(
        self, train_module: nn.Module, batch: Batch | None, epoch: int
    ) -> Mapping[str, float]: ...


@dataclass(kw_only=True)
class LoopHooks:
    logger: MetricLogger = field(default_factory=NullLogger)
    on_final: Callable[[nn.Module, Batch], Mapping[str, str]] | None = None
    progress: Callable[[str], None] | None = None
    on_epoch_end: EpochEndHook | None = None  # None: no diagnostics


@dataclass(kw_only=True)
class LoopOutcome:
    """What rank 0 knows at the end: the last report and the per-epoch history."""

    final: dict[str, float]
    history: list[dict[str, float]]
    model: nn.Module


def _peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GiB (``ru_maxrss`` is KiB on Linux, the
    platform the workers run on); for a standalone run, that of the calling process's life."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _make_optimizer(train_module: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """The dense optimizer: every parameter but the ``torchrec`` backend's fused tables."""
    fused = {id(p) for p in fused_table_parameters(train_module)}
    params: Iterable[Any] = [p for p in train_module.parameters() if id(p) not in fused]
    if isinstance(train_module, TrainWrapper):
        if train_module.embedding_l2_by_optimizer and t.optimizer != "adam":
            raise ValueError(
                f"the embedding L2 can ride on the optimizer only as Adam's coupled L2, not "
                f"with {t.optimizer!r}: build the TrainWrapper with embedding_l2_by_optimizer=False"
            )
        params = train_module.param_groups(t.weight_decay)
    # fused: one pass over each parameter instead of a chain of foreach kernels; on the
    # 15.5M-value Criteo tables it doubles the dcnv2 step rate at batch 512 (bench_models.py)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)


def _lr_factor(step: int, t: TrainConfig, steps_per_epoch: int) -> float:
    """Linear warmup, then constant, cosine or linear decay over the whole run."""
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    total = max(1, t.epochs * steps_per_epoch - t.warmup_steps)
    progress = min(1.0, (step - t.warmup_steps) / total)
    if t.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if t.lr_schedule == "linear":
        return 1.0 - progress
    return 1.0


def _autocast(device: torch.device, use_bf16: bool) -> contextlib.AbstractContextManager:
    if use_bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Batch,
    schema: FeatureSchema,
    split: str,
    device: torch.device,
    batch_size: int,
    use_bf16: bool = False,
    ipw: IPWConfig | None = None,
) -> dict[str, float]:
    """Every metric of ``split`` (AUC, logloss, GAUC per task and their means); with ``ipw``
    enabled also the IPW logloss of the tasks it re-weights (``ipw_logloss_metrics``)."""
    was_training = model.training
    model.eval()
    logits = []
    for batch in iter_minibatches(data, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        with _autocast(device, use_bf16):
            logits.append(model(batch).float().cpu())
    model.train(was_training)
    logits_BK = torch.cat(logits).numpy()
    users = data[schema.user_field].numpy() if schema.user_field is not None else None
    out = task_metrics(
        split, schema.tasks, logits_BK, data[LABELS].numpy(), users, (PAD_INDEX, OOV_INDEX)
    )
    if ipw is not None and ipw.enabled:
        out |= ipw_logloss_metrics(split, schema.tasks, logits_BK, data, ipw)
    return out


def ipw_logloss_metrics(
    split: str, tasks: tuple[str, ...], logits_BK: np.ndarray, data: Batch, ipw: IPWConfig
) -> dict[str, float]:
    """``{split}_ipw_logloss_{task}`` per task that ``ipw`` re-weights, and their mean
    ``{split}_ipw_logloss``: the split's logloss with the training loss's IPW weights.

    An estimate of the logloss against the interest rather than the exposure-inflated clicks,
    so it can pick the best epoch of an IPW run (``train.early_stopping_metric``): the
    observed-click AUC or logloss reward the very inflation IPW removes. The weights are
    ``ipw_weights`` of the split's exposure counts, renormalised to mean 1 over the whole
    split's positives of the task (training renormalises per batch; one split-wide constant
    keeps every epoch's value comparable and independent of the eval batch size); negatives
    weigh 1, and the loss is self-normalised, ``sum(w * l) / sum(w)``.
    """
    if EXPOSURE not in data:
        raise ValueError(f"IPW is enabled but the {split} split has no {EXPOSURE!r} column")
    labels_BK = data[LABELS].numpy().astype(np.float64)
    probs_BK = 1.0 / (1.0 + np.exp(-np.asarray(logits_BK, dtype=np.float64)))
    exposure_B = data[EXPOSURE].to(torch.float64)
    out: dict[str, float] = {}
    for k, task in enumerate(tasks):
        if ipw.tasks and task not in ipw.tasks:
            continue
        positive_B = torch.from_numpy(labels_BK[:, k] > POSITIVE_THRESHOLD)
        weight_B = ipw_weights(exposure_B, ipw, positive_B).numpy()
        out[f"{split}_{IPW_LOGLOSS}_{task}"] = weighted_logloss(
            labels_BK[:, k], probs_BK[:, k], weight_B
        )
    if out:
        out[f"{split}_{IPW_LOGLOSS}"] = float(np.mean(list(out.values())))
    return out


@dataclass(kw_only=True)
class _State:
    epoch: int = 0
    step: int = 0
    best: float = math.nan
    best_epoch: int = -1
    bad_epochs: int = 0
    guard_best: float = math.nan  # early_stopping_guard's best value so far
    guard_bad_epochs: int = 0  # epochs since it last improved
    best_model: dict[str, torch.Tensor] | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)  # the best epoch's val_*
    history: list[dict[str, float]] = field(default_factory=list)
    warned: set[str] = field(default_factory=set)  # NaN metrics warned about (not checkpointed)


def _improved(value: float, best: float, mode: str) -> bool:
    if math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


def _train_epoch(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    runtime: Runtime,
    state: _State,
    t: TrainConfig,
    resumed: bool,
    progress: _EpochProgress,
) -> tuple[float, int]:
    """One pass over this worker's train batches: (mean loss, rows seen)."""
    module.train()
    total_loss, rows = 0.0, 0
    for step_in_epoch, batch in enumerate(runtime.train_batches(state.epoch), start=1):
        runtime.maybe_fail(state.step, t.fail_at_step, resumed)
        with _autocast(runtime.device, t.use_bf16):
            loss, _ = module(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(module.parameters(), t.grad_clip_norm)
        optimizer.step()
        scheduler.step()
        num_rows = int(batch[LABELS].shape[0])
        total_loss += float(loss.detach()) * num_rows
        rows += num_rows
        state.step += 1
        progress.maybe_say(step_in_epoch, rows, total_loss)
    return total_loss / max(rows, 1), rows


class _EpochProgress:
    """A line every ``PROGRESS_EVERY_S`` inside a long epoch (rank 0; ``say`` None: silent)."""

    def __init__(
        self, say: Callable[[str], None] | None, epoch: int, epochs: int, steps: int, world: int
    ) -> None:
        self.say, self.epoch, self.epochs = say, epoch, epochs
        self.steps, self.world = steps, world
        self.started = self.last = time.perf_counter()

    def maybe_say(self, step: int, rows: int, total_loss: float) -> None:
        now = time.perf_counter()
        if self.say is None or now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        self.say(
            f"epoch {self.epoch + 1}/{self.epochs}  step {step}/{self.steps}  "
            f"train_loss={total_loss / max(rows, 1):.4f}  "
            f"train_samples_per_s={rows * self.world / (now - self.started):.0f}"
        )


def _restore(
    runtime: Runtime,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    sharded: ShardedTraining | None,
) -> tuple[_State, bool]:
    checkpoint = runtime.load_checkpoint(sharded.load if sharded is not None else None)
    if checkpoint is None:
        return _State(), False
    if sharded is None:  # sharded tables came back through ``sharded.load``
        model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    for tables, table_state in zip(
        fused_table_modules(model) if sharded is None else [],
        checkpoint.get("table_optimizers", []),
        strict=True,
    ):
        tables.fused_optimizer().load_state_dict(table_state)
    scheduler.load_state_dict(checkpoint["scheduler"])
    state = _State(**checkpoint["state"])
    state.epoch += 1  # the checkpoint is taken at the end of its epoch
    return state, True


def _checkpoint(model: nn.Module | None, optimizer: Any, scheduler: Any, state: _State) -> dict:
    """Rank 0's part of a checkpoint (``model`` None: the ranks write the sharded model)."""
    fields = (
        "epoch", "step", "best", "best_epoch", "bad_epochs", "guard_best", "guard_bad_epochs",
        "best_model", "best_metrics", "history",
    )  # fmt: skip
    weights = {"model": model.state_dict()} if model is not None else {}
    return weights | {
        "optimizer": optimizer.state_dict(),
        # the fused tables' optimizer state (Adagrad accumulators) lives in FBGEMM
        # (sharded tables: in every rank's shards instead)
        "table_optimizers": [
            t.fused_optimizer().state_dict()
            for t in (fused_table_modules(model) if model is not None else [])
        ],
        "scheduler": scheduler.state_dict(),
        "state": {name: getattr(state, name) for name in fields},
    }


def _finish(
    model: nn.Module,
    eval_data: EvalData,
    schema: FeatureSchema,
    runtime: Runtime,
    state: _State,
    t: TrainConfig,
    eval_batch_size: int,
    hooks: LoopHooks,
    ipw: IPWConfig | None,
) -> dict[str, float]:
    """Rank 0 after the last epoch: best weights back, the best epoch's validation metrics
    (the run's headline ``val_*``), test metrics, the model handed over."""
    if state.best_model is not None:
        model.load_state_dict(state.best_model)
    out: dict[str, float] = {"best_epoch": float(state.best_epoch + 1), **state.best_metrics}
    if eval_data.test is not None:
        out |= evaluate(
            model, eval_data.test, schema, "test", runtime.device, eval_batch_size, t.use_bf16,
            ipw,
        )  # fmt: skip
        _warn_nan(_nan_metrics(out, "test", eval_data.test, schema.tasks), state)
    if hooks.on_final is not None and eval_data.val is not None:
        example = next(iter_minibatches(eval_data.val, min(8, eval_batch_size)))
        started = time.perf_counter()
        hooks.on_final(model, example)
        out["model_log_seconds"] = time.perf_counter() - started
    return out


def run_loop(
    model: nn.Module,
    train_module: nn.Module,
    schema: FeatureSchema,
    runtime: Runtime,
    eval_data: EvalData,
    t: TrainConfig,
    hooks: LoopHooks | None = None,
    *,
    eval_batch_size: int,
    steps_per_epoch: int,
) -> LoopOutcome:
    """Train ``train_module`` (the loss wrapper around ``model``) for ``t.epochs`` epochs.

    Args:
        model: the bare model (evaluated, checkpointed and logged; it shares its parameters
            with ``train_module``).
        train_module: ``TrainWrapper(model, loss)``; ``runtime.prepare`` wraps it in DDP.
        schema: task names and the user field (GAUC).
        runtime: standalone or Ray Train (see ``hmoe.platform.training.runtime``).
        eval_data: rank 0's validation and test splits (``None`` on other ranks).
        t: the run's ``TrainConfig``: epochs, optimiser, schedule, early stopping, precision and
            fault injection (``batch_size`` and the resources are the runtime's).
        hooks: metric logger, final-model hook, progress printer, epoch-end hook (rank 0
            only).
        eval_batch_size: rows per forward when evaluating (``data.eval_batch_size``).
        steps_per_epoch: optimizer steps in one epoch of this worker, for the schedule.
    """
    hooks = hooks or LoopHooks()
    # the loss's IPW settings also give the validation split its IPW logloss
    ipw = train_module.config.ipw if isinstance(train_module, TrainWrapper) else None
    torch.manual_seed(t.seed)
    np.random.seed(t.seed)
    # the torchrec backend's tables onto FBGEMM's kernels for the device (a no-op on CPU);
    # Module.to, in prepare or DMP, moves only the weights
    place_fused_tables(model, runtime.device)
    sharded = None
    if runtime.world_size > 1 and has_torchrec_tables(train_module):
        sharded = ShardedTraining(model, train_module, runtime.device, runtime.rank)
        module = sharded.dmp
        if sharded.local_model is not None and sharded.local_wrapper is not None:
            model, train_module = sharded.local_model, sharded.local_wrapper  # rank 0's copy
            hooks.logger.log_text(sharded.plan_json(), PLAN_ARTIFACT)
        # the sharded module: rank 0's copy holds none of the parameters being trained
        optimizer = _make_optimizer(sharded.dmp.module, t)
    else:
        module = runtime.prepare(train_module)
        optimizer = _make_optimizer(train_module, t)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: _lr_factor(i, t, steps_per_epoch)
    )
    state, resumed = _restore(runtime, model, optimizer, scheduler, sharded)
    write_shards = sharded.save if sharded is not None else None
    resumed_from = {"resumed_from_epoch": float(state.epoch)} if resumed else {}
    mode = metric_mode(t.early_stopping_metric)
    final: dict[str, float] = state.history[-1] if state.history else {}
    while state.epoch < t.epochs:
        started = time.perf_counter()
        progress = _EpochProgress(
            hooks.progress, state.epoch, t.epochs, steps_per_epoch, runtime.world_size
        )
        train_loss, rows = _train_epoch(
            module, optimizer, scheduler, runtime, state, t, resumed, progress
        )
        seconds = time.perf_counter() - started
        metrics: dict[str, float] = {
            "epoch": float(state.epoch + 1),
            "train_loss": train_loss,
            "lr": float(scheduler.get_last_lr()[0]),
            "train_seconds": seconds,
            "train_samples_per_s": rows * runtime.world_size / max(seconds, 1e-9),
            **resumed_from,
        }
        stop = False
        if sharded is not None:
            sharded.sync_local()  # every rank: the tables gathered into rank 0's copy
        if runtime.rank == 0:
            try:
                stop = _after_epoch(
                    model, schema, runtime, eval_data, state, t, eval_batch_size, metrics, mode,
                    ipw,
                )  # fmt: skip
            except DegenerateRunError:
                # the failed epoch's metrics stay visible in MLflow
                hooks.logger.log_metrics(metrics, step=state.epoch + 1)
                raise
            metrics |= _diagnostics(train_module, eval_data, runtime, state, eval_batch_size, hooks)
        # the largest worker's peak so far, the epoch's gather and validation included (each
        # worker must fit its own machine); every rank calls it here
        metrics["worker_peak_rss_gb"] = max(runtime.gather(_peak_rss_gb()))
        stop = runtime.agree(stop) or state.epoch == t.epochs - 1
        if runtime.rank == 0:
            headline = (
                _finish(model, eval_data, schema, runtime, state, t, eval_batch_size, hooks, ipw)
                if stop
                else {}
            )
            weights = model if sharded is None else None
            checkpoint = _checkpoint(weights, optimizer, scheduler, state)
            final = _report_rank0(
                metrics, headline, checkpoint, runtime, state, t, hooks, write_shards
            )
        else:
            runtime.report(metrics, None, write_shards)
            final = metrics
        if stop:
            break
        state.epoch += 1
    return LoopOutcome(final=final, history=state.history, model=model)


def _report_rank0(
    metrics: dict[str, float],
    headline: dict[str, float],
    checkpoint: dict[str, Any],
    runtime: Runtime,
    state: _State,
    t: TrainConfig,
    hooks: LoopHooks,
    write_shards: Callable[[Path], None] | None,
) -> dict[str, float]:
    """Log the epoch (one batched tracking call; at the end a second one with the headline
    metrics), print it, and report it with a checkpoint; returns what was reported."""
    step = state.epoch + 1
    metrics["tracking_seconds"] = hooks.logger.seconds
    hooks.logger.log_metrics(metrics, step=step)
    if headline:
        hooks.logger.log_metrics(headline, step=step)
    state.history.append(metrics)
    checkpoint["state"]["history"] = state.history
    if hooks.progress is not None:
        hooks.progress(_progress_line(metrics, t))
    own = metrics.get(t.early_stopping_metric)
    reported = metrics | state.best_metrics | headline
    if own is not None:
        reported[epoch_score(t.early_stopping_metric)] = own
    runtime.report(reported, checkpoint, write_shards)
    return reported


def _after_epoch(
    model: nn.Module,
    schema: FeatureSchema,
    runtime: Runtime,
    eval_data: EvalData,
    state: _State,
    t: TrainConfig,
    eval_batch_size: int,
    metrics: dict[str, float],
    mode: str,
    ipw: IPWConfig | None,
) -> bool:
    """Rank 0: validation metrics into ``metrics``, best-epoch bookkeeping; True = stop early."""
    if eval_data.val is None:
        return False
    metrics |= evaluate(
        model, eval_data.val, schema, "val", runtime.device, eval_batch_size, t.use_bf16, ipw
    )
    value = metrics.get(t.early_stopping_metric, math.nan)
    if t.early_stopping_metric not in metrics:
        raise ValueError(
            f"early-stopping metric {t.early_stopping_metric!r} is not computed; "
            f"choose one of {sorted(k for k in metrics if k.startswith('val_'))}"
        )
    nan = _nan_metrics(metrics, "val", eval_data.val, schema.tasks)
    _warn_nan(nan, state)
    if math.isnan(value):
        metric = t.early_stopping_metric
        why = [reason for key, reason in nan.items() if key.startswith(f"{metric}_")]
        raise DegenerateRunError(
            f"the early-stopping metric {metric} is NaN after epoch {state.epoch + 1} "
            f"({'; '.join(why) or 'the validation outputs are not finite'}), so no best epoch "
            "can be chosen: set train.early_stopping_metric to one that is defined here (e.g. "
            "val_logloss) or prepare a validation split with both classes for every task"
        )
    improved = _improved(value, state.best, mode)
    if improved:
        state.best, state.best_epoch, state.bad_epochs = value, state.epoch, 0
        state.best_metrics = {k: v for k, v in metrics.items() if k.startswith(VAL_PREFIX)}
    else:
        state.bad_epochs += 1
    patience = t.early_stopping_patience
    stalled = state.bad_epochs
    guard = t.early_stopping_guard
    if guard is not None:
        if guard not in metrics:
            raise ValueError(
                f"early-stopping guard {guard!r} is not computed; "
                f"choose one of {sorted(k for k in metrics if k.startswith('val_'))}"
            )
        if _improved(metrics[guard], state.guard_best, metric_mode(guard)):
            state.guard_best, state.guard_bad_epochs = metrics[guard], 0
        else:
            state.guard_bad_epochs += 1
        stalled = max(stalled, state.guard_bad_epochs)
    stop = patience > 0 and stalled >= patience
    if improved:
        # the weights of a best epoch that ends the run are the model's own: a copy would
        # double the id tables, a run's largest allocation at ads scale
        last = stop or state.epoch == t.epochs - 1
        state.best_model = (
            None if last else copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})
        )
    return stop


def _nan_metrics(
    metrics: Mapping[str, float], split: str, data: Batch, tasks: tuple[str, ...]
) -> dict[str, str]:
    """``{split}_{metric}_{task}`` keys that are NaN -> why, from the split's label and exposure
    counts."""
    positive_BK = data[LABELS].numpy() > 0.5
    rows = len(positive_BK)
    name = SPLIT_NAMES.get(split, split)
    out = {}
    for k, task in enumerate(tasks):
        positives = int(positive_BK[:, k].sum())
        counts = f"the {name} split has {rows} row(s), {positives} positive for task {task}"
        hints = {
            "auc": f"AUC needs both classes and {counts}",
            "gauc": f"GAUC needs a user with both classes, and no user has both ({counts})",
            "logloss": f"{counts}, or the model's outputs are not finite",
            IPW_LOGLOSS: _ipw_nan_hint(data, positive_BK[:, k], counts),
        }
        for metric, hint in hints.items():
            key = f"{split}_{metric}_{task}"
            if key in metrics and math.isnan(metrics[key]):
                out[key] = f"{key} is NaN: {hint}"
    return out


def _ipw_nan_hint(data: Batch, positive_B: np.ndarray, counts: str) -> str:
    """Why a task's IPW logloss can be NaN. ``weighted_logloss`` is NaN on a split without rows;
    otherwise only a NaN weight or output does it: ``ipw_weights`` turns a NaN exposure count
    of a positive into a NaN weight and, renormalising over the positives, spreads it to every
    positive. Neither a split without positives (every weight is then 1) nor one without an
    exposure column (``ipw_logloss_metrics`` refuses it) gives NaN."""
    exposure_B = data[EXPOSURE].numpy() if EXPOSURE in data else np.zeros(len(positive_B))
    num_nan = int(np.isnan(exposure_B[positive_B]).sum())
    if num_nan:
        return (
            f"{num_nan} positive row(s) have a NaN {EXPOSURE} count, which makes every "
            f"positive's IPW weight NaN ({counts}); check the split's {EXPOSURE} column"
        )
    if not len(positive_B):
        return f"{counts}, and a logloss over no rows is undefined"
    return f"the model's outputs are not finite ({counts})"


def _warn_nan(reasons: Mapping[str, str], state: _State) -> None:
    """Warn once per metric key and run."""
    for key, reason in reasons.items():
        if key not in state.warned:
            state.warned.add(key)
            warnings.warn(reason, DegenerateMetricWarning, stacklevel=2)


def _diagnostics(
    train_module: nn.Module,
    eval_data: EvalData,
    runtime: Runtime,
    state: _State,
    eval_batch_size: int,
    hooks: LoopHooks,
) -> dict[str, float]:
    """Rank 0: the epoch-end hook's metrics (e.g. information abundance per set and field, and
    per-task gradient conflict) on the first validation mini-batch."""
    if hooks.on_epoch_end is None:
        return {}
    batch = None
    if eval_data.val is not None:
        batch = {k: v[:eval_batch_size].to(runtime.device) for k, v in eval_data.val.items()}
    found = hooks.on_epoch_end(train_module, batch, state.epoch)
    return {f"{DIAGNOSTICS_PREFIX}{key}": value for key, value in found.items()}


def _progress_line(metrics: Mapping[str, float], t: TrainConfig) -> str:
    keys = ("train_loss", "val_auc", "val_logloss", "val_gauc", "train_samples_per_s")
    shown = "  ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)
    return f"epoch {int(metrics['epoch'])}/{t.epochs}  {shown}"
