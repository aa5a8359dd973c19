"""Point-in-time behaviour sequences, earlier-exposure counts and cosine similarities (numpy).

All three are vectorised over a whole shard (many users at once). Both sequences and exposure
counts only look at events with a timestamp *strictly* earlier than the target's, so events in
the same second as the target (batch ratings, one page of impressions) never leak into it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cosine", "earlier_exposures", "sequence_entries", "sequence_indices"]


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
    rows, slots, events, length = sequence_entries(
        target_user, target_ts, event_user, event_ts, event_order, max_len
    )
    index_NL = np.full((len(length), max_len), -1, dtype=np.int64)
    index_NL[rows, slots] = events
    return index_NL, length


def sequence_entries(
    target_user: np.ndarray,
    target_ts: np.ndarray,
    event_user: np.ndarray,
    event_ts: np.ndarray,
    event_order: np.ndarray,
    max_len: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``sequence_indices`` as its real entries only (same arguments).

    Most targets have far fewer than ``max_len`` earlier events (sparse positives), so
    gathering per real entry instead of per ``[N, L]`` slot saves most of the work.

    Returns:
        ``(rows, slots, events, length)``: entry k is event ``events[k]`` at
        ``index[rows[k], slots[k]]``; entries are ordered by row, then slot. ``length [N]``.
    """
    users_t, users_e = _dense_ranks(target_user, event_user)
    times_t, times_e = _dense_ranks(target_ts, event_ts)
    span = int(max(times_t.max(initial=0), times_e.max(initial=0))) + 1
    order = np.lexsort((event_order, times_e, users_e))
    keys_e = users_e[order] * span + times_e[order]
    end = np.searchsorted(keys_e, users_t * span + times_t, side="left")  # first event not before
    start = np.searchsorted(keys_e, users_t * span, side="left")  # the user's first event
    length = np.minimum(end - start, max_len).astype(np.int64)
    rows = np.repeat(np.arange(len(length), dtype=np.int64), length)
    first = np.cumsum(length) - length  # each row's first entry
    slots = np.arange(len(rows), dtype=np.int64) - first[rows]
    events = order[end[rows] - length[rows] + slots].astype(np.int64)
    return rows, slots, events, length


def earlier_exposures(user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """``[N]`` count of rows with the same (user, item) and a strictly earlier timestamp."""
    # one sort by (user, item, time): a row's count is the distance from the first row of its
    # (user, item) run to the first row of its (user, item, time) run
    users, items = _sortable(user), _sortable(item)
    order = np.lexsort((ts, items, users))
    u, i, t = users[order], items[order], ts[order]
    n = len(order)
    new_pair = np.ones(n, dtype=bool)
    new_pair[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    new_time = new_pair.copy()
    new_time[1:] |= t[1:] != t[:-1]
    position = np.arange(n, dtype=np.int64)
    pair_start = np.maximum.accumulate(np.where(new_pair, position, 0)) if n else position
    time_start = np.maximum.accumulate(np.where(new_time, position, 0)) if n else position
    counts = np.empty(n, dtype=np.int64)
    counts[order] = time_start - pair_start
    return counts


def _sortable(keys: np.ndarray) -> np.ndarray:
    """Numbers as they are, anything else (strings, objects) as dense ranks."""
    keys = np.asarray(keys)
    return keys if keys.dtype.kind in "biuf" else _dense_ranks(keys)[0]


def cosine(left_ND: np.ndarray, right_ND: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity ``[N]`` (0 where either vector is zero)."""
    left = left_ND.astype(np.float64)
    right = right_ND.astype(np.float64)
    norms = np.linalg.norm(left, axis=-1) * np.linalg.norm(right, axis=-1)
    dots = np.einsum("...d,...d->...", left, right)
    safe = np.where(norms > 0, norms, 1.0)
    return np.where(norms > 0, np.clip(dots / safe, -1.0, 1.0), 0.0)
