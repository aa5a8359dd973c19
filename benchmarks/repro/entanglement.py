"""Section: interest entanglement of trained MMoE and STEM (gradient conflict between tasks).

The multi-task section's synthetic two-task log (click and like with uncorrelated, planted
conflicting interests) and its MMoE and STEM settings. After training, on the restored
best-epoch model: the two tasks' BCE gradients on 8 validation batches (``BATCHES``), per parameter
group (``hmoe.platform.analysis.access.parameter_groups``: every embedding table of every set,
every expert), and their cosine (``entanglement.gradient_conflict_by_group``; negative = the
tasks pull that part apart), averaged over the batches. A group only one task's loss reaches
(STEM's per-task tables and experts: All-Forward-Task-specific-Backward) has no conflict to
measure and is counted apart.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from hmoe.platform.analysis.collapse import metric_name
from repro import multitask
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
)

SECTION = "entanglement"
BATCHES = 8  # validation batches of the run's eval batch size the gradients are averaged over
PREFIX = "conflict_"  # record metrics: conflict_{cos,norma,normb}_{group, metric-safe}
PARTS = ("cos", "norma", "normb")
MODELS = {"MMoE": "mmoe", "STEM": "hmoe_stem"}


def _conflict(model: Any, cfg: Any) -> Mapping[str, float]:
    """``extra`` hook: per parameter group, the mean over batches of the tasks' cosine and
    gradient norms."""
    from hmoe.models.losses import TrainWrapper
    from hmoe.platform.analysis.access import parameter_groups, task_losses
    from hmoe.platform.analysis.entanglement import gradient_conflict_by_group
    from hmoe.platform.data.batches import iter_minibatches, load_schema, read_split

    schema = load_schema(cfg.data.path)
    val = read_split(cfg.data.path, "val", schema)
    wrapper = TrainWrapper(model, cfg.loss, tasks=schema.tasks)
    wrapper.eval()  # no dropout noise in the directions, no batch-norm statistics update
    groups = parameter_groups(model)
    sums: dict[str, list[float]] = {}
    batches = 0
    for batch in iter_minibatches(val, cfg.data.eval_batch_size, seed=0):
        losses = task_losses(wrapper, batch)
        a, b = (losses[t] for t in schema.tasks[:2])
        for name, c in gradient_conflict_by_group(a, b, groups).items():
            acc = sums.setdefault(name, [0.0, 0.0, 0.0])
            acc[0] += c.cosine
            acc[1] += c.norm_a
            acc[2] += c.norm_b
        model.zero_grad(set_to_none=True)
        batches += 1
        if batches == BATCHES:
            break
    out = {}
    for name, totals in sums.items():
        for part, total in zip(PARTS, totals, strict=True):
            out[f"{PREFIX}{part}_{metric_name(name)}"] = total / batches
    return out


def _runs(ctx: Context, label: str) -> list[dict[str, Any]]:
    model = next(m for m in multitask.MODELS if m.variant == MODELS[label])
    return seeds_of(
        ctx,
        section=SECTION,
        dataset=md.SYNTH,
        variant=model.variant,
        preset=model.preset,
        data=md.synth(ctx),
        overrides=dict(model.overrides) | {"train.epochs": multitask.EPOCHS},
        extra=_conflict,
    )


def _kind(group: str) -> str:
    """A group's row in the summary: tables by set, experts by kind and owner."""
    if group.startswith("table "):
        return f"tables of set `{group.split(' ', 1)[1].split('/')[0]}`"
    _, _, kind, owner = group.split(" ", 3)
    return f"{kind} expert(s), {owner}"


def _groups(record: Mapping[str, Any]) -> dict[str, tuple[float, float, float]]:
    """``{group: (cosine, norm of task a, norm of task b)}`` of one record."""
    m = record["metrics"]
    names = [k.removeprefix(f"{PREFIX}cos_") for k in m if k.startswith(f"{PREFIX}cos_")]
    return {g: tuple(m[f"{PREFIX}{part}_{g}"] for part in PARTS) for g in names}


def _rows(records: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Per summary row: the seeds' mean cosine over the row's groups that both tasks reach."""
    by_kind: dict[str, dict[int, list[float]]] = {}
    counts: dict[str, set[str]] = {}
    for r in records:
        for g, (cos, norm_a, norm_b) in _groups(r).items():
            counts.setdefault(_kind(g), set()).add(g)
            if norm_a > 0 and norm_b > 0:
                by_kind.setdefault(_kind(g), {}).setdefault(r["seed"], []).append(cos)
    rows = []
    for kind in sorted(counts):
        per_seed = [statistics.fmean(v) for v in by_kind.get(kind, {}).values()]
        reached = "both tasks" if per_seed else "one task only"
        rows.append([kind, str(len(counts[kind])), reached, fmt(per_seed, 3) if per_seed else "—"])
    return rows


def _shared_mean(records: Sequence[Mapping[str, Any]], prefix: str) -> list[float]:
    """Per seed, the mean cosine over the groups of ``prefix`` kind that both tasks reach."""
    out = []
    for r in records:
        cos = [
            c
            for g, (c, norm_a, norm_b) in _groups(r).items()
            if g.startswith(prefix) and norm_a > 0 and norm_b > 0
        ]
        if cos:
            out.append(statistics.fmean(cos))
    return out


def run(ctx: Context) -> Section:
    # the models' mean cosines are small next to their seed spread on the report's 3 seeds
    ctx = dataclasses.replace(ctx, seeds=FIVE_SEEDS)
    results = {label: _runs(ctx, label) for label in MODELS}
    header = ["part of the model", "groups", "gradients from", "mean cosine click vs like"]
    parts = [
        __doc__.split("\n", 2)[2].strip(),
        f"Seeds {', '.join(map(str, ctx.seeds))} per model.",
    ]
    for label, records in results.items():
        parts.append(f"**{label}** (seeds: {len(records)}):\n\n" + table(header, _rows(records)))
    summary = []
    for prefix, name in (("table ", "embedding tables"), ("expert ", "experts")):
        mmoe, stem = (_shared_mean(results[k], prefix) for k in MODELS)
        if not mmoe or not stem:
            continue
        gap, noise = mean_std(stem)[0] - mean_std(mmoe)[0], seed_noise(mmoe, stem)
        if noise is None:
            verdict = "1 seed: no spread to judge it by"
        elif abs(gap) > noise:
            verdict = "beyond 2 seed stds"
        else:
            verdict = "within 2 seed stds (noise)"
        summary.append(
            f"- {name} both tasks reach: MMoE {fmt(mmoe, 3)}, STEM {fmt(stem, 3)}; "
            f"STEM − MMoE {gap:+.3f}, {verdict}."
        )
    parts.append("\n".join(summary) if summary else "Not run.")
    note = incomplete(SECTION, ctx.seeds, {k: len(v) for k, v in results.items()})
    if note:
        parts.append(note.strip())
    return Section(title="Interest entanglement: gradient conflict of MMoE vs STEM (synthetic)",
                   body="\n\n".join(parts))  # fmt: skip
