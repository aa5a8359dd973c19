"""Section: STEM-AL (auxiliary learning) against single-task and STEM on the two-task log.

The multi-task section's synthetic log: click is the main task (the schema's first), like the
auxiliary one. ``hmoe_stem_al`` trains here with the multi-task section's budget and the
whole-table embedding L2 of ``hmoe_stem`` (``MULTITASK_EMBEDDING_L2``), so that it differs from
the STEM row in the routing only; the other rows are the multi-task section's runs (same data,
seeds and budget), trained here only for seeds that section has not stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from hmoe.models.zoo import MULTITASK_EMBEDDING_L2
from repro import multitask
from repro import multitask_data as md
from repro.common import (
    FIVE_SEEDS,
    Context,
    Section,
    fmt,
    incomplete,
    mean_std,
    noise_verdict,
    seeds_of,
    table,
)

SECTION = "stem_al"
PRESET = "hmoe_stem_al"
OVERRIDES = {"loss.embedding_l2": MULTITASK_EMBEDDING_L2, "train.epochs": multitask.EPOCHS}
MAIN, AUXILIARY = md.SYNTH_TASKS
# (label, variant of the multi-task section, per task: one net per task)
STORED = (
    ("Single-task (shared-bottom, one net per task)", multitask.SINGLE, True),
    ("HMoE single-task (one net per task)", multitask.HMOE_SINGLE, True),
    ("STEM (`hmoe_stem`)", "hmoe_stem", False),
)


def _auc(records: Sequence[Mapping[str, Any]], task: str) -> list[float]:
    return [r["metrics"][f"test_auc_{task}"] for r in records if f"test_auc_{task}" in r["metrics"]]


def _stored(ctx: Context, variant: str, per_task: bool) -> dict[str, list[float]]:
    """Per task, the multi-task section's test AUCs of ``variant``, seed-sorted."""
    out = {}
    for task in md.SYNTH_TASKS:
        found = multitask.synth_runs(ctx, variant, task if per_task else None)
        out[task] = _auc(sorted(found, key=lambda r: r["seed"]), task)
    return out


def run(ctx: Context) -> Section:
    # STEM-AL is within 2 seed stds of STEM and of the single-task hmoe on 3 seeds
    ctx = dataclasses.replace(ctx, seeds=FIVE_SEEDS)
    runs = seeds_of(
        ctx,
        section=SECTION,
        dataset=md.SYNTH,
        variant=PRESET,
        preset=PRESET,
        data=md.synth(ctx),
        overrides=OVERRIDES,
    )
    rows_data = [(label, _stored(ctx, v, per_task)) for label, v, per_task in STORED]
    ours = {task: _auc(runs, task) for task in md.SYNTH_TASKS}
    rows_data.append(("STEM-AL (`hmoe_stem_al`, main: click)", ours))
    header = ["model", f"{MAIN} AUC (main)", f"{AUXILIARY} AUC (auxiliary)", "seeds"]
    rows = [
        [label, fmt(auc[MAIN]), fmt(auc[AUXILIARY]), str(len(auc[MAIN]))]
        for label, auc in rows_data
    ]
    findings = []
    for label, auc in rows_data[:-1]:
        if not auc[MAIN] or not ours[MAIN]:
            continue
        gap = mean_std(ours[MAIN])[0] - mean_std(auc[MAIN])[0]
        findings.append(
            f"- STEM-AL − {label} on {MAIN}: {gap:+.4f}, {noise_verdict(ours[MAIN], auc[MAIN])}."
        )
    body = "\n\n".join(
        [
            __doc__.split("\n", 2)[2].strip(),
            table(header, rows),
            "\n".join(findings) if findings else "Not run.",
            incomplete(
                SECTION, ctx.seeds, {label: len(auc[MAIN]) for label, auc in rows_data}
            ).strip(),
        ]
    ).strip()
    return Section(title="STEM-AL: auxiliary learning on the synthetic two-task log", body=body)
