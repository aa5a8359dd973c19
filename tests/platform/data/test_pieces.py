"""Pieces: rows scattered by shard into one IPC file per block, gathered back per shard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from hmoe.platform.data.pieces import gather, load, save, scatter


def _block(rows: np.ndarray) -> pa.Table:
    seq = pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(rows, 2)), 2)
    users = pa.array([f"u{r % 7}" for r in rows], pa.string())
    return pa.table({"__row": pa.array(rows, pa.int64()), "user": users, "seq": seq})


def test_every_shard_gets_exactly_its_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    num_shards = 5
    blocks = [np.arange(0, 300), np.arange(300, 320), np.arange(1000, 1500)]
    shards = {}
    for rows in blocks:
        shards[int(rows[0])] = rng.integers(0, num_shards - 1, len(rows))  # shard 4 stays empty
        scatter(_block(rows), shards[int(rows[0])], num_shards, tmp_path / f"{rows[0]:016x}.arrow")
    for shard in range(num_shards):
        got = gather(tmp_path, shard)
        expected = np.concatenate([b[shards[int(b[0])] == shard] for b in blocks]).tolist()
        if not expected:
            assert got is None
            continue
        assert got.column_names == ["__row", "user", "seq"]
        assert got.column("__row").to_pylist() == expected  # file order, then block order
        assert got.column("seq").to_pylist() == [[r, r] for r in expected]
    assert not list(tmp_path.glob("*.partial"))


def test_empty_block_and_missing_folder(tmp_path: Path) -> None:
    empty = _block(np.arange(0))
    scatter(empty, np.zeros(0, dtype=np.int64), 3, tmp_path / "x.arrow")
    assert not (tmp_path / "x.arrow").exists()
    assert gather(tmp_path, 0) is None
    assert gather(tmp_path / "absent", 0) is None


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    table = _block(np.arange(10, 20))
    save(table, tmp_path / "a" / "block.arrow")
    assert load(tmp_path / "a" / "block.arrow").equals(table)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["block.arrow"]
