"""The report's ``ame`` and ``stem_al`` sections: five seeds per row, the multi-task section's
runs of the rows they compare with read under that section's own keys (trained only where
missing), and a row with fewer stored runs named as incomplete."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from tests.conftest import REPO_ROOT
from tests.repro_runs import report_context, stored_record

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from repro import ame, multitask, stem_al
from repro import multitask_data as md
from repro.common import FIVE_SEEDS

CLICK, LIKE = md.SYNTH_TASKS


def _record(
    section: str, variant: str, preset: str, overrides: Mapping[str, Any], seed: int, auc: float
) -> dict:
    changes = dict(overrides) | {"train.seed": seed, "tracking.log_model": False}
    metrics = {f"test_auc_{task}": auc + 0.01 * seed for task in md.SYNTH_TASKS}
    return stored_record(
        section=section,
        dataset=md.SYNTH,
        variant=variant,
        seed=seed,
        preset=preset,
        overrides=changes,
        metrics=metrics | {"test_auc": auc},
    )


def _multitask(variant: str, seed: int, auc: float, task: str | None = None) -> dict:
    """A run of the multi-task section, keyed as that section keys it."""
    model = next(m for m in multitask.MODELS if m.variant == variant)
    overrides = dict(model.overrides) | {"train.epochs": multitask.EPOCHS}
    name = variant if task is None else f"{variant}:{task}"
    return _record(multitask.SECTION, name, model.preset, overrides, seed, auc)


def _symmetric(seed: int) -> dict:
    variant = f"symmetric {ame.SYMMETRIC_DIM}x3"
    return _record(ame.SECTION, variant, ame.PRESET, ame.SYMMETRIC, seed, 0.70)


def test_ame_compares_five_seeds_of_the_multitask_runs(tmp_path):
    ctx = report_context(tmp_path)
    for seed in FIVE_SEEDS:
        ctx.add(_multitask(ame.PRESET, seed, 0.60))
        ctx.add(_symmetric(seed))
    body = ame.run(ctx.cached()).body
    assert not ctx.missing
    assert "| asymmetric 16/32/64 | 0.6300 ± 0.0158 |" in body
    assert "| 5 |" in body and "| 3 |" not in body
    assert f"- {CLICK}: asymmetric − symmetric -0.1000, beyond 2 seed stds." in body
    assert "Incomplete" not in body


def test_ame_names_the_multitask_seeds_it_lacks(tmp_path):
    ctx = report_context(tmp_path)
    for seed in FIVE_SEEDS:
        if seed <= 3:
            ctx.add(_multitask(ame.PRESET, seed, 0.60))
        ctx.add(_symmetric(seed))
    body = ame.run(ctx.cached()).body
    missing = [(k["section"], k["variant"], k["seed"]) for k in ctx.missing]
    assert missing == [(multitask.SECTION, ame.PRESET, 4), (multitask.SECTION, ame.PRESET, 5)]
    assert "**Incomplete**: stored runs of the 5 seeds per row: asymmetric 16/32/64: 3;" in body


def test_stem_al_reads_the_per_task_nets_of_the_multitask_section(tmp_path):
    ctx = report_context(tmp_path)
    for seed in FIVE_SEEDS:
        for task in md.SYNTH_TASKS:
            ctx.add(_multitask(multitask.SINGLE, seed, 0.50, task))
            ctx.add(_multitask(multitask.HMOE_SINGLE, seed, 0.55, task))
        ctx.add(_multitask("hmoe_stem", seed, 0.60))
        ctx.add(_record(stem_al.SECTION, stem_al.PRESET, stem_al.PRESET, stem_al.OVERRIDES,
                        seed, 0.62))  # fmt: skip
    body = stem_al.run(ctx.cached()).body
    assert not ctx.missing
    assert "| STEM (`hmoe_stem`) | 0.6300 ± 0.0158 | 0.6300 ± 0.0158 | 5 |" in body
    assert (
        f"- STEM-AL − STEM (`hmoe_stem`) on {CLICK}: +0.0200, within 2 seed stds (noise)." in body
    )
    assert "Incomplete" not in body


def test_stem_al_names_a_row_short_of_five_seeds(tmp_path):
    ctx = report_context(tmp_path)
    for seed in FIVE_SEEDS:
        for task in md.SYNTH_TASKS:
            ctx.add(_multitask(multitask.SINGLE, seed, 0.50, task))
            ctx.add(_multitask(multitask.HMOE_SINGLE, seed, 0.55, task))
        ctx.add(_record(stem_al.SECTION, stem_al.PRESET, stem_al.PRESET, stem_al.OVERRIDES,
                        seed, 0.62))  # fmt: skip
    body = stem_al.run(ctx.cached()).body
    assert sorted({k["seed"] for k in ctx.missing}) == list(FIVE_SEEDS)
    assert {k["variant"] for k in ctx.missing} == {"hmoe_stem"}
    assert "STEM (`hmoe_stem`): 0;" in body
