"""Atomic writes under a killed run, the ``hmoe data`` CLI, and ``fetch`` (offline + convert)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from hmoe.jobs.cli import main
from hmoe.platform.data import FetchError, fetch, load_manifest, prepare, verify_shards
from hmoe.platform.data.spec import DATA_ROOT_ENV
from tests.platform.data.toy import make_log, plant, spec_dict, write_dataset

REPO = Path(__file__).resolve().parents[3]
SPECS = REPO / "src" / "hmoe" / "platform" / "data" / "specs"
KILL_WAIT_S = 120.0
POLL_S = 0.02


@pytest.mark.ray
def test_killed_run_leaves_no_complete_looking_output(ray_cluster, tmp_path: Path) -> None:
    log, items = make_log(n=3000, seed=1)
    spec_path = write_dataset(tmp_path / "raw", plant(log), items, spec_dict())
    out = tmp_path / "prepared"
    first = prepare(spec_path, out)
    code = "import sys; from hmoe.platform.data import prepare; prepare(sys.argv[1], sys.argv[2])"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(spec_path), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + KILL_WAIT_S
    while not list(tmp_path.glob(".prepared.tmp-*")) and time.monotonic() < deadline:
        assert child.poll() is None, "the run ended before it could be killed"
        time.sleep(POLL_S)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    # the killed re-run left its temporary directory, which has no manifest ...
    (stale,) = tmp_path.glob(".prepared.tmp-*")
    assert not (stale / "manifest.json").exists()
    # ... and the previous complete dataset is untouched
    assert load_manifest(out)["dataset_hash"] == first["dataset_hash"]
    verify_shards(out)
    again = prepare(spec_path, out)
    assert again["shards"] == first["shards"]
    assert not list(tmp_path.glob(".prepared.tmp-*"))  # the stale one was removed


@pytest.mark.ray
def test_failed_run_removes_its_temporary_directory(ray_cluster, tmp_path: Path) -> None:
    log, items = make_log(n=50, seed=1)
    spec = spec_dict(split={"kind": "cutoff", "cutoffs": [0.0, 1.0]})  # empty train split
    spec_path = write_dataset(tmp_path / "raw", log, items, spec)
    with pytest.raises(ValueError, match="train split is empty"):
        prepare(spec_path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


@pytest.mark.ray
def test_cli_prepare_prints_a_summary(ray_cluster, tmp_path: Path, capsys) -> None:
    log, items = make_log(n=100, seed=2)
    spec_path = write_dataset(tmp_path / "raw", plant(log), items, spec_dict())
    assert main(["data", "prepare", str(spec_path), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "rows read 110, written 100, quarantined 10" in printed
    assert "train" in printed and "quarantined bad_timestamp: 2" in printed
    assert str(tmp_path / "o" / "manifest.json") in printed


def test_cli_reports_a_missing_spec(tmp_path: Path, capsys) -> None:
    assert main(["data", "prepare", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)]) == 2
    assert "dataset spec not found" in capsys.readouterr().err


def test_fetch_fails_clearly_offline(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"may be offline.*--archive"):
        fetch("ml-100k", tmp_path, url="http://127.0.0.1:9/ml-100k.zip", timeout_s=5)
    assert not (tmp_path / "ml-100k").exists()
    with pytest.raises(ValueError, match="fetchable"):
        fetch("ml-20m", tmp_path)


def _grouplens_zip() -> bytes:
    """A tiny archive in the GroupLens layout (u.data tab-separated, u.item/u.user '|')."""
    flags = ["0"] * 19
    items = []
    for i in range(1, 7):
        genre = flags.copy()
        genre[1 + i % 5] = "1"
        genre[8] = "1" if i % 2 else "0"
        date = "01-Jan-1995" if i != 3 else ""
        items.append("|".join([str(i), f"Movie {i} (1995)", date, "", "http://x", *genre]))
    users = [f"{u}|{20 + u}|{'MF'[u % 2]}|student|{u}0000" for u in range(1, 5)]
    ratings = [
        f"{u}\t{i}\t{1 + (u * i) % 5}\t{880000000 + 100 * u + 10 * i}"
        for u in range(1, 5)
        for i in range(1, 7)
    ]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-100k/u.data", "\n".join(ratings) + "\n")
        archive.writestr("ml-100k/u.item", "\n".join(items) + "\n")
        archive.writestr("ml-100k/u.user", "\n".join(users) + "\n")
    return buffer.getvalue()


@pytest.mark.ray
def test_fetched_archive_feeds_the_shipped_spec(
    ray_cluster, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "ml-100k.zip"
    archive.write_bytes(_grouplens_zip())
    root = tmp_path / "data"
    assert main(["data", "fetch", "ml-100k", "--out", str(root), "--archive", str(archive)]) == 0
    assert "fetched ml-100k" in capsys.readouterr().out
    lines = (root / "ml-100k" / "ml-100k.item").read_text().splitlines()
    assert lines[1].split("\t") == ["1", "Movie 1", "1995", "Adventure Drama"]
    monkeypatch.setenv(DATA_ROOT_ENV, str(root))
    manifest = prepare(SPECS / "ml-100k.yaml", tmp_path / "prepared")
    assert manifest["rows"]["read"] == manifest["rows"]["written"] == 24
