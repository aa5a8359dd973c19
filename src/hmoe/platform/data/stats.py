"""Statistics passes of ``prepare``: per-block partial results (Ray tasks), merged in the driver.

Each ``block_*`` function maps one block of parsed rows to a small picklable partial; ``collect``
runs it over the dataset and merges the partials with the function's merge rule.
"""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hmoe.platform.data.spec import SPLITS, DatasetSpec, label_column
from hmoe.platform.data.split import SplitAssigner, eligible_mask, order_key, row_hash
from hmoe.platform.data.tables import ROW_COLUMN
from hmoe.platform.data.validate import REASON_COLUMN, cat_column, num_column, tie_column
from hmoe.platform.data.vocab import Vocabulary, count_values, fit_vocabulary, merge_counts
from hmoe.schema import (
    CategoricalFeature,
    FeatureSchema,
    NumericFeature,
    SequenceFeature,
    SimilarityFeature,
)

__all__ = [
    "block_candidate_sets",
    "block_candidates",
    "block_histogram",
    "block_histograms",
    "block_reasons",
    "block_totals",
    "block_train_stats",
    "collect",
    "collect_list",
    "feature_schema",
    "merge",
    "vocabularies",
]

_PARTIAL = "partial"


def collect_list(ds: Any, block_fn: Callable[..., Any], **kwargs: Any) -> list[Any]:
    """Run ``block_fn(block, **kwargs)`` on every block; return the partials."""

    def run(block: pa.Table) -> pa.Table:
        return pa.table(
            {_PARTIAL: pa.array([pickle.dumps(block_fn(block, **kwargs))], pa.binary())}
        )

    rows = ds.map_batches(run, batch_format="pyarrow", batch_size=None).take_all()
    return [pickle.loads(row[_PARTIAL]) for row in rows]


def collect(ds: Any, block_fn: Callable[..., dict], **kwargs: Any) -> dict[str, Any]:
    """Run a ``block_*`` function and merge its partials."""
    return merge(block_fn, collect_list(ds, block_fn, **kwargs))


def merge(block_fn: Callable[..., dict], partials: list[Any]) -> dict[str, Any]:
    """Merge the partials of a ``block_*`` function (computed elsewhere, e.g. while reading)."""
    return _MERGES[block_fn.__name__](partials)


def _valid(table: pa.Table) -> pa.Table:
    return table.filter(pc.is_null(table.column(REASON_COLUMN)))


def _key_kind(spec: DatasetSpec) -> str:
    return "temporal" if spec.split.kind == "temporal" else "ordered"


def block_totals(table: pa.Table, spec: DatasetSpec, pinned: dict[int, int]) -> dict[str, Any]:
    reasons = Counter(v for v in table.column(REASON_COLUMN).to_pylist() if v is not None)
    eligible = eligible_mask(table, pinned)
    keys = order_key(table, _key_kind(spec))[eligible]
    valid = _valid(table)
    identity_max = {}
    for feature in spec.categorical:
        if spec.vocab_of(feature).mode == "identity":
            values = valid.column(cat_column(feature.name)).combine_chunks()
            if feature.multi_valued:
                values = pc.list_flatten(values)
            ids = pc.cast(values.drop_null(), pa.int64())
            identity_max[feature.name] = int(pc.max(ids).as_py()) if len(ids) else -1
    return {
        "read": table.num_rows,
        "valid": valid.num_rows,
        "reasons": reasons,
        "eligible": int(eligible.sum()),
        "key_min": float(keys.min()) if len(keys) else np.inf,
        "key_max": float(keys.max()) if len(keys) else -np.inf,
        "identity_max": identity_max,
    }


def _merge_totals(parts: list[dict]) -> dict[str, Any]:
    identity: dict[str, int] = {}
    for p in parts:
        for name, value in p["identity_max"].items():
            identity[name] = max(identity.get(name, -1), value)
    return {
        "read": sum(p["read"] for p in parts),
        "valid": sum(p["valid"] for p in parts),
        "reasons": sum((p["reasons"] for p in parts), Counter()),
        "eligible": sum(p["eligible"] for p in parts),
        "key_min": min((p["key_min"] for p in parts), default=np.inf),
        "key_max": max((p["key_max"] for p in parts), default=-np.inf),
        "identity_max": identity,
    }


def _in_interval(keys: np.ndarray, interval: tuple[float, float, bool]) -> np.ndarray:
    lo, hi, inclusive = interval
    return (keys >= lo) & ((keys <= hi) if inclusive else (keys < hi))


def block_histogram(
    table: pa.Table,
    kind: str,
    pinned: dict[int, int],
    interval: tuple[float, float, bool],
    edges: np.ndarray,
) -> np.ndarray:
    keys = order_key(table, kind)[eligible_mask(table, pinned)]
    return np.histogram(keys[_in_interval(keys, interval)], bins=edges)[0]


def block_candidates(
    table: pa.Table,
    kind: str,
    pinned: dict[int, int],
    interval: tuple[float, float, bool],
    tie_break: tuple[str, ...],
) -> pa.Table:
    eligible = eligible_mask(table, pinned)
    keys = order_key(table, kind)
    chosen = np.flatnonzero(eligible & _in_interval(keys, interval))
    out = {"key": pa.array(keys[chosen]), ROW_COLUMN: table.column(ROW_COLUMN).take(chosen)}
    for name in tie_break:
        out[tie_column(name)] = table.column(tie_column(name)).take(chosen)
    return pa.table(out)


def block_histograms(
    table: pa.Table,
    kind: str,
    pinned: dict[int, int],
    queries: list[tuple[float, float, bool, np.ndarray]],
) -> list[np.ndarray]:
    """``block_histogram`` for several ``(lo, hi, inclusive, edges)`` queries in one pass."""
    keys = order_key(table, kind)[eligible_mask(table, pinned)]
    return [np.histogram(keys[_in_interval(keys, q[:3])], bins=q[3])[0] for q in queries]


def block_candidate_sets(
    table: pa.Table,
    kind: str,
    pinned: dict[int, int],
    intervals: list[tuple[float, float, bool]],
    tie_break: tuple[str, ...],
) -> list[pa.Table]:
    """``block_candidates`` for several intervals in one pass."""
    return [block_candidates(table, kind, pinned, interval, tie_break) for interval in intervals]


def block_group_rows(
    table: pa.Table, group_by: str, pinned: dict[int, int], tie_break: tuple[str, ...]
) -> pa.Table:
    """The group, time and row id (and tie-break values) of the rows a group split assigns."""
    chosen = np.flatnonzero(eligible_mask(table, pinned))
    out = {
        "group": table.column(cat_column(group_by)).take(chosen),
        "key": pa.array(order_key(table, "temporal")[chosen]),
        ROW_COLUMN: table.column(ROW_COLUMN).take(chosen),
    }
    for name in tie_break:
        out[tie_column(name)] = table.column(tie_column(name)).take(chosen)
    return pa.table(out)


def block_train_stats(
    table: pa.Table, spec: DatasetSpec, splitter: SplitAssigner, sample_rate: float
) -> dict[str, Any]:
    valid = _valid(table)
    splits = splitter.assign(valid)
    train = valid.filter(pa.array(splits == 0))
    counts = {
        f.name: count_values(train.column(cat_column(f.name)).combine_chunks())
        for f in spec.categorical
        if spec.vocab_of(f).mode == "fit"
    }
    rows = np.asarray(train.column(ROW_COLUMN), dtype=np.int64)
    sampled = row_hash(rows, seed=1) < sample_rate
    numeric = {}
    for n in spec.numeric:
        values = np.asarray(train.column(num_column(n.name)), dtype=np.float64)
        numeric[n.name] = (
            values.min(initial=np.inf),
            values.max(initial=-np.inf),
            bool(np.all(values == np.round(values))),
            values[sampled],
        )
    labels = {}
    for split_id, split in enumerate(SPLITS):
        chosen = splits == split_id
        labels[split] = (
            int(chosen.sum()),
            {
                label.task: float(np.asarray(valid.column(label_column(label.task)))[chosen].sum())
                for label in spec.labels
            },
        )
    return {"rows": train.num_rows, "counts": counts, "numeric": numeric, "labels": labels}


def _merge_train(parts: list[dict]) -> dict[str, Any]:
    names = parts[0]["counts"].keys() if parts else []
    counts = {name: merge_counts([p["counts"][name] for p in parts]) for name in names}
    numeric = {}
    for name in parts[0]["numeric"] if parts else []:
        stats = [p["numeric"][name] for p in parts]
        numeric[name] = (
            min(s[0] for s in stats),
            max(s[1] for s in stats),
            all(s[2] for s in stats),
            np.sort(np.concatenate([s[3] for s in stats])),
        )
    positive_rate, label_counts = {}, {}
    for split in SPLITS:
        n = sum(p["labels"][split][0] for p in parts)
        sums = Counter()
        for p in parts:
            sums.update(p["labels"][split][1])
        positive_rate[split] = {task: (s / n if n else None) for task, s in sorted(sums.items())}
        # labels are 0/1, so a sum is a count of positives
        label_counts[split] = {
            task: {"rows": n, "positives": round(s)} for task, s in sorted(sums.items())
        }
    return {
        "rows": sum(p["rows"] for p in parts),
        "counts": counts,
        "numeric": numeric,
        "positive_rate": positive_rate,
        "label_counts": label_counts,
    }


def block_reasons(table: pa.Table) -> dict[str, Any]:
    """Rows and invalid rows by reason (behaviour logs)."""
    reasons = Counter(v for v in table.column(REASON_COLUMN).to_pylist() if v is not None)
    return {"read": table.num_rows, "reasons": reasons}


def _merge_reasons(parts: list[dict]) -> dict[str, Any]:
    reasons = sum((p["reasons"] for p in parts), Counter())
    read = sum(p["read"] for p in parts)
    return {
        "read": read,
        "used": read - sum(reasons.values()),
        "dropped": {k: int(v) for k, v in sorted(reasons.items())},
    }


_MERGES: dict[str, Callable[[list], dict]] = {
    "block_reasons": _merge_reasons,
    "block_totals": _merge_totals,
    "block_train_stats": _merge_train,
}


def vocabularies(spec: DatasetSpec, train: dict, totals: dict) -> dict[str, Vocabulary]:
    """Fit every categorical feature's vocabulary (train counts, hash, identity, closed)."""
    empty = merge_counts([])
    return {
        f.name: fit_vocabulary(
            spec.vocab_of(f),
            train["counts"].get(f.name, empty),
            totals["identity_max"].get(f.name, -1),
        )
        for f in spec.categorical
    }


def feature_schema(spec: DatasetSpec, vocabs: dict[str, Vocabulary], train: dict) -> FeatureSchema:
    """The FeatureSchema the manifest carries (vocabulary sizes, numeric statistics)."""
    categorical = tuple(
        CategoricalFeature(
            name=f.name,
            vocab_size=vocabs[f.name].size,
            multi_valued=f.multi_valued,
            max_len=f.max_len,
            group=f.group,
        )
        for f in spec.categorical
    )
    numeric = []
    for n in spec.numeric:
        low, high, is_integer, sample = train["numeric"][n.name]
        levels = np.linspace(0.0, 1.0, spec.output.numeric_quantiles + 1)[1:-1]
        quantiles = np.unique(np.quantile(sample, levels)) if len(sample) and len(levels) else []
        numeric.append(
            NumericFeature(
                name=n.name,
                min_value=float(low),
                max_value=float(high),
                quantiles=tuple(float(q) for q in quantiles),
                is_integer=is_integer,
                group=n.group,
            )
        )
    sequences = tuple(
        SequenceFeature(
            name=q.name,
            max_len=q.max_len,
            item_field=q.item_field,
            category_field=q.category_field,
            has_similarity=q.similarity_embedding is not None,
            group=q.group,
        )
        for q in spec.sequences
    )
    return FeatureSchema(
        categorical=categorical,
        numeric=tuple(numeric),
        similarity=tuple(SimilarityFeature(name=s.name, group=s.group) for s in spec.similarity),
        sequences=sequences,
        tasks=tuple(label.task for label in spec.labels),
        user_field=spec.user_field,
        item_field=spec.item_field,
        has_weight=spec.weight is not None,
        has_exposure=spec.count_exposures,
    )
