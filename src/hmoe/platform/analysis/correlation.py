"""Behaviour-target correlation: what the data says versus what a sequence encoder learned.

Ground truth (the TIN paper's category-wise target-aware correlation): fix a target category
``c_t``; over the samples whose target has category ``c_t``, let ``X_{c,p}`` = "the behaviour at
target-relative position ``p`` has category ``c``" (``p = 1`` is the newest behaviour) and ``Y``
the label. The cell value is the mutual information ``I(X_{c,p}; Y)`` in bits, from the 2x2
counts (a zero cell is replaced by ``missing_count``).

Learned (RecScope): with the trained category table ``C`` and the temporal table ``P``,
``e = C[c] + P[p]``, ``v = C[c_t] + P[0]``, ``z = <e, v> / sqrt(D)`` and
``Cor = exp(z) * ||e * v||``. DIN has no temporal term and no target product in its
representation (``e = C[c]``, ``r = ||C[c]||``); DIN+ keeps the product (``r = ||C[c] * C[c_t]||``).
Fidelity is the Spearman rank correlation of the two grids.

SASRec has no target in its attention, so no table formula applies: its read-out is empirical
(``attention_grid``): over the analysed samples, the mean share of the interest token that a
behaviour of category ``c`` in slot ``p`` receives (attention rollout through the
self-attention blocks, ``SequenceEncoder.behaviour_weights``).

Legend for shape suffixes: ``N`` samples, ``L`` sequence length, ``C`` categories, ``P``
positions, ``V`` vocabulary, ``D`` dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import stats

from hmoe.config import Config, ConfigError, config
from hmoe.schema import OOV_INDEX, PAD_INDEX

__all__ = [
    "CorrelationConfig",
    "CorrelationCounts",
    "EncoderKind",
    "attention_grid",
    "binary_mutual_information",
    "fidelity",
    "interval_buckets",
    "learned_correlation",
    "min_max",
    "mutual_information_from_counts",
    "relative_positions",
]

EncoderKind = Literal["tim", "din", "din_plus"]
ENCODER_KINDS: tuple[str, ...] = ("tim", "din", "din_plus")
FIRST_REAL_INDEX = max(PAD_INDEX, OOV_INDEX) + 1


@config
class CorrelationConfig(Config):
    """Which grid the correlation analysis draws.

    Args:
        target_category: the target category id ``c_t`` (encoded); ``None`` picks the most
            frequent target category of the analysed samples.
        num_categories: rows = the most frequent behaviour categories in those samples' histories.
        num_positions: columns = target-relative positions ``1..num_positions``.
        task: the label the mutual information is taken with; ``None`` = the schema's first task.
        sequence: the sequence feature; ``None`` = the first one that carries a category.
        missing_count: the count that replaces an empty cell of a 2x2 table (TIN's code: 1e-5).
    """

    target_category: int | None = None
    num_categories: int = 10
    num_positions: int = 10
    task: str | None = None
    sequence: str | None = None
    missing_count: float = 1e-5

    def __post_init__(self) -> None:
        if self.num_categories < 1 or self.num_positions < 1:
            raise ConfigError(
                f"num_categories and num_positions must be >= 1, got "
                f"{self.num_categories}, {self.num_positions}"
            )
        if self.missing_count <= 0.0:
            raise ConfigError(f"missing_count must be > 0, got {self.missing_count}")
        if self.target_category is not None and self.target_category < FIRST_REAL_INDEX:
            raise ConfigError(
                f"target_category {self.target_category} is padding/OOV; real ids start at "
                f"{FIRST_REAL_INDEX}"
            )


def mutual_information_from_counts(
    x_pos: np.ndarray, x_neg: np.ndarray, total_pos: float, total_neg: float, missing: float
) -> np.ndarray:
    """``I(X; Y)`` in bits, element-wise, from the counts ``#(X=1,Y=1)``, ``#(X=1,Y=0)``,
    ``#(Y=1)`` and ``#(Y=0)``.

    Every empty cell of the 2x2 table counts ``missing`` (keeps the logarithms finite).
    """
    x_pos = np.asarray(x_pos, dtype=np.float64)
    x_neg = np.asarray(x_neg, dtype=np.float64)
    if np.any(x_pos > total_pos) or np.any(x_neg > total_neg):
        raise ValueError("a cell count exceeds its label total")
    cells = np.stack([x_pos, x_neg, total_pos - x_pos, total_neg - x_neg])  # (x,y): 11 10 01 00
    cells = np.where(cells > 0, cells, missing)
    joint = cells / cells.sum(axis=0, keepdims=True)
    p_x1 = joint[0] + joint[1]
    p_y1 = joint[0] + joint[2]
    marginal = np.stack(
        [p_x1 * p_y1, p_x1 * (1 - p_y1), (1 - p_x1) * p_y1, (1 - p_x1) * (1 - p_y1)]
    )
    return np.clip((joint * np.log2(joint / marginal)).sum(axis=0), 0.0, None)


def binary_mutual_information(x: np.ndarray, y: np.ndarray, missing: float) -> float:
    """``I(X; Y)`` in bits of two binary sample vectors of equal length."""
    x = np.asarray(x, dtype=bool)
    y = np.asarray(y, dtype=bool)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d of equal length, got {x.shape}, {y.shape}")
    return float(
        mutual_information_from_counts(
            np.sum(x & y), np.sum(x & ~y), float(y.sum()), float((~y).sum()), missing
        )
    )


def relative_positions(lengths_N: np.ndarray, seq_len: int) -> np.ndarray:
    """Target-relative position of every history slot, ``[N, L]``: histories are oldest first
    with padding after the last real behaviour, so index ``i`` is position ``length - i``
    (newest = 1); padding slots get 0."""
    lengths_N = np.asarray(lengths_N).astype(np.int64)
    if lengths_N.ndim != 1:
        raise ValueError(f"expected lengths [N], got {lengths_N.shape}")
    if np.any(lengths_N < 0) or np.any(lengths_N > seq_len):
        raise ValueError(f"a history length is negative or longer than the sequence ({seq_len})")
    positions_NL = lengths_N[:, None] - np.arange(seq_len)[None, :]
    return np.clip(positions_NL, 0, None)


def interval_buckets(
    time_delta_NL: np.ndarray, lengths_N: np.ndarray, num_buckets: int, unit_seconds: float
) -> np.ndarray:
    """TIM's log time-interval slot of every behaviour, ``[N, L]``:
    ``min(num_buckets, floor(log2(1 + dt / unit)) + 1)`` (slot 0 is the target, as in the
    model's temporal table); padding slots get 0."""
    delta = np.clip(np.nan_to_num(np.asarray(time_delta_NL, dtype=np.float64)), 0.0, None)
    slots_NL = np.floor(np.log2(1.0 + delta / unit_seconds)).astype(np.int64) + 1
    real_NL = relative_positions(lengths_N, delta.shape[1]) > 0
    return np.where(real_NL, np.minimum(slots_NL, num_buckets), 0)


@dataclass
class CorrelationCounts:
    """Streaming 2x2 counts for every (category, temporal slot) cell, for one target category.

    A slot is a target-relative position (one behaviour per slot) or a time-interval bucket
    (any number): ``X_{c,s}`` = "the history has a behaviour of category ``c`` in slot ``s``".
    ``add`` takes any number of batches (all samples; those whose target category differs are
    ignored); ``mutual_information`` and ``top_categories`` read the totals.
    """

    target_category: int
    num_slots: int
    x_pos: dict[int, np.ndarray] = field(default_factory=dict)  # category -> [P]
    x_neg: dict[int, np.ndarray] = field(default_factory=dict)
    history_frequency: dict[int, int] = field(default_factory=dict)
    total_pos: int = 0
    total_neg: int = 0

    def add(
        self,
        categories_NL: np.ndarray,
        slots_NL: np.ndarray,
        target_categories_N: np.ndarray,
        labels_N: np.ndarray,
    ) -> None:
        """Count one batch: behaviour categories and slots ``[N, L]`` (slot 0 = padding; slots
        beyond ``num_slots`` are outside the grid), target categories and labels ``[N]``."""
        categories_NL, slots_NL = np.asarray(categories_NL), np.asarray(slots_NL)
        if categories_NL.shape != slots_NL.shape or categories_NL.ndim != 2:
            raise ValueError(f"categories {categories_NL.shape} and slots {slots_NL.shape}")
        keep = np.asarray(target_categories_N) == self.target_category
        categories_NL, slots_NL = categories_NL[keep], slots_NL[keep]
        positive_N = np.asarray(labels_N)[keep] > 0.5
        self.total_pos += int(positive_N.sum())
        self.total_neg += int((~positive_N).sum())
        real_NL = (slots_NL > 0) & (categories_NL != PAD_INDEX)
        ids, counts = np.unique(categories_NL[real_NL], return_counts=True)
        for cat, count in zip(ids.tolist(), counts.tolist(), strict=True):
            self.history_frequency[cat] = self.history_frequency.get(cat, 0) + count
        rows, cols = np.nonzero(real_NL & (slots_NL <= self.num_slots))
        cats, slots = categories_NL[rows, cols].astype(np.int64), slots_NL[rows, cols] - 1
        width = int(cats.max()) + 1 if cats.size else 1
        # one count per (sample, category, slot), however many behaviours share the slot
        cells = np.unique((rows * width + cats) * self.num_slots + slots)
        sample, cell = cells // (width * self.num_slots), cells % (width * self.num_slots)
        for flag, store in ((True, self.x_pos), (False, self.x_neg)):
            chosen = cell[positive_N[sample] == flag]
            for cat in np.unique(chosen // self.num_slots).tolist():
                hits = np.bincount(
                    chosen[chosen // self.num_slots == cat] % self.num_slots,
                    minlength=self.num_slots,
                )
                store[cat] = store.get(cat, 0) + hits

    def top_categories(self, count: int) -> list[int]:
        """The ``count`` most frequent real (not padding/OOV) categories in the histories."""
        real = [c for c in self.history_frequency if c >= FIRST_REAL_INDEX]
        return sorted(real, key=lambda c: (-self.history_frequency[c], c))[:count]

    def mutual_information(self, categories: Sequence[int], missing: float) -> np.ndarray:
        """``I(X_{c,s}; Y)`` in bits, ``[C, P]`` in the order of ``categories``."""
        if self.total_pos + self.total_neg == 0:
            raise ValueError(f"no sample has target category {self.target_category}")
        zeros = np.zeros(self.num_slots, dtype=np.int64)
        x_pos_CP = np.stack([self.x_pos.get(c, zeros) for c in categories])
        x_neg_CP = np.stack([self.x_neg.get(c, zeros) for c in categories])
        return mutual_information_from_counts(
            x_pos_CP, x_neg_CP, float(self.total_pos), float(self.total_neg), missing
        )


def learned_correlation(
    category_table_VD: np.ndarray,
    position_table_PD: np.ndarray | None,
    *,
    kind: EncoderKind,
    target_category: int,
    categories: Sequence[int],
    num_positions: int,
) -> np.ndarray:
    """``exp(z) * r`` per (category, position), ``[C, P]``, up to one positive factor.

    ``position_table_PD[p]`` is the temporal embedding of relative position ``p`` (row 0 = the
    target); TIM needs it, DIN and DIN+ ignore it. The factor ``exp(-max z)`` keeps the
    exponent finite; it changes neither the ranks nor the min-max-normalised heatmap.
    """
    if kind not in ENCODER_KINDS:
        raise ValueError(f"unknown encoder kind {kind!r}; valid: {list(ENCODER_KINDS)}")
    table = np.asarray(category_table_VD, dtype=np.float64)
    dim = table.shape[1]
    behaviour_CD = table[list(categories)]
    target_D = table[target_category]
    if kind == "tim":
        if position_table_PD is None or len(position_table_PD) <= num_positions:
            raise ValueError(f"TIM needs a temporal table with > {num_positions} rows")
        positions = np.asarray(position_table_PD, dtype=np.float64)
        if positions.shape[1] != dim:
            raise ValueError(f"temporal dim {positions.shape[1]} != category dim {dim}")
        behaviour_CPD = behaviour_CD[:, None, :] + positions[None, 1 : num_positions + 1, :]
        target_D = target_D + positions[0]
    else:
        behaviour_CPD = np.repeat(behaviour_CD[:, None, :], num_positions, axis=1)
    logit_CP = (behaviour_CPD * target_D).sum(axis=-1) / np.sqrt(dim)
    if kind == "din":
        norm_CP = np.linalg.norm(behaviour_CPD, axis=-1)
    else:
        norm_CP = np.linalg.norm(behaviour_CPD * target_D, axis=-1)
    return np.exp(logit_CP - logit_CP.max()) * norm_CP


def min_max(grid: np.ndarray) -> np.ndarray:
    """Rescale to ``[0, 1]``; a constant grid maps to zeros."""
    grid = np.asarray(grid, dtype=np.float64)
    span = grid.max() - grid.min()
    return (grid - grid.min()) / span if span > 0 else np.zeros_like(grid)


def fidelity(learned: np.ndarray, truth: np.ndarray) -> float:
    """Spearman rank correlation of two grids over all cells; 0 when either grid is constant
    (a constant grid ranks nothing, so it carries no agreement)."""
    learned = np.asarray(learned, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=np.float64).ravel()
    if learned.shape != truth.shape:
        raise ValueError(f"grids differ in size: {learned.shape} vs {truth.shape}")
    if np.ptp(learned) == 0 or np.ptp(truth) == 0:
        return 0.0
    return float(stats.spearmanr(learned, truth).statistic)


def attention_grid(
    weights_NL: np.ndarray,
    categories_NL: np.ndarray,
    slots_NL: np.ndarray,
    *,
    categories: Sequence[int],
    num_slots: int,
) -> np.ndarray:
    """Mean weight of the behaviours of each (category, slot) cell, ``[C, P]``.

    ``weights_NL``: each behaviour's share of the pooled interest; ``slots_NL``: its slot
    (0 = padding, beyond ``num_slots`` = outside the grid). A cell no behaviour falls in is 0
    (no weight observed).
    """
    weights_NL = np.asarray(weights_NL, dtype=np.float64)
    categories_NL, slots_NL = np.asarray(categories_NL), np.asarray(slots_NL)
    if not weights_NL.shape == categories_NL.shape == slots_NL.shape or weights_NL.ndim != 2:
        raise ValueError(
            f"weights {weights_NL.shape}, categories {categories_NL.shape} and slots "
            f"{slots_NL.shape} must be one [N, L] shape"
        )
    ids = np.asarray(list(categories), dtype=np.int64)
    if np.any(categories_NL < 0) or np.any(ids < 0):
        raise ValueError("category ids must be >= 0")
    row_of_V = np.full(max(int(categories_NL.max(initial=0)), int(ids.max(initial=0))) + 1, -1)
    row_of_V[ids] = np.arange(len(ids))
    rows_NL = row_of_V[categories_NL.astype(np.int64)]
    inside = (rows_NL >= 0) & (slots_NL >= 1) & (slots_NL <= num_slots)
    cells = rows_NL[inside] * num_slots + (slots_NL[inside] - 1)
    size = len(categories) * num_slots
    total = np.bincount(cells, weights=weights_NL[inside], minlength=size)
    count = np.bincount(cells, minlength=size)
    mean = np.divide(total, count, out=np.zeros(size), where=count > 0)
    return mean.reshape(len(categories), num_slots)
