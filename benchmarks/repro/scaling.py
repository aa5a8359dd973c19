"""Section: the multi-embedding scaling curve of the ``hmoe`` preset at equal total dimension.

The number of embedding sets grows from 1 to 6 while the total embedding width per field stays
the preset's own: 32 (its two sets of 16). The total is split as evenly as integers allow (3
sets: 11/11/10; 5: 7/7/6/6/6; 6: 6/6/5/5/5/5), so the id tables hold the same number of
parameters in every row and only how they are cut into sets changes. Each set needs at least
one expert (an expert reads exactly one set), so every row has the same six experts: the
preset's four kinds with GwPFM and IPNN twice (``COUNTS``), expert ``i`` (``expand_counts``
order) reading set ``i mod S`` (``assignment=explicit``). A set read by a GwPFM expert is
``dim * G`` wide (G field groups); criteo-tiny has one group, so the base dims above are the
token dims and the width really is equal (the section checks it on the prepared schema). The
experts' own sizes follow the width of the set they read (a DCN V2 on one 32-wide set is
larger than on a 6-wide one), so the parameter count is not equal: it is shown beside each row.
Everything else (encoders, gate, tower, loss, L2) is the preset's; criteo-tiny protocol Q2 as
in the ``ctr`` and ``ablations`` sections. Information abundance (IA, spec §3.2: sum of singular
values / the largest, per set and field at the best epoch) is bounded by a set's dim, so it is
shown twice: the mean over sets and fields (falls with the per-set dim by construction), and
the sum over sets per field, averaged over fields (bounded by 32 in every row: the measure the
multi-embedding paper's claim is about, that several sets together span more directions than
one set of the same total size).
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from repro import ctr
from repro.common import (
    FIVE_SEEDS,
    Context,
    Section,
    fmt,
    incomplete,
    mean_std,
    seeds_of,
    table,
    values,
)
from repro.datasets import prepared

SECTION = "scaling"
PRESET = "hmoe"
DATASET = ctr.CRITEO
TOTAL_DIM = 32  # the preset's total width per field: two sets of 16
SET_COUNTS = (1, 2, 3, 4, 5, 6)
# six experts, so that six sets each have one: the preset's kinds, the field-pair ones twice
COUNTS = {"gwpfm": 2, "ipnn": 2, "dcnv2": 1, "mlp": 1}
NOISE_STDS = 2.0  # a difference under this many seed stds is called noise
FIGURE = "scaling_sets.png"
IA_KEY = re.compile(r"ia_set(\d+)_(.+)")


def split_dims(sets: int, total: int = TOTAL_DIM) -> tuple[int, ...]:
    """``total`` cut into ``sets`` dims as evenly as integers allow, the larger ones first."""
    base, extra = divmod(total, sets)
    return tuple(base + 1 if i < extra else base for i in range(sets))


def overrides(sets: int) -> dict[str, Any]:
    """The model overrides of the row with ``sets`` embedding sets (no protocol settings)."""
    from hmoe.models.experts import expand_counts

    experts = expand_counts(COUNTS)
    return {
        "model.experts.counts": dict(COUNTS),
        "model.embedding.assignment": "explicit",
        "model.embedding.expert_sets": [i % sets for i in range(len(experts))],
        "model.embedding.set_dims": list(split_dims(sets)),
    }


def widths(sets: int, schema: Any) -> list[int]:
    """Each set's token dim (GwPFM's ``* G`` included) on ``schema`` for the row ``sets``."""
    from hmoe.config import apply_overrides
    from hmoe.models.ranker import single_task_plan, token_dims
    from hmoe.models.zoo import get_preset

    model = apply_overrides(get_preset(PRESET), overrides(sets)).model
    return token_dims(single_task_plan(model, schema), schema)


def _variant(sets: int) -> str:
    return f"sets={sets} dims={'/'.join(map(str, split_dims(sets)))}"


def _ia_per_seed(runs: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[float]]:
    """Per run: (mean IA over sets and fields, mean over fields of the IA summed over sets)."""
    means, sums = [], []
    for run in runs:
        by_field: dict[str, list[float]] = {}
        for key, value in (run.get("ia") or {}).items():
            match = IA_KEY.fullmatch(key)
            if match:
                by_field.setdefault(match.group(2), []).append(float(value))
        if by_field:
            means.append(statistics.fmean(v for vs in by_field.values() for v in vs))
            sums.append(statistics.fmean(sum(vs) for vs in by_field.values()))
    return means, sums


def _vs(a: Sequence[float], b: Sequence[float]) -> str:
    """``a`` against ``b``: the difference of means and whether it exceeds the noise."""
    if min(len(a), len(b)) < 2:
        return f"{mean_std(a)[0] - mean_std(b)[0]:+.4f} (too few seeds to judge)"
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    noise = NOISE_STDS * max(sa, sb)
    kind = "noise" if abs(ma - mb) <= noise else "beyond noise"
    return f"{ma - mb:+.4f} ({kind}, {NOISE_STDS:g} std = {noise:.4f})"


def _findings(rows: Mapping[int, Mapping[str, list[float]]]) -> str:
    aucs = {s: r["test_auc"] for s, r in rows.items() if r["test_auc"] and r["val_auc"]}
    if len(aucs) < 2 or 1 not in aucs:
        return "Not enough rows run to compare."
    # the row is chosen on validation, as for any model choice; the test split only scores it
    best = max(aucs, key=lambda s: mean_std(rows[s]["val_auc"])[0])
    lines = [
        f"- Best mean validation AUC: {best} set(s) ({mean_std(rows[best]['val_auc'])[0]:.4f}; "
        f"test AUC {mean_std(aucs[best])[0]:.4f}). Test AUC against one set of 32: "
        + "; ".join(f"{s} sets {_vs(aucs[s], aucs[1])}" for s in aucs if s != 1)
        + "."
    ]
    sums = {s: r["ia_sum"] for s, r in rows.items() if r["ia_sum"]}
    if 1 in sums and len(sums) > 1:
        most = max(sums, key=lambda s: mean_std(sums[s])[0])
        if min(len(sums[most]), len(sums[1])) < 2:
            verdict = "too few seeds to judge."
        elif most != 1 and _beyond(sums[most], sums[1]):
            verdict = "holds here."
        else:
            verdict = "is not seen here (within noise of one set)."
        lines.append(
            f"- IA summed over sets: one set {mean_std(sums[1])[0]:.2f}, highest at {most} sets "
            f"({mean_std(sums[most])[0]:.2f}); the paper's claim (more sets, more directions "
            "spanned at the same total size): " + verdict
        )
    return "\n".join(lines)


def _beyond(a: Sequence[float], b: Sequence[float]) -> bool:
    if min(len(a), len(b)) < 2:
        return False
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    return abs(ma - mb) > NOISE_STDS * max(sa, sb)


def _figure(ctx: Context, rows: Mapping[int, Mapping[str, list[float]]]) -> str | None:
    drawn = [s for s in SET_COUNTS if rows[s]["test_auc"]]
    if not drawn:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (auc_ax, ia_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metrics in ((auc_ax, ("test_auc", "val_auc")), (ia_ax, ("ia_mean", "ia_sum"))):
        for metric in metrics:
            xs = [s for s in drawn if rows[s][metric]]
            stats = [mean_std(rows[s][metric]) for s in xs]
            ax.errorbar(xs, [m for m, _ in stats], yerr=[sd for _, sd in stats], marker="o",
                        capsize=3, label=LABELS[metric])  # fmt: skip
        ax.set_xticks(SET_COUNTS)
        ax.set_xlabel(f"embedding sets (total dim {TOTAL_DIM} per field)")
        ax.legend(fontsize=8)
    auc_ax.set_ylabel("AUC (mean ± std over seeds)")
    ia_ax.set_ylabel("information abundance")
    fig.suptitle(f"hmoe, criteo-tiny Q2: sets at equal total dim {TOTAL_DIM}")
    fig.tight_layout()
    ctx.figures.mkdir(parents=True, exist_ok=True)
    fig.savefig(ctx.figures / FIGURE, dpi=110)
    plt.close(fig)
    return f"![test AUC and IA vs number of sets](results/figures/{FIGURE})"


LABELS = {
    "test_auc": "test AUC",
    "val_auc": "val AUC",
    "ia_mean": "mean IA per set",
    "ia_sum": "IA summed over sets",
}


def _width_note(data: Path) -> str:
    """Whether the token width per field is ``TOTAL_DIM`` in every row on the prepared schema."""
    if not (data / "manifest.json").exists():
        return ""
    from hmoe.platform.data.batches import load_schema

    schema = load_schema(data)
    totals = {s: sum(widths(s, schema)) for s in SET_COUNTS}
    if set(totals.values()) == {TOTAL_DIM}:
        return f"Token width per field on this schema: {TOTAL_DIM} in every row.\n\n"
    return "**Unequal token widths on this schema**: " + ", ".join(
        f"{s} sets {w}" for s, w in totals.items()
    ) + ".\n\n"  # fmt: skip


def run(ctx: Context) -> Section:
    # the rows' test AUCs differ by less than their seed spread on the report's 3 seeds
    ctx = dataclasses.replace(ctx, seeds=FIVE_SEEDS)
    data = prepared(ctx, DATASET)
    rows: dict[int, dict[str, list[float]]] = {}
    stored: dict[str, int] = {}
    table_rows = []
    for sets in SET_COUNTS:
        runs = seeds_of(
            ctx,
            section=SECTION,
            dataset=DATASET,
            variant=_variant(sets),
            preset=PRESET,
            data=data,
            overrides=ctr.PROTOCOL[DATASET] | overrides(sets),
        )
        stored[f"{sets} set(s)"] = len(runs)
        ia_mean, ia_sum = _ia_per_seed(runs)
        rows[sets] = {
            "test_auc": values(runs, "test_auc"),
            "val_auc": values(runs, "val_auc"),
            "ia_mean": ia_mean,
            "ia_sum": ia_sum,
        }
        table_rows.append(
            [
                str(sets),
                "/".join(map(str, split_dims(sets))),
                f"{runs[0]['params']:,}" if runs else "n/a",
                fmt(rows[sets]["test_auc"]),
                fmt(rows[sets]["val_auc"]),
                fmt(ia_mean, 2),
                fmt(ia_sum, 2),
                str(len(runs)),
            ]
        )
    header = ["sets", "dims", "params", "test AUC", "val AUC", "mean IA per set",
              "IA summed over sets", "seeds"]  # fmt: skip
    settings = ", ".join(f"`{k}={v}`" for k, v in ctr.PROTOCOL[DATASET].items())
    parts = [
        __doc__.split("\n", 2)[2].strip(),
        f"Settings: {settings}; experts "
        + ", ".join(f"{n} {kind}" for kind, n in COUNTS.items())
        + f"; seeds {', '.join(map(str, ctx.seeds))}. A "
        f"difference is called an effect only beyond {NOISE_STDS:g} seed stds (the larger of "
        "the two rows').",
        _width_note(data) + table(header, table_rows),
        _findings(rows),
    ]
    note = incomplete(SECTION, ctx.seeds, stored)
    if note:
        parts.append(note.strip())
    figure = _figure(ctx, rows)
    if figure:
        parts.append(figure)
    return Section(title="Multi-embedding scaling at equal total dimension (criteo-tiny)",
                   body="\n\n".join(parts))  # fmt: skip
