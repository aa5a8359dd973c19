"""Id embedding tables: single- and multi-valued categorical fields, padding index 0 is zero.

Legend for shape suffixes: ``B`` batch, ``M`` multi-value length, ``L`` sequence, ``D`` dim.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from hmoe.schema import PAD_INDEX

__all__ = [
    "CPU_TABLE_OPTIMIZERS",
    "EMBEDDING_BACKENDS",
    "TABLE_OPTIMIZERS",
    "EmbeddingBackend",
    "FieldEmbedding",
    "FusedTableSettings",
    "Pooling",
    "TableOptimizer",
    "init_embedding_",
]

Pooling = Literal["mean", "sum"]
POOLINGS: tuple[str, ...] = ("mean", "sum")
EmbeddingBackend = Literal["torch", "torchrec"]
EMBEDDING_BACKENDS: tuple[str, ...] = ("torch", "torchrec")
# the fused table optimizers of TorchRec's FusedEmbeddingBagCollection (FBGEMM kernels); the
# CPU build of FBGEMM runs all but adam, CUDA all of them
TableOptimizer = Literal["rowwise_adagrad", "sgd", "adagrad", "adam"]
TABLE_OPTIMIZERS: tuple[str, ...] = ("rowwise_adagrad", "sgd", "adagrad", "adam")
CPU_TABLE_OPTIMIZERS: tuple[str, ...] = ("rowwise_adagrad", "sgd", "adagrad")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FusedTableSettings:
    """How the ``torchrec`` backend's id tables are trained (from ``model.embedding.table_*``).

    ``optimizer`` runs fused into the backward on the rows a batch touches, with learning rate
    ``lr`` and ``eps``; ``l2`` adds ``l2 * |w_r|^2`` per touched row ``r`` and step (a coupled
    weight decay ``2 * l2``). ``use_category``: sequences add their category embedding (the
    encoder's ``sequence.use_category``).
    """

    optimizer: TableOptimizer = "rowwise_adagrad"
    lr: float = 0.01
    l2: float = 0.0
    eps: float = 1e-8
    use_category: bool = True


def init_embedding_(weight: torch.Tensor, init_std: float, padding_row: int | None) -> None:
    """Normal(0, ``init_std``) init in place; the padding row (if any) is set to zero."""
    with torch.no_grad():
        nn.init.normal_(weight, mean=0.0, std=init_std)
        if padding_row is not None:
            weight[padding_row].zero_()


class FieldEmbedding(nn.Module):
    """One categorical field's table: ``[B]`` ids give ``[B, D]``, ``[B, M]`` ids are pooled.

    Row 0 is padding: it is zero at init and never receives a gradient, so padded slots of a
    multi-valued field add nothing. Mean pooling divides by the number of non-padding values
    (an all-padding row gives the zero vector, never NaN).

    Args:
        vocab_size: rows of the table (including padding 0 and OOV 1).
        dim: embedding dimension ``D``.
        pooling: ``"mean"`` or ``"sum"`` over the non-padding values of a multi-valued field.
        init_std: standard deviation of the normal init.

    Example:
        >>> emb = FieldEmbedding(10, 4, pooling="mean", init_std=0.01)
        >>> emb(torch.tensor([2, 0])).shape, emb(torch.tensor([[2, 3, 0]])).shape
        (torch.Size([2, 4]), torch.Size([1, 4]))
    """

    def __init__(self, vocab_size: int, dim: int, pooling: Pooling, init_std: float) -> None:
        super().__init__()
        if vocab_size < 2 or dim < 1:
            raise ValueError(f"need vocab_size >= 2 and dim >= 1, got {vocab_size}, {dim}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {list(POOLINGS)}")
        self.table = nn.Embedding(vocab_size, dim, padding_idx=PAD_INDEX)
        init_embedding_(self.table.weight, init_std, PAD_INDEX)
        self.pooling = pooling
        self.vocab_size = vocab_size
        self.dim = dim

    def token_table(self) -> torch.Tensor:
        """The token of every id, ``[V, D]`` (the table itself; row 0 = padding)."""
        return self.table.weight

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Per-id embeddings without pooling: ``[...]`` ids give ``[..., D]``."""
        if ids.dtype != torch.long:
            raise ValueError(f"ids must be int64, got {ids.dtype}")
        return self.table(ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B]`` -> ``[B, D]``; ``[B, M]`` (multi-valued, 0 = padding) -> pooled ``[B, D]``."""
        if ids.dim() == 1:
            return self.lookup(ids)
        if ids.dim() != 2:
            raise ValueError(f"expected ids of shape [B] or [B, M], got {tuple(ids.shape)}")
        values_BMD = self.lookup(ids)
        summed_BD = values_BMD.sum(dim=1)  # padding rows are zero
        if self.pooling == "sum":
            return summed_BD
        count_B1 = (ids != PAD_INDEX).sum(dim=1, keepdim=True).clamp(min=1)
        return summed_BD / count_B1.to(summed_BD.dtype)
