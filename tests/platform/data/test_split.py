"""Split boundaries: histogram narrowing equals a full stable sort; random split is stable."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from hmoe.platform.data import split as split_module
from hmoe.platform.data.split import (
    SplitAssigner,
    locate_boundaries,
    locate_boundary,
    row_hash,
)
from hmoe.platform.data.tables import FILE_COLUMN, ROW_COLUMN
from hmoe.platform.data.validate import REASON_COLUMN, TS_COLUMN, tie_column


def _rows(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            ROW_COLUMN: np.arange(n, dtype=np.int64),
            FILE_COLUMN: np.zeros(n, dtype=np.int32),
            TS_COLUMN: rng.integers(0, 50, n).astype(float),  # heavy ties
            tie_column("user"): pa.array([str(u) for u in rng.integers(0, 30, n)]),
            REASON_COLUMN: pa.array([None] * n, pa.string()),
        }
    )


def _locate(table: pa.Table, rank: int) -> split_module.Boundary:
    keys = np.asarray(table.column(TS_COLUMN))

    def inside(lo, hi, inclusive):
        return (keys >= lo) & ((keys <= hi) if inclusive else (keys < hi))

    def histogram(lo, hi, inclusive, edges):
        return np.histogram(keys[inside(lo, hi, inclusive)], bins=edges)[0]

    def collect(lo, hi, inclusive):
        chosen = np.flatnonzero(inside(lo, hi, inclusive))
        return pa.table(
            {
                "key": keys[chosen],
                ROW_COLUMN: table.column(ROW_COLUMN).take(chosen),
                tie_column("user"): table.column(tie_column("user")).take(chosen),
            }
        )

    bounds = (float(keys.min()), float(keys.max()))
    return locate_boundary(rank, table.num_rows, bounds, histogram, collect, ("user",))


@pytest.mark.parametrize("collect_rows", [10_000, 7])  # 7 forces histogram narrowing
def test_boundaries_equal_a_full_stable_sort(collect_rows: int, monkeypatch) -> None:
    monkeypatch.setattr(split_module, "COLLECT_ROWS", collect_rows)
    monkeypatch.setattr(split_module, "HISTOGRAM_BINS", 4)
    table = _rows(300, seed=1)
    ts = np.asarray(table.column(TS_COLUMN))
    users = np.array([int(u) for u in table.column(tie_column("user")).to_pylist()])
    order = np.lexsort((np.arange(300), users, ts))  # numeric tie-break: "10" after "9"
    for rank in (0, 1, 150, 240, 299, 300):
        boundary = _locate(table, rank)
        before = boundary.before(ts, np.arange(300))
        assert before.sum() == rank
        np.testing.assert_array_equal(np.sort(np.flatnonzero(before)), np.sort(order[:rank]))


@pytest.mark.parametrize("collect_rows", [10_000, 7])
def test_boundaries_located_together_equal_one_at_a_time(collect_rows: int, monkeypatch) -> None:
    monkeypatch.setattr(split_module, "COLLECT_ROWS", collect_rows)
    monkeypatch.setattr(split_module, "HISTOGRAM_BINS", 4)
    table = _rows(300, seed=4)
    keys = np.asarray(table.column(TS_COLUMN))
    passes = {"histogram": 0, "collect": 0}

    def inside(lo, hi, inclusive):
        return (keys >= lo) & ((keys <= hi) if inclusive else (keys < hi))

    def histograms(queries):
        passes["histogram"] += 1
        return [np.histogram(keys[inside(*q[:3])], bins=q[3])[0] for q in queries]

    def collects(intervals):
        passes["collect"] += 1
        out = []
        for interval in intervals:
            chosen = np.flatnonzero(inside(*interval))
            out.append(
                pa.table(
                    {
                        "key": keys[chosen],
                        ROW_COLUMN: table.column(ROW_COLUMN).take(chosen),
                        tie_column("user"): table.column(tie_column("user")).take(chosen),
                    }
                )
            )
        return out

    ranks = [0, 150, 240, 300]
    bounds = (float(keys.min()), float(keys.max()))
    together = locate_boundaries(ranks, 300, bounds, histograms, collects, ("user",))
    assert together == [_locate(table, rank) for rank in ranks]
    assert passes["collect"] == 1  # one pass for every boundary, not one per boundary
    if collect_rows == 7:
        assert passes["histogram"] >= 1


def test_assigner_respects_fractions_and_pins() -> None:
    table = _rows(1000, seed=2)
    files = np.where(np.arange(1000) >= 900, 1, 0).astype(np.int32)
    table = table.set_column(1, FILE_COLUMN, pa.array(files))
    assigner = SplitAssigner(kind="random", pinned={1: 2}, fractions=(0.5, 0.5, 0.0), seed=3)
    splits = assigner.assign(table)
    assert (splits[900:] == 2).all()
    assert set(np.unique(splits[:900])) == {0, 1}
    assert abs((splits[:900] == 0).mean() - 0.5) < 0.07
    np.testing.assert_array_equal(splits, assigner.assign(table))
    other_seed = SplitAssigner(kind="random", pinned={}, fractions=(0.5, 0.5, 0.0), seed=4)
    assert (other_seed.assign(table)[:900] != splits[:900]).any()


def test_row_hash_is_uniform_and_deterministic() -> None:
    u = row_hash(np.arange(100_000), seed=0)
    assert u.min() >= 0.0 and u.max() < 1.0
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert counts.min() > 9_500
    np.testing.assert_array_equal(u, row_hash(np.arange(100_000), seed=0))


def test_cutoff_split_uses_the_timestamps() -> None:
    table = _rows(200, seed=3)
    assigner = SplitAssigner(kind="cutoff", pinned={}, cutoffs=(20.0, 35.0))
    splits = assigner.assign(table)
    ts = np.asarray(table.column(TS_COLUMN))
    np.testing.assert_array_equal(splits, np.where(ts < 20, 0, np.where(ts < 35, 1, 2)))
