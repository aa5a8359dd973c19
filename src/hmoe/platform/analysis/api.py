"""``analyze(run_id, kind, out_dir, tracking_uri)``: the analyses of one tracked training run.

The run's ``config.json`` artifact gives the model config and the prepared dataset; the logged
model (tag ``hmoe.model_uri``, else ``runs:/<id>/model``) gives the trained weights, loaded into a
freshly built model of that config so that the analysis methods of the ranker are available
whatever format MLflow stored. The plots are written under ``out_dir`` and logged as artifacts
of the run under ``analysis/``; the metrics are logged as ``analysis/<name>`` (step 0), so they
never mix with the per-epoch curves the collapse monitor logs during training.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from hmoe.config import apply_overrides
from hmoe.platform.analysis.reports import (
    ANALYSIS_KINDS,
    AnalysisConfig,
    Report,
    collapse_report,
    correlation_report,
    entanglement_report,
)
from hmoe.schema import FeatureSchema

__all__ = ["ANALYSIS_ARTIFACT_DIR", "AnalysisResult", "LoadedRun", "analyze", "load_run"]

ANALYSIS_ARTIFACT_DIR = "analysis"
METRIC_PREFIX = "analysis/"
DEFAULT_OUT_DIR = "analysis"


@dataclass
class LoadedRun:
    """A tracked run brought back: its config, dataset, schema and trained model (eval mode)."""

    run_id: str
    preset: str
    data_dir: Path
    schema: FeatureSchema
    model: nn.Module


@dataclass
class AnalysisResult:
    """The PNG files written (by analysis name) and the metrics logged (without the prefix)."""

    run_id: str
    plots: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def _tracking_uri(uri: str | None) -> str:
    from hmoe.platform.tracking.runs import tracking_uri

    return tracking_uri(uri)


def load_run(run_id: str, tracking_uri: str | None = None) -> LoadedRun:
    """Rebuild the run's model from its ``config.json`` and load the logged weights into it."""
    import mlflow.pytorch

    from hmoe.models.zoo import build
    from hmoe.platform.data.batches import load_schema
    from hmoe.platform.experiment import ExperimentConfig
    from hmoe.platform.tracking.runs import CONFIG_ARTIFACT, TAG_MODEL_URI, fluent_store, open_store

    uri = _tracking_uri(tracking_uri)
    client = open_store(uri)
    run = client.get_run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
        except Exception as err:  # MLflow raises store-specific types for a missing artifact
            raise FileNotFoundError(f"run {run_id} has no {CONFIG_ARTIFACT} artifact") from err
        cfg = ExperimentConfig.from_dict(json.loads(Path(local).read_text()))
    data_dir = Path(cfg.data.path).expanduser().resolve()
    schema = load_schema(data_dir)
    model = build(apply_overrides(cfg.model, {"use_compile": False}), schema)
    model_uri = run.data.tags.get(TAG_MODEL_URI, f"runs:/{run_id}/model")
    with fluent_store(uri):
        logged = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    # the logged module wraps the ranker as ``.model`` (model_registry.PositionalModel)
    state = {k.removeprefix("model."): v for k, v in logged.state_dict().items()}
    model.load_state_dict(state)
    return LoadedRun(run_id, cfg.preset, data_dir, schema, model.eval())


def _run_kind(
    kind: str,
    run: LoadedRun,
    references: Mapping[str, LoadedRun],
    out_dir: Path,
    cfg: AnalysisConfig,
) -> Report:
    if kind == "collapse":
        return collapse_report(run.model, out_dir, cfg)
    if kind == "correlation":
        return correlation_report(run.model, run.schema, run.data_dir, out_dir, cfg)
    models = {run.preset: run.model} | {name: r.model for name, r in references.items()}
    return entanglement_report(models, run.schema, run.data_dir, out_dir, cfg)


def analyze(
    run_id: str,
    kind: str = "all",
    out_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    config: AnalysisConfig | None = None,
    reference_runs: Mapping[str, str] | None = None,
) -> AnalysisResult:
    """Run ``kind`` (``collapse``, ``correlation``, ``entanglement`` or ``all``) on a run.

    Args:
        run_id: the MLflow run of a training run (it holds ``config.json`` and the model).
        kind: which analysis; ``all`` runs the three and skips correlation on a dataset without
            a categorised sequence and entanglement on a single-task dataset.
        out_dir: local folder of the PNG files (default ``./analysis/<run_id>``).
        tracking_uri: the MLflow store (default: ``MLFLOW_TRACKING_URI``, else ``./mlflow.db``).
        config: the analyses' knobs (default ``AnalysisConfig()``).
        reference_runs: entanglement only: ``{task: run_id}`` of single-task runs that define
            the conflict subset (without them a STEM run's own task sets define it).
    """
    if kind not in (*ANALYSIS_KINDS, "all"):
        raise ValueError(f"unknown analysis kind {kind!r}; valid: {[*ANALYSIS_KINDS, 'all']}")
    cfg = config or AnalysisConfig()
    uri = _tracking_uri(tracking_uri)
    run = load_run(run_id, uri)
    refs = {task: load_run(rid, uri) for task, rid in (reference_runs or {}).items()}
    out = Path(out_dir) if out_dir is not None else Path(DEFAULT_OUT_DIR) / run_id
    out.mkdir(parents=True, exist_ok=True)
    kinds = ANALYSIS_KINDS if kind == "all" else (kind,)
    result = AnalysisResult(run_id)
    for name in kinds:
        if kind == "all" and not _applicable(name, run.schema):
            continue
        report = _run_kind(name, run, refs, out, cfg)
        result.plots |= report.plots
        result.metrics |= report.metrics
    _log(uri, run_id, result)
    return result


def _applicable(kind: str, schema: FeatureSchema) -> bool:
    if kind == "correlation":
        return any(q.category_field is not None for q in schema.sequences)
    if kind == "entanglement":
        has_ids = schema.user_field is not None and schema.item_field is not None
        return has_ids and schema.num_tasks >= 2
    return True


def _log(uri: str, run_id: str, result: AnalysisResult) -> None:
    from hmoe.platform.tracking.runs import MlflowRun

    run = MlflowRun(uri, run_id)
    run.log_metrics({METRIC_PREFIX + k: v for k, v in result.metrics.items()}, step=0)
    for path in result.plots.values():
        run.client.log_artifact(run_id, str(path), artifact_path=ANALYSIS_ARTIFACT_DIR)
