"""The report's ``entanglement`` section: five seeds per model, judged on all five, and a model
with fewer stored runs named as incomplete."""

from __future__ import annotations

import sys

from tests.conftest import REPO_ROOT
from tests.repro_runs import report_context, stored_record

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from repro import entanglement, multitask
from repro import multitask_data as md
from repro.common import FIVE_SEEDS

# per model: the shared expert's cosine at seed 0, and its change per seed
COSINE = {"MMoE": (0.10, 0.01), "STEM": (0.30, 0.01)}
GROUP = "expert 0 mlp shared"  # a group the summary counts as an expert (``_kind``)


def _record(label: str, seed: int) -> dict:
    model = next(m for m in multitask.MODELS if m.variant == entanglement.MODELS[label])
    changes = dict(model.overrides) | {"train.epochs": multitask.EPOCHS}
    changes |= {"train.seed": seed, "tracking.log_model": False}
    base, step = COSINE[label]
    prefix = entanglement.PREFIX
    return stored_record(
        section=entanglement.SECTION,
        dataset=md.SYNTH,
        variant=model.variant,
        seed=seed,
        preset=model.preset,
        overrides=changes,
        metrics={
            "test_auc": 0.7,
            f"{prefix}cos_{GROUP}": base + step * seed,
            f"{prefix}norma_{GROUP}": 1.0,
            f"{prefix}normb_{GROUP}": 1.0,
        },
    )


def test_judges_the_models_on_five_seeds(tmp_path):
    ctx = report_context(tmp_path)
    for label in entanglement.MODELS:
        for seed in FIVE_SEEDS:
            ctx.add(_record(label, seed))
    body = entanglement.run(ctx.cached()).body
    assert not ctx.missing
    assert "Seeds 1, 2, 3, 4, 5 per model." in body
    assert "**MMoE** (seeds: 5)" in body
    assert (
        "- experts both tasks reach: MMoE 0.130 ± 0.016, STEM 0.330 ± 0.016; "
        "STEM − MMoE +0.200, beyond 2 seed stds."
    ) in body
    assert "Incomplete" not in body


def test_a_model_short_of_five_stored_seeds_is_named(tmp_path):
    ctx = report_context(tmp_path)
    for label in entanglement.MODELS:
        for seed in FIVE_SEEDS[: 3 if label == "STEM" else None]:
            ctx.add(_record(label, seed))
    body = entanglement.run(ctx.cached()).body
    assert [k["seed"] for k in ctx.missing] == [4, 5]
    assert "**Incomplete**: stored runs of the 5 seeds per row: STEM: 3;" in body
