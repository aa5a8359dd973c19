"""Side tables: joins by key, and embeddings held by side tables (parsed once in the driver).

Log rows carry only the position of their key in the side table (``k:<name>``); vectors are
gathered when similarities are computed, so they never travel through the pipeline per row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hmoe.platform.data.lookup import SideTable
from hmoe.platform.data.parsing import REASONS, Reasons, column_of, is_missing, parse_numbers
from hmoe.platform.data.spec import DatasetSpec, EmbeddingSpec, SideTableSpec

__all__ = [
    "SideEmbedding",
    "join_side_tables",
    "key_column",
    "parse_embedding",
    "side_embedding_keys",
    "side_embeddings",
    "spec_embedding",
]


@dataclasses.dataclass(frozen=True, eq=False)
class SideEmbedding:
    """An embedding held by a side table, parsed once in the driver.

    Log rows carry only the position of their key (``k:<name>``); the vectors are gathered
    when similarities are computed, so they never travel through the pipeline per row.
    """

    name: str
    side: int  # index in spec.side_tables
    vectors: np.ndarray  # [K, D] float32 (zeros where invalid)
    unit: np.ndarray  # [K, D] float32, L2-normalised (zeros stay zeros)
    reasons: np.ndarray  # [K] int8 reason code per key, -1 when the vector is valid


def side_embeddings(spec: DatasetSpec, sides: list[SideTable]) -> dict[str, SideEmbedding]:
    """Parse every embedding whose column a side table provides (once, in the driver)."""
    out = {}
    for embedding in spec.embeddings:
        for index, (side_spec, side) in enumerate(zip(spec.side_tables, sides, strict=True)):
            if embedding.source not in _side_columns(side_spec, side.table):
                continue
            reasons = Reasons(side.table.num_rows)
            column = parse_embedding(side.table, embedding, reasons)
            dim = embedding.dim
            vectors = np.asarray(column.flatten(), dtype=np.float32).reshape(-1, dim)
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            unit = (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
            out[embedding.name] = SideEmbedding(
                name=embedding.name, side=index, vectors=vectors, unit=unit, reasons=reasons.codes
            )
    return out


def _side_columns(side_spec: SideTableSpec, table: pa.Table) -> list[str]:
    return list(side_spec.columns) or [c for c in table.column_names if c != side_spec.key]


def key_column(embedding: str) -> str:
    """Position of the row's key in the side table holding ``embedding``."""
    return f"k:{embedding}"


def join_side_tables(
    batch: pa.Table,
    spec: DatasetSpec,
    sides: list[SideTable],
    embeddings: Mapping[str, SideEmbedding] | None = None,
) -> pa.Table:
    """Add the side tables' columns by key (order-preserving; a missing key gives nulls).

    Side-table embeddings are not copied: the row gets ``k:<name>``, its key's position.
    """
    embeddings = embeddings or {}
    by_column = {spec_embedding(spec, name).source: e for name, e in embeddings.items()}
    for index, (side_spec, side) in enumerate(zip(spec.side_tables, sides, strict=True)):
        if side_spec.join_on not in batch.column_names:
            raise ValueError(f"side table join_on {side_spec.join_on!r} is not a log column")
        positions = side.index.lookup(batch.column(side_spec.join_on))
        for name in _side_columns(side_spec, side.table):
            if name in batch.column_names:
                raise ValueError(f"side table column {name!r} is already a log column")
            held = by_column.get(name)
            if held is not None and held.side == index:
                batch = batch.append_column(key_column(held.name), pa.array(positions))
            else:
                batch = batch.append_column(name, side.take(name, positions))
    return batch


def spec_embedding(spec: DatasetSpec, name: str) -> EmbeddingSpec:
    return next(e for e in spec.embeddings if e.name == name)


def parse_embedding(
    raw: pa.Table, embedding: EmbeddingSpec, reasons: Reasons, field: str | None = None
) -> pa.Array:
    """Vectors from a list column or a separated string, checked for length and finiteness."""
    array = column_of(raw, embedding.source)
    if pa.types.is_string(array.type):
        missing = is_missing(array)
        text = pc.utf8_trim_whitespace(array)
        if embedding.separator.strip():
            lists = pc.split_pattern(text, embedding.separator)
        else:
            lists = pc.utf8_split_whitespace(text)
    elif pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type):
        missing = np.asarray(array.is_null(), dtype=bool)
        lists = array
    else:
        raise ValueError(f"embedding {embedding.name}: a list or string column, got {array.type}")
    lengths = np.asarray(pc.list_value_length(lists).fill_null(0), dtype=np.int64)
    values, _, bad_values = parse_numbers(pc.list_flatten(lists))
    wrong_length = ~missing & (lengths != embedding.dim)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    bad = np.bincount(owner, weights=bad_values, minlength=len(lengths)) > 0
    ok = ~missing & ~wrong_length & ~bad
    starts = np.cumsum(lengths) - lengths
    vectors = np.zeros((len(lengths), embedding.dim), dtype=np.float32)
    gather = starts[ok][:, None] + np.arange(embedding.dim)[None, :]
    vectors[ok] = values[gather]
    reasons.add("missing_value", missing, field)
    reasons.add("bad_embedding_length", wrong_length, field)
    reasons.add("bad_number", bad & ~wrong_length & ~missing, field)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, embedding.dim)


def side_embedding_keys(
    raw: pa.Table,
    embedding: EmbeddingSpec,
    sides: Mapping[str, SideEmbedding] | None,
    reasons: Reasons,
    field: str | None = None,
) -> pa.Array:
    assert sides is not None and embedding.name in sides, "side embedding not parsed"
    positions = np.asarray(raw.column(key_column(embedding.name)), dtype=np.int64)
    missing = positions < 0
    codes = np.where(missing, -1, sides[embedding.name].reasons[np.maximum(positions, 0)])
    reasons.add("missing_value", missing, field)
    for code, reason in enumerate(REASONS):
        reasons.add(reason, codes == code, field)
    return pa.array(positions)
