"""What ``prepare`` may replace, what a killed run leaves behind, and the label warnings.

The refusals happen before Ray starts and before anything is written: those tests run without
Ray (the pipeline is replaced by one that fails the test) and compare a hash of the whole tree
before and after. Killed runs are simulated by leaving their directories on disk.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import subprocess
from pathlib import Path

import pytest

from hmoe.jobs.cli import main
from hmoe.platform.data import output, prepare, read_split_table
from hmoe.platform.data.output import check_out, clean_leftovers, commit
from hmoe.platform.data.spec import SPLITS, label_column, spec_from_dict
from hmoe.schema import MANIFEST
from tests.platform.data.toy import make_log, spec_dict, write_dataset

# the module (``hmoe.platform.data.prepare`` as an attribute is the function)
prepare_module = importlib.import_module("hmoe.platform.data.prepare")
EXIT_USER_ERROR = 2
NOT_EVEN_OVERWRITE = "not even with --overwrite"


def _tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` (hidden ones too) -> a digest of its content or link target."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                out[key] = f"link:{os.readlink(path)}"
            elif path.is_file():
                out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[key] = "dir"
    return out


@pytest.fixture()
def no_pipeline(monkeypatch) -> None:
    """Fail the test if ``prepare`` gets as far as reading (a refusal must come first)."""

    def fail(*args: object) -> None:
        raise AssertionError("prepare started its pipeline")

    monkeypatch.setattr(prepare_module, "_run", fail)


@pytest.fixture()
def raw(tmp_path: Path) -> Path:
    """A toy raw-log folder: log.csv, items.csv (side table) and spec.yaml."""
    log, items = make_log(n=30, seed=3)
    return write_dataset(tmp_path / "raw", log, items, spec_dict()).parent


def _prepare_cli(spec: Path, out: Path | str, *flags: str) -> int:
    return main(["data", "prepare", str(spec), "--out", str(out), "--quiet", *flags])


def test_a_non_empty_directory_without_a_manifest_is_refused(
    tmp_path: Path, raw: Path, no_pipeline, capsys
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("keep me")
    (notes / "b.txt").write_text("and me")
    (notes / MANIFEST).write_text(json.dumps({"name": "not hmoe's"}))
    before = _tree(tmp_path)
    assert _prepare_cli(raw / "spec.yaml", notes) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"{notes} is not empty and not a prepared dataset (3 entries" in err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="overwrite=True"):
        prepare(raw / "spec.yaml", notes)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    ("out", "said"),
    [
        (".", "it is the current directory"),
        ("..", "it holds the current directory"),
        ("../..", "it holds the current directory"),
        ("../raw", "it holds the spec file"),
        ("../linked", "it holds the spec file"),  # a symlink to raw/
        ("../side", "items.csv' of side_tables[0].table.paths"),
        ("../logs", "*.csv' of sequences[0].behaviour_log.table.paths"),
    ],
)
def test_the_current_directory_and_the_inputs_are_never_replaced(
    tmp_path: Path, monkeypatch, no_pipeline, capsys, out: str, said: str
) -> None:
    # spec in raw/, its log beside it, the side table in side/, a behaviour log in logs/
    log, items = make_log(n=30, seed=3)
    (tmp_path / "side").mkdir()
    items.to_csv(tmp_path / "side" / "items.csv", index=False)
    (tmp_path / "logs").mkdir()
    log[["user", "item", "ts"]].to_csv(tmp_path / "logs" / "clicks.csv", index=False)
    sequence = {
        "name": "hist",
        "max_len": 3,
        "item_field": "item",
        "source": "behaviour_log",
        "behaviour_log": {
            "table": {"paths": [str(tmp_path / "logs" / "*.csv")], "format": "csv"},
            "user_column": "user",
            "item_column": "item",
            "timestamp_column": "ts",
        },
    }
    side = {"table": {"paths": [str(tmp_path / "side" / "items.csv")]}, "key": "item"}
    spec = spec_dict(
        side_tables=[{**side, "join_on": "item"}], sequences=[sequence], count_exposures=False
    )
    spec_path = write_dataset(tmp_path / "raw", log, items, spec)
    (tmp_path / "raw" / "items.csv").unlink()  # only the one in side/ is an input
    (tmp_path / "linked").symlink_to(tmp_path / "raw")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    before = _tree(tmp_path)
    assert _prepare_cli(spec_path, out, "--overwrite") == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert said in err and NOT_EVEN_OVERWRITE in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match=NOT_EVEN_OVERWRITE):
        prepare(spec_path, out, overwrite=True)
    assert _tree(tmp_path) == before


def test_the_folder_of_the_spec_file_is_never_replaced(tmp_path: Path, no_pipeline) -> None:
    log, items = make_log(n=30, seed=3)
    data = write_dataset(tmp_path / "data", log, items, spec_dict()).parent
    spec = {
        **spec_dict(),
        "log": {"paths": [str(data / "log.csv")], "format": "csv"},
        "side_tables": [
            {"table": {"paths": [str(data / "items.csv")]}, "key": "item", "join_on": "item"}
        ],
    }
    (tmp_path / "specs").mkdir()
    spec_path = tmp_path / "specs" / "toy.yaml"
    spec_path.write_text(json.dumps(spec))  # JSON is YAML
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"it holds the spec file .*not even with --overwrite"):
        prepare(spec_path, tmp_path / "specs", overwrite=True)
    assert _tree(tmp_path) == before


def test_what_may_be_replaced(tmp_path: Path) -> None:
    spec = spec_from_dict(spec_dict())
    raw = tmp_path / "raw"  # the spec's inputs live here; the checks below never touch it

    def check(out: Path, overwrite: bool = False) -> None:
        check_out(out, spec, raw, None, overwrite=overwrite)

    check(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    check(tmp_path / "empty")
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "train").mkdir()
    manifest = {"format_version": output.MANIFEST_VERSION, "hmoe_version": "0", "name": "toy"}
    (prepared / MANIFEST).write_text(json.dumps(manifest))
    check(prepared)
    (prepared / MANIFEST).write_text("{broken")
    with pytest.raises(ValueError, match="not a prepared dataset"):
        check(prepared)
    check(prepared, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        check(tmp_path / "file", overwrite=True)
    # a folder beside the files a wildcard reads holds none of them
    logs = tmp_path / "logs"
    (logs / "prepared").mkdir(parents=True)
    (logs / "a.csv").write_text("ts\n1\n")
    globbed = spec_from_dict(spec_dict(log={"paths": ["logs/*"], "format": "csv"}))
    check_out(logs / "prepared", globbed, tmp_path, None, overwrite=False)
    with pytest.raises(ValueError, match=r"it holds the input 'logs/\*' of log.paths"):
        check_out(logs, globbed, tmp_path, None, overwrite=True)


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _fill(folder: Path, text: str) -> Path:
    folder.mkdir()
    (folder / MANIFEST).write_text(text)
    return folder


def test_a_run_killed_between_the_renames_gets_its_old_output_back(
    tmp_path: Path, monkeypatch
) -> None:
    out = _fill(tmp_path / "prepared", "old")
    # the kill between commit's renames: out moved aside, the new one never renamed in place
    with pytest.raises(FileNotFoundError):
        commit(tmp_path / ".prepared.tmp-gone", out)
    (aside,) = tmp_path.glob(".prepared.old-*")
    assert aside.name.startswith(f".prepared.old-{os.getpid()}-") and not out.exists()
    tmp = _fill(tmp_path / f".prepared.tmp-{os.getpid()}-0a1b2c3d", "new, never committed")
    clean_leftovers(out)  # this process is alive: nothing is touched
    assert not out.exists() and aside.exists() and tmp.exists()
    monkeypatch.setattr(output, "_alive", lambda pid: False)  # now its process is gone
    clean_leftovers(out)
    assert (out / MANIFEST).read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_a_directory_put_back_is_judged_before_it_is_replaced(
    tmp_path: Path, raw: Path, no_pipeline
) -> None:
    """A user's folder that an ``--overwrite`` run moved aside and was killed with comes back,
    and a later run without ``--overwrite`` refuses it instead of replacing it unseen."""
    aside = tmp_path / f".notes.old-{_dead_pid()}-0a1b2c3d"
    aside.mkdir()
    (aside / "a.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty and not a prepared dataset"):
        prepare(raw / "spec.yaml", tmp_path / "notes")
    assert (tmp_path / "notes" / "a.txt").read_text() == "keep me"


def test_leftovers_beside_an_existing_output_are_removed(tmp_path: Path) -> None:
    out = _fill(tmp_path / "prepared", "current")
    dead, alive = _dead_pid(), os.getpid()
    _fill(tmp_path / f".prepared.old-{dead}-0a1b2c3d", "stale aside")
    _fill(tmp_path / f".prepared.tmp-{dead}-0a1b2c3d", "stale tmp")
    _fill(tmp_path / ".prepared.old-0a1b2c3d", "aside, named without a pid")
    _fill(tmp_path / f".prepared.old-{alive}-0a1b2c3d", "a live run's aside")
    _fill(tmp_path / f".prepared.tmp-{alive}-0a1b2c3d", "a live run's tmp")
    _fill(tmp_path / f".other.tmp-{dead}-0a1b2c3d", "another output's")
    clean_leftovers(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".other.tmp-{dead}-0a1b2c3d",
        f".prepared.old-{alive}-0a1b2c3d",
        f".prepared.tmp-{alive}-0a1b2c3d",
        "prepared",
    ]
    assert (out / MANIFEST).read_text() == "current"


def _degenerate_dataset(folder: Path) -> Path:
    """Toy logs with no test rows and no positive ``buy`` label."""
    log, items = make_log(n=120, seed=5)
    log["buy"] = "0"
    spec = spec_dict(split={"kind": "random", "fractions": [0.75, 0.25, 0.0]})
    return write_dataset(folder, log, items, spec)


def _expected_warnings(manifest: dict) -> list[str]:
    rows = manifest["rows"]
    return [
        f"task 'buy' has one class in split 'train' (0 positives of {rows['train']} rows)",
        f"task 'buy' has one class in split 'valid' (0 positives of {rows['valid']} rows)",
        "split 'test' is empty",
    ]


@pytest.mark.ray
def test_prepare_warns_about_empty_splits_and_one_class_tasks(
    ray_cluster, tmp_path: Path, caplog
) -> None:
    spec_path = _degenerate_dataset(tmp_path / "raw")
    with caplog.at_level(logging.WARNING, logger=prepare_module.__name__):
        manifest = prepare(spec_path, tmp_path / "out")
    assert manifest["rows"]["test"] == 0 and manifest["rows"]["valid"] > 0
    assert manifest["warnings"] == _expected_warnings(manifest)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert logged == [f"prepare toy: {w}" for w in manifest["warnings"]]
    for split in SPLITS:
        table = read_split_table(tmp_path / "out", split) if manifest["rows"][split] else None
        for task in ("click", "buy"):
            positives = int(sum(table.column(label_column(task)).to_pylist())) if table else 0
            expected = {"rows": manifest["rows"][split], "positives": positives}
            assert manifest["label_counts"][split][task] == expected
    assert manifest["label_counts"]["train"]["click"]["positives"] > 0
    on_disk = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert on_disk["warnings"] == manifest["warnings"]


@pytest.mark.ray
def test_cli_prepare_overwrites_when_told_and_prints_the_warnings(
    ray_cluster, tmp_path: Path, capsys
) -> None:
    spec_path = _degenerate_dataset(tmp_path / "raw")
    out = tmp_path / "scratch"
    out.mkdir()
    (out / "old.txt").write_text("replace me")
    assert _prepare_cli(spec_path, out, "--overwrite") == 0
    captured = capsys.readouterr()
    manifest = json.loads((out / MANIFEST).read_text())
    assert not (out / "old.txt").exists()
    # each warning once, formatted by the CLI (Ray Data's own log lines may share stderr)
    printed = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert printed == [f"warning: {w}" for w in _expected_warnings(manifest)]
    assert "rows read 120, written 120" in captured.out
