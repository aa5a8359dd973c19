"""The peer benchmark's data export: the rows of our prepared split, in order, nothing else.

The reference reads the prepared Parquet shards straight with pyarrow, in the manifest's shard
order, without the training loop's reader. The peers themselves (deepctr-torch) are not
installed in the project, so they are not trained here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hmoe.platform.data.batches import load_schema
from tests.conftest import load_benchmark
from tests.platform.prepared import write_prepared

SPLITS = {"train": "train", "val": "valid", "test": "test"}
ROWS = {"train": 40, "valid": 17, "test": 9}


@pytest.fixture(scope="module")
def bench_peers():
    return load_benchmark("bench_peers")


def _shards(data: Path, split: str) -> pa.Table:
    manifest = json.loads((data / "manifest.json").read_text())
    return pa.concat_tables(pq.read_table(data / s["path"]) for s in manifest["shards"][split])


def test_export_is_our_split_row_for_row(bench_peers, tmp_path: Path) -> None:
    data = write_prepared(tmp_path / "tiny", seed=3, rows=ROWS)
    splits = bench_peers.export(data)
    assert set(splits) == set(SPLITS)
    train_age = _shards(data, "train").column("age").to_numpy().astype(np.float64)
    for name, folder in SPLITS.items():
        raw = _shards(data, folder)
        columns = splits[name]
        assert len(columns["label"]) == ROWS[folder] == raw.num_rows
        for field in ("user", "item", "category", "hour"):
            np.testing.assert_array_equal(columns[field], raw.column(field).to_numpy())
        np.testing.assert_array_equal(columns["label"], raw.column("label__click").to_numpy())
        history = np.stack(raw.column("history__item").to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(columns["hist_item"], history)
        np.testing.assert_array_equal(columns["seq_length"], raw.column("history__length"))
        # standardised with the train split's statistics, whatever the split
        age = raw.column("age").to_numpy().astype(np.float64)
        expected = (age - train_age.mean()) / train_age.std()
        np.testing.assert_allclose(columns["age"], expected, rtol=1e-5, atol=1e-5)
        assert "tags" not in columns  # multi-valued ids are not Q1 peer inputs
    assert abs(float(splits["train"]["age"].mean())) < 1e-5


def test_peer_schema_keeps_single_valued_ids(bench_peers, tmp_path: Path) -> None:
    schema = load_schema(write_prepared(tmp_path / "tiny", rows=ROWS))
    kept = [c.name for c in bench_peers.peer_schema(schema).categorical]
    assert kept == [c.name for c in schema.categorical if not c.multi_valued]
    assert "tags" in [c.name for c in schema.categorical] and "tags" not in kept
