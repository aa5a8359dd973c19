"""The report's ``small`` section: the ml-100k sample and the synthetic log at a handful of rows
per user, each ranked by validation AUC, rendered from stored runs without training."""

from __future__ import annotations

import sys

from tests.conftest import REPO_ROOT
from tests.repro_runs import report_context, stored_record

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from repro import ctr, small
from repro.common import SEEDS
from repro.datasets import SMALL

VAL_AUC = {"dnn": 0.66, "din": 0.65, "hmoe": 0.67}


def _record(dataset: str, name: str, preset: str, extra: dict, seed: int) -> dict:
    changes = ctr.PROTOCOL[ctr.ML] | extra | {"train.seed": seed, "tracking.log_model": False}
    val = VAL_AUC.get(name, 0.60) + (0.02 if dataset == SMALL else 0.0) + 0.001 * seed
    return stored_record(
        section=small.SECTION,
        dataset=dataset,
        variant=name,
        seed=seed,
        preset=preset,
        overrides=changes,
        metrics={"val_auc": val, "test_auc": val - 0.01, "val_logloss": 0.6},
    )


def test_both_logs_are_ranked_on_validation(tmp_path):
    ctx = report_context(tmp_path)
    for dataset, variants in ((SMALL, small.VARIANTS), (small.SMALL_SYNTH, small.SYNTH_VARIANTS)):
        for name, preset, extra in variants:
            for seed in SEEDS:
                ctx.add(_record(dataset, name, preset, extra, seed))
    body = small.run(ctx.cached()).body
    assert not ctx.missing
    ml, synth = body.split(f"### `{small.SMALL_SYNTH}`")
    assert f"### `{SMALL}`" in ml
    assert "By mean validation AUC: `hmoe` 0.6920, `dnn` 0.6820, `din` 0.6720, " in ml
    assert "--set rows_per_user=4 --set click_rate=0.3 --set 'tasks=[click]'" in synth
    assert "By mean validation AUC: `hmoe` 0.6720, `dnn` 0.6620, `din` 0.6520." in synth
    assert synth.count("| 3 |") == len(small.SYNTH_VARIANTS)


def test_the_synthetic_log_trains_its_three_models(tmp_path):
    ctx = report_context(tmp_path)
    small.run(ctx.cached())
    wanted = {(k["dataset"], k["variant"]) for k in ctx.missing if k["seed"] == SEEDS[0]}
    assert {v for d, v in wanted if d == small.SMALL_SYNTH} == {"dnn", "din", "hmoe"}
