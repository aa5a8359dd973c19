"""The report's ``sparse`` section: five seeds per beta, each Combined-Pair gain judged against
twice the larger seed std, and a beta with fewer stored runs named as incomplete."""

from __future__ import annotations

import sys

from tests.conftest import REPO_ROOT
from tests.repro_runs import report_context, stored_record

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from repro import ctr, sparse
from repro.common import FIVE_SEEDS

# per beta: the Combined-Pair gain over BCE at every seed
GAIN = {0.1: 0.03, 0.2: 0.03, 0.4: 0.01, 1.0: 0.001}


def _record(beta: float, ranking: bool, seed: int) -> dict:
    overrides = ctr.PROTOCOL[ctr.CRITEO] | {"loss.positive_weight": beta}
    if ranking:
        overrides |= {"loss.ranking.enabled": True, "loss.ranking.alpha": sparse.BEST_ALPHA[beta]}
    auc = 0.70 + 0.002 * seed + (GAIN[beta] if ranking else 0.0)
    return stored_record(
        section=sparse.SECTION,
        dataset=ctr.CRITEO,
        variant=f"beta={beta} {'combined-pair' if ranking else 'bce'}",
        seed=seed,
        preset=sparse.BACKBONE,
        overrides=overrides | {"train.seed": seed, "tracking.log_model": False},
        metrics={"test_auc": auc, "test_wlogloss": 0.5},
    )


def test_each_gain_is_judged_on_five_seeds(tmp_path):
    ctx = report_context(tmp_path)
    for beta in sparse.BETAS:
        for ranking in (False, True):
            for seed in FIVE_SEEDS:
                ctx.add(_record(beta, ranking, seed))
    body = sparse.run(ctx.cached()).body
    assert not ctx.missing
    assert "seeds 1, 2, 3, 4, 5." in body
    assert "- beta 0.1: Combined-Pair − BCE = +0.0300 test AUC, beyond 2 seed stds (0.0063)" in body
    assert "- beta 1.0: Combined-Pair − BCE = +0.0010 test AUC, within 2 seed stds (0.0063)" in body
    assert "Incomplete" not in body


def test_a_beta_short_of_five_seeds_is_named(tmp_path):
    ctx = report_context(tmp_path)
    for beta in sparse.BETAS:
        for ranking in (False, True):
            for seed in FIVE_SEEDS[: 3 if beta == 1.0 else None]:
                ctx.add(_record(beta, ranking, seed))
    body = sparse.run(ctx.cached()).body
    assert sorted({k["seed"] for k in ctx.missing}) == [4, 5]
    assert "**Incomplete**: stored runs of the 5 seeds per row: beta 1.0: 3;" in body
