"""The three analyses end to end on a model (and a prepared dataset): plots + metrics.

Each ``*_report`` function returns a ``Report`` (the PNG files it wrote and the metrics it
computed); ``hmoe.platform.analysis.api.analyze`` feeds them a model loaded from MLflow and logs
the result to the run. Metric names: ``ia_{set}_{field}``, ``corr_fidelity_{set}`` (and
``corr_fidelity_planted_{set}``, ``corr_truth_vs_planted`` on synthetic data),
``entangle_conflict_share``, ``entangle_middle_share_{model}_{set}``.

Legend for shape suffixes: ``N`` rows / pairs, ``L`` sequence, ``C`` categories, ``P`` slots.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from hmoe.config import Config, ConfigError, config
from hmoe.models.features import FeatureEncoder
from hmoe.platform.analysis import correlation as corr
from hmoe.platform.analysis import entanglement as ent
from hmoe.platform.analysis.access import TASK_SET_PREFIX, embedding_sets, feature_encoders
from hmoe.platform.analysis.collapse import (
    CollapseConfig,
    information_abundance_metrics,
    metric_name,
    spectra_by_set,
)
from hmoe.platform.analysis.inputs import iter_columns, load_planted, resolve_label
from hmoe.platform.analysis.plots import (
    PlotStyle,
    plot_correlation_heatmaps,
    plot_entanglement_histograms,
    plot_spectrum_heatmaps,
)
from hmoe.schema import METRIC_SPLITS, FeatureSchema, SequenceFeature, seq_column

__all__ = [
    "ANALYSIS_KINDS",
    "AnalysisConfig",
    "Report",
    "collapse_report",
    "correlation_report",
    "entanglement_report",
]

ANALYSIS_KINDS: tuple[str, ...] = ("collapse", "correlation", "entanglement")
ALL_SPLITS = tuple(METRIC_SPLITS)


@config
class AnalysisConfig(Config):
    """Every knob of the three analyses and of reading the data.

    ``correlation_splits``: the splits the ground-truth counts are taken over (TIN's code uses
    all of them); ``read_batch_rows``: rows per read of a shard.
    """

    collapse: CollapseConfig = CollapseConfig()
    correlation: corr.CorrelationConfig = corr.CorrelationConfig()
    entanglement: ent.EntanglementConfig = ent.EntanglementConfig()
    plot: PlotStyle = PlotStyle()
    correlation_splits: tuple[str, ...] = ALL_SPLITS
    read_batch_rows: int = 65536

    def __post_init__(self) -> None:
        unknown = sorted(set(self.correlation_splits) - set(ALL_SPLITS))
        if unknown or not self.correlation_splits:
            raise ConfigError(f"correlation_splits must be among {list(ALL_SPLITS)}, got {unknown}")
        if self.read_batch_rows < 1:
            raise ConfigError(f"read_batch_rows must be >= 1, got {self.read_batch_rows}")


@dataclass
class Report:
    """What one analysis produced: PNG files by name, and metrics."""

    plots: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    # the drawn grids by panel title (the correlation analysis), for figures that combine models
    grids: dict[str, np.ndarray] = field(default_factory=dict)


# --- dimensional collapse -----------------------------------------------------------------------


def collapse_report(model: nn.Module, out_dir: Path, cfg: AnalysisConfig) -> Report:
    """Spectrum heatmap of every set's field tables and IA per field and set."""
    spectra = spectra_by_set(embedding_sets(model), cfg.collapse)
    path = plot_spectrum_heatmaps(spectra, out_dir / "collapse_spectrum.png", cfg.plot)
    return Report(
        plots={"collapse": path}, metrics=information_abundance_metrics(model, cfg.collapse)
    )


# --- behaviour-target correlation -----------------------------------------------------------------


@dataclass(frozen=True)
class _Slots:
    """How behaviours map to the grid's columns: relative positions or TIM's time buckets."""

    kind: str  # the model's sequence encoder kind
    num_slots: int
    num_buckets: int | None = None
    unit_seconds: float | None = None

    def of(self, columns: Mapping[str, np.ndarray], q: SequenceFeature) -> np.ndarray:
        lengths_N = columns[seq_column(q.name, "length")]
        if self.num_buckets is None:
            return corr.relative_positions(lengths_N, q.max_len)
        assert self.unit_seconds is not None
        deltas_NL = columns[seq_column(q.name, "time_delta")]
        return corr.interval_buckets(deltas_NL, lengths_N, self.num_buckets, self.unit_seconds)


def _slots(encoder: FeatureEncoder, q: SequenceFeature, num_positions: int) -> _Slots:
    sequence = encoder.sequence_config
    intervals = sequence.tim.time_intervals if sequence.kind == "tim" else None
    if intervals is None:
        return _Slots(sequence.kind, min(num_positions, q.max_len))
    return _Slots(
        sequence.kind,
        min(num_positions, intervals.num_buckets),
        intervals.num_buckets,
        intervals.unit_seconds,
    )


def _sequence(schema: FeatureSchema, name: str | None) -> SequenceFeature:
    candidates = [q for q in schema.sequences if q.category_field is not None]
    if name is not None:
        candidates = [q for q in candidates if q.name == name]
    if not candidates:
        wanted = f" named {name!r}" if name else ""
        raise ValueError(f"the dataset has no sequence{wanted} with a behaviour category field")
    return candidates[0]


def _target_hits(targets: np.ndarray, category: int) -> np.ndarray:
    """Rows whose target has ``category`` (a multi-valued target category: any of its values)."""
    return (targets == category) if targets.ndim == 1 else (targets == category).any(axis=1)


def _most_frequent_target(data_dir: Path, splits: tuple[str, ...], column: str, rows: int) -> int:
    counts: dict[int, int] = {}
    for chunk in iter_columns(data_dir, splits, [column], rows):
        ids, n = np.unique(chunk[column], return_counts=True)
        for i, c in zip(ids.tolist(), n.tolist(), strict=True):
            counts[i] = counts.get(i, 0) + c
    real = {i: c for i, c in counts.items() if i >= corr.FIRST_REAL_INDEX}
    if not real:
        raise ValueError(f"no real target category in column {column!r}")
    return max(real, key=lambda i: (real[i], -i))


def _count(
    data_dir: Path, q: SequenceFeature, slots: _Slots, target: int, label: str, cfg: AnalysisConfig
) -> corr.CorrelationCounts:
    """Stream the splits once into the 2x2 counts of every (category, slot) cell."""
    counts = corr.CorrelationCounts(target_category=target, num_slots=slots.num_slots)
    columns = [seq_column(q.name, p) for p in ("category", "length", "time_delta")]
    columns += [q.category_field, label]
    for chunk in iter_columns(data_dir, cfg.correlation_splits, columns, cfg.read_batch_rows):
        hits_N = _target_hits(chunk[q.category_field], target)
        counts.add(
            chunk[seq_column(q.name, "category")],
            slots.of(chunk, q),
            np.where(hits_N, target, -1),
            chunk[label],
        )
    return counts


def correlation_report(
    model: nn.Module, schema: FeatureSchema, data_dir: Path, out_dir: Path, cfg: AnalysisConfig
) -> Report:
    """Ground truth (mutual information) vs learned correlation of every set's sequence encoder;
    fidelity = Spearman; on synthetic data, also against the planted matrix."""
    c = cfg.correlation
    q = _sequence(schema, c.sequence)
    encoders = feature_encoders(model)
    slots = _slots(next(iter(encoders.values())), q, c.num_positions)
    # the planted matrix is over positions: not comparable with time-bucket columns
    planted = load_planted(data_dir, q.category_field) if slots.num_buckets is None else None
    target = c.target_category
    if target is None and planted is not None:
        target = planted.target_category
    if target is None:
        splits, rows = cfg.correlation_splits, cfg.read_batch_rows
        target = _most_frequent_target(data_dir, splits, q.category_field, rows)
    counts = _count(data_dir, q, slots, target, resolve_label(schema, c.task), cfg)
    categories = counts.top_categories(c.num_categories)
    if not categories:
        raise ValueError(f"no behaviour in the histories of targets of category {target}")
    truth_CP = counts.mutual_information(categories, c.missing_count)
    grids = {"ground truth (MI)": corr.min_max(truth_CP)}
    metrics: dict[str, float] = {}
    planted_CP = None if planted is None else planted.grid(categories, slots.num_slots)
    if planted_CP is not None:
        grids["planted"] = corr.min_max(planted_CP)
        metrics["corr_truth_vs_planted"] = corr.fidelity(truth_CP, planted_CP)
    for set_name, encoder in encoders.items():
        if slots.kind == "sasrec":
            learned_CP = _attention_grid(
                encoder, schema, data_dir, q, slots, target, categories, cfg
            )
        else:
            learned_CP = _learned(encoder, q, slots, target, categories)
        if learned_CP is None:
            continue
        grids[f"{slots.kind} {set_name}"] = corr.min_max(learned_CP)
        metrics[metric_name("corr_fidelity", set_name)] = corr.fidelity(learned_CP, truth_CP)
        if planted_CP is not None:
            name = metric_name("corr_fidelity_planted", set_name)
            metrics[name] = corr.fidelity(learned_CP, planted_CP)
    axis = "time bucket" if slots.num_buckets is not None else "position"
    title = f"target category {target} ({q.category_field}), columns: {axis} 1..{slots.num_slots}"
    path = plot_correlation_heatmaps(
        grids, [str(x) for x in categories], out_dir / "correlation.png", title, cfg.plot
    )
    return Report(plots={"correlation": path}, metrics=metrics, grids=grids)


def _attention_grid(
    encoder: FeatureEncoder,
    schema: FeatureSchema,
    data_dir: Path,
    q: SequenceFeature,
    slots: _Slots,
    target: int,
    categories: list[int],
    cfg: AnalysisConfig,
) -> np.ndarray:
    """The empirical read-out (``corr.attention_grid``) of an encoder without a table formula,
    over the analysed splits' samples whose target has category ``target``."""
    import torch

    from hmoe.platform.data.batches import iter_minibatches, read_split

    weights, behaviour_categories, behaviour_slots = [], [], []
    was_training = encoder.training
    encoder.eval()
    try:
        for split in cfg.correlation_splits:
            data = read_split(data_dir, split, schema)
            hits_N = _target_hits(data[q.category_field].numpy(), target)
            kept = {k: v[torch.from_numpy(hits_N)] for k, v in data.items()}
            for batch in iter_minibatches(kept, cfg.read_batch_rows):
                with torch.no_grad():
                    weights.append(encoder.behaviour_weights(batch)[q.name].double().numpy())
                columns = {k: v.numpy() for k, v in batch.items()}
                behaviour_categories.append(columns[seq_column(q.name, "category")])
                behaviour_slots.append(slots.of(columns, q))
    finally:
        encoder.train(was_training)
    if not weights:
        raise ValueError(f"no sample has target category {target}")
    return corr.attention_grid(
        np.concatenate(weights),
        np.concatenate(behaviour_categories),
        np.concatenate(behaviour_slots),
        categories=categories,
        num_slots=slots.num_slots,
    )


def _learned(
    encoder: FeatureEncoder,
    q: SequenceFeature,
    slots: _Slots,
    target: int,
    categories: list[int],
) -> np.ndarray | None:
    """One set's learned grid from its tables, or ``None`` for an encoder without a target
    attention (mean pooling) or without the category in its behaviour embedding."""
    if slots.kind not in corr.ENCODER_KINDS or not encoder.sequence_config.use_category:
        return None
    tables = encoder.embedding_tables()
    temporal = encoder.temporal_tables().get(q.name)
    return corr.learned_correlation(
        tables[q.category_field].numpy(),
        None if temporal is None else temporal.numpy(),
        kind=slots.kind,
        target_category=target,
        categories=categories,
        num_positions=slots.num_slots,
    )


# --- interest entanglement ------------------------------------------------------------------------


def _pairs(
    schema: FeatureSchema, data_dir: Path, cfg: AnalysisConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The analysed (user, item) pairs: the first ``max_pairs`` of the split whose user and item
    are both frequent in training."""
    e = cfg.entanglement
    user, item = schema.user_field, schema.item_field
    if user is None or item is None:
        raise ValueError("the entanglement analysis needs the schema's user_field and item_field")
    train = list(iter_columns(data_dir, ["train"], [user, item], cfg.read_batch_rows))
    train_users = np.concatenate([c[user] for c in train])
    train_items = np.concatenate([c[item] for c in train])
    users, items, kept = [], [], 0
    for chunk in iter_columns(data_dir, [e.split], [user, item], cfg.read_batch_rows):
        mask = ent.frequent_pair_mask(
            train_users, train_items, chunk[user], chunk[item], e.frequency_percentile
        )
        users.append(chunk[user][mask])
        items.append(chunk[item][mask])
        kept += int(mask.sum())
        if kept >= e.max_pairs:
            break
    return np.concatenate(users)[: e.max_pairs], np.concatenate(items)[: e.max_pairs]


def _set_distances(
    model: nn.Module, schema: FeatureSchema, users: np.ndarray, items: np.ndarray
) -> dict[str, np.ndarray]:
    out = {}
    for set_name, tables in embedding_sets(model).items():
        user_table, item_table = tables[schema.user_field], tables[schema.item_field]
        out[set_name] = ent.user_item_distances(user_table, item_table, users, items)
    return out


def _reference(per_model: Mapping[str, Mapping[str, np.ndarray]], task: str) -> np.ndarray | None:
    """Task ``task``'s reference distances: the model named ``task`` (a single-task reference
    run) with one set, else any model's ``task:{task}`` set (STEM / STEM-AL), else ``None``."""
    own = TASK_SET_PREFIX + task
    if task in per_model:
        sets = per_model[task]
        if len(sets) == 1:
            return next(iter(sets.values()))
        if own not in sets:
            raise ValueError(
                f"the reference model of task {task!r} has {len(sets)} embedding sets "
                f"{sorted(sets)}; a reference needs one set (a single-embedding model)"
            )
    return next((sets[own] for sets in per_model.values() if own in sets), None)


def _task_distances(
    per_model: Mapping[str, Mapping[str, np.ndarray]], tasks: tuple[str, str]
) -> tuple[np.ndarray, np.ndarray] | None:
    far, near = _reference(per_model, tasks[0]), _reference(per_model, tasks[1])
    return None if far is None or near is None else (far, near)


def entanglement_report(
    models: Mapping[str, nn.Module],
    schema: FeatureSchema,
    data_dir: Path,
    out_dir: Path,
    cfg: AnalysisConfig,
) -> Report:
    """User-item distance histograms per model and embedding set, coloured by the conflict
    subset; a model named after a task serves as that task's single-task reference."""
    e = cfg.entanglement
    tasks = e.tasks if e.tasks is not None else tuple(schema.tasks[:2])
    if len(tasks) < 2:
        raise ValueError(f"the entanglement analysis needs two tasks; the dataset has {tasks}")
    users, items = _pairs(schema, data_dir, cfg)
    if users.size == 0:
        raise ValueError("no (user, item) pair of the split has a frequent user and item")
    per_model = {name: _set_distances(m, schema, users, items) for name, m in models.items()}
    references = _task_distances(per_model, (tasks[0], tasks[1]))
    conflict_N = None
    metrics: dict[str, float] = {"entangle_pairs": float(users.size)}
    if references is not None:
        conflict_N = ent.conflict_subset(*references, e.high_percentile, e.low_percentile)
        metrics["entangle_conflict_share"] = float(conflict_N.mean())
    distances = {}
    for model_name, sets in per_model.items():
        for set_name, dist_N in sets.items():
            distances[f"{model_name} / {set_name}"] = dist_N
            if conflict_N is not None and conflict_N.any():
                bands = ent.distance_bands(dist_N, e.low_percentile, e.high_percentile)
                middle = float((bands[conflict_N] == 1).mean())
                metrics[metric_name("entangle_middle_share", model_name, set_name)] = middle
    path = plot_entanglement_histograms(
        distances,
        conflict_N,
        out_dir / "entanglement.png",
        num_bins=e.num_bins,
        low_percentile=e.low_percentile,
        high_percentile=e.high_percentile,
        style=cfg.plot,
    )
    return Report(plots={"entanglement": path}, metrics=metrics)
