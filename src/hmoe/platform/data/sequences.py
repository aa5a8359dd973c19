"""Point-in-time behaviour sequences, earlier-exposure counts and cosine similarities (numpy).

All three are vectorised over a whole shard (many users at once). Both sequences and exposure
counts only look at events with a timestamp *strictly* earlier than the target's, so events in
the same second as the target (batch ratings, one page of impressions) never leak into it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cosine", "earlier_exposures", "sequence_indices"]


def _dense_ranks(*arrays: np.ndarray) -> list[np.ndarray]:
    """Dense ranks of the values of several arrays in one shared order."""
    values = np.concatenate(arrays)
    ranks = np.unique(values, return_inverse=True)[1].astype(np.int64)
    return list(np.split(ranks, np.cumsum([len(a) for a in arrays])[:-1]))


def sequence_indices(
    target_user: np.ndarray,
    target_ts: np.ndarray,
    event_user: np.ndarray,
    event_ts: np.ndarray,
    event_order: np.ndarray,
    max_len: int,
) -> tuple[np.ndarray, np.ndarray]:
    """For each target, the latest ``max_len`` events of its user strictly before its time.

    Args:
        target_user, target_ts: ``[N]`` user keys (any comparable dtype) and times.
        event_user, event_ts: ``[E]`` the behaviour events.
        event_order: ``[E]`` breaks ties between events of one user at one time (file order).
        max_len: L.

    Returns:
        ``index [N, L]`` int64 into the event arrays, oldest first, -1 after the last real
        event; ``length [N]`` int64.
    """
    users_t, users_e = _dense_ranks(target_user, event_user)
    times_t, times_e = _dense_ranks(target_ts, event_ts)
    span = int(max(times_t.max(initial=0), times_e.max(initial=0))) + 1
    order = np.lexsort((event_order, times_e, users_e))
    keys_e = users_e[order] * span + times_e[order]
    end = np.searchsorted(keys_e, users_t * span + times_t, side="left")  # first event not before
    start = np.searchsorted(keys_e, users_t * span, side="left")  # the user's first event
    length = np.minimum(end - start, max_len).astype(np.int64)
    offsets = np.arange(max_len, dtype=np.int64)[None, :]
    position_NL = end[:, None] - length[:, None] + offsets
    valid_NL = offsets < length[:, None]
    index_NL = np.where(
        valid_NL, order[np.where(valid_NL, position_NL, 0)] if len(order) else 0, -1
    )
    return index_NL.astype(np.int64), length


def earlier_exposures(user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """``[N]`` count of rows with the same (user, item) and a strictly earlier timestamp."""
    (users,) = _dense_ranks(user)
    (items,) = _dense_ranks(item)
    pairs = np.unique(np.stack([users, items], axis=1), axis=0, return_inverse=True)[1]
    pairs = pairs.reshape(-1).astype(np.int64)
    (times,) = _dense_ranks(ts)
    span = int(times.max(initial=0)) + 1
    keys = pairs * span + times
    sorted_keys = np.sort(keys)
    before = np.searchsorted(sorted_keys, keys, side="left")
    first = np.searchsorted(sorted_keys, pairs * span, side="left")
    return (before - first).astype(np.int64)


def cosine(left_ND: np.ndarray, right_ND: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity ``[N]`` (0 where either vector is zero)."""
    left = left_ND.astype(np.float64)
    right = right_ND.astype(np.float64)
    norms = np.linalg.norm(left, axis=-1) * np.linalg.norm(right, axis=-1)
    dots = np.einsum("...d,...d->...", left, right)
    safe = np.where(norms > 0, norms, 1.0)
    return np.where(norms > 0, np.clip(dots / safe, -1.0, 1.0), 0.0)
