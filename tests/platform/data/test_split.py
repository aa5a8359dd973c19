"""Split boundaries: histogram narrowing equals a full stable sort; random and group splits are
stable; the per-group temporal split equals a per-user sort."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from hmoe.platform.data import split as split_module
from hmoe.platform.data import stats
from hmoe.platform.data.split import (
    SplitAssigner,
    group_boundaries,
    group_hash,
    locate_boundaries,
    locate_boundary,
    row_hash,
)
from hmoe.platform.data.tables import FILE_COLUMN, ROW_COLUMN
from hmoe.platform.data.validate import REASON_COLUMN, TS_COLUMN, cat_column, tie_column


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


def _grouped_rows(n: int, seed: int, users: int = 30) -> pa.Table:
    """Rows of ``users`` users with heavy time ties, in a shuffled file order (row ids 0..n-1)."""
    table = _rows(n, seed)
    rng = np.random.default_rng(seed + 100)
    users = pa.array([f"u{u}" for u in rng.integers(0, users, n)])
    return table.append_column(cat_column("user"), users)


def _reference_group_temporal(table: pa.Table, fractions: tuple[float, float, float]) -> list:
    """Slow reference: sort each user's rows by (time, tie column, row), then count from the
    end: max(1, round(n * test)) to test, max(1, round(n * valid)) before them to valid (none
    for a zero fraction)."""
    frame = table.select([cat_column("user"), TS_COLUMN, tie_column("user"), ROW_COLUMN])
    frame = frame.to_pandas()
    frame["tie"] = frame[tie_column("user")].astype(int)
    out = {}
    for _, rows in frame.groupby(cat_column("user")):
        ordered = rows.sort_values([TS_COLUMN, "tie", ROW_COLUMN])[ROW_COLUMN].tolist()
        n = len(ordered)
        test = 0 if fractions[2] == 0 else min(n, max(1, int(n * fractions[2] + 0.5)))
        valid = 0 if fractions[1] == 0 else min(n - test, max(1, int(n * fractions[1] + 0.5)))
        for position, row in enumerate(ordered):
            out[row] = 0 if position < n - test - valid else (1 if position < n - test else 2)
    return [out[row] for row in table.column(ROW_COLUMN).to_pylist()]


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.5, 0.5, 0.0), (0.0, 0.0, 1.0)])
def test_group_temporal_split_equals_a_per_user_sort(fractions) -> None:
    table = _grouped_rows(600, seed=4)
    candidates = stats.block_group_rows(table, "user", {}, ("user",))
    groups = group_boundaries(candidates, fractions, ("user",))
    assigner = SplitAssigner(kind="group_temporal", pinned={}, group_by="user", groups=groups)
    expected = _reference_group_temporal(table, fractions)
    np.testing.assert_array_equal(assigner.assign(table), expected)
    # block by block (as Ray Data's tasks see the rows) gives the same splits
    blocks = [assigner.assign(table.slice(start, 97)) for start in range(0, 600, 97)]
    np.testing.assert_array_equal(np.concatenate(blocks), expected)


def test_group_temporal_gives_every_user_a_test_row_after_its_train_rows() -> None:
    table = _grouped_rows(600, seed=5, users=200)  # 3 rows a user: 10% rounds to none
    groups = group_boundaries(stats.block_group_rows(table, "user", {}, ()), (0.8, 0.1, 0.1), ())
    splits = SplitAssigner(kind="group_temporal", pinned={}, group_by="user", groups=groups).assign(
        table
    )
    frame = pd.DataFrame(
        {"user": table.column(cat_column("user")).to_pylist(), "ts": table.column(TS_COLUMN)}
    )
    frame["split"] = splits
    for user, rows in frame.groupby("user"):
        assert (rows["split"] == 2).sum() >= 1, user
        assert (rows["split"] == 1).sum() == (len(rows) >= 2), user
        if len(rows) >= 3:
            assert (rows["split"] == 0).any(), user
            assert (
                rows.loc[rows["split"] == 0, "ts"].max() <= rows.loc[rows["split"] == 2, "ts"].min()
            )


def test_group_split_keeps_each_group_in_one_split() -> None:
    table = _grouped_rows(3000, seed=6)
    assigner = SplitAssigner(kind="group", pinned={}, fractions=(0.6, 0.2, 0.2), group_by="user")
    splits = assigner.assign(table)
    users = np.asarray(table.column(cat_column("user")).to_pylist())
    for user in np.unique(users):
        assert len(set(splits[users == user])) == 1, user
    # the same value hashes the same in any block and process; the seed changes the draw
    np.testing.assert_array_equal(assigner.assign(table.slice(1000, 500)), splits[1000:1500])
    hashes = group_hash(pa.array([f"u{i}" for i in range(20_000)]), seed=0)
    assert abs((hashes < 0.6).mean() - 0.6) < 0.02
    reseeded = group_hash(pa.array([f"u{i}" for i in range(20_000)]), seed=1)
    assert (reseeded != hashes).all()
