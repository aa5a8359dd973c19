"""Similarity encoding (paper_spec §2.3, [RECON]): the cosine of two pre-trained embeddings is a
numeric feature, encoded by MNSE by default.

The cosine on ``[low, high]`` is mapped linearly onto ``num_levels`` equal-width integer levels.
``kind="mnse"`` encodes the level with MNSE over ``bases`` (``hmoe.models.mnse``: nearby
similarities share their high-order digits' embeddings, so the encoding keeps the order of the
scores); ``kind="bucket"`` gives every level its own learned embedding (a bucket table; the
former default was 20 buckets: ``num_levels: 20``).

Used for a ``SimilarityFeature`` (one token) and, inside a sequence, as the per-behaviour side
embedding of the behaviour's cosine to the target (added like TIM's temporal encoding).

Legend for shape suffixes: ``B`` batch (any leading shape), ``D`` dim.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from hmoe.config import Config, ConfigError, config
from hmoe.models.embeddings import init_embedding_
from hmoe.models.mnse import NumericEncoder, NumericEncoderConfig
from hmoe.schema import NumericFeature

__all__ = ["SimilarityEncoder", "SimilarityEncoderConfig"]

MISSING_SIMILARITY = 0.0  # a NaN cosine (an embedding was missing) is encoded as no similarity


@config
class SimilarityEncoderConfig(Config):
    """How a similarity on ``[low, high]`` (values outside are clipped) becomes a token.

    ``num_levels`` equal-width levels; ``kind="mnse"`` (default) encodes a level with MNSE over
    ``bases`` (``common_width`` pads every base to the widest base's digit count),
    ``kind="bucket"`` looks it up in a table of one learned embedding per level.
    """

    kind: Literal["mnse", "bucket"] = "mnse"
    num_levels: int = 1024
    bases: tuple[int, ...] = (2, 3)
    common_width: bool = False
    low: float = -1.0  # the lowest similarity (level 0)
    high: float = 1.0  # the highest similarity (last level)

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ConfigError(f"need low < high, got [{self.low}, {self.high}]")
        # the numeric encoder's checks of num_levels and bases, with this config's key names
        self.numeric_config()

    def numeric_config(self) -> NumericEncoderConfig:
        """The MNSE numeric encoding this config describes (``kind="mnse"``)."""
        return NumericEncoderConfig(
            kind="mnse",
            mapping="scaled",
            num_levels=self.num_levels,
            bases=self.bases,
            common_width=self.common_width,
        )


class SimilarityEncoder(nn.Module):
    """Encoded similarity ``[...]`` float -> ``[..., D]`` (MNSE or a bucket table).

    Args:
        dim: embedding dimension ``D``.
        config: the encoding, its resolution and the range.
        init_std: standard deviation of the normal init of the tables.

    Example:
        >>> enc = SimilarityEncoder(4, SimilarityEncoderConfig(), init_std=0.01)
        >>> enc(torch.tensor([-1.0, 0.3, 1.0])).shape, enc.level(torch.tensor([1.0])).item()
        (torch.Size([3, 4]), 1023)
        >>> table = SimilarityEncoderConfig(kind="bucket", num_levels=20)
        >>> SimilarityEncoder(4, table, init_std=0.01).level(torch.tensor([1.0])).item()
        19
    """

    def __init__(self, dim: int, config: SimilarityEncoderConfig, init_std: float) -> None:
        super().__init__()
        self.kind = config.kind
        self.low = config.low
        self.high = config.high
        self.num_levels = config.num_levels
        self.encoder: nn.Module
        if config.kind == "mnse":
            feature = NumericFeature(name="similarity", min_value=config.low, max_value=config.high)
            self.encoder = NumericEncoder(feature, dim, config.numeric_config(), init_std)
        else:
            self.encoder = nn.Embedding(config.num_levels, dim)
            init_embedding_(self.encoder.weight, init_std, padding_row=None)

    def level(self, similarity: torch.Tensor) -> torch.Tensor:
        """The equal-width level in ``[0, num_levels)``; NaN gets the level of 0 similarity."""
        unit = (self._values(similarity) - self.low) / (self.high - self.low)
        return torch.floor(unit * self.num_levels).clamp(0, self.num_levels - 1).long()

    def forward(self, similarity: torch.Tensor) -> torch.Tensor:
        if self.kind == "mnse":
            return self.encoder(self._values(similarity))
        return self.encoder(self.level(similarity))

    def token_table(self) -> torch.Tensor:
        """The token of every level, ``[num_levels, D]``."""
        if self.kind == "mnse":
            return self.encoder.token_table()
        return self.encoder.weight

    @staticmethod
    def _values(similarity: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(similarity.float(), nan=MISSING_SIMILARITY)
