"""``hmoe data synth``: determinism, exact sizes, rates, the planted effects, and ``prepare`` on it.

The generator's sequential click sampler is checked against a slow per-row reference; the
planted sequence effect, the exposure fatigue and the embeddings' information are recovered
from the written files with pandas, independently of the generator's code.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from hmoe.config import ConfigError
from hmoe.platform.data import synth_model as sm
from hmoe.platform.data.spec import load_spec
from hmoe.platform.data.synth import SynthConfig, synthesize

ROWS = 10_000
SEED = 7
CFG = SynthConfig(items=2_000, block_rows=2_500)  # 4 blocks, so 4 parallel tasks


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _log(folder: Path) -> pd.DataFrame:
    return pq.read_table(folder / "impressions").to_pandas()


@pytest.fixture(scope="module")
def synth_dir(ray_cluster, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    synthesize(out, ROWS, SEED, CFG)
    return out


@pytest.fixture(scope="module")
def log(synth_dir) -> pd.DataFrame:
    """The log in per-user time order, with the behaviour features recomputed by pandas."""
    df = _log(synth_dir).sort_values(["user_id", "timestamp"], kind="stable")
    by_user = df.groupby("user_id", sort=False)
    # category of the user's latest click strictly before the row (ties are impossible)
    latest = df["category"].where(df["click"] == 1)
    df["last_click_cat"] = latest.groupby(df["user_id"]).transform(lambda s: s.ffill().shift())
    df["earlier_clicks"] = by_user["click"].cumsum() - df["click"]
    df["exposure"] = df.groupby(["user_id", "item_id"]).cumcount()
    return df


pytestmark = pytest.mark.ray


def test_row_count_exact_and_layout(synth_dir, log):
    assert len(log) == ROWS
    assert sorted(p.name for p in (synth_dir / "impressions").iterdir()) == [
        f"part-{b:05d}.parquet" for b in range(4)
    ]
    users = pq.read_table(synth_dir / "users").to_pandas()
    assert users["user_id"].is_unique and set(log["user_id"]) <= set(users["user_id"])
    assert len(users) == ROWS // CFG.rows_per_user
    assert users["user_emb"].map(len).eq(CFG.embedding_dim).all()
    # within a user, timestamps strictly increase: prepare's "strictly before" sees every click
    assert (log.groupby("user_id")["timestamp"].diff().dropna() > 0).all()
    spec = load_spec(synth_dir / "spec.yaml")
    assert [label.task for label in spec.labels] == list(CFG.tasks)
    assert spec.sequences[0].max_len == CFG.sequence_max_len


def test_same_seed_same_files_other_seed_differs(synth_dir, tmp_path):
    synthesize(tmp_path / "b", ROWS, SEED, CFG)
    assert _digests(tmp_path / "b") == _digests(synth_dir)
    layout = sm.plan_blocks(ROWS, ROWS // CFG.rows_per_user, CFG.block_rows)[1]
    blocks = [sm.generate_block(sm.build_world(s, CFG), layout, s, CFG) for s in (SEED, SEED + 1)]
    written = pq.read_table(synth_dir / "impressions" / "part-00001.parquet").to_pandas()
    np.testing.assert_array_equal(written["item_id"], blocks[0].impressions["item_id"])
    assert not np.array_equal(blocks[0].impressions["item_id"], blocks[1].impressions["item_id"])


def test_rates_and_task_structure(synth_dir, log):
    summary = json.loads((synth_dir / "synth.json").read_text())
    click_rate = log["click"].mean()
    assert summary["rates"]["click"] == pytest.approx(click_rate)
    # each block hits its expected rates; what is left is sampling noise (~350 clicks)
    assert 0.85 * CFG.click_rate < click_rate < 1.15 * CFG.click_rate
    assert (log["conversion"] <= log["click"]).all()  # a conversion needs a click
    conversion_given_click = log.loc[log["click"] == 1, "conversion"].mean()
    assert 0.6 * CFG.conversion_rate < conversion_given_click < 1.4 * CFG.conversion_rate
    assert 0.8 * CFG.like_rate < log["like"].mean() < 1.2 * CFG.like_rate
    for task in CFG.tasks:
        assert summary["biases"][task]["min"] <= summary["biases"][task]["max"]


def test_planted_same_category_recent_click_raises_ctr(log):
    has_history = log["earlier_clicks"] > 0
    same = has_history & (log["last_click_cat"] == log["category"])
    other = has_history & ~same
    assert same.sum() > 200 and other.sum() > 1000
    ctr_same, ctr_other = log.loc[same, "click"].mean(), log.loc[other, "click"].mean()
    # planted: +strength logit at position 0, i.e. roughly 3x the click odds at a 3.5% base
    assert ctr_same > 1.8 * ctr_other


def test_repeated_exposure_lowers_ctr(log):
    first = log.loc[log["exposure"] == 0, "click"].mean()
    repeated = log.loc[log["exposure"] >= 2, "click"].mean()
    assert (log["exposure"] >= 2).sum() > 300
    assert repeated < 0.75 * first


def test_planted_correlation_file_matches_definition(synth_dir):
    matrix = np.load(synth_dir / "planted_correlation.npy")
    p = CFG.planted
    assert matrix.shape == (CFG.categories, p.positions)
    target = p.target_category
    decay = p.strength * p.decay ** np.arange(p.positions)
    np.testing.assert_allclose(matrix[target], decay, rtol=1e-6)
    neighbour = target + CFG.category_groups  # same group: c % category_groups equal
    np.testing.assert_allclose(matrix[neighbour], p.related * decay, rtol=1e-6)
    assert np.all(matrix[target + 1] == 0.0)
    meta = json.loads((synth_dir / "planted_correlation.json").read_text())
    np.testing.assert_allclose(np.asarray(meta["matrix"]), matrix)


def test_embeddings_are_noisy_views_of_the_latents(synth_dir):
    world = sm.build_world(SEED, CFG)
    items = pq.read_table(synth_dir / "items.parquet").to_pandas()
    emb = np.stack(items["item_emb"].to_numpy())
    clean = world.item_vectors @ world.projection

    def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    matched = cos(emb, clean).mean()
    shuffled = cos(emb, clean[np.random.default_rng(0).permutation(len(clean))]).mean()
    assert matched > 0.5 and matched > shuffled + 0.4
    # user embeddings of block 0 against the latents the generator drew for them
    layout = sm.plan_blocks(ROWS, ROWS // CFG.rows_per_user, CFG.block_rows)[0]
    draws = sm.draw_block(world, layout, SEED, CFG, stream=sm.BLOCK_STREAM)
    users = pq.read_table(synth_dir / "users" / "part-00000.parquet").to_pandas()
    user_emb = np.stack(users["user_emb"].to_numpy())
    assert cos(user_emb, draws.user_vectors @ world.projection).mean() > 0.5


def _slow_clicks(draws: sm.Draws, world: sm.World, bias: float) -> np.ndarray:
    """Per-row reference of the sequential sampler: each user's rows in time order."""
    click = np.zeros(len(draws.item), dtype=bool)
    positions = world.planted.shape[2]
    start = 0
    for count in draws.counts:
        history: list[int] = []  # categories of earlier clicks, latest first
        for row in range(start, start + count):
            target = int(world.item_category[draws.item[row]])
            planted = sum(
                float(world.planted[target, c + 1, p]) for p, c in enumerate(history[:positions])
            )
            prob = sm.sigmoid(bias + draws.scores[0, row] + planted)
            if draws.uniforms[0, row] < prob:
                click[row] = True
                history.insert(0, target)
        start += count
    return click


def test_vectorised_click_sampler_equals_slow_reference():
    cfg = SynthConfig(items=300, categories=6, category_groups=2, click_rate=0.2)
    world = sm.build_world(3, cfg)
    layout = sm.BlockLayout(index=0, rows=800, first_user=0, users=12)
    draws = sm.draw_block(world, layout, 3, cfg, stream=sm.BLOCK_STREAM)
    fast, prob = sm.simulate_clicks(draws, world, bias=-1.5)
    np.testing.assert_array_equal(fast, _slow_clicks(draws, world, bias=-1.5))
    assert 0.1 < fast.mean() < 0.6 and np.all((prob > 0) & (prob < 1))


def test_generator_exposure_counts_match_pandas():
    cfg = SynthConfig(items=50, repeat_prob=0.5)
    world = sm.build_world(1, cfg)
    layout = sm.BlockLayout(index=0, rows=600, first_user=0, users=10)
    draws = sm.draw_block(world, layout, 1, cfg, stream=sm.BLOCK_STREAM)
    frame = pd.DataFrame({"u": draws.row_user, "i": draws.item})  # rows are in time order
    expected = frame.groupby(["u", "i"]).cumcount().to_numpy()
    np.testing.assert_array_equal(draws.exposure, expected)
    assert draws.exposure.max() >= 2


def test_config_and_argument_errors(tmp_path):
    with pytest.raises(ConfigError, match="start with 'click'"):
        SynthConfig(tasks=("like", "click"))
    with pytest.raises(ConfigError, match="unknown task"):
        SynthConfig(tasks=("click", "purchase"))
    with pytest.raises(ConfigError, match="sequence_max_len"):
        SynthConfig(sequence_max_len=4)
    with pytest.raises(ValueError, match="users cannot fill"):
        sm.plan_blocks(rows=1_000, total_users=2, block_rows=100)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(FileExistsError):
        synthesize(tmp_path / "full", 100, 0, CFG)
    with pytest.raises(ValueError, match="rows must be"):
        synthesize(tmp_path / "empty", 0, 0, CFG)


def test_prepare_runs_on_synth_output_unchanged(synth_dir, log, tmp_path):
    from hmoe.platform.data import prepare, read_split_table

    manifest = prepare(synth_dir / "spec.yaml", tmp_path / "prepared")
    rows = manifest["rows"]
    assert rows["read"] == ROWS == rows["written"] + rows["quarantined"]
    assert rows["quarantined"] == 0 and manifest["quarantined_by_reason"] == {}
    # reference: the temporal split of the raw log and its features, recomputed with pandas
    ref = log.sort_index().sort_values(["timestamp", "user_id"], kind="stable")
    ref["hist_len"] = ref["earlier_clicks"].clip(upper=CFG.sequence_max_len)
    cut = [0, *np.cumsum([round(f * ROWS) for f in CFG.split[:2]]).tolist(), ROWS]
    parts = [ref.iloc[a:b] for a, b in itertools.pairwise(cut)]
    for split, part in zip(("train", "valid", "test"), parts, strict=True):
        table = read_split_table(tmp_path / "prepared", split).to_pandas()
        assert len(table) == len(part) == rows[split]
        columns = ("label__click", "exposure", "hist__length")
        got = sorted(map(tuple, table[list(columns)].to_numpy().tolist()))
        want = sorted(map(tuple, part[["click", "exposure", "hist_len"]].to_numpy().tolist()))
        assert got == want
    # the planted effect is visible to a model: the latest behaviour's category vs the target's
    train = read_split_table(tmp_path / "prepared", "train").to_pandas()
    length = train["hist__length"].to_numpy()
    has = length > 0
    categories = train["hist__category"][has]
    latest = np.array([c[n - 1] for c, n in zip(categories, length[has], strict=True)])
    same = train["category"].to_numpy()[has] == latest
    clicks = train["label__click"].to_numpy()[has]
    assert clicks[same].mean() > 1.8 * clicks[~same].mean()


def test_cli_synth_prints_what_it_wrote(ray_cluster, tmp_path, capsys):
    from hmoe.jobs.cli import main

    out = tmp_path / "cli"
    argv = ["data", "synth", "--out", str(out), "--rows", "3000", "--seed", "1", "--items", "500"]
    argv += ["--tasks", "click,like", "--click-rate", "0.05", "--set", "planted.decay=0.5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote 3,000 impressions" in printed and str(out / "spec.yaml") in printed
    summary = json.loads((out / "synth.json").read_text())
    assert summary["config"]["tasks"] == ["click", "like"]
    assert summary["config"]["planted"]["decay"] == 0.5
    assert 0.04 < summary["rates"]["click"] < 0.06
    assert main(argv) == 2  # a non-empty --out is refused without --overwrite
    assert "exists" in capsys.readouterr().err
