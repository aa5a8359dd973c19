"""Section: the analysis figures of the ``hmoe`` preset on ml-100k Q1 (seed 1).

Two runs with the ``ctr`` section's settings, each followed by the analysis tools of
``hmoe.platform.analysis`` on the restored best-epoch model: the singular spectra of every
field's embedding table per set (dimensional collapse, spec §3.1) for ``hmoe`` and for its
single-set ablation at equal parameter count, and TIM's learned behaviour-target correlation
against the mutual-information ground truth (spec §2.1, fidelity = Spearman).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from repro import ablations, ctr
from repro.common import Context, Section, train

SECTION = "figures"
SEED = 1


def _analyse(prefix: str, ctx: Context, correlation: bool):
    """``extra`` hook: write the PNGs under ``ctx.figures`` and return their scalar metrics."""

    def extra(model: Any, cfg: Any) -> Mapping[str, float]:
        from pathlib import Path

        from hmoe.platform.analysis.reports import (
            AnalysisConfig,
            collapse_report,
            correlation_report,
        )
        from hmoe.platform.data.batches import load_schema

        out = ctx.figures / prefix
        out.mkdir(parents=True, exist_ok=True)
        analysis = AnalysisConfig()
        metrics = dict(collapse_report(model, out, analysis).metrics)
        if correlation:
            schema = load_schema(cfg.data.path)
            report = correlation_report(model, schema, Path(cfg.data.path), out, analysis)
            metrics |= report.metrics
        return {f"analysis_{k}": float(v) for k, v in metrics.items()}

    return extra


def _run(ctx: Context, name: str, overrides: dict[str, Any], correlation: bool) -> Any:
    data = ctr.prepared(ctx, ctr.ML)
    return train(
        ctx,
        section=SECTION,
        dataset=ctr.ML,
        variant=name,
        preset="hmoe",
        data=data,
        overrides=ctr.PROTOCOL[ctr.ML] | overrides,
        seed=SEED,
        extra=_analyse(name, ctx, correlation),
    )


def _pngs(ctx: Context, name: str) -> list[str]:
    folder = ctx.figures / name
    if not folder.exists():
        return []
    return [
        f"![{name} {p.stem}](results/figures/{name}/{p.name})" for p in sorted(folder.glob("*.png"))
    ]


def run(ctx: Context) -> Section:
    hmoe = _run(ctx, "hmoe", {}, correlation=True)
    data = ctx.work / "data" / ctr.ML
    single: Any = None
    if (data / "manifest.json").exists():
        dim = ablations.single_set_dim(data)
        change = {"model.embedding.assignment": "shared", "model.embedding.embedding_dim": dim}
        single = _run(ctx, "single_set", change, correlation=False)
    lines = []
    for title, record, name in (("`hmoe`", hmoe, "hmoe"), ("one set", single, "single_set")):
        if record is None:
            lines.append(f"{title}: not run.")
            continue
        ia = {k: v for k, v in record["metrics"].items() if k.startswith("analysis_ia_")}
        mean_ia = sum(ia.values()) / len(ia) if ia else float("nan")
        fidelity = {
            k.removeprefix("analysis_"): round(v, 3)
            for k, v in record["metrics"].items()
            if "fidelity" in k
        }
        lines.append(
            f"**{title}** (test AUC {record['metrics']['test_auc']:.4f}, mean IA over sets and "
            f"fields {mean_ia:.2f}{', fidelity ' + str(fidelity) if fidelity else ''}):\n\n"
            + "\n\n".join(_pngs(ctx, name))
        )
    return Section(title="Analysis figures (ml-100k Q1, seed 1)", body="\n\n".join(lines))
