"""The spec against the data before Ray starts: every column it names, and 0/1 labels.

``prepare`` must refuse these specs from the files' schemas and headers alone: Ray work is
replaced by a tripwire, so a check that happened inside Ray would fail the test.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hmoe.jobs.cli import EXIT_USER_ERROR, main
from tests.platform.data.toy import make_log, spec_dict, write_dataset


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def tripwire(*args: object) -> None:
        raise AssertionError("the spec check reached Ray")

    # the package exports the function ``prepare``, which hides the module of that name
    module = importlib.import_module("hmoe.platform.data.prepare")
    monkeypatch.setattr(module, "_run_on_ray", tripwire)


def _refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, spec: dict, log: pd.DataFrame | None = None
) -> str:
    """Run ``hmoe data prepare`` on the toy data; return its one error line."""
    toy_log, items = make_log(n=60, seed=3)
    path = write_dataset(tmp_path / "raw", toy_log if log is None else log, items, spec)
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["data", "prepare", str(path), "--out", str(out), "--quiet"])
    assert code == EXIT_USER_ERROR
    assert not out.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_missing_log_column_names_the_entry_the_file_and_the_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = spec_dict()
    spec["numeric"][1] = {"name": "price", "column": "prize"}
    line = _refused(tmp_path, capsys, spec)
    assert "numeric[1] 'price' needs column 'prize'" in line
    assert "log.csv" in line and "its columns: rid, ts, user" in line
    assert "side tables add: cat, iemb" in line
    assert "__row" not in line and "__file" not in line


def _behaviour_sequence() -> dict:
    return {
        "name": "hist",
        "max_len": 3,
        "item_field": "item",
        "source": "behaviour_log",
        "behaviour_log": {
            "table": {"paths": ["log.csv"]},
            "user_column": "user",
            "item_column": "itm",
            "timestamp_column": "ts",
        },
    }


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"timestamp": {"column": "time", "unit": "s"}}, "timestamp.column needs column 'time'"),
        ({"labels": [{"task": "click"}, {"task": "buy", "column": "order"}]}, "labels[1] 'buy'"),
        ({"weight": {"column": "wt"}}, "weight.column needs column 'wt'"),
        ({"split": {"tie_break": ["uid"]}}, "split.tie_break[0] needs column 'uid'"),
        (
            {"side_tables": [{"table": {"paths": ["items.csv"]}, "key": "id", "join_on": "item"}]},
            "side_tables[0].key needs column 'id', which side table (side_tables[0])",
        ),
        (
            {"side_tables": [{"table": {"paths": ["items.csv"]}, "key": "item", "join_on": "it"}]},
            "side_tables[0].join_on needs column 'it', which log file",
        ),
        (
            {
                "side_tables": [
                    {
                        "table": {"paths": ["items.csv"]},
                        "key": "item",
                        "join_on": "item",
                        "columns": ["cat", "emb"],
                    }
                ]
            },
            "side_tables[0].columns[1] needs column 'emb'",
        ),
        (
            {"sequences": [_behaviour_sequence()], "count_exposures": False},
            "sequences[0] 'hist' behaviour_log.item_column needs column 'itm', which behaviour log",
        ),
    ],
)
def test_every_named_column_is_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture, change: dict, expected: str
) -> None:
    assert expected in _refused(tmp_path, capsys, spec_dict(**change))


def test_a_column_missing_from_one_parquet_file_names_that_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    log, _ = make_log(n=60, seed=3)
    spec = spec_dict(log={"paths": ["logs"], "format": "parquet"})
    (tmp_path / "raw" / "logs").mkdir(parents=True)
    log.iloc[:30].to_parquet(tmp_path / "raw" / "logs" / "a.parquet")
    log.iloc[30:].drop(columns="device").to_parquet(tmp_path / "raw" / "logs" / "b.parquet")
    line = _refused(tmp_path, capsys, spec, log.iloc[:0])
    assert "categorical[4] 'device' needs column 'device'" in line
    assert "b.parquet" in line and "a.parquet" not in line


def test_a_rating_used_as_a_label_needs_positive_if(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    log, _ = make_log(n=60, seed=3)
    log["click"] = np.random.default_rng(0).integers(1, 6, len(log)).astype(str)
    line = _refused(tmp_path, capsys, spec_dict(), log)
    assert "labels[0] 'click' is not a 0/1 label" in line
    assert "e.g. 2, 3, 4, 5" in line and "set labels[0].positive_if" in line


def test_a_side_table_column_that_the_log_already_has_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    log, _ = make_log(n=60, seed=3)
    log["cat"] = "x"
    line = _refused(tmp_path, capsys, spec_dict(), log)
    assert "already has column(s) ['cat'] that a side table adds" in line
