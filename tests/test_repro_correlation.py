"""The report's ``correlation`` section: five seeds per model, judged on all five, and a model
with fewer stored runs named as incomplete."""

from __future__ import annotations

import sys

from tests.conftest import REPO_ROOT
from tests.repro_runs import report_context, stored_record

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from repro import correlation
from repro import multitask_data as md
from repro.common import FIVE_SEEDS

# per model: fidelity to the MI truth at seed 0, and its change per seed
FIDELITY = {"DIN": (0.40, 0.01), "SASRec": (0.10, 0.01), "TIM": (0.41, 0.01)}


def _record(label: str, seed: int) -> dict:
    preset, overrides = correlation.MODELS[label]
    changes = overrides | {"train.epochs": correlation.EPOCHS}
    changes |= {"train.seed": seed, "tracking.log_model": False}
    base, step = FIDELITY[label]
    return stored_record(
        section=correlation.SECTION,
        dataset=f"{md.SYNTH}-{correlation.TASK}",
        variant=label,
        seed=seed,
        preset=preset,
        overrides=changes,
        metrics={"test_auc": 0.7, "corr_fidelity": base + step * seed},
    )


def test_judges_the_models_on_five_seeds(tmp_path):
    ctx = report_context(tmp_path)
    for label in correlation.MODELS:
        for seed in FIVE_SEEDS:
            ctx.add(_record(label, seed))
    body = correlation.run(ctx.cached()).body
    assert not ctx.missing
    assert "Seeds 1, 2, 3, 4, 5 per model." in body
    assert "| DIN | 0.430 ± 0.016 | n/a | 0.7000 ± 0.0000 | 5 |" in body
    assert "- TIM 0.440 vs DIN 0.430: +0.010, within 2 seed stds (noise)." in body
    assert "- DIN 0.430 vs SASRec 0.130: +0.300, beyond 2 seed stds." in body
    assert "Incomplete" not in body


def test_a_model_short_of_five_stored_seeds_is_named(tmp_path):
    ctx = report_context(tmp_path)
    for label in correlation.MODELS:
        for seed in FIVE_SEEDS[: 3 if label == "SASRec" else None]:
            ctx.add(_record(label, seed))
    body = correlation.run(ctx.cached()).body
    assert [(k["variant"], k["seed"]) for k in ctx.missing] == [("SASRec", 4), ("SASRec", 5)]
    assert "**Incomplete**: stored runs of the 5 seeds per row: SASRec: 3;" in body
