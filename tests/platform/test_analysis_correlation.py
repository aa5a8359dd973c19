"""Behaviour-target correlation: mutual information, position bookkeeping, learned grids,
fidelity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hmoe.config import ConfigError
from hmoe.platform.analysis.correlation import (
    CorrelationConfig,
    CorrelationCounts,
    attention_grid,
    binary_mutual_information,
    fidelity,
    interval_buckets,
    learned_correlation,
    min_max,
    mutual_information_from_counts,
    relative_positions,
)

MISSING = 1e-5


def test_mutual_information_of_independent_variables_is_about_zero() -> None:
    rng = np.random.default_rng(0)
    x = rng.random(200_000) < 0.3
    y = rng.random(200_000) < 0.4
    assert binary_mutual_information(x, y, MISSING) < 1e-4


def test_mutual_information_of_identical_fair_bits_is_one_bit() -> None:
    x = np.arange(1000) % 2 == 0
    assert binary_mutual_information(x, x, MISSING) == pytest.approx(1.0, abs=1e-6)


def test_mutual_information_matches_a_direct_formula() -> None:
    # 2x2 table (x, y): 11=30, 10=10, 01=20, 00=40
    joint = np.array([[40, 20], [10, 30]]) / 100.0  # [x, y]
    px, py = joint.sum(1), joint.sum(0)
    expected = sum(
        joint[i, j] * math.log2(joint[i, j] / (px[i] * py[j])) for i in (0, 1) for j in (0, 1)
    )
    got = mutual_information_from_counts(np.array(30), np.array(10), 50.0, 50.0, MISSING)
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_mutual_information_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        mutual_information_from_counts(np.array(5), np.array(0), 4.0, 4.0, MISSING)


def test_relative_positions_count_back_from_the_newest() -> None:
    np.testing.assert_array_equal(
        relative_positions(np.array([3, 1, 0]), 4), [[3, 2, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    )
    with pytest.raises(ValueError, match="longer"):
        relative_positions(np.array([5]), 4)


def test_interval_buckets_are_log2_slots_capped() -> None:
    minutes = np.array([[0.0, 60.0, 180.0, 1e9], [30.0, 0.0, 0.0, 0.0]])
    slots = interval_buckets(minutes, np.array([4, 1]), num_buckets=5, unit_seconds=60.0)
    # floor(log2(1 + dt/60)) + 1: 0 s -> 1, 60 s -> 2, 180 s -> 3, huge -> capped at 5
    np.testing.assert_array_equal(slots, [[1, 2, 3, 5], [1, 0, 0, 0]])


def categories_at(categories: np.ndarray, lengths: np.ndarray, positions: int) -> np.ndarray:
    """The category at relative positions 1..P, ``[N, P]`` (0 beyond the history)."""
    slots = relative_positions(lengths, categories.shape[1])
    out = np.zeros((len(lengths), positions), dtype=np.int64)
    for p in range(1, positions + 1):
        hit = slots == p
        out[:, p - 1] = np.where(hit.any(1), categories[np.arange(len(lengths)), hit.argmax(1)], 0)
    return out


def planted_sample(rng: np.random.Generator, n: int, planted: tuple[int, int]):
    """Histories of random categories 2..9; the label depends only on category ``planted[0]``
    being at relative position ``planted[1]``."""
    length = 8
    categories = rng.integers(2, 10, size=(n, length))
    lengths = rng.integers(1, length + 1, size=n)
    categories[np.arange(length)[None, :] >= lengths[:, None]] = 0
    at = categories_at(categories, lengths, 6)
    hit = at[:, planted[1] - 1] == planted[0]
    labels = np.where(hit, rng.random(n) < 0.8, rng.random(n) < 0.2).astype(np.float32)
    targets = np.where(rng.random(n) < 0.9, 3, 4)  # most samples have target category 3
    return categories, relative_positions(lengths, length), targets, labels


def test_planted_dependence_is_the_argmax_of_the_grid() -> None:
    rng = np.random.default_rng(1)
    counts = CorrelationCounts(target_category=3, num_slots=6)
    for _ in range(3):  # streamed in batches
        counts.add(*planted_sample(rng, 4000, planted=(7, 2)))
    categories = counts.top_categories(8)
    assert sorted(categories) == list(range(2, 10))
    grid = counts.mutual_information(categories, MISSING)
    assert grid.shape == (8, 6)
    c, p = np.unravel_index(np.argmax(grid), grid.shape)
    assert (categories[c], p + 1) == (7, 2)
    others = np.delete(grid.ravel(), np.argmax(grid))
    assert grid.max() > 10 * others.max()


def test_counts_ignore_other_target_categories_and_padding() -> None:
    counts = CorrelationCounts(target_category=3, num_slots=2)
    counts.add(
        np.array([[2, 5], [4, 0], [6, 6]]),
        relative_positions(np.array([2, 1, 2]), 2),
        np.array([3, 3, 9]),
        np.array([1.0, 0.0, 1.0]),
    )
    assert (counts.total_pos, counts.total_neg) == (1, 1)
    assert counts.history_frequency == {2: 1, 5: 1, 4: 1}
    np.testing.assert_array_equal(counts.x_pos[5], [1, 0])
    np.testing.assert_array_equal(counts.x_neg[4], [1, 0])
    assert counts.top_categories(2) == [2, 4]
    # time buckets: two behaviours of one category in one slot count once per sample
    buckets = CorrelationCounts(target_category=3, num_slots=2)
    buckets.add(np.array([[5, 5, 6]]), np.array([[1, 1, 3]]), np.array([3]), np.array([1.0]))
    np.testing.assert_array_equal(buckets.x_pos[5], [1, 0])
    assert 6 not in buckets.x_pos and buckets.history_frequency == {5: 2, 6: 1}
    with pytest.raises(ValueError, match="no sample"):
        CorrelationCounts(target_category=8, num_slots=2).mutual_information([2], MISSING)


def slow_learned(c_table, p_table, kind, target, cats, positions):
    out = np.zeros((len(cats), positions))
    d = c_table.shape[1]
    for i, c in enumerate(cats):
        for p in range(1, positions + 1):
            if kind == "tim":
                e, v = c_table[c] + p_table[p], c_table[target] + p_table[0]
                r = np.linalg.norm(e * v)
            else:
                e, v = c_table[c], c_table[target]
                r = np.linalg.norm(e) if kind == "din" else np.linalg.norm(e * v)
            out[i, p - 1] = math.exp(float(e @ v) / math.sqrt(d)) * r
    return out


@pytest.mark.parametrize("kind", ["tim", "din", "din_plus"])
def test_learned_correlation_equals_slow_reference_up_to_scale(kind: str) -> None:
    rng = np.random.default_rng(2)
    c_table, p_table = rng.normal(size=(12, 4)), rng.normal(size=(7, 4))
    cats = [2, 5, 9, 11]
    got = learned_correlation(
        c_table, p_table, kind=kind, target_category=5, categories=cats, num_positions=5
    )
    want = slow_learned(c_table, p_table, kind, 5, cats, 5)
    np.testing.assert_allclose(got / got.max(), want / want.max(), rtol=1e-10)
    if kind != "tim":  # no temporal term: constant across positions by construction
        assert np.ptp(got, axis=1).max() == pytest.approx(0.0, abs=1e-12)


def test_learned_correlation_validates_inputs() -> None:
    table = np.ones((5, 3))
    with pytest.raises(ValueError, match="temporal table"):
        learned_correlation(
            table, None, kind="tim", target_category=2, categories=[2], num_positions=3
        )
    with pytest.raises(ValueError, match="unknown encoder kind"):
        learned_correlation(
            table, None, kind="gru", target_category=2, categories=[2], num_positions=3
        )


def test_fidelity_is_spearman_and_zero_for_constant_grids() -> None:
    truth = np.arange(12.0).reshape(3, 4)
    assert fidelity(truth**3, truth) == pytest.approx(1.0)
    assert fidelity(-truth, truth) == pytest.approx(-1.0)
    assert fidelity(np.ones((3, 4)), truth) == 0.0
    with pytest.raises(ValueError, match="differ"):
        fidelity(truth, truth[:2])
    np.testing.assert_allclose(min_max(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    assert np.all(min_max(np.ones(3)) == 0.0)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="padding/OOV"):
        CorrelationConfig(target_category=1)
    with pytest.raises(ConfigError, match="num_positions"):
        CorrelationConfig(num_positions=0)


def test_interval_buckets_match_the_tim_encoder() -> None:
    """The ground truth's time slots are the rows the model's TIM reads from its table."""
    from hmoe.models.sequence import (
        SequenceEncoder,
        SequenceEncoderConfig,
        TIMConfig,
        TimeIntervalConfig,
    )

    intervals = TimeIntervalConfig(num_buckets=6, unit_seconds=30.0)
    cfg = SequenceEncoderConfig(kind="tim", tim=TIMConfig(time_intervals=intervals))
    encoder = SequenceEncoder(cfg, dim=4, max_len=5, init_std=0.1)
    rng = np.random.default_rng(4)
    lengths = rng.integers(0, 6, size=32)
    deltas = rng.exponential(3000.0, size=(32, 5)).astype(np.float32)
    ours = interval_buckets(deltas, lengths, 6, 30.0)
    theirs = encoder.pool.temporal_index(torch.as_tensor(lengths), torch.as_tensor(deltas))
    real = relative_positions(lengths, 5) > 0
    np.testing.assert_array_equal(ours[real], theirs.numpy()[real])


@pytest.mark.slow
def test_trained_tim_is_more_faithful_than_din(tmp_path) -> None:
    """On data with a planted category x position effect, a TIM trained with a plain torch
    loop reproduces the ground-truth grid better than DIN (which has no temporal term)."""
    from hmoe.platform.analysis.reports import AnalysisConfig, correlation_report
    from tests.platform import analysis_helpers as h

    rows = {"train": 16_000, "val": 20_000, "test": 20_000}  # val/test sharpen the ground truth
    data = h.write_prepared(tmp_path, rows, seed=0, synth=True)
    columns = h.generate(rows["train"], seed=0)  # the train split, as written
    scores = {}
    for kind in ("tim", "din"):
        model = h.train(
            h.model_config("single", kind), columns, epochs=3, lr=0.02, batch_size=512, seed=0
        )
        report = correlation_report(model, h.schema(), data, tmp_path / kind, AnalysisConfig())
        scores[kind] = report.metrics
        assert report.plots["correlation"].stat().st_size > 0
    assert scores["tim"]["corr_fidelity_set0"] > scores["din"]["corr_fidelity_set0"] + 0.1
    assert scores["tim"]["corr_fidelity_planted_set0"] > scores["din"]["corr_fidelity_planted_set0"]
    assert scores["tim"]["corr_truth_vs_planted"] > 0.0


def _slow_attention_grid(weights, categories_NL, slots_NL, categories, num_slots):
    """Mean weight per (category, slot) cell, one behaviour at a time."""
    sums = {(c, s): [] for c in categories for s in range(1, num_slots + 1)}
    for n in range(weights.shape[0]):
        for i in range(weights.shape[1]):
            key = (int(categories_NL[n, i]), int(slots_NL[n, i]))
            if key in sums:
                sums[key].append(float(weights[n, i]))
    return np.array(
        [[np.mean(sums[c, s]) if sums[c, s] else 0.0 for s in range(1, num_slots + 1)]
         for c in categories]
    )  # fmt: skip


def test_attention_grid_equals_a_slow_reference() -> None:
    rng = np.random.default_rng(3)
    weights = rng.random((40, 6))
    categories_NL = rng.integers(0, 9, size=(40, 6))
    slots_NL = rng.integers(0, 8, size=(40, 6))  # 0 = padding, 6 and 7 outside a 5-slot grid
    wanted = [4, 2, 7, 30]  # 30 never occurs: an empty row
    grid = attention_grid(weights, categories_NL, slots_NL, categories=wanted, num_slots=5)
    slow = _slow_attention_grid(weights, categories_NL, slots_NL, wanted, 5)
    np.testing.assert_allclose(grid, slow)
    assert grid.shape == (4, 5) and np.all(grid[3] == 0.0)
    with pytest.raises(ValueError, match="one"):
        attention_grid(weights[:, :5], categories_NL, slots_NL, categories=wanted, num_slots=5)


def test_sasrec_correlation_is_its_attention_grid(tmp_path) -> None:
    """The report reads SASRec out empirically: its grid is the mean rollout weight of the
    samples with the planted target, cell by cell (a per-behaviour loop here)."""
    from hmoe.models.zoo import build
    from hmoe.platform.analysis.access import feature_encoders
    from hmoe.platform.analysis.reports import AnalysisConfig, correlation_report
    from hmoe.schema import seq_column
    from tests.platform import analysis_helpers as h

    rows = {"train": 300, "val": 200, "test": 200}
    data = h.write_prepared(tmp_path, rows, seed=0, synth=True)
    torch.manual_seed(0)
    model = build(h.model_config("single", "sasrec"), h.schema()).eval()
    cfg = AnalysisConfig(correlation=CorrelationConfig(num_categories=4, num_positions=6))
    report = correlation_report(model, h.schema(), data, tmp_path / "out", cfg)
    learned = report.grids["sasrec set0"]
    q = h.schema().sequences[0]
    weights, cats, slots = [], [], []
    for index, split in enumerate(rows):
        columns = h.generate(rows[split], seed=index)
        keep = np.flatnonzero(columns[q.category_field] == h.TARGET)
        batch = h.to_batch(columns, keep)
        with torch.no_grad():
            weights.append(feature_encoders(model)["set0"].behaviour_weights(batch)[q.name].numpy())
        cats.append(columns[seq_column(q.name, "category")][keep])
        slots.append(relative_positions(columns[seq_column(q.name, "length")][keep], q.max_len))
    all_cats, real = np.concatenate(cats), np.concatenate(slots) > 0
    frequency = {int(c): int(((all_cats == c) & real).sum()) for c in np.unique(all_cats[real])}
    top = sorted(set(frequency) - {0, 1}, key=lambda c: (-frequency[c], c))[:4]
    slow = _slow_attention_grid(
        np.concatenate(weights), np.concatenate(cats), np.concatenate(slots), top, 6
    )
    np.testing.assert_allclose(learned, min_max(slow), atol=1e-6)
    assert -1.0 <= report.metrics["corr_fidelity_set0"] <= 1.0
    assert "corr_fidelity_planted_set0" in report.metrics
