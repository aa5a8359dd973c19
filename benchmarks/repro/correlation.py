"""Section: behaviour-target correlation of DIN, SASRec and TIM against the ground truth.

The multi-task section's synthetic log, click task only (``hmoe data synth``: the history is the
user's earlier clicks, and a planted click logit ``strength * decay**p`` for a behaviour of the
target's category at target-relative position ``p``, less for related categories). Per model and
seed, ``hmoe.platform.analysis.reports.correlation_report`` on the restored best-epoch model:
ground truth = mutual information of "a behaviour of category c at position p" with the click,
over all splits, for the planted target category; learned = RecScope's formula on the trained
tables for DIN and TIM, and for SASRec (no target in its attention) the mean share of its
interest token a behaviour of that cell receives (attention rollout). Fidelity = Spearman rank
correlation of the learned grid with the truth (and with the planted matrix). TIM is the ``hmoe``
preset with position encoding instead of time buckets, so that its grid has the truth's columns;
a multi-set model's fidelity is the mean over its embedding sets, its panel the first set's.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from repro import multitask_data as md
from repro.common import (
    FIVE_SEEDS,
    Context,
    Section,
    fmt,
    incomplete,
    mean_std,
    seed_noise,
    seeds_of,
    table,
    values,
)

SECTION = "correlation"
TASK = "click"
EPOCHS = 4  # as the multi-task section on the same data (early stopping, patience 2)
FIGURE = "correlation_models.png"
GRIDS = "correlation_grids"  # per model and seed: the drawn grids (.npz), for the figure
# label -> (preset, overrides)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "DIN": ("din", {}),
    "SASRec": ("sasrec", {}),
    "TIM": ("hmoe", {"model.encoder.sequence.tim.time_intervals": None}),
}
TRUTH = "ground truth (MI)"
PLANTED = "planted"


def _grid_file(ctx: Context, label: str, seed: int) -> Path:
    return ctx.figures / GRIDS / f"{label.lower()}_seed{seed}.npz"


def _analyse(ctx: Context, label: str):
    """``extra`` hook: the correlation report's fidelities (mean over sets) and its grids."""

    def extra(model: Any, cfg: Any) -> Mapping[str, float]:
        import tempfile

        from hmoe.platform.analysis.reports import AnalysisConfig, correlation_report
        from hmoe.platform.data.batches import load_schema

        data = Path(cfg.data.path)
        with tempfile.TemporaryDirectory() as scratch:  # its own PNG: the section draws one
            report = correlation_report(
                model, load_schema(data), data, Path(scratch), AnalysisConfig()
            )
        out = _grid_file(ctx, label, cfg.train.seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        names = list(report.grids)
        np.savez(
            out, names=np.array(names), **{f"g{i}": report.grids[n] for i, n in enumerate(names)}
        )
        metrics = {f"analysis_{k}": float(v) for k, v in report.metrics.items()}
        for kind in ("corr_fidelity", "corr_fidelity_planted"):
            per_set = [v for k, v in report.metrics.items() if _is_set_metric(k, kind)]
            if per_set:
                metrics[kind] = float(np.mean(per_set))
        return metrics

    return extra


def _is_set_metric(name: str, kind: str) -> bool:
    """``corr_fidelity_{set}`` is not ``corr_fidelity_planted_{set}``."""
    if kind == "corr_fidelity":
        return name.startswith("corr_fidelity_") and not name.startswith("corr_fidelity_planted")
    return name.startswith(f"{kind}_")


def _runs(ctx: Context, label: str) -> list[dict[str, Any]]:
    preset, overrides = MODELS[label]
    return seeds_of(
        ctx,
        section=SECTION,
        dataset=f"{md.SYNTH}-{TASK}",
        variant=label,
        preset=preset,
        data=md.synth(ctx, TASK),
        overrides=overrides | {"train.epochs": EPOCHS},
        extra=_analyse(ctx, label),
    )


def _figure(ctx: Context, seed: int) -> str | None:
    """Truth, planted and every model's first-set grid of ``seed`` side by side."""
    from hmoe.platform.analysis.plots import plot_correlation_heatmaps

    panels: dict[str, np.ndarray] = {}
    for label in MODELS:
        path = _grid_file(ctx, label, seed)
        if not path.exists():
            continue
        stored = np.load(path)
        grids = {str(n): stored[f"g{i}"] for i, n in enumerate(stored["names"])}
        for fixed in (TRUTH, PLANTED):
            if fixed in grids:
                panels.setdefault(fixed, grids[fixed])
        learned = [n for n in grids if n not in (TRUTH, PLANTED)]
        if learned:
            panels[f"{label} ({learned[0].split(' ', 1)[1]})"] = grids[learned[0]]
    if len(panels) < 2:
        return None
    rows = next(iter(panels.values())).shape[0]
    plot_correlation_heatmaps(
        panels,
        [f"#{i + 1}" for i in range(rows)],
        ctx.figures / FIGURE,
        f"planted target category, seed {seed}; rows: the most frequent history categories",
    )
    return f"![behaviour-target correlation per model](results/figures/{FIGURE})"


def run(ctx: Context) -> Section:
    # the models' fidelity gaps are small next to their seed spread on the report's 3 seeds
    ctx = dataclasses.replace(ctx, seeds=FIVE_SEEDS)
    results = {label: _runs(ctx, label) for label in MODELS}
    rows, fid = [], {}
    for label, records in results.items():
        fid[label] = values(records, "corr_fidelity")
        rows.append(
            [
                label,
                fmt(fid[label], 3),
                fmt(values(records, "corr_fidelity_planted"), 3),
                fmt(values(records, "test_auc"), 4),
                str(len(records)),
            ]
        )
    truth = [v for r in results["DIN"] for v in values([r], "analysis_corr_truth_vs_planted")]
    header = ["model", "fidelity (vs MI truth)", "fidelity (vs planted)", "test AUC", "seeds"]
    parts = [
        __doc__.split("\n", 2)[2].strip(),
        f"Seeds {', '.join(map(str, ctx.seeds))} per model.",
        table(header, rows),
    ]
    if truth:
        parts.append(f"Spearman of the MI truth with the planted matrix: {fmt(truth, 3)}.")
    parts.append(_findings(fid))
    note = incomplete(SECTION, ctx.seeds, {k: len(v) for k, v in results.items()})
    if note:
        parts.append(note.strip())
    figure = _figure(ctx, ctx.seeds[0])
    if figure:
        parts.append(figure)
    return Section(title="Behaviour-target correlation: DIN, SASRec, TIM (synthetic)",
                   body="\n\n".join(parts))  # fmt: skip


def _findings(fid: Mapping[str, list[float]]) -> str:
    scored = sorted(((mean_std(v)[0], k) for k, v in fid.items() if v), reverse=True)
    if len(scored) < 2:
        return "Not run."
    lines = []
    for (m_hi, hi), (m_lo, lo) in itertools.pairwise(scored):
        gap, noise = m_hi - m_lo, seed_noise(fid[hi], fid[lo])
        if noise is None:
            verdict = "1 seed: no spread to judge it by"
        elif gap > noise:
            verdict = "beyond 2 seed stds"
        else:
            verdict = "within 2 seed stds (noise)"
        lines.append(f"- {hi} {m_hi:.3f} vs {lo} {m_lo:.3f}: {gap:+.3f}, {verdict}.")
    return "Fidelity to the MI truth, ranked:\n\n" + "\n".join(lines)
