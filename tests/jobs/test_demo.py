"""``hmoe demo``: flags to config, dataset choice and fallbacks, the table, and one tiny demo end
to end (synthetic logs, 2 trials of 1 epoch) as documented, in a fresh process."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hmoe.config import ConfigError
from hmoe.jobs import demo
from hmoe.jobs.cli import EXIT_USER_ERROR, build_parser, main
from hmoe.jobs.commands.demo import demo_config, leaderboard_table
from hmoe.jobs.demo import DemoConfig, LeaderboardRow, PreparedData
from tests.platform.test_store import scrubbed_env


def _config(*argv: str) -> DemoConfig:
    return demo_config(build_parser().parse_args(["demo", *argv]))


def test_flags_and_sets_make_the_config_and_defaults_stay():
    cfg = _config("--trials", "2", "--epochs", "1", "--synthetic", "--rows", "500",
                  "--out", "x", "--set", "fetch=false", "--set", "space=experts")  # fmt: skip
    assert (cfg.trials, cfg.epochs, cfg.synthetic, cfg.rows, cfg.out) == (2, 1, True, 500, "x")
    assert cfg.fetch is False and cfg.space == "experts"
    assert _config() == DemoConfig()


@pytest.mark.parametrize(
    "argv, match",
    [
        (("--trials", "0"), "trials"),
        (("--cpus-per-worker", "0"), "cpus_per_worker"),
        (("--set", "spare_cpus=-1"), "spare_cpus"),
        (("--set", "analyses=[collapse,bogus]"), "bogus"),
        (("--set", "nope=1"), "nope"),
        (("--space", "bogus"), "space"),
        (("--set", "preset=bogus"), "preset"),
    ],
)
def test_bad_values_are_named(argv, match):
    with pytest.raises(ConfigError, match=match):
        _config(*argv)


def test_a_foreign_non_empty_out_dir_is_refused_and_kept(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path)]) == EXIT_USER_ERROR
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_a_previous_demo_is_replaced(tmp_path):
    lines: list[str] = []
    out = demo._fresh_out_dir(tmp_path / "d", lines.append)
    (out / "old.txt").write_text("old")
    again = demo._fresh_out_dir(tmp_path / "d", lines.append)
    assert again == out and not (out / "old.txt").exists() and (out / demo.DEMO_MARKER).exists()
    assert any("replacing" in line for line in lines)


def _stub_synthetic(cfg, out, note, say):
    return PreparedData(path=out, name="synthetic", source="synthetic", note=note, rows={})


@pytest.fixture
def stubbed_data(monkeypatch, tmp_path):
    """prepare / synthetic / fetch replaced: only the choice of dataset is under test."""
    import hmoe.platform.data as data_pkg

    calls: dict[str, object] = {}
    monkeypatch.setattr(demo, "_synthetic", _stub_synthetic)

    def fake_prepare(spec, out):
        calls["prepare"] = (Path(spec).name, Path(out).name)
        return {"rows": {"train": 8, "valid": 1, "test": 1}}

    monkeypatch.setattr(data_pkg, "prepare", fake_prepare)
    monkeypatch.setenv("HMOE_DATA_ROOT", str(tmp_path / "root"))
    return calls


def test_ml100k_from_the_data_root_is_prepared_with_the_shipped_spec(stubbed_data, tmp_path):
    raw = tmp_path / "root" / "ml-100k"
    raw.mkdir(parents=True)
    (raw / "ml-100k.inter").write_text("")
    got = demo.prepare_data(DemoConfig(), tmp_path / "out", lambda line: None)
    assert (got.source, got.name, dict(got.rows)) == ("shared", "ml-100k", {"train": 8,
                                                       "valid": 1, "test": 1})  # fmt: skip
    assert stubbed_data["prepare"] == ("ml-100k.yaml", "ml-100k")


def test_a_failed_fetch_falls_back_to_synthetic_and_says_so(stubbed_data, monkeypatch, tmp_path):
    import hmoe.platform.data as data_pkg

    def offline(name, out):
        raise data_pkg.FetchError("network unreachable")

    monkeypatch.setattr(data_pkg, "fetch", offline)
    got = demo.prepare_data(DemoConfig(), tmp_path / "out", lambda line: None)
    assert got.source == "synthetic" and "network unreachable" in got.note
    off = demo.prepare_data(DemoConfig(fetch=False), tmp_path / "out", lambda line: None)
    assert off.source == "synthetic" and "fetching is off" in off.note
    asked = demo.prepare_data(DemoConfig(synthetic=True), tmp_path / "out", lambda line: None)
    assert asked.source == "synthetic" and "--synthetic" in asked.note
    assert "prepare" not in stubbed_data


def test_leaderboard_table_lists_params_and_auc_per_task():
    rows = [
        LeaderboardRow(trial_id="a_00001", run_id="r1", status="FINISHED",
                       params={"train.lr": 0.0123456, "model.combine.method": "gate"}, epochs=3,
                       val_auc={"click": 0.71}, test_auc={"click": 0.70}),
        LeaderboardRow(trial_id="a_00002", run_id="r2", status="FAILED", params={}, epochs=0,
                       val_auc={}, test_auc={}),
    ]  # fmt: skip
    table = leaderboard_table(rows, ("click",)).splitlines()
    assert "lr" in table[0] and "method" in table[0] and "val click" in table[0]
    assert table[2].split() == ["1", "a_00001", "gate", "0.01235", "3", "0.7100", "0.7000",
                                "FINISHED"]  # fmt: skip
    assert table[3].split()[-3:] == ["-", "-", "FAILED"]
    assert math.isnan(rows[1].score) and rows[0].score == pytest.approx(0.71)


def test_ui_command_points_at_the_store():
    cmd = demo.ui_command("sqlite:////tmp/x/mlflow.db")
    assert re.search(r"mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db --host 127.0.0.1",
                     cmd)  # fmt: skip


#: the tiny demo exactly as docs/demo.md shows it (tests/test_docs_commands.py names this test)
TINY_DEMO = "hmoe demo --synthetic --rows 3000 --trials 2 --epochs 1"
DEMO_TIMEOUT_S = 900


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT_S)
def test_tiny_demo_end_to_end(tmp_path, short_tmp):
    """The documented command in a fresh process (its own Ray and store, nothing inherited)."""
    from mlflow import MlflowClient

    out = tmp_path / "hmoe-runs" / "demo"  # the default --out, under the working directory
    env = scrubbed_env(RAY_TMPDIR=str(short_tmp()))
    done = subprocess.run(
        [sys.executable, "-m", "hmoe.jobs.cli", *TINY_DEMO.split()[1:]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    assert "synthetic logs, as asked" in printed

    header = printed.index("#  trial")
    board = printed[header:].split("\n\n")[0].splitlines()[2:]
    assert len(board) == 2
    for line in board:
        cells = line.split()
        val, test = float(cells[-3]), float(cells[-2])
        assert cells[-1] == "FINISHED" and 0.0 < val < 1.0 and 0.0 < test < 1.0
        assert cells[-4] == "1"  # epochs

    version = re.search(r"registered model: (\S+) version (\S+)", printed)
    assert version is not None
    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(uri)
    registered = client.get_model_version(version.group(1), version.group(2))
    best_run = re.search(r"best trial run: (\S+)", printed).group(1)
    assert registered.run_id == best_run

    plots = re.findall(r"plot \S+: (\S+)", printed)
    assert plots and all(Path(p).is_file() and p.endswith(".png") for p in plots)
    assert all(Path(p).parent == out / "analysis" for p in plots)
    ui = printed.strip().splitlines()[-1].strip()
    assert ui.endswith(f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
