"""Malformed inputs are quarantined with their file, field and line, or named in one error line.

The first tests read and parse without Ray; those marked ``ray`` run ``prepare`` on the toy log
(``toy.py``) with one kind of damage each and check the quarantine files and row accounting.
"""

from __future__ import annotations

import builtins
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hmoe.platform.data import load_manifest, prepare
from hmoe.platform.data.spec import TableSpec, spec_from_dict
from hmoe.platform.data.tables import (
    MALFORMED_COLUMN,
    ROW_COLUMN,
    fragments,
    read_fragment,
)
from hmoe.platform.data.validate import (
    FIELD_COLUMN,
    REASON_COLUMN,
    cat_column,
    parse_batch,
    parse_timestamps,
)
from tests.platform.data.toy import make_log, spec_dict, write_dataset

BATCH_ROWS = 1000


def _rows(table: TableSpec, folder: Path) -> list[pa.Table]:
    return [b for f in fragments(table, folder) for b in read_fragment(table, f, BATCH_ROWS)]


@pytest.mark.parametrize("header", [True, False])
def test_a_malformed_csv_line_becomes_a_row_at_its_place(tmp_path: Path, header: bool) -> None:
    lines = ["1,2,3", "4,5", "6,7,8", "9,9,9,9", "10,11,12"]
    (tmp_path / "log.csv").write_text("\n".join(["a,b,c"] * header + lines) + "\n")
    table = TableSpec(paths=("log.csv",), header=header, column_names=("a", "b", "c"))
    good, bad = _rows(table, tmp_path)
    assert good.column("a").to_pylist() == ["1", "6", "10"]
    assert good.column(ROW_COLUMN).to_pylist() == [0, 2, 4]  # file positions, as if read whole
    assert bad.column(ROW_COLUMN).to_pylist() == [1, 3]
    assert bad.column("a").null_count == 2
    first, second = (json.loads(v) for v in bad.column(MALFORMED_COLUMN).to_pylist())
    assert first == {"line": 2 + header, "expected_fields": 3, "fields": 2, "text": "4,5"}
    assert second["line"] == 4 + header and second["text"] == "9,9,9,9"


def test_empty_files_are_skipped(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": ["x", "y"]})
    frame.iloc[:0].to_parquet(tmp_path / "a.parquet")  # sorts first, no rows
    frame.to_parquet(tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_bytes(b"")
    frags = fragments(TableSpec(paths=(".",), format="parquet"), tmp_path)
    assert [(Path(f["path"]).name, f["rows"]) for f in frags] == [("b.parquet", 2)]
    (tmp_path / "empty.csv").write_text("")
    assert fragments(TableSpec(paths=("empty.csv",)), tmp_path) == []


def test_a_truncated_parquet_file_is_one_line_naming_it(tmp_path: Path) -> None:
    pd.DataFrame({"a": ["x"] * 100}).to_parquet(tmp_path / "log.parquet")
    data = (tmp_path / "log.parquet").read_bytes()
    (tmp_path / "log.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"^cannot read .*log\.parquet: [^\n]*$"):
        fragments(TableSpec(paths=("log.parquet",), format="parquet"), tmp_path)


def test_an_unreadable_file_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "log.csv").write_text("a\n1\n")
    real_open = builtins.open

    def refuse(file: object, *args: object, **kwargs: object) -> object:
        if str(file).endswith("log.csv"):  # as chmod 0 would for a user other than root
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refuse)
    with pytest.raises(ValueError, match=r"^cannot read .*log\.csv: .*Permission denied"):
        list(_rows(TableSpec(paths=("log.csv",)), tmp_path))


def _raw(frame: pd.DataFrame) -> pa.Table:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    n = table.num_rows
    table = table.append_column(ROW_COLUMN, pa.array(np.arange(n, dtype=np.int64)))
    return table.append_column("__file", pa.array(np.zeros(n, dtype=np.int32)))


def test_bad_float_ids_are_quarantined_with_their_field() -> None:
    ids = [196.0, np.nan, 1e300, np.inf, 2.5, 7.0]
    raw = _raw(pd.DataFrame({"u": ids, "y": ["1"] * len(ids)}))
    spec = spec_from_dict(
        {
            "name": "t",
            "log": {"paths": ["x"]},
            "labels": [{"task": "y"}],
            "categorical": [{"name": "user", "column": "u"}],
            "split": {"kind": "random"},
        }
    )
    out = parse_batch(raw, spec)
    reasons = out.column(REASON_COLUMN).to_pylist()
    assert reasons == [None, "missing_value", "bad_number", "bad_number", None, None]
    assert out.column(FIELD_COLUMN).to_pylist()[1:4] == ["categorical[0] 'user' (column 'u')"] * 3
    assert out.column(cat_column("user")).to_pylist()[4:] == ["2.5", "7"]


def test_iso_timestamps_in_a_numeric_unit_are_read_as_moments() -> None:
    spec = spec_from_dict(
        {
            "name": "t",
            "log": {"paths": ["x"]},
            "labels": [{"task": "y"}],
            "timestamp": {"column": "ts", "unit": "ms"},
            "split": {"kind": "random"},
        }
    )
    column = pa.array(["1000000000000", "2001-09-09T01:46:40Z", "2001-09-09 01:46:40", "soon"])
    seconds, missing, bad = parse_timestamps(column, spec)
    assert seconds[:3].tolist() == [1e9, 1e9, 1e9]
    assert bad.tolist() == [False, False, False, True] and not missing.any()


def test_too_many_quarantined_rows_name_the_share_reasons_fields_and_key() -> None:
    check = pytest.importorskip("hmoe.platform.data.prepare")._check_quarantine
    spec = spec_from_dict(spec_dict())
    fields = Counter({("bad_number", "numeric[1] 'price'"): 60, ("malformed_line", None): 2})
    totals = {"read": 100, "valid": 38}
    with pytest.raises(ValueError) as err:
        check(spec, totals, fields)
    assert str(err.value) == (
        "62 of 100 rows quarantined (62.0%), more than validate.max_quarantine_fraction = 0.5: "
        "bad_number in numeric[1] 'price': 60; malformed_line: 2; fix the spec or the data, or "
        "raise validate.max_quarantine_fraction in the spec"
    )
    check(spec_from_dict(spec_dict(validate={"max_quarantine_fraction": 0.7})), totals, fields)
    with pytest.raises(ValueError, match=r"no valid rows .*bad_label in labels\[0\].*positive_if"):
        check(spec, {"read": 5, "valid": 0}, Counter({("bad_label", "labels[0] 'click'"): 5}))


def _quarantine(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "quarantine").to_pandas()


def _accounting_holds(manifest: dict) -> None:
    rows = manifest["rows"]
    assert rows["read"] == rows["written"] + rows["quarantined"]
    assert rows["quarantined"] == sum(manifest["quarantined_by_reason"].values())


SMALL = {"sequences": [], "count_exposures": False}  # the damage, not the features, is tested


@pytest.mark.ray
def test_empty_parquet_first_and_bad_float_ids(ray_cluster, tmp_path: Path) -> None:
    log, items = make_log(n=80, seed=2)
    log["user"] = [float(u[1:]) for u in log["user"]]
    log.loc[3, "user"], log.loc[4, "user"], log.loc[5, "user"] = np.nan, 1e300, np.inf
    folder = tmp_path / "raw"
    (folder / "logs").mkdir(parents=True)
    log.iloc[:0].to_parquet(folder / "logs" / "a.parquet")
    log.to_parquet(folder / "logs" / "b.parquet")
    spec = spec_dict(log={"paths": ["logs"], "format": "parquet"}, **SMALL)
    manifest = prepare(write_dataset(folder, log.iloc[:0], items, spec), tmp_path / "out")
    _accounting_holds(manifest)
    assert manifest["rows"]["read"] == 80
    assert manifest["quarantined_by_reason"] == {"bad_number": 2, "missing_value": 1}
    quarantine = _quarantine(tmp_path / "out").sort_values("row_id")
    assert set(quarantine["file"]) == {"logs/b.parquet"}
    assert set(quarantine["field"]) == {"categorical[0] 'user'"}
    assert list(quarantine.columns[:3]) == ["row_id", "reason", "raw"]


@pytest.mark.ray
def test_malformed_csv_lines_are_quarantined_with_file_and_line(
    ray_cluster, tmp_path: Path
) -> None:
    log, items = make_log(n=80, seed=2)
    path = write_dataset(tmp_path / "raw", log, items, spec_dict(**SMALL))
    lines = (tmp_path / "raw" / "log.csv").read_text().splitlines()
    lines[5] += ",extra"
    lines[9] = lines[9].rsplit(",", 3)[0]
    (tmp_path / "raw" / "log.csv").write_text("\n".join(lines) + "\n")
    manifest = prepare(path, tmp_path / "out")
    _accounting_holds(manifest)
    assert manifest["rows"]["read"] == 80 and manifest["rows"]["written"] == 78
    assert manifest["quarantined_by_reason"] == {"malformed_line": 2}
    quarantine = _quarantine(tmp_path / "out").sort_values("row_id")
    assert list(quarantine["file"]) == ["log.csv", "log.csv"]
    assert [json.loads(raw)["line"] for raw in quarantine["raw"]] == [6, 10]
    assert list(quarantine["row_id"]) == [4, 8]  # their rows' positions: ids stay stable


@pytest.mark.ray
def test_a_second_file_with_iso_timestamps_is_read(ray_cluster, tmp_path: Path) -> None:
    log, items = make_log(n=80, seed=2)
    folder = tmp_path / "raw"
    (folder / "logs").mkdir(parents=True)
    second = log.iloc[40:].copy()
    second["ts"] = [datetime.fromtimestamp(int(t), UTC).isoformat() for t in second["ts"]]
    log.iloc[:40].to_csv(folder / "logs" / "a.csv", index=False)
    second.to_csv(folder / "logs" / "b.csv", index=False)
    spec = spec_dict(log={"paths": ["logs"]}, **SMALL)
    manifest = prepare(write_dataset(folder, log.iloc[:0], items, spec), tmp_path / "out")
    assert manifest["rows"]["written"] == 80 and manifest["rows"]["quarantined"] == 0


@pytest.mark.ray
def test_too_many_quarantined_rows_fail_and_keep_the_old_output(
    ray_cluster, tmp_path: Path
) -> None:
    log, items = make_log(n=80, seed=2)
    log.loc[:59, "price"] = "n/a"  # a text column read as a number: 75% quarantined
    lenient = spec_dict(validate={"max_quarantine_fraction": 1.0}, **SMALL)
    out = tmp_path / "out"
    old = prepare(write_dataset(tmp_path / "raw", log, items, lenient), out)
    assert old["rows"]["written"] == 20
    with pytest.raises(ValueError) as err:
        prepare(write_dataset(tmp_path / "raw", log, items, spec_dict(**SMALL)), out)
    message = str(err.value)
    assert "\n" not in message and type(err.value) is ValueError
    assert message.startswith("60 of 80 rows quarantined (75.0%)")
    assert "bad_number in numeric[1] 'price': 60" in message
    assert "validate.max_quarantine_fraction = 0.5" in message
    assert load_manifest(out) == old  # nothing written


@pytest.mark.ray
def test_a_corrupt_parquet_row_group_is_one_line_naming_the_file(
    ray_cluster, tmp_path: Path
) -> None:
    log, items = make_log(n=80, seed=2)
    folder = tmp_path / "raw"
    (folder / "logs").mkdir(parents=True)
    target = folder / "logs" / "a.parquet"
    log.to_parquet(target, compression="snappy")
    data = bytearray(target.read_bytes())
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")  # metadata, then PAR1
    data[4:footer] = np.random.default_rng(0).bytes(footer - 4)  # the pages only: the schema
    # and row counts still read, so only the Ray task reading the rows meets the damage
    target.write_bytes(bytes(data))
    rule = {"op": "==", "value": 1}  # no label sample read in the driver: the task meets it
    labels = [{"task": "click", "positive_if": rule}, {"task": "buy", "positive_if": rule}]
    spec = spec_dict(log={"paths": ["logs"], "format": "parquet"}, labels=labels, **SMALL)
    path = write_dataset(folder, log.iloc[:0], items, spec)
    with pytest.raises(ValueError) as err:
        prepare(path, tmp_path / "out")
    # raised in a Ray task, it reaches the caller as itself: one line naming the file
    assert type(err.value) is ValueError and "\n" not in str(err.value)
    assert str(err.value).startswith(f"cannot read {target}: ")
