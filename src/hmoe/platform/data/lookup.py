"""Key lookups built once in the driver and reused by every Ray task.

``pyarrow.compute.index_in`` rebuilds a hash table of its value set on every call: with millions
of user ids that costs about a second per batch. ``KeyIndex`` sorts the keys once and answers a
batch with a binary search over the batch's distinct values (``O(B log K)``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from hmoe.platform.data.tables import as_strings

__all__ = ["KeyIndex", "SideTable"]

MISSING = -1


@dataclasses.dataclass(frozen=True, eq=False)
class KeyIndex:
    """Positions of string keys; ``lookup`` gives -1 for unknown or null keys.

    Args:
        keys: the keys in position order (need not be sorted; must be distinct for lookups to
            be unambiguous, see ``duplicated``).
    """

    keys: np.ndarray  # str, position order
    _sorted: np.ndarray = dataclasses.field(init=False, repr=False)
    _positions: np.ndarray = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        order = np.argsort(self.keys, kind="stable")
        object.__setattr__(self, "_sorted", self.keys[order])
        object.__setattr__(self, "_positions", order.astype(np.int64))

    @classmethod
    def of(cls, keys: pa.Array | pa.ChunkedArray | list[str] | tuple[str, ...]) -> KeyIndex:
        if isinstance(keys, (pa.Array, pa.ChunkedArray)):
            keys = as_strings(keys).to_pylist()
        return cls(keys=np.array(list(keys) if keys else [""][:0], dtype=str))

    def __len__(self) -> int:
        return len(self.keys)

    def duplicated(self) -> list[str]:
        """Keys that occur more than once (a side table's key must be unique)."""
        same = self._sorted[1:] == self._sorted[:-1]
        return sorted(set(self._sorted[1:][same].tolist()))

    def lookup(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """int64 position of each value's key, -1 where absent or null."""
        encoded = as_strings(values).dictionary_encode()
        per_unique = self.lookup_distinct(encoded.dictionary)
        codes = encoded.indices
        if not len(per_unique):
            return np.full(len(codes), MISSING, dtype=np.int64)
        found = per_unique[np.asarray(codes.fill_null(0), dtype=np.int64)]
        return np.where(np.asarray(codes.is_null(), dtype=bool), MISSING, found)

    def lookup_distinct(self, uniques: pa.Array) -> np.ndarray:
        keys = np.array(uniques.to_pylist(), dtype=str)
        if not len(self._sorted) or not len(keys):
            return np.full(len(keys), MISSING, dtype=np.int64)
        order = np.argsort(keys)  # sorted probes walk the table in order: cache friendly
        position = np.empty(len(keys), dtype=np.int64)
        position[order] = np.searchsorted(self._sorted, keys[order])
        position = np.minimum(position, len(self._sorted) - 1)
        return np.where(self._sorted[position] == keys, self._positions[position], MISSING)


@dataclasses.dataclass(frozen=True, eq=False)
class SideTable:
    """A side table read in the driver with the index of its key column."""

    table: pa.Table
    index: KeyIndex

    def take(self, column: str, positions: np.ndarray) -> pa.Array:
        """Values of ``column`` at ``positions`` (null where -1)."""
        mask = positions < 0
        return self.table.column(column).take(pa.array(np.where(mask, 0, positions), mask=mask))
