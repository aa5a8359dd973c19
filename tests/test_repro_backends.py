"""The report's ``backends`` section picks the torchrec tables' settings on validation AUC only
and reads test AUC once per backend (stored records, nothing trained)."""

from __future__ import annotations

import json
import sys

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from repro import backends, ctr
from repro.common import Context


def _record(preset: str, candidate, seed: int, val: float, test: float) -> dict:
    overrides = dict(ctr.PROTOCOL[ctr.CRITEO])
    variant = f"{preset} torch"
    if candidate is not None:
        lr, l2 = candidate
        overrides |= {
            "model.embedding.backend": "torchrec",
            "model.embedding.table_lr": lr,
            "model.embedding.table_l2": l2,
        }
        variant = f"{preset} torchrec table_lr={lr} table_l2={l2}"
    overrides |= {"train.seed": seed, "tracking.log_model": False}
    return {
        "section": backends.SECTION,
        "dataset": ctr.CRITEO,
        "variant": variant,
        "seed": seed,
        "preset": preset,
        "overrides": json.loads(json.dumps(overrides, sort_keys=True)),
        "quick": False,
        "metrics": {"val_auc": val, "test_auc": test, "test_logloss": 0.5},
        "best_epoch": 1,
        "wall_s": 1.0,
    }


def _body(tmp_path, records: list[dict]) -> str:
    """The section rendered from ``records`` alone, nothing trained."""
    out = tmp_path / "results"
    out.mkdir()
    ctx = Context(work=tmp_path / "work", out=out, data_root=tmp_path, log=lambda _: None)
    ctx.load()
    for record in records:
        ctx.add(record)
    return backends.run(ctx.cached()).body


def test_backends_section_chooses_on_validation_and_judges_the_difference_in_seed_stds(tmp_path):
    records = []
    for preset in backends.MODELS:
        for seed in (1, 2, 3):
            records.append(_record(preset, None, seed, 0.70, 0.720 + 0.001 * seed))
            for i, candidate in enumerate(backends.CANDIDATES):
                # the last candidate has the best test AUC but not the best validation AUC
                best_val = i == 1
                test = 0.80 if i == len(backends.CANDIDATES) - 1 else 0.721 + 0.001 * seed
                if preset == "dcnv2" and best_val:
                    test = 0.760 + 0.001 * seed
                records.append(_record(preset, candidate, seed, 0.75 if best_val else 0.71, test))
    body = _body(tmp_path, records)
    lr, l2 = backends.CANDIDATES[1]
    assert body.count(f"table_lr={lr:g} table_l2={l2:g}") == 2
    assert "0.8000" not in body  # the best test AUC was never chosen
    assert "`hmoe`: torchrec − torch = +0.0010 test AUC" in body
    assert "within seed noise" in body.split("`dcnv2`: torchrec")[0]
    assert "`dcnv2`: torchrec − torch = +0.0400" in body
    assert "better than torch beyond seed noise" in body


def test_backends_section_chooses_nothing_while_a_candidate_lacks_seeds(tmp_path):
    records = []
    for seed in (1, 2, 3):
        records.append(_record("hmoe", None, seed, 0.70, 0.72))
        for i, candidate in enumerate(backends.CANDIDATES):
            # the best candidate on validation has run one seed only so far
            if i == 0 or seed == 1:
                records.append(_record("hmoe", candidate, seed, 0.75 if i else 0.71, 0.72))
    body = _body(tmp_path, records)
    short = len(backends.CANDIDATES) - 1
    assert f"`hmoe`: no choice yet, {short} of {len(backends.CANDIDATES)} candidates" in body
    assert "`hmoe` torchrec |" not in body
    assert "torchrec − torch" not in body
