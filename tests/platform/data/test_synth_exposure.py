"""The generator's exposure-inflated clicks and the planted interest it records (no Ray: one
block generated in process)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from hmoe.config import ConfigError
from hmoe.platform.data import synth_model as sm
from hmoe.platform.data.synth import SynthConfig

SEED = 3
SMALL = {"items": 300, "categories": 6, "category_groups": 2, "click_rate": 0.2}
# the default config's block digest as generated before the inflation knob existed
DEFAULT_DIGEST = "5ca8cc24f7fc3d68"
INFLATION = 1.0


def _block(cfg: SynthConfig, rows: int = 800, users: int = 12) -> sm.Block:
    layout = sm.BlockLayout(index=0, rows=rows, first_user=0, users=users)
    return sm.generate_block(sm.build_world(SEED, cfg), layout, SEED, cfg)


def _digest(block: sm.Block) -> str:
    h = hashlib.sha256()
    for name in sorted(block.impressions):
        column = np.ascontiguousarray(block.impressions[name])
        h.update(name.encode())
        h.update(column.astype(str).tobytes() if column.dtype == object else column.tobytes())
    h.update(block.biases.tobytes())
    return h.hexdigest()[:16]


def _frame(block: sm.Block) -> pd.DataFrame:
    df = pd.DataFrame({k: v for k, v in block.impressions.items() if np.ndim(v) == 1})
    df = df.sort_values(["user_id", "timestamp"], kind="stable")
    df["exposure"] = df.groupby(["user_id", "item_id"]).cumcount()
    return df


def test_inflation_off_keeps_the_output_and_writes_no_interest() -> None:
    block = _block(SynthConfig(**SMALL))
    assert sm.INTEREST_PROB not in block.impressions
    assert _digest(block) == DEFAULT_DIGEST


def test_inflated_clicks_rise_with_exposure_far_more_than_interest() -> None:
    cfg = SynthConfig(**SMALL, fatigue=0.0, exposure_inflation=INFLATION)
    df = _frame(_block(cfg, rows=20_000, users=500))
    first, repeated = df["exposure"] == 0, df["exposure"] >= 2
    assert repeated.sum() > 2_000
    observed_lift = df.loc[repeated, "click"].mean() / df.loc[first, "click"].mean()
    interest = df[sm.INTEREST_PROB]
    # interest still rises a little on repeats (a re-shown item is often of a recently clicked
    # category: the planted sequence effect), the observed clicks far more
    interest_lift = interest[repeated].mean() / interest[first].mean()
    assert observed_lift > 1.5 and observed_lift > 1.3 * interest_lift
    assert (df[sm.INTEREST_CLICK] <= df["click"]).all()  # interest clicks are observed clicks
    assert 0 < df[sm.INTEREST_CLICK].sum() < df["click"].sum()


def test_interest_logit_is_the_click_logit_without_the_inflation() -> None:
    cfg = SynthConfig(**SMALL, fatigue=0.0, exposure_inflation=INFLATION)
    layout = sm.BlockLayout(index=0, rows=800, first_user=0, users=12)
    world = sm.build_world(SEED, cfg)
    block = sm.generate_block(world, layout, SEED, cfg)
    draws = sm.draw_block(world, layout, SEED, cfg, stream=sm.BLOCK_STREAM)
    _, prob = sm.simulate_clicks(draws, world, float(block.biases[0]))
    order = np.lexsort((draws.row_user, draws.timestamp))  # the written row order
    interest = block.impressions[sm.INTEREST_PROB]
    gap = (np.log(prob) - np.log1p(-prob))[order] - (np.log(interest) - np.log1p(-interest))
    np.testing.assert_allclose(gap, INFLATION * np.log1p(draws.exposure[order]), atol=1e-9)
    assert draws.exposure.max() >= 2


def test_negative_inflation_is_refused() -> None:
    with pytest.raises(ConfigError, match="exposure_inflation must be >= 0"):
        SynthConfig(exposure_inflation=-0.1)
