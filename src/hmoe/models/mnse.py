"""Numeric features: a value-to-integer mapping, then MNSE or one bucket embedding per level.

MNSE (Multiple Numeral Systems Encoding, paper_spec §2.2): write the integer level ``v`` in every
base ``b`` with ``n_b`` digits (least-significant digit = position 0); each (position, digit)
has its own embedding; sum within a base, concatenate across bases. Levels sharing high-order
digits share embeddings, which keeps the ordinal prior (51 is nearer 50 than 60).

Output dimension (spec: ``|bases| * d``): the field's token must be ``D``-dim like every other
token, so ``D`` is split over the bases as evenly as possible (earlier bases take the remainder;
``D=16``, bases (2, 3) -> 8 + 8) and the concatenation is exactly ``D``. No projection is added,
so a level's token is a pure function of its digits.

Legend for shape suffixes: ``B`` batch (any leading shape), ``N`` digit positions, ``D`` dim.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from hmoe.config import Config, ConfigError, config
from hmoe.models.embeddings import init_embedding_
from hmoe.schema import NumericFeature

__all__ = [
    "MNSE",
    "NumericEncoder",
    "NumericEncoderConfig",
    "NumericMapping",
    "digits",
    "num_digits",
    "split_dim",
]

Mapping = Literal["auto", "integer", "scaled", "quantile"]


@config
class NumericEncoderConfig(Config):
    """How a raw numeric value becomes a ``D``-dim token.

    ``mapping`` turns the value into an integer level in ``[0, max_level]``:
    ``integer`` rounds the value as is (shifted so the schema's ``min_value`` is >= 0 when it is
    negative; ``max_level = ceil(max_value)``); ``scaled`` maps ``[min_value, max_value]`` linearly
    onto ``num_levels`` equal-width levels; ``quantile`` gives the bucket among the schema's
    train-fitted ``quantiles`` (``len(quantiles) + 1`` levels); ``auto`` picks ``integer`` for
    integer features whose range fits in ``num_levels`` levels, else ``quantile`` when quantiles
    were fitted, else ``scaled``. Values outside the range are clipped, NaN maps to level 0.

    ``kind="mnse"`` encodes the level with MNSE over ``bases`` (``common_width`` pads every base
    to the widest base's digit count, as the paper's slide example does);
    ``kind="bucket"`` looks the level up in one plain table.
    """

    kind: Literal["mnse", "bucket"] = "mnse"
    mapping: Mapping = "auto"
    num_levels: int = 1024
    bases: tuple[int, ...] = (2, 3)
    common_width: bool = False

    def __post_init__(self) -> None:
        if self.num_levels < 2:
            raise ConfigError(f"num_levels must be >= 2, got {self.num_levels}")
        if not self.bases or any(b < 2 for b in self.bases):
            raise ConfigError(f"bases must be non-empty integers >= 2, got {list(self.bases)}")
        if len(set(self.bases)) != len(self.bases):
            raise ConfigError(f"bases must be distinct, got {list(self.bases)}")


def num_digits(max_level: int, base: int) -> int:
    """The smallest ``n >= 1`` with ``base ** n > max_level`` (exact integer arithmetic)."""
    n, capacity = 1, base
    while capacity <= max_level:
        n, capacity = n + 1, capacity * base
    return n


def digits(levels: torch.Tensor, base: int, width: int) -> torch.Tensor:
    """Base-``base`` digits of non-negative int64 ``levels``: ``[...]`` -> ``[..., width]``,
    least-significant digit first (``digits(51, 2, 6) == [1, 1, 0, 0, 1, 1]``)."""
    powers_N = base ** torch.arange(width, device=levels.device, dtype=torch.long)
    return torch.div(levels.unsqueeze(-1), powers_N, rounding_mode="floor") % base


def split_dim(dim: int, parts: int) -> tuple[int, ...]:
    """``dim`` split into ``parts`` near-equal positive sizes, the remainder on the first ones."""
    if dim < parts:
        raise ValueError(f"dimension {dim} cannot be split over {parts} MNSE bases")
    size, rest = divmod(dim, parts)
    return tuple(size + (1 if i < rest else 0) for i in range(parts))


class NumericMapping(nn.Module):
    """Raw float values -> integer levels in ``[0, max_level]`` (see ``NumericEncoderConfig``).

    Args:
        feature: the schema's numeric feature (range, quantiles, integer flag).
        config: the mapping mode and ``num_levels``.

    Example:
        >>> f = NumericFeature(name="age", min_value=0.0, max_value=9.0, is_integer=True)
        >>> NumericMapping(f, NumericEncoderConfig())(torch.tensor([3.0, 12.0])).tolist()
        [3, 9]
    """

    def __init__(self, feature: NumericFeature, config: NumericEncoderConfig) -> None:
        super().__init__()
        self.mode = _resolve_mode(feature, config)
        self.low = feature.min_value
        self.high = feature.max_value
        self.offset = math.floor(min(feature.min_value, 0.0))
        self.num_levels = config.num_levels
        self.register_buffer(
            "quantiles", torch.tensor(feature.quantiles, dtype=torch.float32), persistent=False
        )
        if self.mode == "integer":
            self.max_level = max(0, math.ceil(feature.max_value) - self.offset)
        elif self.mode == "quantile":
            self.max_level = len(feature.quantiles)
        else:
            self.max_level = config.num_levels - 1

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        values = torch.nan_to_num(values.float(), nan=self.low, posinf=self.high, neginf=self.low)
        if self.mode == "integer":
            levels = torch.round(values) - self.offset
        elif self.mode == "quantile":
            levels = torch.bucketize(values, self.quantiles, right=True).float()
        else:
            span = self.high - self.low
            unit = (values - self.low) / span if span > 0 else torch.zeros_like(values)
            levels = torch.floor(unit * self.num_levels)
        return levels.clamp(0, self.max_level).long()


def _resolve_mode(feature: NumericFeature, config: NumericEncoderConfig) -> str:
    mode = config.mapping
    if mode == "quantile" and not feature.quantiles:
        raise ValueError(f"{feature.name}: mapping 'quantile' needs train-fitted quantiles")
    if mode == "quantile" and list(feature.quantiles) != sorted(feature.quantiles):
        raise ValueError(f"{feature.name}: quantiles must be sorted")
    if feature.max_value < feature.min_value:
        raise ValueError(f"{feature.name}: max_value < min_value")
    if mode != "auto":
        return mode
    span = math.ceil(feature.max_value) - math.floor(min(feature.min_value, 0.0))
    if feature.is_integer and span < config.num_levels:
        return "integer"
    return "quantile" if feature.quantiles else "scaled"


class MNSE(nn.Module):
    """Multiple Numeral Systems Encoding of integer levels ``[B]`` -> ``[B, D]``.

    Args:
        max_level: the largest level (sets the digit count per base, larger levels are clipped).
        dim: output dimension ``D``, split over the bases by ``split_dim``.
        bases: the numeral systems, e.g. ``(2, 3)``.
        common_width: pad every base to the widest base's digit count.
        init_std: standard deviation of the normal init of the digit tables.

    Example:
        >>> mnse = MNSE(max_level=100, dim=8, bases=(2, 3), common_width=False, init_std=0.01)
        >>> mnse(torch.tensor([51, 50])).shape, mnse.widths
        (torch.Size([2, 8]), (7, 5))
    """

    def __init__(
        self, max_level: int, dim: int, bases: tuple[int, ...], common_width: bool, init_std: float
    ) -> None:
        super().__init__()
        widths = tuple(num_digits(max_level, b) for b in bases)
        if common_width:
            widths = (max(widths),) * len(widths)
        self.bases, self.widths, self.max_level = tuple(bases), widths, max_level
        self.dims = split_dim(dim, len(bases))
        # one table per base: row ``position * base + digit``
        self.tables = nn.ModuleList(
            nn.Embedding(n * b, d) for b, n, d in zip(bases, widths, self.dims, strict=True)
        )
        for table in self.tables:
            init_embedding_(table.weight, init_std, padding_row=None)
        # every (base, position) of all bases at once; rows index the block-diagonal table
        per_position = [
            (base, base**j, offset + j * base)
            for base, width, offset in zip(bases, widths, self._row_offsets(), strict=True)
            for j in range(width)
        ]
        base_N, power_N, first_row_N = (
            torch.tensor(col) for col in zip(*per_position, strict=True)
        )
        self.register_buffer("base_N", base_N, persistent=False)
        self.register_buffer("power_N", power_N, persistent=False)
        self.register_buffer("first_row_N", first_row_N, persistent=False)
        self.num_rows = sum(n * b for b, n in zip(bases, widths, strict=True))

    def _row_offsets(self) -> list[int]:
        sizes = [n * b for b, n in zip(self.bases, self.widths, strict=True)]
        return [sum(sizes[:i]) for i in range(len(sizes))]

    def forward(self, levels: torch.Tensor) -> torch.Tensor:
        levels = levels.long().clamp(0, self.max_level).unsqueeze(-1)
        digits_BN = torch.div(levels, self.power_N, rounding_mode="floor") % self.base_N
        rows_BN = self.first_row_N + digits_BN
        # sum of the digit embeddings as a one-hot matmul: its backward is one small GEMM
        # instead of a scatter-add over B * N duplicate rows
        weight = torch.block_diag(*(table.weight for table in self.tables))
        one_hot = weight.new_zeros(*rows_BN.shape[:-1], self.num_rows)
        return one_hot.scatter_(-1, rows_BN, 1.0) @ weight


class NumericEncoder(nn.Module):
    """One numeric field: raw float ``[B]`` -> ``[B, D]`` (mapping, then MNSE or a bucket table).

    Args:
        feature: the schema's numeric feature.
        dim: output dimension ``D``.
        config: mapping and encoding choices.
        init_std: standard deviation of the normal init of the tables.

    Example:
        >>> f = NumericFeature(name="price", min_value=0.0, max_value=50.0)
        >>> NumericEncoder(f, 8, NumericEncoderConfig(), init_std=0.01)(torch.rand(3)).shape
        torch.Size([3, 8])
    """

    def __init__(
        self, feature: NumericFeature, dim: int, config: NumericEncoderConfig, init_std: float
    ) -> None:
        super().__init__()
        self.mapping = NumericMapping(feature, config)
        max_level = self.mapping.max_level
        self.encoder: nn.Module
        if config.kind == "mnse":
            self.encoder = MNSE(max_level, dim, config.bases, config.common_width, init_std)
        else:
            self.encoder = nn.Embedding(max_level + 1, dim)
            init_embedding_(self.encoder.weight, init_std, padding_row=None)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.mapping(values))

    def token_table(self) -> torch.Tensor:
        """The token of every level, ``[max_level + 1, D]`` (for the collapse analysis)."""
        levels = torch.arange(self.mapping.max_level + 1, device=self.mapping.quantiles.device)
        return self.encoder(levels)
