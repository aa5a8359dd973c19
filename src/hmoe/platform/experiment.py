"""ExperimentConfig: everything one training run needs, as one strict, hashable config.

``ExperimentConfig = data + model + loss + train + tracking``, built from a model preset and a
prepared dataset, then changed only through ``apply_overrides`` (the CLI's ``--set``, the search
spaces, the tests). ``to_dict`` is what MLflow logs and what a Ray worker reads back with the
strict ``from_dict``, so what a worker trains is provably what was logged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from hmoe.config import Config, ConfigError, apply_overrides, config
from hmoe.models.embeddings import CPU_TABLE_OPTIMIZERS
from hmoe.models.losses import LossConfig
from hmoe.models.ranker import ModelConfig
from hmoe.platform.core.metrics import split_metric_name
from hmoe.platform.core.ray_start import RAY_BUILTIN_RESOURCES
from hmoe.platform.tracking.runs import DEFAULT_TRACKING_URI

__all__ = [
    "HEADLINE_PARAMS",
    "CollapseConfig",
    "DataConfig",
    "ExperimentConfig",
    "MonitorConfig",
    "TrackingConfig",
    "TrainConfig",
    "build_experiment",
    "logged_params",
    "run_name",
    "trial_run_name",
]

DEFAULT_EXPERIMENT = "hmoe"
DEFAULT_STORAGE = "hmoe_runs"  # Ray Train/Tune run folders (checkpoints), beside mlflow.db
# the MLflow params of every run besides a search's sampled values (the rest: config.json)
HEADLINE_PARAMS = ("preset", "train.epochs", "train.lr", "train.batch_size", "train.seed")
TRIAL_NAME_VALUES_CHARS = 80  # the sampled-values part of a trial's run name, at most


@config
class CollapseConfig(Config):
    """How spectra are computed.

    ``eps`` guards the row normalisation of all-zero rows (the padding row stays zero and adds
    nothing to the spectrum); ``chunk_rows`` bounds the memory of one Gram-matrix step.
    """

    eps: float = 1e-8
    chunk_rows: int = 65536

    def __post_init__(self) -> None:
        if self.eps <= 0.0:
            raise ConfigError(f"eps must be > 0, got {self.eps}")
        if self.chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be >= 1, got {self.chunk_rows}")


@config
class MonitorConfig(Config):
    """The per-epoch monitor (cheap enough to leave on).

    Args:
        information_abundance: log ``ia_{set}_{field}`` (watch dimensional collapse happen).
        gradient_conflict: log ``grad_cos_{a}_{b}`` for multi-task models.
        every_n_epochs: log after epochs ``1, 1 + n, 1 + 2n, ...`` and the others not at all.
        spectrum: how the singular values are computed.
    """

    information_abundance: bool = True
    gradient_conflict: bool = True
    every_n_epochs: int = 1
    spectrum: CollapseConfig = CollapseConfig()

    def __post_init__(self) -> None:
        if self.every_n_epochs < 1:
            raise ConfigError(f"every_n_epochs must be >= 1, got {self.every_n_epochs}")


@config
class DataConfig(Config):
    """The prepared dataset and how it is read.

    ``shuffle_buffer_rows``: rows of the local shuffle buffer of each Train worker (0: no
    shuffling; standalone runs shuffle the whole split). ``eval_batch_size``: rows per forward
    when evaluating the validation and test splits. ``materialize_train_max_mb``: a train split
    that takes at most this many MB in memory (its Arrow columns, estimated from a sample of
    its first shard, since the stored Parquet is often 20x smaller) is read once, by the
    process that starts the run, into the Ray object store instead of being streamed from the
    shards again every epoch (which costs a read start-up per epoch, a large share of a short
    epoch); larger splits stream. 0 always streams.
    """

    path: str  # the prepared directory (hmoe data prepare --out)
    shuffle_buffer_rows: int = 20_000
    eval_batch_size: int = 4096
    materialize_train_max_mb: int = 512

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("data.path must name a prepared dataset directory")
        if self.shuffle_buffer_rows < 0 or self.eval_batch_size < 1:
            raise ConfigError("shuffle_buffer_rows must be >= 0 and eval_batch_size >= 1")
        if self.materialize_train_max_mb < 0:
            raise ConfigError("materialize_train_max_mb must be >= 0")


@config
class TrainConfig(Config):
    """Optimisation, early stopping, resources and fault tolerance of one training run.

    ``batch_size`` is per worker. ``grad_clip_norm=None`` disables clipping;
    ``early_stopping_patience=0`` disables early stopping (the best epoch is still restored at
    the end). ``use_bf16`` autocasts to bfloat16 on CUDA only (CPU runs stay float32, so they
    are deterministic for a ``seed``). ``max_failures``: worker-group restarts from the latest
    checkpoint after a lost worker (a deterministic error is not retried). ``fail_at_step`` is
    fault injection for resilience tests: the last worker kills itself at that global step,
    once (a resumed run does not fail again). ``checkpoints_to_keep``: checkpoints kept besides
    the latest, the best by the epoch's own early-stopping metric (default 1: the best and the
    last; older ones are deleted as the run goes). ``node_resource``: a custom Ray resource
    (``ray start --resources '{"NAME": 1}'``) the Train workers ask a sliver of, so that they run
    on the nodes that offer it while one is alive, and anywhere once none is (a preference: a
    lost node's trial restarts elsewhere).
    """

    epochs: int = 4  # passes over the train split (at most, with early stopping)
    batch_size: int = 512
    lr: float = 1e-3  # the optimizer's learning rate (peak, after warmup)
    weight_decay: float = 0.0  # the optimizer's weight decay (adamw: decoupled)
    optimizer: Literal["adam", "adamw"] = "adam"  # adam or adamw
    # after warmup: constant, cosine or linear decay to 0
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0  # linear warmup from 0 over these optimizer steps
    grad_clip_norm: float | None = 10.0
    # the validation metric that picks the best epoch: val_<auc|gauc|logloss>[_<task>], or with
    # loss.ipw on, val_ipw_logloss[_<task>] (the IPW-weighted logloss, minimised)
    early_stopping_metric: str = "val_auc"
    early_stopping_patience: int = 2
    # a second validation metric (e.g. val_logloss) that also stops training once it has not
    # improved for early_stopping_patience epochs: on small data the loss climbs while the
    # AUC still wanders; the best epoch stays early_stopping_metric's. None: off
    early_stopping_guard: str | None = None
    num_workers: int = 1  # Ray Train workers (data-parallel)
    cpus_per_worker: float = 1.0  # logical CPUs each worker holds
    gpus_per_worker: float = 0.0  # GPUs each worker holds (a fraction shares one)
    seed: int = 0  # seeds the init, the shuffling and dropout
    use_bf16: bool = True
    max_failures: int = 2
    checkpoints_to_keep: int = 1
    storage_path: str = DEFAULT_STORAGE  # where Ray Train keeps run folders and checkpoints
    fail_at_step: int | None = None
    node_resource: str | None = None
    # per-epoch information abundance on rank 0 (cheap: left on); the gradient conflict needs an
    # extra forward/backward on rank 0 and is opt-in (train.monitor.gradient_conflict=true)
    monitor: MonitorConfig | None = MonitorConfig(gradient_conflict=False)

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "num_workers")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("train.lr must be > 0, weight_decay and warmup_steps >= 0")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ConfigError("train.grad_clip_norm must be > 0 or null")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ConfigError("train.cpus_per_worker must be > 0 and gpus_per_worker >= 0")
        if self.early_stopping_patience < 0 or self.max_failures < 0:
            raise ConfigError("train.early_stopping_patience and max_failures must be >= 0")
        if self.node_resource is not None and self.node_resource in RAY_BUILTIN_RESOURCES:
            raise ConfigError(
                f"train.node_resource must be a custom resource, not {self.node_resource!r}"
            )
        if self.checkpoints_to_keep < 1:
            raise ConfigError("train.checkpoints_to_keep must be >= 1")
        watched = {"early_stopping_metric": self.early_stopping_metric}
        if self.early_stopping_guard is not None:
            watched["early_stopping_guard"] = self.early_stopping_guard
        for name, metric in watched.items():
            split, kind, _task = split_metric_name(metric)
            if split != "val" or not kind:
                raise ConfigError(
                    f"train.{name} must be a validation metric such as val_auc, "
                    f"val_logloss, val_gauc_<task> or val_ipw_logloss, got {metric!r}"
                )


@config
class TrackingConfig(Config):
    """MLflow: where runs go, and the registry name of the best model.

    ``uri`` defaults to an embedded sqlite store in the working directory (``mlflow ui
    --backend-store-uri sqlite:///mlflow.db`` shows it); a server URI works the same.
    ``registered_model=None`` registers as ``<experiment>-best``. ``model_format``: ``auto``
    tries MLflow's ``pt2`` and falls back to ``pickle``.
    """

    uri: str = DEFAULT_TRACKING_URI
    experiment: str = DEFAULT_EXPERIMENT  # the MLflow experiment runs go into
    registered_model: str | None = None
    log_model: bool = True  # log the trained model with each run
    model_format: Literal["auto", "pt2", "pickle"] = "auto"

    @property
    def registry_name(self) -> str:
        return self.registered_model or f"{self.experiment}-best"


@config
class ExperimentConfig(Config):
    """One training run: ``preset`` names the model preset it was built from."""

    preset: str
    data: DataConfig
    model: ModelConfig
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()

    def __post_init__(self) -> None:
        if self.model.use_sparse_gradients:
            # the loop builds one fused Adam/AdamW, which rejects sparse gradients mid-epoch;
            # SparseAdam on the id tables is timed by benchmarks/bench_models.py only
            raise ConfigError(
                "model.use_sparse_gradients=true is not supported by hmoe train: its optimizer "
                "(fused Adam/AdamW) cannot take sparse id-table gradients; set it to false"
            )
        embedding = self.model.embedding
        if (
            embedding.backend == "torchrec"
            and self.train.gpus_per_worker == 0
            and embedding.table_optimizer not in CPU_TABLE_OPTIMIZERS
        ):
            # FBGEMM's CPU build has no kernel for it: fail here, not in every worker
            raise ConfigError(
                f"model.embedding.table_optimizer={embedding.table_optimizer!r} needs CUDA "
                f"(train.gpus_per_worker > 0); on CPU: {' or '.join(CPU_TABLE_OPTIMIZERS)}"
            )


def run_name(cfg: ExperimentConfig) -> str:
    """The MLflow run name of the run-identity contract: ``{preset}-{config_hash}``."""
    return f"{cfg.preset}-{cfg.config_hash()}"


def logged_params(cfg: ExperimentConfig, searched: Mapping[str, Any]) -> dict[str, Any]:
    """What a run logs as MLflow params: ``HEADLINE_PARAMS`` and the ``searched`` values."""
    headline = {path: _lookup(cfg, path) for path in HEADLINE_PARAMS}
    return headline | dict(searched)


def trial_run_name(base: ExperimentConfig, params: Mapping[str, Any], trial_id: str) -> str:
    """A trial's MLflow run name: the sampled values that differ from the base config first
    (short keys, as the UI's run list cuts long names at the end), then preset and trial id.

    ``lr=0.0031 mlp=2 dcnv2=1 · hmoe · 8f2a1_00003``
    """
    differing = {k: v for k, v in sorted(params.items()) if _lookup(base, k) != v}
    leaves = [path.rsplit(".", 1)[-1] for path in differing]
    parts = []
    for path, leaf in zip(differing, leaves, strict=True):
        # two paths with the same last key keep their parent key to stay apart
        key = leaf if leaves.count(leaf) == 1 else ".".join(path.split(".")[-2:])
        parts.append(f"{key}={_short_value(differing[path])}")
    values = " ".join(parts)
    if len(values) > TRIAL_NAME_VALUES_CHARS:
        values = values[: TRIAL_NAME_VALUES_CHARS - 1] + "…"
    return " · ".join(part for part in (values, base.preset, trial_id) if part)


def _short_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def build_experiment(
    preset: str,
    data: str | Path,
    overrides: Mapping[str, Any] | None = None,
    **options: Any,
) -> ExperimentConfig:
    """A validated ExperimentConfig from a preset, a prepared dir and dotted overrides.

    ``options`` are the CLI's shortcuts, each a dotted path: ``workers`` -> train.num_workers,
    ``gpus_per_worker``, ``tracking_uri`` -> tracking.uri, ``experiment`` ->
    tracking.experiment, ``registered_model`` (``None`` values are ignored). Unknown presets,
    options and override paths raise ``ConfigError`` naming them, before anything runs.
    """
    from hmoe.models.zoo import PRESETS

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {sorted(PRESETS)}")
    shortcuts = {
        "workers": "train.num_workers",
        "gpus_per_worker": "train.gpus_per_worker",
        "tracking_uri": "tracking.uri",
        "experiment": "tracking.experiment",
        "registered_model": "tracking.registered_model",
    }
    unknown = sorted(set(options) - set(shortcuts))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown}; valid: {sorted(shortcuts)}")
    from hmoe.platform.core import storage
    from hmoe.platform.data.reader import load_manifest

    load_manifest(data)  # a clear FileNotFoundError for a path that is not a prepared dataset
    made = PRESETS[preset]()
    base = ExperimentConfig(
        preset=preset,
        data=DataConfig(path=storage.absolute(data)),
        model=made.model,
        loss=made.loss,
    )
    changes = {shortcuts[k]: v for k, v in options.items() if v is not None}
    changes |= dict(overrides or {})
    return apply_overrides(base, changes)


def _lookup(cfg: Config, path: str) -> Any:
    node: Any = cfg
    for key in path.split("."):
        if isinstance(node, Mapping):
            node = node.get(key)
        elif dataclasses.is_dataclass(node) and hasattr(node, key):
            node = getattr(node, key)
        else:
            return None
    return node
