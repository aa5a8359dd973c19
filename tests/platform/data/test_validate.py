"""Row validation without Ray: every planted malformed row gets its reason, valid rows parse."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from hmoe.platform.data.lookup import KeyIndex, SideTable
from hmoe.platform.data.parsing import REASONS, parse_numbers
from hmoe.platform.data.sides import join_side_tables, side_embeddings
from hmoe.platform.data.spec import spec_from_dict
from hmoe.platform.data.tables import FILE_COLUMN, ROW_COLUMN
from hmoe.platform.data.validate import (
    RAW_COLUMN,
    REASON_COLUMN,
    TS_COLUMN,
    cat_column,
    emb_column,
    num_column,
    parse_batch,
)
from tests.platform.data.toy import PLANTED, make_log, plant, spec_dict


def _raw(frame) -> pa.Table:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.append_column(ROW_COLUMN, pa.array(np.arange(len(frame), dtype=np.int64)))
    return table.append_column(FILE_COLUMN, pa.array(np.zeros(len(frame), dtype=np.int32)))


@pytest.fixture(scope="module")
def parsed() -> pa.Table:
    log, items = make_log(n=50, seed=3)
    spec = spec_from_dict(spec_dict())
    side = pa.Table.from_pandas(items, preserve_index=False)
    sides = [SideTable(table=side, index=KeyIndex.of(side.column("item")))]
    embeddings = side_embeddings(spec, sides)
    return parse_batch(
        join_side_tables(_raw(plant(log)), spec, sides, embeddings), spec, embeddings
    )


def test_every_planted_row_gets_its_reason(parsed: pa.Table) -> None:
    reasons = parsed.column(REASON_COLUMN).to_pylist()
    assert reasons[:50] == [None] * 50
    assert reasons[50:] == [reason for _, _, reason in PLANTED.values()]
    # a malformed line is not a value a row can hold: see test_malformed_inputs
    assert {reason for _, _, reason in PLANTED.values()} == set(REASONS) - {"malformed_line"}


def test_invalid_rows_keep_their_raw_values(parsed: pa.Table) -> None:
    raws = parsed.column(RAW_COLUMN).to_pylist()
    assert raws[:50] == [None] * 50
    for raw, (rid, (column, value, _)) in zip(raws[50:], PLANTED.items(), strict=True):
        record = json.loads(raw)
        assert record["rid"] == str(rid) and record[column] == value


def test_valid_rows_parse_to_typed_columns(parsed: pa.Table) -> None:
    log, items = make_log(n=50, seed=3)
    first = parsed.slice(0, 50)
    np.testing.assert_allclose(first.column(TS_COLUMN), log["ts"].astype(float))
    np.testing.assert_allclose(first.column(num_column("price")), log["price"].astype(float))
    assert first.column(cat_column("tags")).to_pylist() == [t.split("|") for t in log["tags"]]
    cats = dict(zip(items["item"], items["cat"], strict=True))
    assert first.column(cat_column("cat")).to_pylist() == [cats[i] for i in log["item"]]
    vectors = np.asarray(first.column(emb_column("user_emb")).combine_chunks().flatten())
    expected = np.array([[float(x) for x in v.split()] for v in log["uemb"]], dtype=np.float32)
    np.testing.assert_array_equal(vectors.reshape(50, -1), expected)


def test_parse_numbers_flags_missing_and_garbage() -> None:
    values, missing, bad = parse_numbers(
        pa.array(["1.5", " 2 ", "", None, "x1", "nan", "-inf", "1e3", ".5"])
    )
    np.testing.assert_array_equal(missing, [0, 0, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(bad, [0, 0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_allclose(values[[0, 1, 7, 8]], [1.5, 2.0, 1000.0, 0.5])
    values, missing, bad = parse_numbers(pa.array([1.0, None, float("inf")]))
    np.testing.assert_array_equal(missing, [0, 1, 0])
    np.testing.assert_array_equal(bad, [0, 0, 1])


def _one_column_spec(**label: object) -> dict:
    return {
        "name": "t",
        "log": {"paths": ["x"]},
        "labels": [{"task": "y", **label}],
        "split": {"kind": "random"},
    }


def test_label_rules_and_transforms() -> None:
    raw = _raw(pd.DataFrame({"y": ["5", "3", "4", None], "z": ["A b", " c", "", "dd"]}))
    spec = spec_from_dict(
        {
            **_one_column_spec(positive_if={"op": ">=", "value": 4}),
            "categorical": [
                {
                    "name": "first",
                    "column": "z",
                    "transform": "first_token",
                    "required": False,
                    "fill_missing": "none",
                },
                {
                    "name": "pre",
                    "column": "z",
                    "transform": "prefix",
                    "prefix_len": 1,
                    "required": False,
                },
            ],
        }
    )
    out = parse_batch(raw, spec)
    assert out.column("label__y").to_pylist() == [1.0, 0.0, 1.0, 0.0]
    assert out.column(REASON_COLUMN).to_pylist() == [None, None, None, "missing_value"]
    assert out.column(cat_column("first")).to_pylist() == ["A", "c", "none", "dd"]
    assert out.column(cat_column("pre")).to_pylist() == ["A", None, None, "d"]


def test_propensity_becomes_inverse_weight() -> None:
    raw = _raw(pd.DataFrame({"y": ["1", "0", "1"], "p": ["0.25", "1.5", "0"]}))
    spec = spec_from_dict({**_one_column_spec(), "weight": {"column": "p", "kind": "propensity"}})
    out = parse_batch(raw, spec)
    assert out.column(REASON_COLUMN).to_pylist() == [None, "bad_weight", "bad_weight"]
    assert out.column("__weight").to_pylist()[0] == pytest.approx(4.0)
    assert out.column("__propensity").to_pylist()[0] == pytest.approx(0.25)


def test_number_typed_ids_are_text_and_only_nulls_are_missing() -> None:
    ids = pa.array([196, None, 7], pa.int64())
    floats = pa.array([196.0, 2.5, None], pa.float64())
    raw = _raw(pd.DataFrame({"y": ["1", "0", "1"]}))
    raw = raw.append_column("u", ids).append_column("f", floats)
    spec = spec_from_dict(
        {
            **_one_column_spec(),
            "categorical": [
                {"name": "u"},
                {"name": "f", "required": False},
                {"name": "g", "column": "f", "fill_missing": "none"},
            ],
        }
    )
    out = parse_batch(raw, spec)
    assert out.column(REASON_COLUMN).to_pylist() == [None, "missing_value", None]
    assert out.column(cat_column("u")).to_pylist() == ["196", None, "7"]
    assert out.column(cat_column("f")).to_pylist() == ["196", "2.5", None]
    assert out.column(cat_column("g")).to_pylist() == ["196", "2.5", "none"]
