"""Encoding parsed rows into Batch columns, and building + writing one shard.

``encode_batch`` is a streaming map (vocabularies, numerics, similarity features, labels,
weights, split and shard ids). ``finish_shard`` runs once per shard after the rows are grouped
by shard (see ``pieces``; with sequences or exposure counts a shard holds whole users): it sorts
by row id, builds point-in-time sequences and exposure counts, and writes one Parquet file per
split with a deterministic name and content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hmoe.platform.data.behaviour import (
    EVENT_CATEGORY,
    EVENT_ITEM,
    EVENT_SEQUENCE,
    RAW_CATEGORY,
    RAW_ITEM,
)
from hmoe.platform.data.behaviour import USER as EVENT_USER
from hmoe.platform.data.sequences import cosine, earlier_exposures, sequence_entries
from hmoe.platform.data.sides import SideEmbedding, key_column
from hmoe.platform.data.spec import SPLITS, DatasetSpec, SequenceSpec, label_column
from hmoe.platform.data.split import SplitAssigner, row_hash
from hmoe.platform.data.tables import ROW_COLUMN
from hmoe.platform.data.validate import (
    PROPENSITY_COLUMN,
    REASON_COLUMN,
    TS_COLUMN,
    WEIGHT_COLUMN,
    cat_column,
    emb_column,
    filter_column,
    num_column,
)
from hmoe.platform.data.vocab import Vocabulary
from hmoe.schema import EXPOSURE, PAD_INDEX, WEIGHT, seq_column

__all__ = [
    "PROPENSITY",
    "RECORD_SCHEMA",
    "SHARD_COLUMN",
    "SPLIT_COLUMN",
    "EncodePlan",
    "encode_batch",
    "encode_events",
    "finish_shard",
    "output_columns",
]

SHARD_COLUMN = "__shard"
SPLIT_COLUMN = "__split"
USER_COLUMN = "__user"
ITEM_COLUMN = "__item"
PROPENSITY = "propensity"  # extra shard column when the spec logs propensities
ROW_GROUP_ROWS = 65_536  # Parquet row group size (fixed, so re-runs write identical bytes)
DOT_CHUNK = 16_384  # behaviour entries per gathered chunk in _row_dots (2 x 1 MB at D = 16)


@dataclasses.dataclass(frozen=True)
class EncodePlan:
    """Everything the encode and write tasks need (picklable)."""

    spec: DatasetSpec
    vocabs: dict[str, Vocabulary]
    splitter: SplitAssigner
    num_shards: int
    out_dir: str
    embeddings: Mapping[str, SideEmbedding] = dataclasses.field(default_factory=dict)


def output_columns(spec: DatasetSpec) -> list[str]:
    """The shard columns in order: the Batch names of ``hmoe.schema`` with one
    ``label__<task>`` column per task (the reader stacks them into ``labels``)."""
    names = [c.name for c in spec.categorical] + [n.name for n in spec.numeric]
    names += [s.name for s in spec.similarity]
    for q in spec.sequences:
        parts = ["item"] + (["category"] if q.category_field else []) + ["time_delta"]
        parts += (["similarity"] if q.similarity_embedding else []) + ["length"]
        names += [seq_column(q.name, part) for part in parts]
    names += [label_column(label.task) for label in spec.labels] + [WEIGHT, EXPOSURE]
    if spec.weight is not None and spec.weight.kind == "propensity":
        names.append(PROPENSITY)
    return names


def _fixed_list(values_NM: np.ndarray, dtype: pa.DataType) -> pa.Array:
    flat = pa.array(values_NM.reshape(-1), type=dtype)
    return pa.FixedSizeListArray.from_arrays(flat, values_NM.shape[1])


def _encode_multi(column: pa.Array, vocab: Vocabulary, max_len: int) -> pa.Array:
    lengths = np.asarray(column.value_lengths().fill_null(0), dtype=np.int64)
    flat = vocab.encode(column.flatten())
    out_NM = np.full((len(column), max_len), PAD_INDEX, dtype=np.int64)
    rows = np.repeat(np.arange(len(column)), lengths)
    offsets = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out_NM[rows, offsets] = flat
    return _fixed_list(out_NM, pa.int64())


def shard_ids(keys: pa.Array, num_shards: int) -> np.ndarray:
    encoded = keys.cast(pa.string()).dictionary_encode()
    uniques = encoded.dictionary.to_pylist()
    hashes = np.array([zlib.crc32(u.encode("utf-8")) % num_shards for u in uniques], np.int64)
    return hashes[np.asarray(encoded.indices.fill_null(0), dtype=np.int64)]


def encode_events(parsed: pa.Table, plan: EncodePlan, sequence: int) -> pa.Table:
    """Valid events encoded for ``spec.sequences[sequence]``, with their user's shard."""
    q = plan.spec.sequences[sequence]
    valid = parsed.filter(pc.is_null(parsed.column(REASON_COLUMN)))
    items = plan.vocabs[q.item_field].encode(valid.column(RAW_ITEM).combine_chunks())
    columns = {
        EVENT_USER: valid.column(EVENT_USER),
        TS_COLUMN: valid.column(TS_COLUMN),
        ROW_COLUMN: valid.column(ROW_COLUMN),
        EVENT_SEQUENCE: pa.array(np.full(valid.num_rows, sequence, dtype=np.int8)),
        EVENT_ITEM: pa.array(items),
    }
    if q.category_field is not None:
        raw = valid.column(RAW_CATEGORY).combine_chunks()
        columns[EVENT_CATEGORY] = pa.array(plan.vocabs[q.category_field].encode(raw))
    users = valid.column(EVENT_USER).combine_chunks()
    columns[SHARD_COLUMN] = pa.array(shard_ids(users, plan.num_shards))
    return pa.table(columns)


def encode_batch(parsed: pa.Table, plan: EncodePlan) -> pa.Table:
    """Encode valid parsed rows; keeps the helper columns ``finish_shard`` needs."""
    spec = plan.spec
    out: dict[str, pa.Array] = {}
    for feature in spec.categorical:
        column = parsed.column(cat_column(feature.name)).combine_chunks()
        vocab = plan.vocabs[feature.name]
        if feature.multi_valued:
            out[feature.name] = _encode_multi(column, vocab, feature.max_len)
        else:
            out[feature.name] = pa.array(vocab.encode(column))
    for numeric in spec.numeric:
        values = np.asarray(parsed.column(num_column(numeric.name)), dtype=np.float64)
        out[numeric.name] = pa.array(values.astype(np.float32))
    for sim in spec.similarity:
        left, right = (
            _raw_vectors(parsed, name, plan.embeddings) for name in (sim.left, sim.right)
        )
        out[sim.name] = pa.array(cosine(left, right).astype(np.float32))
    for label in spec.labels:
        out[label_column(label.task)] = parsed.column(label_column(label.task)).combine_chunks()
    ones = np.ones(parsed.num_rows, dtype=np.float32)
    has_weight = spec.weight is not None
    out[WEIGHT] = parsed.column(WEIGHT_COLUMN).combine_chunks() if has_weight else pa.array(ones)
    out[EXPOSURE] = pa.array(np.zeros(parsed.num_rows, dtype=np.float32))
    if spec.weight is not None and spec.weight.kind == "propensity":
        out[PROPENSITY] = parsed.column(PROPENSITY_COLUMN).combine_chunks()
    rows = parsed.column(ROW_COLUMN).combine_chunks()
    out[ROW_COLUMN] = rows
    out[SPLIT_COLUMN] = pa.array(plan.splitter.assign(parsed))
    if spec.needs_user_pass:
        assert spec.user_field is not None
        users = parsed.column(cat_column(spec.user_field)).combine_chunks()
        out[USER_COLUMN] = users
        out[TS_COLUMN] = parsed.column(TS_COLUMN).combine_chunks()
        if spec.item_field is not None:
            out[ITEM_COLUMN] = parsed.column(cat_column(spec.item_field)).combine_chunks()
        for q in spec.sequences:
            if q.filter is not None:
                out[filter_column(q.name)] = parsed.column(filter_column(q.name)).combine_chunks()
        for name in {q.similarity_embedding for q in spec.sequences} - {None}:
            column = key_column(name) if name in plan.embeddings else emb_column(name)
            out[column] = parsed.column(column).combine_chunks()
        shards = shard_ids(users, plan.num_shards)
    else:
        u = row_hash(np.asarray(rows, dtype=np.int64), seed=0)
        shards = np.minimum((u * plan.num_shards).astype(np.int64), plan.num_shards - 1)
    out[SHARD_COLUMN] = pa.array(shards)
    return pa.table(out)


def _codes(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Integer codes of a key column (equal values, equal codes) without Python objects."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    encoded = pc.dictionary_encode(column)
    return np.asarray(encoded.indices.fill_null(-1), dtype=np.int64)


def _raw_vectors(table: pa.Table, embedding: str, side: Mapping[str, SideEmbedding]) -> np.ndarray:
    """``[N, D]`` vectors of the rows, from the side table or the row's own column."""
    if embedding in side:
        positions = np.asarray(table.column(key_column(embedding)), dtype=np.int64)
        return side[embedding].vectors[positions]
    column = table.column(emb_column(embedding)).combine_chunks()
    return np.asarray(column.flatten(), dtype=np.float32).reshape(-1, column.type.list_size)


def _unit_vectors(table: pa.Table, embedding: str, side: Mapping[str, SideEmbedding]) -> np.ndarray:
    """``[N, D]`` L2-normalised vectors of the rows (zeros stay zeros)."""
    if embedding in side:
        positions = np.asarray(table.column(key_column(embedding)), dtype=np.int64)
        return side[embedding].unit[positions]
    column = table.column(emb_column(embedding)).combine_chunks()
    vectors = np.asarray(column.flatten(), dtype=np.float32).reshape(-1, column.type.list_size)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


@dataclasses.dataclass(frozen=True)
class _Events:
    """Behaviour events of one sequence, aligned arrays (E events)."""

    user: np.ndarray
    ts: np.ndarray
    order: np.ndarray
    item: np.ndarray
    category: np.ndarray | None
    unit: np.ndarray | None  # [E, D] unit item embeddings (log source only)


def _log_events(
    table: pa.Table, q: SequenceSpec, users: np.ndarray, unit: np.ndarray | None
) -> _Events:
    keep = np.ones(table.num_rows, dtype=bool)
    if q.only_positive_of is not None:
        keep = np.asarray(table.column(label_column(q.only_positive_of)), np.float32) == 1.0
    if q.filter is not None:
        keep &= np.asarray(table.column(filter_column(q.name)), dtype=bool)
    category = None
    if q.category_field is not None:
        category = np.asarray(table.column(q.category_field), dtype=np.int64)[keep]
    return _Events(
        user=users[keep],
        ts=np.asarray(table.column(TS_COLUMN), dtype=np.float64)[keep],
        order=np.asarray(table.column(ROW_COLUMN), dtype=np.int64)[keep],
        item=np.asarray(table.column(q.item_field), dtype=np.int64)[keep],
        category=category,
        unit=unit[keep] if unit is not None else None,
    )


def _logged_events(events: pa.Table, index: int, users: np.ndarray) -> _Events:
    chosen = np.asarray(events.column(EVENT_SEQUENCE), dtype=np.int64) == index
    category = None
    if EVENT_CATEGORY in events.column_names:
        category = np.asarray(events.column(EVENT_CATEGORY).fill_null(PAD_INDEX), np.int64)[chosen]
    return _Events(
        user=users[chosen],
        ts=np.asarray(events.column(TS_COLUMN), dtype=np.float64)[chosen],
        order=np.asarray(events.column(ROW_COLUMN), dtype=np.int64)[chosen],
        item=np.asarray(events.column(EVENT_ITEM).fill_null(PAD_INDEX), np.int64)[chosen],
        category=category,
        unit=None,
    )


def _sequence_columns(
    q: SequenceSpec, users: np.ndarray, ts: np.ndarray, unit: np.ndarray | None, ev: _Events
) -> dict[str, pa.Array]:
    rows, slots, events, length = sequence_entries(users, ts, ev.user, ev.ts, ev.order, q.max_len)
    flat = rows * q.max_len + slots  # entries' positions in the row-major [N, L] arrays

    def scatter(values: np.ndarray, fill: float, dtype: type) -> np.ndarray:
        # only the real entries are computed; padding slots keep ``fill``. np.zeros maps
        # untouched pages to the zero page instead of writing every slot (most are padding)
        shape = (len(users), q.max_len)
        out_NL = np.zeros(shape, dtype=dtype) if fill == 0 else np.full(shape, fill, dtype)
        out_NL.reshape(-1)[flat] = values
        return out_NL

    columns = {"item": _fixed_list(scatter(ev.item[events], PAD_INDEX, np.int64), pa.int64())}
    if ev.category is not None:
        category_NL = scatter(ev.category[events], PAD_INDEX, np.int64)
        columns["category"] = _fixed_list(category_NL, pa.int64())
    delta = (ts[rows] - ev.ts[events]).astype(np.float32)
    columns["time_delta"] = _fixed_list(scatter(delta, 0.0, np.float32), pa.float32())
    if unit is not None and ev.unit is not None:
        # cosine of unit vectors: one dot product per behaviour, norms computed once per row
        sim = np.clip(_row_dots(unit, rows, ev.unit, events), -1.0, 1.0)
        columns["similarity"] = _fixed_list(scatter(sim, 0.0, np.float32), pa.float32())
    columns["length"] = pa.array(length)
    return columns


def _row_dots(
    left_ND: np.ndarray, left_at: np.ndarray, right_MD: np.ndarray, right_at: np.ndarray
) -> np.ndarray:
    """``[K]`` dot products ``left[left_at[k]] . right[right_at[k]]``, gathered in chunks of
    ``DOT_CHUNK`` so that the gathered vectors stay in cache (the same float32 einsum per pair,
    so the values do not depend on the chunking)."""
    out = np.empty(len(left_at), dtype=np.result_type(left_ND, right_MD))
    for start in range(0, len(left_at), DOT_CHUNK):
        part = slice(start, start + DOT_CHUNK)
        out[part] = np.einsum("kd,kd->k", left_ND[left_at[part]], right_MD[right_at[part]])
    return out


def add_user_features(
    table: pa.Table,
    spec: DatasetSpec,
    events: pa.Table | None = None,
    side: Mapping[str, SideEmbedding] | None = None,
) -> pa.Table:
    """Sequences and exposure counts for a shard that holds whole users (and their events)."""
    n = table.num_rows
    user_column = table.column(USER_COLUMN).combine_chunks()
    if events is not None:
        user_column = pa.concat_arrays([user_column, events.column(USER_COLUMN).combine_chunks()])
    all_users = _codes(user_column)
    users, event_users = all_users[:n], all_users[n:]
    ts = np.asarray(table.column(TS_COLUMN), dtype=np.float64)
    if spec.count_exposures:
        counts = earlier_exposures(users, _codes(table.column(ITEM_COLUMN)), ts)
        position = table.schema.get_field_index(EXPOSURE)
        table = table.set_column(position, EXPOSURE, pa.array(counts.astype(np.float32)))
    for index, q in enumerate(spec.sequences):
        unit = None
        if q.similarity_embedding is not None:
            unit = _unit_vectors(table, q.similarity_embedding, side or {})
        if q.source == "log":
            ev = _log_events(table, q, users, unit)
        else:
            empty = _empty_events() if events is None else events
            ev = _logged_events(empty, index, event_users)
        for part, column in _sequence_columns(q, users, ts, unit, ev).items():
            table = table.append_column(seq_column(q.name, part), column)
    return table


def _empty_events() -> pa.Table:
    return pa.table(
        {
            USER_COLUMN: pa.array([], pa.string()),
            TS_COLUMN: pa.array([], pa.float64()),
            ROW_COLUMN: pa.array([], pa.int64()),
            EVENT_SEQUENCE: pa.array([], pa.int8()),
            EVENT_ITEM: pa.array([], pa.int64()),
        }
    )


def finish_shard(
    shard: int, group: pa.Table, events: pa.Table | None, plan: EncodePlan
) -> pa.Table:
    """Build the user features of one shard (its rows, in any order, and its behaviour-log
    events) and write its per-split files; return their records."""
    # one sort by (split, row id): each split's file is then a slice in row-id order (user
    # features do not depend on the row order: sequences and counts break ties by row id)
    splits = np.asarray(group.column(SPLIT_COLUMN), dtype=np.int8)
    order = np.lexsort((np.asarray(group.column(ROW_COLUMN), dtype=np.int64), splits))
    group = group.take(pa.array(order))
    if plan.spec.needs_user_pass:
        group = add_user_features(group, plan.spec, events, plan.embeddings)
    bounds = np.searchsorted(splits[order], np.arange(len(SPLITS) + 1))
    table = group.select(output_columns(plan.spec))
    records = []
    for split_id, split in enumerate(SPLITS):
        start, stop = int(bounds[split_id]), int(bounds[split_id + 1])
        if start == stop:
            continue
        relative = f"{split}/part-{shard:05d}.parquet"
        path = Path(plan.out_dir) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        part = table.slice(start, stop - start)
        pq.write_table(part, path, row_group_size=ROW_GROUP_ROWS, compression="zstd")
        records.append(
            {"split": split, "path": relative, "rows": stop - start, "sha256": _sha256(path)}
        )
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)


RECORD_SCHEMA = pa.schema(
    [("split", pa.string()), ("path", pa.string()), ("rows", pa.int64()), ("sha256", pa.string())]
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
