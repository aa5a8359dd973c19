"""The DCN V2 cross network's low-rank option: slow loop reference, equivalence with the
full-rank layer at ``W = U V^T``, the config knob reaching the expert, gradients, export."""

from __future__ import annotations

import doctest

import pytest
import torch

from hmoe.config import ConfigError
from hmoe.models import cross
from hmoe.models.common import MLPConfig
from hmoe.models.cross import CrossNetworkV2, DCNV2Config, LowRankLinear
from hmoe.models.experts import build_expert

WIDTH, RANK, DEPTH, ROWS = 6, 2, 3, 4


def _loop_reference(net: CrossNetworkV2, x0: torch.Tensor) -> torch.Tensor:
    """Scalar loops: ``x_{l+1}[i] = x0[i] * (sum_r U[i, r] sum_j V[r, j] x_l[j] + b[i])
    + x_l[i]``."""
    out = torch.empty_like(x0)
    for b in range(x0.shape[0]):
        x = [float(v) for v in x0[b]]
        for layer in net.layers:
            u, v, bias = layer.up.weight, layer.down.weight, layer.up.bias
            low = [sum(float(v[r, j]) * x[j] for j in range(WIDTH)) for r in range(RANK)]
            mapped = [sum(float(u[i, r]) * low[r] for r in range(RANK)) for i in range(WIDTH)]
            x = [float(x0[b, i]) * (mapped[i] + float(bias[i])) + x[i] for i in range(WIDTH)]
        out[b] = torch.tensor(x)
    return out


def test_low_rank_cross_equals_a_slow_loop() -> None:
    torch.manual_seed(11)
    net = CrossNetworkV2(WIDTH, DEPTH, rank=RANK)
    with torch.no_grad():
        for layer in net.layers:
            layer.up.bias.normal_()
    x0 = torch.randn(ROWS, WIDTH)
    torch.testing.assert_close(net(x0), _loop_reference(net, x0))


def test_low_rank_equals_full_rank_with_the_product_weight() -> None:
    torch.manual_seed(12)
    low = CrossNetworkV2(WIDTH, DEPTH, rank=RANK)
    full = CrossNetworkV2(WIDTH, DEPTH)
    with torch.no_grad():
        for lr_layer, fr_layer in zip(low.layers, full.layers, strict=True):
            lr_layer.up.bias.normal_()
            fr_layer.weight.copy_(lr_layer.up.weight @ lr_layer.down.weight)
            fr_layer.bias.copy_(lr_layer.up.bias)
    x0 = torch.randn(ROWS, WIDTH)
    torch.testing.assert_close(low(x0), full(x0))
    assert torch.linalg.matrix_rank(full.layers[0].weight) == RANK


def test_parameter_count_and_init() -> None:
    low = CrossNetworkV2(WIDTH, DEPTH, rank=RANK)
    assert sum(p.numel() for p in low.parameters()) == DEPTH * (2 * WIDTH * RANK + WIDTH)
    full = CrossNetworkV2(WIDTH, DEPTH)
    assert sum(p.numel() for p in full.parameters()) == DEPTH * (WIDTH * WIDTH + WIDTH)
    assert torch.equal(low.layers[0].up.bias, torch.zeros(WIDTH))
    assert isinstance(low.layers[0], LowRankLinear) and low.rank == RANK


def test_rank_config_reaches_the_expert_and_every_parameter_learns() -> None:
    torch.manual_seed(13)
    mlp = MLPConfig(hidden_dims=(5,))
    tokens = torch.randn(ROWS, 3, 2)
    for structure in ("stacked", "parallel"):
        cfg = DCNV2Config(mlp=mlp, num_layers=2, structure=structure, rank=RANK)
        expert = build_expert("dcnv2", cfg, 3, 2)
        assert expert.interaction.cross.rank == RANK
        full = build_expert("dcnv2", DCNV2Config(mlp=mlp, num_layers=2, structure=structure), 3, 2)
        assert sum(p.numel() for p in expert.parameters()) != sum(
            p.numel() for p in full.parameters()
        )
        expert(tokens).square().sum().backward()
        for name, parameter in expert.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().sum() > 0, name


def test_rank_is_validated() -> None:
    with pytest.raises(ConfigError, match="rank"):
        DCNV2Config(rank=0)
    with pytest.raises(ValueError, match="rank"):
        CrossNetworkV2(WIDTH, 1, rank=0)
    assert DCNV2Config().rank is None  # full rank stays the default


def test_low_rank_cross_exports() -> None:
    net = CrossNetworkV2(WIDTH, DEPTH, rank=RANK).eval()
    x0 = torch.randn(ROWS, WIDTH)
    program = torch.export.export(net, (x0,), dynamic_shapes=[{0: torch.export.Dim("batch")}])
    other = torch.randn(ROWS + 3, WIDTH)
    torch.testing.assert_close(program.module()(other), net(other))


def test_docstring_examples_run() -> None:
    result = doctest.testmod(cross)
    assert result.attempted > 0 and result.failed == 0
