"""The DCN V2 cross network (Wang et al. 2021), full rank or low rank.

Layer l maps ``x_l`` to ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l`` over ``x0 = flatten(tokens)``.
Full rank, ``W_l`` is ``[X, X]``; with ``rank = r`` it is the paper's factorisation
``W_l = U_l V_l^T`` (``U_l, V_l`` of ``[X, r]``), which cuts the layer's cost from ``X^2`` to
``2 X r`` multiply-adds per sample. At the Criteo peer size (``X = 390``, 3 layers) the full-rank
cross is about half of the ``dcnv2`` training step (docs/performance.md), so ``r = 64`` saves a
third of it. The paper's mixture of low-rank experts (DCN-Mix: gated ``U_i g(C_i V_i^T x)``) is
not implemented.

Legend: ``B`` batch, ``F`` fields, ``D`` token dim, ``X`` = ``F * D``, ``R`` rank.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from hmoe.config import Config, ConfigError, config
from hmoe.models.common import MLPConfig

__all__ = ["CrossNetworkV2", "DCNV2Config", "FlatCross", "LowRankLinear"]


@config
class DCNV2Config(Config):
    """DCN V2 cross network ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l``, then the expert's MLP.

    ``stacked`` feeds the cross output to the MLP (ME repo); ``parallel`` concatenates the cross
    output with the MLP of the flat tokens (the ranking-loss repo's backbone). ``rank``: None is
    the full-rank ``W_l``; an integer ``r`` uses ``W_l = U_l V_l^T`` with ``r`` columns (DCN V2's
    low-rank cross; ``r >= X`` only costs more than full rank, which the model does not check).
    """

    mlp: MLPConfig = MLPConfig()
    num_layers: int = 3  # cross layers l = 1..num_layers
    # where the cross sits: stacked before the MLP or parallel to it
    structure: Literal["stacked", "parallel"] = "stacked"
    rank: int | None = None

    def __post_init__(self) -> None:
        if self.num_layers < 0:
            raise ConfigError(f"num_layers must be >= 0, got {self.num_layers}")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"rank must be >= 1 or null (full rank), got {self.rank}")


class LowRankLinear(nn.Module):
    """``x -> U (V^T x) + b``: a linear map of rank ``<= R`` from ``X`` to ``X``.

    ``V`` is ``down`` (``[R, X]``, no bias) and ``U`` is ``up`` (``[X, R]`` with the bias ``b``),
    each Xavier-initialised like the full-rank layer's weight; ``b`` starts at zero.
    """

    def __init__(self, input_dim: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(input_dim, rank, bias=False)
        self.up = nn.Linear(rank, input_dim)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.xavier_uniform_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x_BX: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x_BX))


class CrossNetworkV2(nn.Module):
    """DCN V2 cross network over ``x0 = flatten(tokens)``: ``[B, X] -> [B, X]``.

    Args:
        input_dim: ``X = F * D``.
        num_layers: the depth ``L`` (0 is the identity).
        rank: None for full-rank ``W_l``; ``r`` for ``W_l = U_l V_l^T`` (``LowRankLinear``).

    Example:
        >>> CrossNetworkV2(12, 2)(torch.randn(4, 12)).shape
        torch.Size([4, 12])
        >>> CrossNetworkV2(12, 2, rank=3)(torch.randn(4, 12)).shape
        torch.Size([4, 12])
    """

    def __init__(self, input_dim: int, num_layers: int, rank: int | None = None) -> None:
        super().__init__()
        if rank is not None and rank < 1:
            raise ValueError(f"rank must be >= 1 or None, got {rank}")
        self.rank = rank
        self.layers = nn.ModuleList(
            nn.Linear(input_dim, input_dim) if rank is None else LowRankLinear(input_dim, rank)
            for _ in range(num_layers)
        )
        if rank is None:
            # all layers built first, then re-initialised: the seeded RNG order of earlier runs
            for layer in self.layers:
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.output_dim = input_dim

    def forward(self, x0_BX: torch.Tensor) -> torch.Tensor:
        x_BX = x0_BX
        for layer in self.layers:
            x_BX = x0_BX * layer(x_BX) + x_BX
        return x_BX


class FlatCross(nn.Module):
    """Cross network reading the tokens, so every interaction has the same signature."""

    def __init__(
        self, num_fields: int, embedding_dim: int, num_layers: int, rank: int | None = None
    ) -> None:
        super().__init__()
        self.cross = CrossNetworkV2(num_fields * embedding_dim, num_layers, rank)
        self.output_dim = self.cross.output_dim

    def forward(self, tokens_BFD: torch.Tensor) -> torch.Tensor:
        return self.cross(tokens_BFD.flatten(1))
