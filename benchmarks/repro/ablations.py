"""Section: ablations of the ``hmoe`` preset, one technique removed at a time.

Same protocol as the ``ctr`` section (whose ``hmoe`` runs are the reference). Removing
multi-embedding keeps the parameter count: the single shared set gets the embedding dimension
whose total parameter count is closest to the preset's. Information abundance (IA, spec §3.2:
sum of singular values / the largest, per set and field, measured on the validation split at the
best epoch) is shown as its mean over sets and fields.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from functools import cache
from pathlib import Path
from typing import Any

from repro import ctr
from repro.common import FIVE_SEEDS, Context, Section, fmt, incomplete, mean_std, table, values

SECTION = "ablations"
DIM_RANGE = range(8, 129)
NOT_FROM_THE_PAPERS = {"embedding L2"}  # a training choice of the preset, claimed by no paper


@cache
def _params(data: Path, overrides_json: str) -> int:
    from hmoe.models.zoo import build
    from hmoe.platform.data.batches import load_schema
    from hmoe.platform.experiment import build_experiment

    cfg = build_experiment("hmoe", data, json.loads(overrides_json))
    model = build(cfg.model, load_schema(data))
    return sum(p.numel() for p in model.parameters())


def single_set_dim(data: Path) -> int:
    """The shared-set embedding dim whose model has the parameter count closest to hmoe's."""
    target = params_of(data, {})

    def shared(dim: int) -> int:
        return params_of(
            data, {"model.embedding.assignment": "shared", "model.embedding.embedding_dim": dim}
        )

    lo, hi = DIM_RANGE.start, DIM_RANGE.stop - 1  # the count grows with the dim: bisect
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if shared(mid) >= target else (mid, hi)
    return min((lo, hi), key=lambda dim: abs(shared(dim) - target))


def params_of(data: Path, overrides: dict[str, Any]) -> int:
    """Parameter count of the hmoe preset with ``overrides`` on the schema of ``data``."""
    return _params(data, json.dumps(overrides, sort_keys=True))


def variants(ctx: Context, dataset: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, removed technique, overrides) for ``dataset``; TIM and MNSE need ml-100k's inputs."""
    out: list[tuple[str, str, dict[str, Any]]] = [("hmoe", "nothing (reference)", {})]
    if dataset == ctr.ML:
        out += [
            (
                "TIM -> DIN",
                "TIM",
                {"model.encoder.sequence.kind": "din", "model.encoder.sequence.tim": None},
            ),
            (
                "TIM -> DIN+",
                "TIM (DIN+ instead)",
                {"model.encoder.sequence.kind": "din_plus", "model.encoder.sequence.tim": None},
            ),
            (
                "TIM paper form -> code form",
                "TIM's paper-form tokens (the official code's form instead)",
                {"model.encoder.sequence.tim.form": "code"},
            ),
            ("MNSE -> buckets", "MNSE", {"model.encoder.numeric.kind": "bucket"}),
        ]
    data = ctr.prepared(ctx, dataset)
    if (data / "manifest.json").exists():
        dim = single_set_dim(data)
        out.append(
            (
                f"ME -> one set (dim {dim})",
                "multi-embedding",
                {"model.embedding.assignment": "shared", "model.embedding.embedding_dim": dim},
            )
        )
    out += [
        ("hetero -> 4 MLP experts", "heterogeneous experts", {"model.experts.counts": {"mlp": 4}}),
        ("Combined-Pair -> BCE", "ranking loss", {"loss.ranking.enabled": False}),
        ("embedding L2 -> none", "embedding L2", {"loss.embedding_l2": 0.0}),
    ]
    return out


def _mean_ia(runs: list[dict[str, Any]]) -> list[float]:
    return [statistics.fmean(r["ia"].values()) for r in runs if r.get("ia")]


def _rows(ctx: Context, dataset: str) -> tuple[list[list[str]], list[str]]:
    rows, notes = [], []
    reference: float | None = None
    reference_std = 0.0
    for name, removed, overrides in variants(ctx, dataset):
        variant = name if overrides else "hmoe"
        runs = ctr.run_model(ctx, dataset, variant, "hmoe", overrides)
        aucs = values(runs, "test_auc")
        mean = sum(aucs) / len(aucs) if aucs else None
        if not overrides:
            reference, reference_std = mean, mean_std(aucs)[1]
        compared = overrides and mean is not None and reference is not None
        delta = f"{mean - reference:+.4f}" if compared else ""
        if compared:
            noise = 2 * max(mean_std(aucs)[1], reference_std)
            if abs(mean - reference) <= noise:
                verdict = f"within seed noise (2 std = {noise:.4f}): no measurable effect here"
            elif mean < reference and removed in NOT_FROM_THE_PAPERS:
                verdict = "it helps here"
            elif mean < reference:
                verdict = "the technique helps, as the papers claim"
            else:
                verdict = "the model is better WITHOUT it here, against the papers' claim"
            notes.append(
                f"{removed}: removing it changes test AUC by {delta} over {len(aucs)} seed(s); "
                + verdict
            )
        rows.append(
            [
                name,
                removed,
                fmt(aucs),
                delta or "-",
                fmt(values(runs, "test_logloss")),
                fmt(_mean_ia(runs), 2),
                f"{runs[0]['params']:,}" if runs else "n/a",
                str(len(runs)),
            ]
        )
    return rows, notes


def run(ctx: Context) -> Section:
    # most removals change test AUC by less than twice the seed std on 3 seeds
    ctx = dataclasses.replace(ctx, seeds=FIVE_SEEDS)
    header = [
        "variant", "removed", "test AUC", "Δ AUC vs hmoe", "test logloss", "mean IA",
        "params", "seeds",
    ]  # fmt: skip
    parts = [
        "One technique removed at a time from the `hmoe` preset, same protocol as above. Mean IA "
        "= information abundance (sum of singular values / the largest, spec §3.2) averaged over "
        "embedding sets and fields at the best epoch; it is bounded by the embedding dimension, so "
        "it compares sets of equal dimension only (the single-set variant has one wider set). "
        "A change is called an effect only when it exceeds twice the larger seed std. "
        f"Seeds {', '.join(map(str, ctx.seeds))} for every row.\n"
    ]
    for dataset, title in ((ctr.ML, "ml-100k, protocol Q1"), (ctr.CRITEO, "criteo-tiny, Q2")):
        rows, notes = _rows(ctx, dataset)
        parts.append(f"### {title}\n\n{table(header, rows)}\n")
        if notes:
            parts.append("\n".join(f"- {n}" for n in notes) + "\n")
        short = incomplete(SECTION, ctx.seeds, {row[0]: int(row[-1]) for row in rows})
        if short:
            parts.append(short)
    return Section(title="Ablations of the hmoe preset", body="\n".join(parts))
