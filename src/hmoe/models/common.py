"""Shared building blocks of the model zoo: the MLP every expert, tower and attention unit uses.

Legend for shape suffixes: ``B`` batch, ``F`` fields, ``D`` dim, ``L`` sequence, ``X`` any width.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from hmoe.config import Config, ConfigError, config

__all__ = ["ACTIVATIONS", "MLP", "Activation", "Dice", "Dropout", "MLPConfig", "make_activation"]

Activation = Literal["relu", "prelu", "gelu", "silu", "tanh", "sigmoid", "dice"]
ACTIVATIONS: tuple[str, ...] = ("relu", "prelu", "gelu", "silu", "tanh", "sigmoid", "dice")
DICE_EPS = 1e-8  # numerical floor of Dice's batch variance, as in the DIN paper's code


@config
class MLPConfig(Config):
    """A stack of ``Linear -> [BatchNorm] -> activation -> [Dropout]`` blocks.

    ``hidden_dims=()`` makes the MLP the identity (``output_dim == input_dim``), which lets a
    search switch a tower off without a separate flag.
    """

    hidden_dims: tuple[int, ...] = (64, 32)
    dropout: float = 0.0  # after each activation; 0 disables
    activation: Activation = "relu"  # after each Linear (and BatchNorm)
    use_batch_norm: bool = False  # BatchNorm1d between Linear and activation

    def __post_init__(self) -> None:
        if any(h < 1 for h in self.hidden_dims):
            raise ConfigError(f"hidden_dims must be positive, got {list(self.hidden_dims)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


class Dropout(nn.Module):
    """Inverted dropout, ``x * 1[U >= p] / (1 - p)`` with ``U ~ Uniform[0, 1)``: the same
    distribution as ``nn.Dropout``, drawn from a uniform mask because torch's CPU ``bernoulli_``
    kernel made forward + backward of a ``[4096, 400]`` activation about 1.6x slower (one thread;
    see docs/performance.md). The identity in eval mode and at ``p == 0``.

    Args:
        p: the probability of zeroing an element, in ``[0, 1)``.

    Example:
        >>> Dropout(0.5).eval()(torch.ones(2, 3)).tolist()
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x_BX: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x_BX
        # scaled in place: the mask is the one extra [B, X] tensor autograd keeps
        mask_BX = (torch.rand_like(x_BX) >= self.p).to(x_BX.dtype).mul_(1.0 / (1.0 - self.p))
        return x_BX * mask_BX

    def extra_repr(self) -> str:
        return f"p={self.p}"


def batch_norm_rows(norm: nn.BatchNorm1d, x_NX: torch.Tensor) -> torch.Tensor:
    """``norm`` over the rows of ``[N, X]``. One row has no batch statistics: a training batch
    of one (a split's last rows) is normalised with the running ones, as at inference, instead
    of raising."""
    if norm.training and x_NX.shape[0] == 1 and norm.running_mean is not None:
        return nn.functional.batch_norm(
            x_NX, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps
        )
    return norm(x_NX)


class Dice(nn.Module):
    """DIN's data-adaptive activation: ``p(x) * x + (1 - p(x)) * alpha * x``, ``p`` a batch-normed
    sigmoid. Works on any leading shape; the statistics are taken over all leading positions.

    Args:
        width: the size of the last dimension.

    Example:
        >>> Dice(8)(torch.randn(4, 8)).shape
        torch.Size([4, 8])
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(width, eps=DICE_EPS, affine=False)
        self.alpha = nn.Parameter(torch.zeros(width))

    def forward(self, x_BX: torch.Tensor) -> torch.Tensor:
        flat = x_BX.reshape(-1, x_BX.shape[-1])
        p = torch.sigmoid(batch_norm_rows(self.norm, flat)).reshape(x_BX.shape)
        return p * x_BX + (1.0 - p) * self.alpha * x_BX


def make_activation(name: str, width: int) -> nn.Module:
    """One activation module by name; ``width`` is used by the parametric ones (PReLU, Dice)."""
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return _PReLULastDim(width)
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU()
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "dice":
        return Dice(width)
    raise ConfigError(f"unknown activation {name!r}; valid: {list(ACTIVATIONS)}")


class _PReLULastDim(nn.Module):
    """PReLU with per-channel slopes on the last dim (nn.PReLU uses dim 1)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.prelu = nn.PReLU(width)

    def forward(self, x_BX: torch.Tensor) -> torch.Tensor:
        return self.prelu(x_BX.reshape(-1, x_BX.shape[-1])).reshape(x_BX.shape)


class _LastDimBatchNorm(nn.Module):
    """BatchNorm1d over the last dim for inputs with any number of leading dims."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(width)

    def forward(self, x_BX: torch.Tensor) -> torch.Tensor:
        return batch_norm_rows(self.norm, x_BX.reshape(-1, x_BX.shape[-1])).reshape(x_BX.shape)


class MLP(nn.Module):
    """A feed-forward stack over the last dimension (any leading shape, e.g. ``[B, X]`` or
    ``[B, L, X]``).

    Args:
        input_dim: width of the input's last dimension.
        config: the layer widths, activation, dropout and batch norm.

    Example:
        >>> mlp = MLP(16, MLPConfig(hidden_dims=(8, 4)))
        >>> mlp(torch.randn(2, 16)).shape, mlp.output_dim
        (torch.Size([2, 4]), 4)
    """

    def __init__(self, input_dim: int, config: MLPConfig) -> None:
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"MLP input_dim must be positive, got {input_dim}")
        layers: list[nn.Module] = []
        width = input_dim
        for hidden in config.hidden_dims:
            layers.append(nn.Linear(width, hidden))
            if config.use_batch_norm:
                layers.append(_LastDimBatchNorm(hidden))
            layers.append(make_activation(config.activation, hidden))
            if config.dropout > 0.0:
                layers.append(Dropout(config.dropout))
            width = hidden
        self.layers = nn.Sequential(*layers)
        self.input_dim = input_dim
        self.output_dim = width

    def forward(self, x_BX: torch.Tensor) -> torch.Tensor:
        return self.layers(x_BX)
