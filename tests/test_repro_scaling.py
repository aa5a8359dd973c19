"""The report's ``scaling`` section: every row is a valid ``hmoe`` config with the same total
embedding width, and the section renders its table, findings and figure from stored runs."""

from __future__ import annotations

import sys

import pytest

from hmoe.config import apply_overrides
from hmoe.models.experts import expand_counts
from hmoe.models.zoo import build, get_preset
from hmoe.schema import CategoricalFeature, FeatureSchema
from tests.conftest import REPO_ROOT
from tests.repro_runs import report_context, stored_record

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from repro import ctr, scaling
from repro.common import FIVE_SEEDS

# criteo-tiny's shape: id fields in one field group (GwPFM's G = 1)
ONE_GROUP = FeatureSchema(
    categorical=tuple(CategoricalFeature(name=f"C{i}", vocab_size=30) for i in range(4))
)


@pytest.mark.parametrize("sets", scaling.SET_COUNTS)
def test_each_row_is_a_valid_hmoe_config_of_the_same_total_width(sets: int):
    model = apply_overrides(get_preset(scaling.PRESET), scaling.overrides(sets)).model
    assert len(model.embedding.set_dims) == sets
    assert sum(model.embedding.set_dims) == scaling.TOTAL_DIM
    assert max(model.embedding.set_dims) - min(model.embedding.set_dims) <= 1
    assert sorted(set(model.embedding.expert_sets)) == list(range(sets))
    assert len(model.embedding.expert_sets) == len(expand_counts(model.experts.counts))
    assert sum(scaling.widths(sets, ONE_GROUP)) == scaling.TOTAL_DIM
    built = build(model, ONE_GROUP)
    assert sum(p.numel() for p in built.parameters()) > 0


def test_gwpfm_widens_its_set_when_the_schema_has_several_groups():
    two = FeatureSchema(
        categorical=(
            CategoricalFeature(name="a", vocab_size=30, group="user"),
            CategoricalFeature(name="b", vocab_size=30, group="item"),
        )
    )
    # one set read by every expert, GwPFM among them: its tokens are dim * G wide
    assert scaling.widths(1, two) == [2 * scaling.TOTAL_DIM]


def _record(sets: int, seed: int, auc: float, val_auc: float) -> dict:
    overrides = ctr.PROTOCOL[scaling.DATASET] | scaling.overrides(sets)
    overrides |= {"train.seed": seed, "tracking.log_model": False}
    dims = scaling.split_dims(sets)
    return stored_record(
        section=scaling.SECTION,
        dataset=scaling.DATASET,
        variant=scaling._variant(sets),
        seed=seed,
        preset=scaling.PRESET,
        overrides=overrides,
        metrics={"test_auc": auc, "val_auc": val_auc, "test_logloss": 0.5},
        # IA at most the set's dim: here dim / 2 per set and field
        ia={f"ia_set{k}_C{f}": d / 2 for k, d in enumerate(dims) for f in range(3)},
        params=1000 * sets,
    )


def test_renders_table_findings_and_figure_from_stored_runs(tmp_path):
    ctx = report_context(tmp_path)
    for sets in scaling.SET_COUNTS:
        for seed in FIVE_SEEDS:
            # 3 sets is clearly better than one; 2 sets differs by less than the noise;
            # 4 sets has the best validation AUC but not the best test AUC
            lift = {3: 0.02, 2: 0.0005}.get(sets, 0.0)
            test = 0.70 + lift + 0.001 * seed
            ctx.add(_record(sets, seed, test, test - 0.01 + (0.03 if sets == 4 else 0.0)))
    body = scaling.run(ctx.cached()).body
    assert not ctx.missing
    assert "| 3 | 11/11/10 | 3,000 | 0.7230 ± 0.0016 | 0.7130 ± 0.0016 | 5.33 ± 0.00 | " in body
    assert "| 16.00 ± 0.00 | 5 |" in body  # IA summed over sets: 32 / 2 in every row
    # the row named best is chosen on validation, and its test AUC is reported beside it
    assert "Best mean validation AUC: 4 set(s) (0.7230; test AUC 0.7030)" in body
    assert "2 sets +0.0005 (noise" in body
    assert "3 sets +0.0200 (beyond noise" in body
    assert "the same total size): is not seen here (within noise of one set)." in body
    assert "experts 2 gwpfm, 2 ipnn, 1 dcnv2, 1 mlp; seeds 1, 2, 3, 4, 5." in body
    assert "Incomplete" not in body
    assert (ctx.figures / scaling.FIGURE).stat().st_size > 0
    assert f"results/figures/{scaling.FIGURE}" in body


def test_renders_without_runs(tmp_path):
    ctx = report_context(tmp_path)
    body = scaling.run(ctx.cached()).body
    assert "Not enough rows run to compare." in body
    # five seeds per row, whatever the report's own seeds
    assert len(ctx.missing) == len(scaling.SET_COUNTS) * len(FIVE_SEEDS)
    assert "**Incomplete**: stored runs of the 5 seeds per row: 1 set(s): 0;" in body
    assert not (ctx.figures / scaling.FIGURE).exists()
