"""Train / valid / test assignment of parsed rows.

Fraction splits (``temporal``, ``ordered``) need the rows at two ranks of a global order
without sorting the data: a histogram pass over the sort key narrows each boundary to a bin, the
keys of that bin's rows (few) are sorted in the driver, and a boundary becomes ``(key, rows at
that key that fall before it)``. Assignment is then a per-row comparison, i.e. streaming.

Group splits keep a group's rows together (``group``: each group to one split by a stable hash
of its value) or split each group in time (``group_temporal``: the same two boundaries, one pair
per group, from the (group, time, row) triples sorted in the driver).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hmoe.platform.data.parsing import parse_numbers
from hmoe.platform.data.spec import SPLITS, DatasetSpec
from hmoe.platform.data.tables import FILE_COLUMN, ROW_COLUMN
from hmoe.platform.data.validate import REASON_COLUMN, TS_COLUMN, cat_column, tie_column

__all__ = [
    "Boundary",
    "GroupBoundaries",
    "SplitAssigner",
    "eligible_mask",
    "group_boundaries",
    "group_hash",
    "locate_boundaries",
    "locate_boundary",
    "order_key",
    "row_hash",
]

COLLECT_ROWS = 100_000  # a boundary's candidate keys are sorted in the driver below this count
HISTOGRAM_BINS = 4096  # bins per narrowing pass (each pass shrinks the candidates ~4096x)
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def row_hash(rows: np.ndarray, seed: int) -> np.ndarray:
    """A stable uniform [0, 1) per row id (splitmix64 of row id and seed)."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64(_MIX[0]) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX[1])
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX[2])
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclasses.dataclass(frozen=True)
class Boundary:
    """Rows with key < ``key``, and rows with key == ``key`` listed in ``rows_before``, come
    before the boundary."""

    key: float
    rows_before: tuple[int, ...] = ()

    def before(self, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
        at = keys == self.key
        listed = np.isin(rows, np.asarray(self.rows_before, dtype=np.int64)) if at.any() else at
        return (keys < self.key) | (at & listed)


def group_hash(groups: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A stable uniform [0, 1) per row from its group's value and ``seed`` (equal values, equal
    numbers, whatever the block or the process)."""
    codes = _codes(groups)
    salt = seed.to_bytes(8, "little", signed=True)
    per_value = np.array(
        [
            int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8, salt=salt).digest(), "little")
            for v in codes.dictionary.to_pylist()
        ],
        dtype=np.uint64,
    )
    return (per_value >> np.uint64(11)).astype(np.float64)[codes.indices] / float(1 << 53)


def _codes(groups: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
    """Group values as dictionary codes (a missing value is the group ``""``)."""
    if isinstance(groups, pa.ChunkedArray):
        groups = groups.combine_chunks()
    return pc.dictionary_encode(pc.fill_null(groups, ""))


@dataclasses.dataclass(frozen=True)
class GroupBoundaries:
    """Per group, the (train | valid) and (valid | test) boundaries of its rows in time order.

    ``keys_G2`` holds each group's two boundary keys; the rows at a boundary key that fall before
    it are listed once for all groups (row ids are global), so assignment is vectorised."""

    index: dict[str, int]  # group value -> row of keys_G2
    keys_G2: np.ndarray
    rows_before: tuple[np.ndarray, np.ndarray]

    def assign(self, groups: pa.Array, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
        values = pc.fill_null(groups, "").to_pylist()
        # a group absent from the index has no split rows (only pinned files): train, then pinned
        where = np.array([self.index.get(v, -1) for v in values], dtype=np.int64)
        known = where >= 0
        bound_B2 = np.full((len(values), 2), np.inf)
        bound_B2[known] = self.keys_G2[where[known]]
        out = []
        for side in (0, 1):
            at = keys == bound_B2[:, side]
            listed = np.isin(rows, self.rows_before[side]) if at.any() else at
            out.append((keys < bound_B2[:, side]) | (at & listed))
        return np.where(out[0], 0, np.where(out[1], 1, 2))


def group_boundaries(
    rows: pa.Table, fractions: tuple[float, float, float], tie_break: tuple[str, ...]
) -> GroupBoundaries:
    """The boundaries of every group of ``rows`` (columns ``group``, ``key``, ``__row`` and the
    tie-break columns: the eligible rows). A group of ``n`` rows sends its last
    ``max(1, round(n * test))`` rows to test, the ``max(1, round(n * valid))`` before them to
    valid (none when the fraction is 0; as many as there are) and the rest to train."""
    codes = _codes(rows.column("group"))
    group_N = np.asarray(codes.indices, dtype=np.int64)
    keys = np.asarray(rows.column("key"), dtype=np.float64)
    row_ids = np.asarray(rows.column(ROW_COLUMN), dtype=np.int64)
    sort_keys: list[np.ndarray] = [row_ids]
    for name in reversed(tie_break):
        sort_keys.append(_tie_values(rows.column(tie_column(name)).combine_chunks()))
    sort_keys += [keys, group_N]
    order = np.lexsort(sort_keys)
    group_N, keys, row_ids = group_N[order], keys[order], row_ids[order]
    num_groups = len(codes.dictionary)
    count_G = np.bincount(group_N, minlength=num_groups)
    start_G = np.concatenate([[0], np.cumsum(count_G)[:-1]])
    half_up = np.floor  # round half up, the same on every platform
    test_G = np.zeros_like(count_G)
    if fractions[2] > 0:
        test_G = np.minimum(count_G, np.maximum(1, half_up(count_G * fractions[2] + 0.5)))
    valid_G = np.zeros_like(count_G)
    if fractions[1] > 0:
        valid_G = np.minimum(count_G - test_G, np.maximum(1, half_up(count_G * fractions[1] + 0.5)))
    ranks_G2 = np.stack([count_G - test_G - valid_G, count_G - test_G], axis=1).astype(np.int64)
    keys_G2 = np.full(ranks_G2.shape, np.inf)
    inside = ranks_G2 < count_G[:, None]
    positions = (start_G[:, None] + ranks_G2)[inside]
    keys_G2[inside] = keys[positions] if positions.size else keys_G2[inside]
    keys_G2[ranks_G2 == 0] = -np.inf
    rank_in_group = np.arange(len(keys)) - start_G[group_N]
    rows_before = tuple(
        row_ids[(rank_in_group < ranks_G2[group_N, side]) & (keys == keys_G2[group_N, side])]
        for side in (0, 1)
    )
    index = {value: g for g, value in enumerate(codes.dictionary.to_pylist())}
    return GroupBoundaries(index=index, keys_G2=keys_G2, rows_before=rows_before)


@dataclasses.dataclass(frozen=True)
class SplitAssigner:
    """Assigns split ids (0 train, 1 valid, 2 test) to parsed rows; picklable for Ray tasks."""

    kind: str
    pinned: dict[int, int]  # file index -> split id
    boundaries: tuple[Boundary, Boundary] | None = None
    cutoffs: tuple[float, float] | None = None
    fractions: tuple[float, float, float] = (1.0, 0.0, 0.0)
    seed: int = 0
    group_by: str | None = None  # the categorical feature whose raw values form the groups
    groups: GroupBoundaries | None = None

    def assign(self, table: pa.Table) -> np.ndarray:
        rows = np.asarray(table.column(ROW_COLUMN), dtype=np.int64)
        if self.kind in ("random", "group"):
            if self.kind == "random":
                u = row_hash(rows, self.seed)
            else:
                assert self.group_by is not None
                u = group_hash(table.column(cat_column(self.group_by)), self.seed)
            out = np.where(u < self.fractions[0], 0, np.where(u < sum(self.fractions[:2]), 1, 2))
        elif self.kind == "group_temporal":
            assert self.groups is not None and self.group_by is not None
            groups = table.column(cat_column(self.group_by)).combine_chunks()
            keys = np.asarray(table.column(TS_COLUMN), dtype=np.float64)
            out = self.groups.assign(groups, keys, rows)
        elif self.kind == "cutoff":
            assert self.cutoffs is not None
            ts = np.asarray(table.column(TS_COLUMN), dtype=np.float64)
            out = np.where(ts < self.cutoffs[0], 0, np.where(ts < self.cutoffs[1], 1, 2))
        else:
            assert self.boundaries is not None
            keys = order_key(table, self.kind)
            first, second = (b.before(keys, rows) for b in self.boundaries)
            out = np.where(first, 0, np.where(second, 1, 2))
        files = np.asarray(table.column(FILE_COLUMN), dtype=np.int32)
        for file_index, split in self.pinned.items():
            out = np.where(files == file_index, split, out)
        return out.astype(np.int8)


def order_key(table: pa.Table, kind: str) -> np.ndarray:
    """The primary sort key: the timestamp (temporal) or the row id (file order)."""
    if kind == "temporal":
        return np.asarray(table.column(TS_COLUMN), dtype=np.float64)
    return np.asarray(table.column(ROW_COLUMN), dtype=np.float64)


def eligible_mask(table: pa.Table, pinned: dict[int, int]) -> np.ndarray:
    """Valid rows that the fractions split (not pinned to a split by file)."""
    valid = np.asarray(table.column(REASON_COLUMN).is_null(), dtype=bool)
    files = np.asarray(table.column(FILE_COLUMN), dtype=np.int32)
    return valid & ~np.isin(files, np.asarray(list(pinned), dtype=np.int32))


def pinned_files(spec: DatasetSpec, written_paths: list[str]) -> dict[int, int]:
    """File index -> split id for the files ``split.pinned_files`` names."""
    pins = spec.split.pinned_files
    return {i: SPLITS.index(pins[w]) for i, w in enumerate(written_paths) if w in pins}


Histogram = Callable[[float, float, bool, np.ndarray], np.ndarray]
Collect = Callable[[float, float, bool], pa.Table]
Interval = tuple[float, float, bool]  # lo, hi, whether hi is included
Histograms = Callable[[list[tuple[float, float, bool, np.ndarray]]], list[np.ndarray]]
Collects = Callable[[list[Interval]], list[pa.Table]]


def locate_boundary(
    rank: int,
    total: int,
    bounds: tuple[float, float],
    histogram: Histogram,
    collect: Collect,
    tie_break: tuple[str, ...],
) -> Boundary:
    """The boundary with ``rank`` eligible rows before it in the order (key, tie_break, row).

    ``histogram(lo, hi, hi_inclusive, edges)`` counts eligible keys per bin of ``edges`` within
    the interval; ``collect(lo, hi, hi_inclusive)`` returns the interval's eligible rows with
    ``key``, ``__row`` and the tie-break columns.
    """
    (boundary,) = locate_boundaries(
        [rank],
        total,
        bounds,
        lambda queries: [histogram(*q) for q in queries],
        lambda intervals: [collect(*i) for i in intervals],
        tie_break,
    )
    return boundary


@dataclasses.dataclass
class _Search:
    """The narrowing state of one boundary (see ``locate_boundaries``)."""

    rank: int
    lo: float
    hi: float
    inclusive: bool = True
    below: int = 0
    inside: int = 0
    stuck: bool = False  # the float range cannot be narrowed further

    def active(self) -> bool:
        return not self.stuck and self.inside > COLLECT_ROWS and self.lo < self.hi


def locate_boundaries(
    ranks: list[int],
    total: int,
    bounds: tuple[float, float],
    histograms: Histograms,
    collects: Collects,
    tie_break: tuple[str, ...],
) -> list[Boundary]:
    """``locate_boundary`` for several ranks at once: each narrowing round asks ``histograms``
    for every boundary still being narrowed and the end asks ``collects`` once, so the data is
    read once per round instead of once per round and boundary.

    ``histograms([(lo, hi, hi_inclusive, edges), ...])`` and ``collects([(lo, hi,
    hi_inclusive), ...])`` answer one query per entry, in order.
    """
    out: list[Boundary | None] = [None] * len(ranks)
    searches: dict[int, _Search] = {}
    for i, rank in enumerate(ranks):
        if rank <= 0:
            out[i] = Boundary(key=-np.inf)
        elif rank >= total:
            out[i] = Boundary(key=np.inf)
        else:
            searches[i] = _Search(rank=rank, lo=bounds[0], hi=bounds[1], inside=total)
    while active := [s for s in searches.values() if s.active()]:
        queries = [
            (s.lo, s.hi, s.inclusive, np.linspace(s.lo, s.hi, HISTOGRAM_BINS + 1)) for s in active
        ]
        for s, (_, _, _, edges), counts in zip(active, queries, histograms(queries), strict=True):
            cumulative = s.below + np.cumsum(counts)
            b = int(np.searchsorted(cumulative, s.rank, side="right"))
            if edges[b] == s.lo and edges[b + 1] == s.hi:
                s.stuck = True
                continue
            s.below += int(counts[:b].sum())
            s.inclusive = s.inclusive and b == HISTOGRAM_BINS - 1
            s.lo, s.hi, s.inside = float(edges[b]), float(edges[b + 1]), int(counts[b])
    chosen = list(searches)
    tables = collects([(searches[i].lo, searches[i].hi, searches[i].inclusive) for i in chosen])
    for i, table in zip(chosen, tables, strict=True):
        out[i] = _boundary_in(table, searches[i].rank - searches[i].below, tie_break)
    return [b for b in out if b is not None]


def _boundary_in(candidates: pa.Table, rank: int, tie_break: tuple[str, ...]) -> Boundary:
    keys = np.asarray(candidates.column("key"), dtype=np.float64)
    rows = np.asarray(candidates.column(ROW_COLUMN), dtype=np.int64)
    sort_keys: list[np.ndarray] = [rows]
    for name in reversed(tie_break):
        sort_keys.append(_tie_values(candidates.column(tie_column(name)).combine_chunks()))
    sort_keys.append(keys)
    order = np.lexsort(sort_keys)
    assert 0 <= rank < len(order), "boundary rank outside its histogram bin"
    key = keys[order[rank]]
    before = order[:rank]
    return Boundary(key=float(key), rows_before=tuple(sorted(rows[before][keys[before] == key])))


def _tie_values(array: pa.Array) -> np.ndarray:
    """Numbers when every value parses as one (ids sort 2 < 10), else the strings."""
    values, missing, bad = parse_numbers(array)
    if not (missing | bad).any():
        return values
    return np.asarray(array.fill_null("").to_pylist(), dtype=str)
