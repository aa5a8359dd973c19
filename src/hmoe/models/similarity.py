"""Similarity encoding (paper_spec §2.3, [RECON]): a cosine of pre-trained embeddings is
bucketised into equal-width buckets on ``[low, high]`` and each bucket has a learned embedding.

Used for a ``SimilarityFeature`` (one token) and, inside a sequence, as the per-behaviour side
embedding of the behaviour's cosine to the target (added like TIM's temporal encoding).

Legend for shape suffixes: ``B`` batch (any leading shape), ``D`` dim.
"""

from __future__ import annotations

import torch
from torch import nn

from hmoe.config import Config, ConfigError, config
from hmoe.models.embeddings import init_embedding_

__all__ = ["SimilarityEncoder", "SimilarityEncoderConfig"]


@config
class SimilarityEncoderConfig(Config):
    """Equal-width buckets of a similarity on ``[low, high]`` (values outside are clipped)."""

    num_buckets: int = 20
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.num_buckets < 2:
            raise ConfigError(f"num_buckets must be >= 2, got {self.num_buckets}")
        if not self.low < self.high:
            raise ConfigError(f"need low < high, got [{self.low}, {self.high}]")


class SimilarityEncoder(nn.Module):
    """Bucketised similarity ``[...]`` float -> ``[..., D]``.

    Args:
        dim: embedding dimension ``D``.
        config: bucket count and range.
        init_std: standard deviation of the normal init of the bucket table.

    Example:
        >>> enc = SimilarityEncoder(4, SimilarityEncoderConfig(), init_std=0.01)
        >>> enc(torch.tensor([-1.0, 0.3, 1.0])).shape, enc.bucket(torch.tensor([1.0])).item()
        (torch.Size([3, 4]), 19)
    """

    def __init__(self, dim: int, config: SimilarityEncoderConfig, init_std: float) -> None:
        super().__init__()
        self.table = nn.Embedding(config.num_buckets, dim)
        init_embedding_(self.table.weight, init_std, padding_row=None)
        self.num_buckets = config.num_buckets
        self.low = config.low
        self.high = config.high

    def bucket(self, similarity: torch.Tensor) -> torch.Tensor:
        """Bucket index in ``[0, num_buckets)``; NaN goes to the bucket of 0 similarity."""
        values = torch.nan_to_num(similarity.float(), nan=0.0)
        unit = (values - self.low) / (self.high - self.low)
        return torch.floor(unit * self.num_buckets).clamp(0, self.num_buckets - 1).long()

    def forward(self, similarity: torch.Tensor) -> torch.Tensor:
        return self.table(self.bucket(similarity))

    def token_table(self) -> torch.Tensor:
        """The token of every bucket, ``[num_buckets, D]``."""
        return self.table.weight
