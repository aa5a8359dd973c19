"""Vocabularies: raw categorical values to indices (0 = padding, 1 = OOV, values from 2).

Fitting is split into per-block partial counts (``count_values``, run in Ray tasks) and a merge
in the driver (``fit_vocabulary``), so a vocabulary never needs the whole column in one place.
Hashing uses ``zlib.crc32`` (Python's ``hash`` is salted per process and would encode the same
value differently in different Ray workers).
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hmoe.platform.data.lookup import KeyIndex
from hmoe.platform.data.spec import VocabSpec
from hmoe.schema import OOV_INDEX, PAD_INDEX

__all__ = [
    "FIRST_INDEX",
    "Vocabulary",
    "count_values",
    "fit_vocabulary",
    "merge_counts",
]

FIRST_INDEX = 2  # indices 0 and 1 are padding and OOV


@dataclasses.dataclass(frozen=True, eq=False)
class Vocabulary:
    """A fitted vocabulary of one categorical feature.

    Lookups go through a ``KeyIndex`` (binary search), so a vocabulary of millions of ids
    costs no per-batch hash-table build.

    Args:
        mode: the ``VocabSpec.mode`` it was built with.
        keys: the known values in index order (fit, closed; a numpy string array, which
            pickles to Ray tasks far faster than a tuple of millions of strings); empty for
            hash and identity.
        hash_size: buckets of a hash vocabulary.
        max_id: the largest id of an identity vocabulary.
    """

    mode: str
    keys: np.ndarray = dataclasses.field(default_factory=lambda: np.array([], dtype=str))
    hash_size: int = 0
    max_id: int = -1
    _index: KeyIndex = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        keys = np.asarray(self.keys if len(self.keys) else np.array([], dtype=str), dtype=str)
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "_index", KeyIndex(keys=keys))

    @property
    def values(self) -> tuple[str, ...]:
        """The known values in index order (index = position + 2)."""
        return tuple(self.keys.tolist())

    @property
    def size(self) -> int:
        """Embedding rows needed, padding and OOV included."""
        if self.mode == "hash":
            return FIRST_INDEX + self.hash_size
        if self.mode == "identity":
            return FIRST_INDEX + self.max_id + 1
        return FIRST_INDEX + len(self.keys)

    def encode(self, values: pa.Array) -> np.ndarray:
        """int64 indices of a string array; null -> padding, unknown -> OOV."""
        encoded = values.cast(pa.string()).dictionary_encode()
        uniques = encoded.dictionary
        if self.mode == "hash":
            per_unique = self._hash(uniques)
        elif self.mode == "identity":
            ids = np.asarray(pc.cast(uniques, pa.int64()), dtype=np.int64)
            per_unique = np.where(ids <= self.max_id, ids + FIRST_INDEX, OOV_INDEX)
        else:
            per_unique = self._lookup(uniques)
        codes = encoded.indices
        nulls = np.asarray(codes.is_null(), dtype=bool)
        found = (
            per_unique[np.asarray(codes.fill_null(0), dtype=np.int64)]
            if len(per_unique)
            else np.zeros(len(codes), dtype=np.int64)
        )
        return np.where(nulls, PAD_INDEX, found).astype(np.int64)

    def _lookup(self, uniques: pa.Array) -> np.ndarray:
        position = self._index.lookup_distinct(uniques)
        return np.where(position >= 0, position + FIRST_INDEX, OOV_INDEX)

    def _hash(self, uniques: pa.Array) -> np.ndarray:
        return np.array(
            [
                zlib.crc32(v.encode("utf-8")) % self.hash_size + FIRST_INDEX
                for v in uniques.to_pylist()
            ],
            dtype=np.int64,
        )

    def to_dict(self) -> dict[str, object]:
        """What the manifest records (the values themselves go to ``vocab/<name>.parquet``)."""
        return {
            "mode": self.mode,
            "size": self.size,
            "hash_size": self.hash_size,
            "max_id": self.max_id,
        }


def count_values(values: pa.Array) -> pa.Table:
    """Partial counts of one block: ``value`` string, ``count`` int64 (nulls dropped)."""
    if pa.types.is_list(values.type):
        values = pc.list_flatten(values)
    values = values.cast(pa.string()).drop_null()
    counts = pc.value_counts(values)
    return pa.table(
        {"value": counts.field("values"), "count": pc.cast(counts.field("counts"), pa.int64())}
    )


def merge_counts(parts: list[pa.Table]) -> pa.Table:
    """Sum partial counts by value."""
    if not parts:
        return pa.table({"value": pa.array([], pa.string()), "count": pa.array([], pa.int64())})
    merged = pa.concat_tables(parts).group_by("value").aggregate([("count", "sum")])
    return merged.rename_columns(["value", "count"])


def fit_vocabulary(spec: VocabSpec, counts: pa.Table, max_id: int) -> Vocabulary:
    """Build a vocabulary from train counts (fit), the spec (closed, hash) or ``max_id``.

    Fitted values are ordered by count (descending) then value, so the index of a value does
    not depend on how the data was partitioned.
    """
    if spec.mode == "hash":
        assert spec.hash_size is not None
        return Vocabulary(mode="hash", hash_size=spec.hash_size)
    if spec.mode == "identity":
        return Vocabulary(mode="identity", max_id=max(max_id, 0))
    if spec.mode == "closed":
        return Vocabulary(mode="closed", keys=np.array(list(dict.fromkeys(spec.values)), dtype=str))
    kept = counts.filter(pc.greater_equal(counts.column("count"), spec.min_count))
    order = pc.sort_indices(kept, sort_keys=[("count", "descending"), ("value", "ascending")])
    values = kept.column("value").take(order).to_pylist()
    if spec.max_size is not None:
        values = values[: spec.max_size]
    return Vocabulary(mode="fit", keys=np.array(values, dtype=str))
