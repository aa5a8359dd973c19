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
    "binary_mutual_information",
    "fidelity",
    "learned_correlation",
    "min_max",
    "mutual_information_from_counts",
    "position_categories",
]

EncoderKind = Literal["tim", "din", "din_plus"]
ENCODER_KINDS: tuple[str, ...] = ("tim", "din", "din_plus")
_FIRST_REAL_INDEX = max(PAD_INDEX, OOV_INDEX) + 1


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
        if self.target_category is not None and self.target_category < _FIRST_REAL_INDEX:
            raise ConfigError(
                f"target_category {self.target_category} is padding/OOV; real ids start at "
                f"{_FIRST_REAL_INDEX}"
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


def position_categories(
    categories_NL: np.ndarray, lengths_N: np.ndarray, num_positions: int
) -> np.ndarray:
    """The category at target-relative positions ``1..P`` of each history, ``[N, P]``.

    Histories are oldest first with padding after the last real behaviour, so position ``p`` is
    index ``length - p``; positions beyond a history's length hold ``PAD_INDEX``.
    """
    categories_NL = np.asarray(categories_NL)
    lengths_N = np.asarray(lengths_N).astype(np.int64)
    if categories_NL.ndim != 2 or lengths_N.shape != categories_NL.shape[:1]:
        raise ValueError(
            f"expected categories [N, L] and lengths [N], got {categories_NL.shape}, "
            f"{lengths_N.shape}"
        )
    if np.any(lengths_N < 0) or np.any(lengths_N > categories_NL.shape[1]):
        raise ValueError("a history length is negative or longer than the sequence")
    index_NP = lengths_N[:, None] - np.arange(1, num_positions + 1)[None, :]
    valid_NP = index_NP >= 0
    gathered = np.take_along_axis(categories_NL, np.clip(index_NP, 0, None), axis=1)
    return np.where(valid_NP, gathered, PAD_INDEX)


@dataclass
class CorrelationCounts:
    """Streaming 2x2 counts for every (category, position) cell, for one target category.

    ``add`` takes any number of batches (all samples; those whose target category differs are
    ignored); ``mutual_information`` and ``top_categories`` read the totals.
    """

    target_category: int
    num_positions: int
    x_pos: dict[int, np.ndarray] = field(default_factory=dict)  # category -> [P]
    x_neg: dict[int, np.ndarray] = field(default_factory=dict)
    history_frequency: dict[int, int] = field(default_factory=dict)
    total_pos: int = 0
    total_neg: int = 0

    def add(
        self,
        categories_NL: np.ndarray,
        lengths_N: np.ndarray,
        target_categories_N: np.ndarray,
        labels_N: np.ndarray,
    ) -> None:
        keep = np.asarray(target_categories_N) == self.target_category
        categories_NL = np.asarray(categories_NL)[keep]
        lengths_N = np.asarray(lengths_N)[keep]
        positive_N = np.asarray(labels_N)[keep] > 0.5
        self.total_pos += int(positive_N.sum())
        self.total_neg += int((~positive_N).sum())
        filled_NL = np.arange(categories_NL.shape[1])[None, :] < lengths_N[:, None]
        ids, counts = np.unique(categories_NL[filled_NL], return_counts=True)
        for cat, count in zip(ids.tolist(), counts.tolist(), strict=True):
            self.history_frequency[cat] = self.history_frequency.get(cat, 0) + count
        at_NP = position_categories(categories_NL, lengths_N, self.num_positions)
        for cat in np.unique(at_NP).tolist():
            hit_NP = at_NP == cat
            pos = (hit_NP & positive_N[:, None]).sum(axis=0)
            neg = (hit_NP & ~positive_N[:, None]).sum(axis=0)
            self.x_pos[cat] = self.x_pos.get(cat, 0) + pos
            self.x_neg[cat] = self.x_neg.get(cat, 0) + neg

    def top_categories(self, count: int) -> list[int]:
        """The ``count`` most frequent real (not padding/OOV) categories in the histories."""
        real = [c for c in self.history_frequency if c >= _FIRST_REAL_INDEX]
        return sorted(real, key=lambda c: (-self.history_frequency[c], c))[:count]

    def mutual_information(self, categories: Sequence[int], missing: float) -> np.ndarray:
        """``I(X_{c,p}; Y)`` in bits, ``[C, P]`` in the order of ``categories``."""
        if self.total_pos + self.total_neg == 0:
            raise ValueError(f"no sample has target category {self.target_category}")
        zeros = np.zeros(self.num_positions, dtype=np.int64)
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
