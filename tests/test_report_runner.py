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
    options = {"log": lambda line: None} | options
    ctx = common.Context(
        work=tmp_path, out=tmp_path / "out", data_root=tmp_path, seeds=(1,), tracking_uri=uri,
        **options,
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
        cfg = common.current_config(preset, key["overrides"])
        return None, record | {
            "model_hash": common.model_hash(cfg),
            "config": common.run_config(cfg),
        }

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


NEW_FIELD = "train.early_stopping_guard"  # a field a record made before it existed lacks
NOT_DEFAULT_GUARD = "val_logloss"
NEW_SUBCONFIG = "model.experts.dcnv2"  # a config field, whose keys dnn holds at their defaults
NEW_COUNT = "model.experts.counts.dcnv2"  # a key of a mapping field, in the field's default


def _configured(overrides: dict | None = None, *, drop: str | None = None, **changed) -> dict:
    """A record with a wrong ``model_hash`` but the stored ``config`` of a run of the preset
    now with ``overrides``, less the key ``drop`` and the keys under it (a field it predates),
    with keys ``changed`` (double underscores for dots)."""
    record = _record("configured", "0" * 16, 0.5)
    record["overrides"] |= overrides or {}
    config = common.run_config(common.current_config(PRESET, record["overrides"]))
    config = {k: v for k, v in config.items() if k != drop and not k.startswith(f"{drop}.")}
    config |= {key.replace("__", "."): value for key, value in changed.items()}
    return record | {"config": config}


def test_a_record_predating_a_field_now_at_its_default_stays_trusted():
    assert common.staleness(_configured(drop=NEW_FIELD)) is None
    assert common.staleness(_configured()) is None  # the same config, another hash


def test_a_record_predating_a_config_field_now_at_its_default_stays_trusted():
    assert common.staleness(_configured(drop=NEW_SUBCONFIG)) is None


def test_a_record_is_stale_where_a_mapping_it_has_gained_a_key():
    """The new key is at the mapping field's default (which holds every expert kind), but the
    stored run trained without that expert."""
    counts = {"model.experts.counts.dcnv2": 1}
    why = common.staleness(_configured(counts, drop=NEW_COUNT))
    assert why is not None and NEW_COUNT in why


def test_a_record_is_stale_where_a_shared_key_differs():
    why = common.staleness(_configured(train__lr=0.5))
    assert why is not None and "train.lr: 0.5 -> 0.001" in why


def test_a_record_is_stale_where_a_field_it_predates_is_not_at_its_default():
    why = common.staleness(_configured({NEW_FIELD: NOT_DEFAULT_GUARD}, drop=NEW_FIELD))
    assert why is not None and NEW_FIELD in why and NOT_DEFAULT_GUARD in why


def test_a_record_is_stale_where_it_has_a_key_the_config_lacks_now():
    why = common.staleness(_configured(train__removed_option=1))
    assert why is not None and "train.removed_option: 1 -> removed" in why


def test_a_record_without_a_stored_config_falls_back_to_the_hash():
    record = _configured()
    del record["config"]
    why = common.staleness(record)
    assert why is not None and "no config" in why
    record["model_hash"] = common.current_model_hash(PRESET, record["overrides"])
    assert common.staleness(record) is None


def test_load_keeps_a_record_predating_a_field_and_says_once_why_others_are_stale(
    tmp_path, empty_store
):
    uri = _copy(empty_store, tmp_path / "mlflow.db")
    store = RunStore(uri)
    store.add(_configured(drop=NEW_FIELD) | {"variant": "predates"})
    for seed in (1, 2):
        store.add(_configured(train__lr=0.5) | {"variant": "changed", "seed": seed})
    lines: list[str] = []
    ctx = _ctx(tmp_path, uri, log=lines.append)
    assert [r["variant"] for r in ctx.records()] == ["predates"]
    stale = [line for line in lines if "stale" in line]
    assert len(stale) == 1, lines
    assert "2 run(s) of section fake" in stale[0] and "train.lr: 0.5 -> 0.001" in stale[0]


def test_a_stored_config_longer_than_a_tag_survives_mlflow_and_the_export(tmp_path, empty_store):
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    record = _configured(model__long_note="x" * (2 * MAX_TAG_VAL_LENGTH)) | {"variant": "long"}
    store = RunStore(_copy(empty_store, tmp_path / "one.db"))
    store.add(record)
    (run,) = store.runs()
    assert max(len(v) for v in run.data.tags.values()) <= MAX_TAG_VAL_LENGTH
    (got,) = store.records()
    assert got["config"] == record["config"]

    store.export_folder(tmp_path / "runs")
    fresh = RunStore(_copy(empty_store, tmp_path / "fresh.db"))
    assert fresh.import_folder(tmp_path / "runs") == 1
    (again,) = fresh.records()
    assert again["config"] == record["config"]
    assert common.staleness(again) is not None  # the long key is not in the config now
