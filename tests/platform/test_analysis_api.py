"""``analyze`` end to end on a tracked run (MLflow sqlite store in tmp_path, no Ray), the CLI,
and the training-time hooks (collapse monitor, gradient conflict) on real zoo models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hmoe.config import ConfigError, apply_overrides
from hmoe.jobs.cli import main as cli_main
from hmoe.models.losses import LossConfig, TrainWrapper
from hmoe.models.zoo import build
from hmoe.platform.analysis.access import embedding_sets, shared_parameters, unwrap
from hmoe.platform.analysis.api import ANALYSIS_ARTIFACT_DIR, analyze, load_run
from hmoe.platform.analysis.entanglement import gradient_conflict_metrics
from hmoe.platform.analysis.monitor import MonitorConfig, monitor_metrics
from hmoe.platform.analysis.reports import AnalysisConfig, entanglement_report
from hmoe.platform.experiment import DataConfig, ExperimentConfig, TrackingConfig
from hmoe.platform.tracking.registry import log_model
from hmoe.platform.tracking.runs import MlflowRun
from tests.platform import analysis_helpers as h

ROWS = {"train": 1500, "val": 500, "test": 1000}
PNG_MAGIC = b"\x89PNG"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module (creating one runs MLflow's migrations: seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return h.write_prepared(tmp_path_factory.mktemp("data"), ROWS, seed=0, synth=True)


def tracked_run(uri: str, data: Path, kind: str, seed: int = 0) -> tuple[str, str]:
    """A finished-looking training run: config.json + a model trained for one epoch."""
    model_cfg = h.model_config(kind)
    cfg = ExperimentConfig(
        preset=f"test-{kind}",
        data=DataConfig(path=str(data)),
        model=model_cfg,
        tracking=TrackingConfig(uri=uri, experiment="analysis-test"),
    )
    run = MlflowRun.create(uri, "analysis-test", f"{kind}-{seed}", tags={})
    run.log_config(cfg.to_dict(), {})
    columns = h.generate(ROWS["train"], seed)
    model = h.train(model_cfg, columns, epochs=1, lr=0.01, batch_size=256, seed=seed)
    example = h.to_batch(columns, np.arange(8))
    log_model(run, model, example, sorted(example), "pickle")
    run.finish()
    return uri, run.run_id


@pytest.fixture(scope="module")
def stem_run(store: str, prepared: Path) -> tuple[str, str]:
    return tracked_run(store, prepared, "stem")


def artifacts(uri: str, run_id: str) -> dict[str, int]:
    from mlflow import MlflowClient

    files = MlflowClient(uri).list_artifacts(run_id, ANALYSIS_ARTIFACT_DIR)
    return {Path(f.path).name: f.file_size for f in files}


def test_analyze_all_writes_and_logs_every_plot(tmp_path: Path, store: str, prepared: Path) -> None:
    uri, run_id = tracked_run(store, prepared, "stem")
    loaded = load_run(run_id, uri)
    assert loaded.preset == "test-stem" and loaded.data_dir == prepared.resolve()
    result = analyze(run_id, "all", tmp_path / "plots", uri)
    assert set(result.plots) == {"collapse", "correlation", "entanglement"}
    logged = artifacts(uri, run_id)
    for path in result.plots.values():
        assert path.parent == tmp_path / "plots"
        assert path.read_bytes()[:4] == PNG_MAGIC and path.stat().st_size > 1000
        assert logged[path.name] == path.stat().st_size
    metrics = MlflowRun(uri, run_id).metrics()
    for name in ("ia_shared_user", "ia_task-click_item", "corr_fidelity_shared"):
        assert f"analysis/{name}" in metrics
    assert "analysis/corr_truth_vs_planted" in metrics
    # STEM's own task sets define the conflict subset (no reference runs given)
    assert 0.0 < metrics["analysis/entangle_conflict_share"] < 1.0
    assert metrics["analysis/entangle_pairs"] > 0


def test_analyze_one_kind_through_the_cli(
    tmp_path: Path, stem_run: tuple[str, str], capsys
) -> None:
    uri, run_id = stem_run
    out = tmp_path / "cli"
    args = ["analyze", run_id, "--kind", "collapse", "--out", str(out), "--tracking-uri", uri]
    assert cli_main([*args, "--set", "plot.dpi=40"]) == 0
    printed = capsys.readouterr().out
    path = out / "collapse_spectrum.png"
    assert f"collapse: {path}" in printed and "ia_task-like_category = " in printed
    assert sorted(out.iterdir()) == [path]
    assert artifacts(uri, run_id)["collapse_spectrum.png"] == path.stat().st_size
    with pytest.raises(ValueError, match="unknown analysis kind"):
        analyze(run_id, "spectra", out, uri)
    assert cli_main([*args, "--set", "collapse.eps=-1"]) == 2
    assert cli_main([*args, "--reference", "click"]) == 2
    assert "TASK=RUN_ID" in capsys.readouterr().err


def test_run_without_config_is_a_clear_error(store: str) -> None:
    run = MlflowRun.create(store, "analysis-test", "bare", tags={})
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_run(run.run_id, store)


def test_identical_task_tables_give_an_empty_conflict_subset(tmp_path: Path, prepared) -> None:
    model = build(h.model_config("stem"), h.schema())
    encoders = model.encoders
    names = model.set_names
    like = encoders[names.index("task:like")]
    like.load_state_dict(encoders[names.index("task:click")].state_dict())
    report = entanglement_report({"stem": model}, h.schema(), prepared, tmp_path, AnalysisConfig())
    assert report.metrics["entangle_conflict_share"] == 0.0
    assert report.plots["entanglement"].stat().st_size > 0
    # two single-task references named after the tasks define it as well
    other = build(h.model_config("single"), h.schema())
    refs = {"click": build(h.model_config("single"), h.schema()), "like": other}
    report = entanglement_report(refs, h.schema(), prepared, tmp_path, AnalysisConfig())
    assert 0.0 < report.metrics["entangle_conflict_share"] < 1.0
    # no reference for the tasks: plain histograms, no conflict metrics
    mmoe = {"mmoe": build(h.model_config("mmoe"), h.schema())}
    report = entanglement_report(mmoe, h.schema(), prepared, tmp_path, AnalysisConfig())
    assert set(report.metrics) == {"entangle_pairs"}
    two_sets = apply_overrides(
        h.model_config("single"), {"embedding.assignment": "per_expert", "experts.counts.mlp": 2}
    )
    refs["click"] = build(two_sets, h.schema())
    with pytest.raises(ValueError, match="reference needs one set"):
        entanglement_report(refs, h.schema(), prepared, tmp_path, AnalysisConfig())


def test_monitor_logs_abundance_and_gradient_conflict_on_its_epochs() -> None:
    model = build(h.model_config("mmoe"), h.schema())
    wrapper = TrainWrapper(model, LossConfig(), tasks=h.TASKS)
    batch = h.to_batch(h.generate(64, seed=5), np.arange(64))
    metrics = monitor_metrics(wrapper, batch, MonitorConfig(), epoch=0)
    ia = {f"ia_set0_{f}" for f in ("user", "item", "category")}
    assert set(metrics) == ia | {"grad_cos_click_like"}
    assert all(1.0 <= metrics[k] <= 8.0 for k in ia)
    assert set(embedding_sets(model)) == {"set0"}
    every_two = MonitorConfig(every_n_epochs=2)
    assert monitor_metrics(wrapper, batch, every_two, epoch=1) == {}
    assert set(monitor_metrics(wrapper, None, every_two, epoch=2)) == ia
    only_ia = MonitorConfig(gradient_conflict=False)
    assert set(monitor_metrics(wrapper, batch, only_ia, epoch=3)) == ia
    nothing = MonitorConfig(information_abundance=False, gradient_conflict=False)
    assert monitor_metrics(wrapper, batch, nothing, epoch=0) == {}
    with pytest.raises(ConfigError, match="every_n_epochs"):
        MonitorConfig(every_n_epochs=0)


def test_gradient_conflict_on_multitask_models() -> None:
    batch = h.to_batch(h.generate(64, seed=3), np.arange(64))
    for kind in ("mmoe", "stem"):
        torch.manual_seed(0)
        model = build(h.model_config(kind), h.schema())
        wrapper = TrainWrapper(model, LossConfig(), tasks=h.TASKS).train()
        metrics = gradient_conflict_metrics(wrapper, batch)
        assert set(metrics) == {"grad_cos_click_like"}
        assert -1.0 <= metrics["grad_cos_click_like"] <= 1.0
        assert wrapper.training
        assert all(p.grad is None for p in model.parameters())
    stem = build(h.model_config("stem"), h.schema())
    shared = {id(p) for p in shared_parameters(stem)}
    task_sets = [e for n, e in zip(stem.set_names, stem.encoders, strict=True) if "task" in n]
    assert shared and not any(id(p) in shared for e in task_sets for p in e.parameters())
    single = build(h.model_config("single"), h.schema())
    one_task = TrainWrapper(single, LossConfig(), tasks=h.TASKS[:1])
    assert gradient_conflict_metrics(one_task, batch) == {}


def test_unwrap_sees_through_torch_compile() -> None:
    model = build(h.model_config("single"), h.schema())
    assert unwrap(torch.compile(model)) is model
    assert set(embedding_sets(torch.compile(model))) == {"set0"}
