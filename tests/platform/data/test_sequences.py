"""Point-in-time sequences, exposure counts and cosine against slow loop references."""

from __future__ import annotations

import numpy as np
import pytest

from hmoe.platform.data.sequences import cosine, earlier_exposures, sequence_indices


def _reference_sequences(t_user, t_ts, e_user, e_ts, e_order, max_len):
    index = np.full((len(t_user), max_len), -1)
    length = np.zeros(len(t_user), dtype=int)
    for i, (user, ts) in enumerate(zip(t_user, t_ts, strict=True)):
        events = [j for j in range(len(e_user)) if e_user[j] == user and e_ts[j] < ts]
        events = sorted(events, key=lambda j: (e_ts[j], e_order[j]))[-max_len:]
        index[i, : len(events)] = events
        length[i] = len(events)
    return index, length


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_len", [1, 3, 8])
def test_sequences_match_the_loop_reference(seed: int, max_len: int) -> None:
    rng = np.random.default_rng(seed)
    n_targets, n_events = 60, 90
    t_user = rng.choice(["a", "b", "c", "d"], n_targets)
    t_ts = rng.integers(0, 20, n_targets).astype(float)  # many ties with events
    e_user = rng.choice(["a", "b", "c", "e"], n_events)
    e_ts = rng.integers(0, 20, n_events).astype(float)
    e_order = rng.permutation(n_events)
    index, length = sequence_indices(t_user, t_ts, e_user, e_ts, e_order, max_len)
    ref_index, ref_length = _reference_sequences(t_user, t_ts, e_user, e_ts, e_order, max_len)
    np.testing.assert_array_equal(length, ref_length)
    np.testing.assert_array_equal(index, ref_index)
    real = index >= 0
    assert (e_ts[index[real]] < np.broadcast_to(t_ts[:, None], index.shape)[real]).all()


def test_sequences_edge_cases() -> None:
    index, length = sequence_indices(
        np.array([1, 2]),
        np.array([5.0, 5.0]),
        np.array([], int),
        np.array([]),
        np.array([], int),
        3,
    )
    np.testing.assert_array_equal(length, [0, 0])
    assert (index == -1).all()
    # same-second events are excluded; the last max_len earlier ones are kept, oldest first
    index, length = sequence_indices(
        np.array([7]),
        np.array([10.0]),
        np.array([7, 7, 7, 7]),
        np.array([10.0, 3.0, 1.0, 2.0]),
        np.arange(4),
        2,
    )
    np.testing.assert_array_equal(index, [[3, 1]])
    np.testing.assert_array_equal(length, [2])


def test_earlier_exposures_on_a_hand_made_log() -> None:
    user = np.array(["u1", "u1", "u1", "u2", "u1", "u1", "u2"])
    item = np.array(["x", "x", "y", "x", "x", "x", "x"])
    ts = np.array([1.0, 2.0, 2.0, 2.0, 2.0, 5.0, 0.0])
    # u1-x at 1, 2, 2, 5 -> 0, 1, 1, 3 ; u1-y -> 0 ; u2-x at 2, 0 -> 1, 0
    np.testing.assert_array_equal(earlier_exposures(user, item, ts), [0, 1, 0, 1, 1, 3, 0])


def test_cosine_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 5)), rng.normal(size=(20, 5))
    expected = [x @ y / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(cosine(a, b), expected, rtol=1e-12)
    assert cosine(np.zeros((1, 5)), b[:1])[0] == 0.0
    np.testing.assert_allclose(cosine(a[:, None, :], a[:, None, :])[:, 0], 1.0)
