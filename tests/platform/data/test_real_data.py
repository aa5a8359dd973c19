"""The shipped specs on the real data in ``$HMOE_DATA_ROOT`` (skipped when it is absent)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hmoe.platform.data import feature_schema, prepare, read_split_table
from hmoe.platform.data.spec import DATA_ROOT_ENV
from hmoe.schema import seq_column

pytestmark = pytest.mark.ray
SPECS = Path(__file__).resolve().parents[3] / "src" / "hmoe" / "platform" / "data" / "specs"


@pytest.fixture
def data_env(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(DATA_ROOT_ENV, str(shared_data))
    return shared_data


@pytest.mark.slow
def test_ml100k_reproduces_the_q1_split(ray_cluster, data_env: Path, tmp_path: Path) -> None:
    manifest = prepare(SPECS / "ml-100k.yaml", tmp_path / "ml")
    rows = manifest["rows"]
    assert (rows["train"], rows["valid"], rows["test"]) == (80_000, 10_000, 10_000)
    assert rows["quarantined"] == 0
    rates = [round(manifest["positive_rate"][s]["click"], 3) for s in ("train", "valid", "test")]
    assert rates == [0.551, 0.567, 0.563]
    # the test rows in file order are the last 10% of the stable (timestamp, user, item) order
    inter = pd.read_csv(data_env / "ml-100k" / "ml-100k.inter", sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    ordered = inter.sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    targets = ordered.iloc[90_000:].sort_index()
    per_user = {u: np.sort(t.to_numpy()) for u, t in inter.groupby("user_id")["timestamp"]}
    expected = [
        min(50, np.searchsorted(per_user[u], ts, side="left"))
        for u, ts in zip(targets["user_id"], targets["timestamp"], strict=True)
    ]
    test = read_split_table(tmp_path / "ml", "test").to_pandas()
    lengths = test[seq_column("hist", "length")].to_numpy()
    np.testing.assert_array_equal(lengths, expected)
    deltas = np.stack(test[seq_column("hist", "time_delta")])
    real = np.arange(50)[None, :] < lengths[:, None]
    assert (deltas[real] > 0).all() and not deltas[~real].any()  # strictly earlier, padded
    assert (np.diff(deltas, axis=1)[real[:, 1:]] <= 0).all()  # oldest first
    schema = feature_schema(tmp_path / "ml")
    assert schema.tasks == ("click", "five_star") and schema.sequences[0].max_len == 50


@pytest.mark.slow
def test_ml100k_returning_users_split(ray_cluster, data_env: Path, tmp_path: Path) -> None:
    """Q1b: per user, the last max(1, round(n / 10)) ratings in (time, item) order are test, as
    many before them valid; every test user has training rows and a history."""
    prepare(SPECS / "ml-100k-returning.yaml", tmp_path / "ml")
    inter = pd.read_csv(data_env / "ml-100k" / "ml-100k.inter", sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    ordered = inter.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    position = ordered.groupby("user_id").cumcount()
    count = ordered.groupby("user_id")["item_id"].transform("size")
    tenth = np.maximum(1, np.floor(count / 10 + 0.5))  # at least one each
    test_count = tenth
    split = np.where(
        position >= count - test_count,
        "test",
        np.where(position >= count - test_count - tenth, "valid", "train"),
    )
    expected = ordered.assign(split=split)
    out = tmp_path / "ml"
    for name in ("train", "valid", "test"):
        table = read_split_table(out, name).to_pandas()
        pairs = Counter(
            zip(_decoded(out, table, "user_id"), _decoded(out, table, "item_id"), strict=True)
        )
        chosen = expected[expected["split"] == name]
        items = set(_vocab(out, "item_id"))  # an item first rated outside train is out of vocab
        want = Counter(
            (str(u), str(i) if str(i) in items else "<oov>")
            for u, i in zip(chosen["user_id"], chosen["item_id"], strict=True)
        )
        assert pairs == want, name
        if name == "test":
            assert (table[seq_column("hist", "length")] > 0).all()  # every test user has a history


def _vocab(out: Path, name: str) -> list[str]:
    return pq.read_table(out / "vocab" / f"{name}.parquet").column("value").to_pylist()


def _decoded(out: Path, table: pd.DataFrame, name: str) -> list[str]:
    values = ["<pad>", "<oov>", *_vocab(out, name)]
    return [values[i] for i in table[name]]


def test_criteo_tiny_q2_split_and_identity_vocab(
    ray_cluster, data_env: Path, tmp_path: Path
) -> None:
    manifest = prepare(SPECS / "criteo_deeplight_tiny.yaml", tmp_path / "criteo")
    rows = manifest["rows"]
    assert (rows["train"], rows["valid"], rows["test"]) == (9_000, 1_000, 10_000)
    folder = data_env / "criteo_deeplight_tiny"
    train = pd.read_csv(folder / "tiny_train_input.csv", header=None)
    test = pd.read_csv(folder / "tiny_test_input.csv", header=None)
    max_ids = pd.concat([train, test]).max()
    schema = feature_schema(tmp_path / "criteo")
    assert len(schema.categorical) == 39
    assert [c.vocab_size - 2 for c in schema.categorical] == list(max_ids[1:] + 1)
    valid = read_split_table(tmp_path / "criteo", "valid")
    np.testing.assert_array_equal(valid.column("C26").to_numpy() - 2, train[39].to_numpy()[9000:])
    np.testing.assert_array_equal(valid.column("label__click").to_numpy(), train[0][9000:])


def test_adult_two_tasks(ray_cluster, data_env: Path, tmp_path: Path) -> None:
    manifest = prepare(SPECS / "adult.yaml", tmp_path / "adult")
    assert manifest["rows"]["written"] == 48_842
    frame = pd.read_parquet(data_env / "adult" / "adult.parquet.brotli")
    tables = [read_split_table(tmp_path / "adult", s) for s in ("train", "valid", "test")]
    table = pa.concat_tables(tables)
    assert table.column("label__income").to_numpy().sum() == (frame["income"] == ">50K").sum()
    never = (frame["marital-status"] == "Never-married").sum()
    assert table.column("label__never_married").to_numpy().sum() == never == 16_117
    assert feature_schema(tmp_path / "adult").categorical_by_name("workclass").vocab_size > 2


def test_open_bandit_keeps_the_propensity(ray_cluster, data_env: Path, tmp_path: Path) -> None:
    manifest = prepare(SPECS / "open_bandit_small.yaml", tmp_path / "obd")
    assert manifest["rows"]["written"] == 10_000
    tables = [read_split_table(tmp_path / "obd", s) for s in ("train", "valid", "test")]
    table = pa.concat_tables(tables)
    np.testing.assert_allclose(table.column("propensity").to_numpy(), 0.0125)
    np.testing.assert_allclose(table.column("weight").to_numpy(), 80.0, rtol=1e-6)
    clicks = pd.read_csv(data_env / "open_bandit_small" / "random" / "all" / "all.csv")["click"]
    assert table.column("label__click").to_numpy().sum() == clicks.sum()
