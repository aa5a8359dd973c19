"""``prepare`` end to end on Ray Data, on a hand-made log with planted malformed rows.

The shards are checked against slow references computed from the raw log with pandas: rows
in = out + quarantined per reason, point-in-time sequences, exposure counts, similarity
features, the temporal split, train-only vocabularies, and byte-identical re-runs.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from hmoe.platform.data import (
    batch_columns,
    collate_fn,
    feature_schema,
    iter_batches,
    load_manifest,
    prepare,
    read_split_dataset,
    read_split_table,
    shard_paths,
    verify_shards,
)
from hmoe.platform.data.batches import split_megabytes
from hmoe.schema import EXPOSURE, LABELS, WEIGHT, seq_column
from tests.platform.data.toy import (
    EMB_DIM,
    PLANTED,
    SEQ_LEN,
    make_log,
    plant,
    spec_dict,
    write_dataset,
)

pytestmark = pytest.mark.ray
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)


@pytest.fixture(scope="module")
def toy(ray_cluster, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("toy")
    log, items = make_log(n=400, seed=7)
    spec_path = write_dataset(folder / "raw", plant(log), items, spec_dict())
    out = folder / "prepared"
    manifest = prepare(spec_path, out)
    frame = log.astype(
        {"rid": int, "ts": float, "click": int, "buy": int, "price": float, "w": float}
    )
    frame = frame.merge(items, on="item", how="left")
    table = pa.concat_tables(
        [
            read_split_table(out, s).append_column("split", pa.array([s] * manifest["rows"][s]))
            for s in ("train", "valid", "test")
        ]
    )
    shards = table.to_pandas()
    shards["rid"] = shards["rid"].astype(int)
    return {
        "spec_path": spec_path,
        "out": out,
        "manifest": manifest,
        "log": frame,
        "items": items,
        "shards": shards.set_index("rid").loc[frame["rid"]],
    }


def _vocab(out: Path, name: str) -> list[str]:
    return pq.read_table(out / "vocab" / f"{name}.parquet").column("value").to_pylist()


def _decode(out: Path, name: str, indices: np.ndarray) -> np.ndarray:
    table = np.array(["<pad>", "<oov>", *_vocab(out, name)], dtype=object)
    return table[indices]


def test_rows_read_equal_written_plus_quarantined(toy: dict) -> None:
    manifest = toy["manifest"]
    expected = Counter(reason for _, _, reason in PLANTED.values())
    assert manifest["quarantined_by_reason"] == dict(sorted(expected.items()))
    rows = manifest["rows"]
    assert rows["read"] == 400 + len(PLANTED) == rows["written"] + rows["quarantined"]
    assert rows["written"] == rows["train"] + rows["valid"] + rows["test"] == 400
    quarantine = pq.read_table(toy["out"] / "quarantine").to_pandas()
    by_rid = {
        int(json.loads(raw)["rid"]): reason
        for raw, reason in zip(quarantine["raw"], quarantine["reason"], strict=True)
    }
    assert by_rid == {rid: reason for rid, (_, _, reason) in PLANTED.items()}


def test_manifest_contract(toy: dict) -> None:
    manifest = load_manifest(toy["out"])
    schema = feature_schema(toy["out"])
    assert schema.tasks == ("click", "buy") and schema.has_weight and schema.has_exposure
    assert schema.user_field == "user" and schema.item_field == "item"
    (hist,) = schema.sequences
    assert (hist.max_len, hist.category_field, hist.has_similarity) == (SEQ_LEN, "cat", True)
    assert hist.group == "user" and schema.categorical_by_name("item").group == "item"
    assert manifest["vocab_sizes"]["device"] == 4
    assert schema.categorical_by_name("tags").max_len == 3
    assert manifest["spec_hash"] and manifest["hmoe_version"]
    assert manifest["columns"] == read_split_table(toy["out"], "valid").column_names
    verify_shards(toy["out"])
    assert not list(toy["out"].parent.glob(".prepared.tmp-*"))
    assert not (toy["out"] / ".pieces").exists()  # the scratch files are removed
    assert not (toy["out"] / ".parsed").exists()


def test_numeric_statistics_are_fitted_on_train(toy: dict) -> None:
    schema = feature_schema(toy["out"])
    train = toy["log"].loc[(toy["shards"]["split"] == "train").to_numpy()]
    price = next(n for n in schema.numeric if n.name == "price")
    assert price.min_value == pytest.approx(train["price"].min())
    assert price.max_value == pytest.approx(train["price"].max())
    assert not price.is_integer
    assert list(price.quantiles) == sorted(price.quantiles) and len(price.quantiles) == 15
    assert price.min_value <= price.quantiles[0] and price.quantiles[-1] <= price.max_value
    rid = next(n for n in schema.numeric if n.name == "rid")
    assert rid.is_integer


def test_temporal_split_puts_later_rows_later(toy: dict) -> None:
    log, shards = toy["log"], toy["shards"]
    ts = log.set_index("rid")["ts"]
    splits = shards["split"]
    assert list(splits.value_counts()[["train", "valid", "test"]]) == [240, 80, 80]
    for early, late in (("train", "valid"), ("valid", "test")):
        assert ts[splits == early].max() <= ts[splits == late].min()
    order = log.sort_values(["ts", "rid"], kind="stable")["rid"]
    expected = np.repeat(["train", "valid", "test"], [240, 80, 80])
    np.testing.assert_array_equal(splits.loc[order].to_numpy(), expected)


def test_sequences_match_a_point_in_time_reference(toy: dict) -> None:
    log, shards, out = toy["log"], toy["shards"], toy["out"]
    items = _decode(out, "item", np.stack(shards[seq_column("hist", "item")]))
    cats = _decode(out, "cat", np.stack(shards[seq_column("hist", "category")]))
    deltas = np.stack(shards[seq_column("hist", "time_delta")])
    sims = np.stack(shards[seq_column("hist", "similarity")])
    lengths = shards[seq_column("hist", "length")].to_numpy()
    vectors = {
        i: np.array(v.split(), float)
        for i, v in zip(toy["items"]["item"], toy["items"]["iemb"], strict=True)
    }
    clicks = log[log["click"] == 1]
    for row, target in enumerate(log.itertuples()):
        history = clicks[(clicks["user"] == target.user) & (clicks["ts"] < target.ts)]
        history = history.sort_values(["ts", "rid"], kind="stable").tail(SEQ_LEN)
        n = len(history)
        assert lengths[row] == n
        known = [i if i in _vocab(out, "item") else "<oov>" for i in history["item"]]
        assert list(items[row, :n]) == known and set(items[row, n:]) <= {"<pad>"}
        assert list(cats[row, :n]) == list(history["cat"])
        np.testing.assert_allclose(deltas[row, :n], target.ts - history["ts"], rtol=1e-6)
        assert (deltas[row, :n] > 0).all() and (np.diff(deltas[row, :n]) <= 0).all()
        target_vector = vectors[target.item]
        expected = [
            v @ target_vector / np.linalg.norm(v) / np.linalg.norm(target_vector)
            for v in (vectors[i] for i in history["item"])
        ]
        np.testing.assert_allclose(sims[row, :n], expected, atol=1e-5)
        assert not sims[row, n:].any() and not deltas[row, n:].any()


def test_exposure_counts_match_reference(toy: dict) -> None:
    log = toy["log"]
    expected = [
        ((log["user"] == r.user) & (log["item"] == r.item) & (log["ts"] < r.ts)).sum()
        for r in log.itertuples()
    ]
    np.testing.assert_array_equal(toy["shards"][EXPOSURE].to_numpy(), expected)
    assert max(expected) > 0


def test_similarity_and_plain_columns_match_raw(toy: dict) -> None:
    log, shards = toy["log"], toy["shards"]
    users = np.array([[float(x) for x in v.split()] for v in log["uemb"]])
    items = np.array([[float(x) for x in v.split()] for v in log["iemb"]])
    expected = (
        (users * items).sum(1) / np.linalg.norm(users, axis=1) / np.linalg.norm(items, axis=1)
    )
    np.testing.assert_allclose(shards["user_item_sim"], expected, atol=1e-5)
    np.testing.assert_allclose(shards["price"], log["price"], rtol=1e-6)
    np.testing.assert_allclose(shards[WEIGHT], log["w"], rtol=1e-6)
    np.testing.assert_array_equal(shards["label__click"], log["click"])
    tags = _decode(toy["out"], "tags", np.stack(shards["tags"]))
    for decoded, raw in zip(tags, log["tags"], strict=True):
        assert [t for t in decoded if t != "<pad>"] == raw.split("|")[:3]
    assert EMB_DIM == 3


def test_vocabularies_are_fitted_on_train_only(toy: dict) -> None:
    log, shards, out = toy["log"], toy["shards"], toy["out"]
    train_items = log.loc[(shards["split"] == "train").to_numpy(), "item"]
    counts = train_items.value_counts()
    expected = sorted(counts.index, key=lambda v: (-counts[v], v))
    assert _vocab(out, "item") == expected
    unseen = ~log["item"].isin(expected).to_numpy()
    np.testing.assert_array_equal(shards["item"].to_numpy()[unseen], 1)
    assert (shards["item"].to_numpy()[~unseen] >= 2).all()


def test_batches_follow_the_contract(toy: dict) -> None:
    batch = next(iter_batches(toy["out"], "train", batch_size=32))
    assert batch[LABELS].shape == (32, 2)
    assert batch["tags"].shape == (32, 3) and batch["user"].shape == (32,)
    assert batch[seq_column("hist", "item")].shape == (32, SEQ_LEN)
    assert batch[seq_column("hist", "time_delta")].dtype.is_floating_point
    sizes = [len(b[WEIGHT]) for b in iter_batches(toy["out"], "train", batch_size=100)]
    assert sizes == [100, 100, 40]


def test_rerun_writes_identical_shards(toy: dict, tmp_path: Path) -> None:
    again = prepare(toy["spec_path"], tmp_path / "again")
    assert again["shards"] == toy["manifest"]["shards"]
    assert again["dataset_hash"] == toy["manifest"]["dataset_hash"]


def _all_splits(out: Path) -> pd.DataFrame:
    tables = []
    for split in ("train", "valid", "test"):
        table = read_split_table(out, split)
        tables.append(table.append_column("split", pa.array([split] * table.num_rows)))
    return pa.concat_tables(tables).to_pandas().sort_values("rid")


def test_parquet_and_jsonl_hashing_and_random_split(ray_cluster, tmp_path: Path) -> None:
    log, items = make_log(n=120, seed=11)
    spec = spec_dict(
        log={"paths": ["logs"], "format": "parquet"},
        vocab={"mode": "hash", "hash_size": 7},
        split={"kind": "random", "fractions": [0.5, 0.25, 0.25], "seed": 5},
        sequences=[],
        count_exposures=False,
    )
    spec["categorical"][-1] = {"name": "device"}
    folder = tmp_path / "raw"
    (folder / "logs").mkdir(parents=True)
    (folder / "jsonl").mkdir(parents=True)
    for name, part in (("a", log.iloc[:60]), ("b", log.iloc[60:])):
        part.to_parquet(folder / "logs" / f"{name}.parquet")
        part.to_json(folder / "jsonl" / f"{name}.jsonl", orient="records", lines=True)
    parquet = prepare(write_dataset(folder, log.iloc[:0], items, spec), tmp_path / "pq")
    assert parquet["rows"]["written"] == 120 and parquet["vocab_sizes"]["user"] == 9
    frame = _all_splits(tmp_path / "pq")
    np.testing.assert_array_equal(
        frame["user"], [2 + zlib.crc32(u.encode()) % 7 for u in log["user"]]
    )
    assert set(frame["split"]) == {"train", "valid", "test"}
    spec["log"] = {"paths": ["jsonl"], "format": "jsonl"}
    from_json = prepare(write_dataset(folder, log.iloc[:0], items, spec), tmp_path / "js")
    assert from_json["rows"] == parquet["rows"]
    # same rows in the same file layout: same stable ids, same random split, same encoding
    pd.testing.assert_frame_equal(_all_splits(tmp_path / "js"), frame)


def test_group_splits_through_prepare(ray_cluster, tmp_path: Path) -> None:
    """Per-user temporal split: every user with three rows or more has training rows before its
    test rows; group split: no user in two splits. Both with sequences and exposure counts."""
    log, items = make_log(n=240, seed=13)
    frame = log.astype({"rid": int, "ts": float}).set_index("rid")
    spec = spec_dict(
        split={"kind": "group_temporal", "group_by": "user", "fractions": [0.6, 0.2, 0.2]}
    )
    out = tmp_path / "per_user"
    manifest = prepare(write_dataset(tmp_path / "raw", log, items, spec), out)
    assert manifest["rows"]["written"] == len(log)
    shards = _all_splits(out)
    shards["user"] = frame.loc[shards["rid"].astype(int), "user"].to_numpy()
    shards["ts"] = frame.loc[shards["rid"].astype(int), "ts"].to_numpy()
    for user, rows in shards.groupby("user"):
        train, test = rows[rows["split"] == "train"], rows[rows["split"] == "test"]
        assert len(test) >= 1, user
        if len(rows) >= 3:
            assert len(train) >= 1 and train["ts"].max() <= test["ts"].min(), user
    spec["split"] = {"kind": "group", "group_by": "user", "fractions": [0.6, 0.2, 0.2]}
    out = tmp_path / "by_user"
    prepare(write_dataset(tmp_path / "raw2", log, items, spec), out)
    shards = _all_splits(out)
    shards["user"] = frame.loc[shards["rid"].astype(int), "user"].to_numpy()
    assert (shards.groupby("user")["split"].nunique() == 1).all()
    assert shards["split"].nunique() >= 2


def test_sequences_from_a_separate_behaviour_log(ray_cluster, tmp_path: Path) -> None:
    log, items = make_log(n=150, seed=5)
    rng = np.random.default_rng(0)
    clicks = pd.DataFrame(
        {
            "uid": [f"u{u}" for u in rng.integers(0, 12, 300)],
            "iid": [f"i{i}" for i in rng.integers(0, 15, 300)],
            "genre": [f"g{g}" for g in rng.integers(0, 3, 300)],
            "when": (1_000_000 + rng.integers(-20, 60, 300)).astype(str),
        }
    )
    clicks.loc[3, "when"] = "soon"  # dropped: bad_timestamp
    clicks.loc[4, "uid"] = None  # dropped: missing_value
    sequence = {
        "name": "hist",
        "max_len": SEQ_LEN,
        "item_field": "item",
        "category_field": "genre",
        "source": "behaviour_log",
        "behaviour_log": {
            "table": {"paths": ["clicks.csv"]},
            "user_column": "uid",
            "item_column": "iid",
            "timestamp_column": "when",
            "category_column": "genre",
        },
    }
    spec = spec_dict(sequences=[sequence], count_exposures=False)
    spec["categorical"].append(
        {"name": "genre", "column": "device", "vocab": {"mode": "hash", "hash_size": 5}}
    )
    folder = tmp_path / "raw"
    path = write_dataset(folder, log, items, spec)
    clicks.to_csv(folder / "clicks.csv", index=False)
    manifest = prepare(path, tmp_path / "out")
    assert manifest["behaviour_logs"] == {
        "hist": {"read": 300, "used": 298, "dropped": {"bad_timestamp": 1, "missing_value": 1}}
    }
    shards = _all_splits(tmp_path / "out").set_index("rid")
    valid_clicks = clicks.drop(index=[3, 4]).astype({"when": float})
    valid_clicks["row"] = valid_clicks.index
    item_vocab = ["<pad>", "<oov>", *_vocab(tmp_path / "out", "item")]
    frame = log.astype({"rid": int, "ts": float})
    for target in frame.itertuples():
        history = valid_clicks[
            (valid_clicks["uid"] == target.user) & (valid_clicks["when"] < target.ts)
        ]
        history = history.sort_values(["when", "row"], kind="stable").tail(SEQ_LEN)
        row = shards.loc[target.rid]
        n = len(history)
        assert row[seq_column("hist", "length")] == n
        decoded = [item_vocab[i] for i in row[seq_column("hist", "item")][:n]]
        assert decoded == [i if i in item_vocab else "<oov>" for i in history["iid"]]
        np.testing.assert_allclose(
            row[seq_column("hist", "time_delta")][:n], target.ts - history["when"], rtol=1e-6
        )
        genres = [2 + zlib.crc32(g.encode()) % 5 for g in history["genre"]]
        assert list(row[seq_column("hist", "category")][:n]) == genres


@pytest.mark.parametrize("in_memory", [False, True])
def test_ray_dataset_and_collate_give_batches(toy: dict, in_memory: bool) -> None:
    schema = feature_schema(toy["out"])
    dataset = read_split_dataset(toy["out"], "valid", in_memory=in_memory)
    batches = list(dataset.iter_torch_batches(batch_size=50, collate_fn=collate_fn(schema)))
    assert [len(b[WEIGHT]) for b in batches] == [50, 30]
    assert batches[0][LABELS].shape == (50, 2)
    assert batches[0][seq_column("hist", "similarity")].shape == (50, SEQ_LEN)


def test_the_split_size_that_decides_materialising_is_its_size_in_memory(toy: dict) -> None:
    held = read_split_table(toy["out"], "train").select(batch_columns(feature_schema(toy["out"])))
    stored = sum(Path(p).stat().st_size for p in shard_paths(toy["out"], "train"))
    assert held.nbytes > 2 * stored  # Parquet's compression: the files say little about memory
    assert split_megabytes(toy["out"], "train") * 2**20 == pytest.approx(held.nbytes, rel=0.02)


def test_many_shards_give_the_same_rows(toy: dict, tmp_path: Path) -> None:
    spec = spec_dict(output={"rows_per_shard": 64})  # 7 shards, each holding whole users
    path = write_dataset(tmp_path / "raw", plant(make_log(n=400, seed=7)[0]), toy["items"], spec)
    manifest = prepare(path, tmp_path / "out")
    assert len(manifest["shards"]["train"]) > 2
    frame = _all_splits(tmp_path / "out").set_index("rid").drop(columns="split")
    frame.index = frame.index.astype(int)
    expected = toy["shards"].drop(columns="split")
    pd.testing.assert_frame_equal(frame.sort_index(), expected.sort_index(), check_like=True)
    # read into memory: one block per shard, in shard order, the streamed read's columns
    held = read_split_dataset(tmp_path / "out", "train", in_memory=True)
    assert held.num_blocks() == len(manifest["shards"]["train"])
    columns = read_split_dataset(tmp_path / "out", "train").columns()
    expected_rows = read_split_table(tmp_path / "out", "train").select(columns)
    assert pa.concat_tables(ray.get(held.to_arrow_refs())).equals(expected_rows)
    # the memory estimate: the first shard's bytes per row carried over to all of them
    estimate = split_megabytes(tmp_path / "out", "train") * 2**20
    assert estimate == pytest.approx(expected_rows.nbytes, rel=0.02)


def test_behaviour_filter_on_a_raw_column(ray_cluster, tmp_path: Path) -> None:
    log, items = make_log(n=150, seed=9)
    sequence = {
        "name": "hist",
        "max_len": SEQ_LEN,
        "item_field": "item",
        "filter": {"column": "price", "where": {"op": ">=", "value": 50}},
    }
    spec = spec_dict(sequences=[sequence], count_exposures=False)
    prepare(write_dataset(tmp_path / "raw", log, items, spec), tmp_path / "out")
    shards = _all_splits(tmp_path / "out")
    shards.index = shards["rid"].astype(int)
    frame = log.astype({"rid": int, "ts": float, "price": float})
    vocab = ["<pad>", "<oov>", *_vocab(tmp_path / "out", "item")]
    events = frame[frame["price"] >= 50]
    for target in frame.itertuples():
        history = events[(events["user"] == target.user) & (events["ts"] < target.ts)]
        history = history.sort_values(["ts", "rid"], kind="stable").tail(SEQ_LEN)
        row = shards.loc[target.rid]
        n = len(history)
        assert row[seq_column("hist", "length")] == n
        decoded = [vocab[i] for i in row[seq_column("hist", "item")][:n]]
        assert decoded == [i if i in vocab else "<oov>" for i in history["item"]]
