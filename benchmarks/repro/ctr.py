"""Section: baselines, the hmoe preset and the best full-search configuration on Q1 and Q2.

Protocol settings follow ../shared/docs/benchmarks.md (Q1: up to 8 epochs; Q2: batch 512, up to
10 epochs; Adam lr 1e-3) except Q1's batch: 512 instead of the peers' 256, which halves the
report's training time on 2 cores. Early stopping on validation AUC (patience 2)
and the best epoch's weights restored before the test split is scored. Model sizes are the
presets' own (``hmoe.models.zoo``; the baselines use the peers' sizes).
"""

from __future__ import annotations

import json
from typing import Any

from repro.common import Context, Section, fmt, seeds_of, table, values
from repro.datasets import prepared

SECTION = "ctr"
ML, CRITEO = "ml-100k-q1", "criteo_deeplight_tiny"
PROTOCOL: dict[str, dict[str, Any]] = {
    ML: {"train.epochs": 8, "train.batch_size": 512},
    CRITEO: {"train.epochs": 10, "train.batch_size": 512},
}
# peer test AUC / logloss (mean, std) from ../shared/docs/benchmarks.md
PEERS: dict[str, list[tuple[str, tuple[float, float], tuple[float, float] | None]]] = {
    ML: [
        ("DeepFM (DeepCTR-Torch)", (0.7107, 0.0009), (0.6199, 0.0026)),
        ("DIN (DeepCTR-Torch)", (0.7162, 0.0015), (0.6177, 0.0023)),
        ("DIN (FuxiCTR)", (0.7162, 0.0006), None),
    ],
    CRITEO: [
        ("DeepFM (DeepCTR-Torch)", (0.7210, 0.0013), (0.5092, 0.0010)),
        ("DCN (DeepCTR-Torch)", (0.7159, 0.0007), (0.5268, 0.0028)),
        ("DCN (FuxiCTR)", (0.7125, 0.0015), None),
        ("DCNv2 (FuxiCTR)", (0.7129, 0.0020), None),
    ],
}
MODELS = {
    ML: ("dnn", "deepfm", "dcnv2", "din", "din_plus", "sasrec", "hmoe"),
    CRITEO: ("dnn", "deepfm", "dcnv2", "hmoe"),  # no behaviour sequence in criteo
}
# Q1 has no target: most of its test users are new, where every model ties with an item-only
# score (section "Q1: new users against returning ones"); the returning-user target is Q1b's
TARGETS = {CRITEO: ("DeepFM", 0.7210)}
SEARCH_FILE = "full_search.json"  # written by benchmarks/bench_search.py


def best_search_params(ctx: Context) -> dict[str, Any] | None:
    path = ctx.out / SEARCH_FILE
    if not path.exists():
        return None
    return dict(json.loads(path.read_text())["best_params"])


def run_model(
    ctx: Context, dataset: str, variant: str, preset: str, extra_overrides: dict[str, Any]
) -> list[dict[str, Any]]:
    data = prepared(ctx, dataset)
    return seeds_of(
        ctx,
        section=SECTION,
        dataset=dataset,
        variant=variant,
        preset=preset,
        data=data,
        overrides=PROTOCOL[dataset] | extra_overrides,
    )


def _rows(ctx: Context, dataset: str) -> tuple[list[list[str]], dict[str, float]]:
    rows: list[list[str]] = []
    means: dict[str, float] = {}
    variants = [(m, m, {}) for m in MODELS[dataset]]
    best = best_search_params(ctx)
    if dataset == ML and best is not None:
        variants.append(("hmoe (best of full search)", "hmoe", best))
    for name, preset, extra in variants:
        runs = run_model(ctx, dataset, name, preset, extra)
        aucs = values(runs, "test_auc")
        if aucs:
            means[name] = sum(aucs) / len(aucs)
        params = f"{runs[0]['params']:,}" if runs else "n/a"
        epochs = "/".join(str(r["best_epoch"]) for r in runs) or "n/a"
        rows.append(
            [
                f"ours `{name}`" if name == preset else f"ours: {name}",
                fmt(aucs),
                fmt(values(runs, "test_logloss")),
                fmt(values(runs, "test_gauc")) if dataset == ML else "-",
                params,
                epochs,
                str(len(runs)),
            ]
        )
    for name, auc, loss in PEERS[dataset]:
        rows.append(
            [
                f"peer {name}",
                f"{auc[0]:.4f} ± {auc[1]:.4f}",
                f"{loss[0]:.4f} ± {loss[1]:.4f}" if loss else "n/a",
                "-",
                "-",
                "-",
                "3",
            ]
        )
    return rows, means


def _verdict(dataset: str, means: dict[str, float]) -> str:
    ours = means.get("hmoe")
    if ours is None:
        return "The `hmoe` preset was not run."
    if dataset in TARGETS:
        peer, target = TARGETS[dataset]
        met = "met" if ours >= target else "NOT met"
        line = (
            f"Target: `hmoe` test AUC ≥ {target:.4f} (peer {peer}): **{met}** (mean "
            f"{ours:.4f}, {ours - target:+.4f})."
        )
    else:
        line = (
            "Q1 is the cold-start table, without a target: most of its test rows come from "
            'users never seen in training (section "Q1: new users against returning ones"). '
            'The target with returning users is section "Q1b: ml-100k with returning users".'
        )
    ranked = sorted(means.items(), key=lambda kv: -kv[1])
    return (
        line
        + " Best of ours by mean test AUC: "
        + ", ".join(f"`{k}` {v:.4f}" for k, v in ranked[:3])
        + "."
    )


def run(ctx: Context) -> Section:
    header = ["model", "test AUC", "test logloss", "test GAUC", "params", "best epoch", "seeds"]
    parts = []
    for dataset, title in ((ML, "ml-100k, protocol Q1"), (CRITEO, "criteo-tiny, protocol Q2")):
        rows, means = _rows(ctx, dataset)
        settings = ", ".join(f"`{k}={v}`" for k, v in PROTOCOL[dataset].items())
        deviation = (
            " (the peers used batch 256; 512 halves our time on 2 cores)" if dataset == ML else ""
        )
        parts.append(f"### {title}\n\nSettings: {settings}{deviation}.\n\n{table(header, rows)}\n")
        parts.append(_verdict(dataset, means) + "\n")
    best = best_search_params(ctx)
    if best is not None:
        parts.append(
            "The best full-search configuration (`benchmarks/bench_search.py`, chosen by "
            "validation AUC; details in docs/performance.md) sets: "
            + ", ".join(f"`{k}={v}`" for k, v in sorted(best.items()))
            + "."
        )
    return Section(title="Baselines and the hmoe preset (Q1, Q2)", body="\n".join(parts))
