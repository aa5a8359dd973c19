"""The reproduction report's runner (benchmarks/repro): its MLflow run store, the stale-hash
rule and the cached render, on a tiny tracking store in tmp; training is replaced by a stub."""

from __future__ import annotations

import math
import shutil
import sys
import types
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import reproduce  # noqa: E402
from repro import common  # noqa: E402
from repro.store import RunStore  # noqa: E402

SECTION = "fake"
PRESET = "dnn"
OVERRIDES = {"train.epochs": 2}
TRAINED_AUC = 0.7123  # what the stub "trains"
STALE_AUC = 0.9999  # what a stale record holds: must never be rendered


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty store, made once: creating MLflow's tables is the slow part, so each store
    of these tests is a copy of this file."""
    path = tmp_path_factory.mktemp("store") / "empty.db"
    RunStore(f"sqlite:///{path}")
    return path


def _copy(empty_store: Path, to: Path) -> str:
    shutil.copyfile(empty_store, to)
    return f"sqlite:///{to}"


@pytest.fixture(scope="module")
def uri(empty_store, tmp_path_factory) -> str:
    return _copy(empty_store, tmp_path_factory.mktemp("shared") / "mlflow.db")


def _ctx(tmp_path: Path, uri: str, **options) -> common.Context:
    ctx = common.Context(
        work=tmp_path, out=tmp_path / "out", data_root=tmp_path, seeds=(1,), tracking_uri=uri,
        log=lambda line: None, **options,
    )  # fmt: skip
    ctx.load()
    return ctx


def _record(variant: str, model_hash: str | None, auc: float) -> dict:
    overrides = OVERRIDES | {"train.seed": 1, "tracking.log_model": False}
    return {
        "section": SECTION, "dataset": "d", "variant": variant, "seed": 1, "preset": PRESET,
        "overrides": overrides, "quick": False, "model_hash": model_hash,
        "metrics": {"test_auc": auc}, "ia": {}, "params": 10, "wall_s": 1.0,
    }  # fmt: skip


def _stub(calls: list) -> object:
    def train_on_platform(ctx, key, preset, data, changes, extra):
        calls.append(key["variant"])
        record = {"metrics": {"test_auc": TRAINED_AUC}, "ia": {}, "best_epoch": 1}
        record |= {"epochs_run": 1, "params": 10, "wall_s": 0.1, "config_hash": "x"}
        return None, record | {"model_hash": common.current_model_hash(preset, key["overrides"])}

    return train_on_platform


def _fake_section(variant: str) -> types.ModuleType:
    module = types.ModuleType(f"repro.{SECTION}")

    def run(ctx):
        runs = common.seeds_of(
            ctx, section=SECTION, dataset="d", variant=variant, preset=PRESET, data=Path(),
            overrides=OVERRIDES,
        )  # fmt: skip
        return common.Section(title="Fake", body=common.fmt(common.values(runs, "test_auc")))

    module.run = run
    return module


def test_records_round_trip_through_mlflow_and_the_export(tmp_path, uri, empty_store):
    store = RunStore(uri)
    record = _record("round", "h", math.nan) | {"preset": None, "extra": [1, "a"], "loop": "1"}
    record["ia"] = {"ia_set0_x": 2.5}
    store.add(record)
    stored = [r for r in store.records() if r["variant"] == "round"]
    assert len(stored) == 1
    got = stored[0]
    assert math.isnan(got.pop("metrics")["test_auc"])
    expected = dict(record)
    expected.pop("metrics")
    assert got == expected  # types kept: the string "1", None, a list, a bool, an int

    store.export_folder(tmp_path / "runs")
    fresh = RunStore(_copy(empty_store, tmp_path / "fresh.db"))
    assert fresh.import_folder(tmp_path / "runs") == len(store.runs())
    assert fresh.import_folder(tmp_path / "runs") == 0  # already there: not copied twice
    again = next(r for r in fresh.records() if r["variant"] == "round")
    assert math.isnan(again.pop("metrics")["test_auc"])
    assert again == expected


def test_a_stale_hash_is_retrained_and_never_rendered(tmp_path, uri, monkeypatch):
    now = common.current_model_hash(PRESET, _record("x", None, 0)["overrides"])
    RunStore(uri).add(_record("stale", "0" * len(now), STALE_AUC))
    RunStore(uri).add(_record("no-hash", None, STALE_AUC))
    RunStore(uri).add(_record("good", now, 0.6543))
    monkeypatch.setattr(reproduce, "SECTIONS", (SECTION,))
    monkeypatch.setitem(sys.modules, f"repro.{SECTION}", _fake_section("stale"))

    rendered = reproduce.render(_ctx(tmp_path, uri, cached_only=True), {SECTION})
    assert f"{STALE_AUC:.4f}" not in rendered
    assert "Not run yet" in rendered and f"reproduce.py --sections {SECTION}`" in rendered

    calls: list = []
    monkeypatch.setattr(common, "train_on_platform", _stub(calls))
    ctx = _ctx(tmp_path, uri)
    for variant in ("stale", "no-hash", "good"):
        monkeypatch.setitem(sys.modules, f"repro.{SECTION}", _fake_section(variant))
        reproduce.render(ctx, {SECTION})
    assert calls == ["stale", "no-hash"]  # the good one is reused, not retrained
    kept = [r for r in RunStore(uri).records() if r["variant"] == "stale"][-1]
    assert kept["model_hash"] == now and kept["metrics"]["test_auc"] == TRAINED_AUC

    monkeypatch.setitem(sys.modules, f"repro.{SECTION}", _fake_section("stale"))
    rendered = reproduce.render(_ctx(tmp_path, uri, cached_only=True), {SECTION})
    assert f"{TRAINED_AUC:.4f}" in rendered and "Not run yet" not in rendered


def test_the_last_checkpoint_is_the_latest_folder_not_trains_snapshot(tmp_path):
    import torch

    from hmoe.platform.training.runtime import CHECKPOINT_FILE

    for name, epoch in (
        ("checkpoint_2026-01-01_10-00-00.1", 0),
        ("checkpoint_2026-01-01_10-00-09.2", 1),
    ):
        (tmp_path / name).mkdir()
        torch.save({"state": {"epoch": epoch}}, tmp_path / name / CHECKPOINT_FILE)
    (tmp_path / "checkpoint_manager_snapshot.json").write_text("{}")  # sorts after them
    assert common._last_checkpoint(tmp_path)["state"]["epoch"] == 1
