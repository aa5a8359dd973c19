from __future__ import annotations

import pytest
import torch

from hmoe.config import ConfigError, apply_overrides
from hmoe.models.combine import CombineConfig, MixtureCombiner
from hmoe.models.common import MLPConfig

REFERENCE_GATE_SUM = 1.486073  # torch.manual_seed(0), CPU float32; see test_seeded_reference_value


def _outputs(num: int, batch: int = 4, dim: int = 3) -> list[torch.Tensor]:
    return [torch.randn(batch, dim, requires_grad=True) for _ in range(num)]


def test_mean_and_sum() -> None:
    outs = _outputs(3)
    stacked = torch.stack(outs, dim=1)
    mean = MixtureCombiner(CombineConfig(method="mean"), (3, 3, 3))
    torch.testing.assert_close(mean(outs)[:, 0], stacked.mean(dim=1))
    total = MixtureCombiner(CombineConfig(method="sum"), (3, 3, 3))
    torch.testing.assert_close(total(outs)[:, 0], stacked.sum(dim=1))
    assert sum(p.numel() for p in total.parameters()) == 0


def test_learnable_sum_weights_start_at_plain_sum_and_learn() -> None:
    outs = _outputs(2)
    comb = MixtureCombiner(CombineConfig(method="sum", learnable_sum_weights=True), (3, 3))
    mixed = comb(outs)
    torch.testing.assert_close(mixed[:, 0], outs[0] + outs[1])
    mixed.sum().backward()
    assert comb.sum_weights_KE.grad is not None and comb.sum_weights_KE.grad.abs().sum() > 0


def test_single_expert_passes_through() -> None:
    (out,) = _outputs(1)
    for method in ("mean", "sum", "gate"):
        comb = MixtureCombiner(CombineConfig(method=method), (3,), gate_input_dims=(5,))
        torch.testing.assert_close(comb([out], [torch.randn(4, 5)])[:, 0], out)


def test_gate_weights_are_a_softmax_and_mix_the_outputs() -> None:
    torch.manual_seed(1)
    outs = _outputs(3)
    gate_in = torch.randn(4, 5)
    cfg = CombineConfig(gate_mlp=MLPConfig(hidden_dims=(4,)))
    comb = MixtureCombiner(cfg, (3, 3, 3), num_gates=2, gate_input_dims=(5,))
    weights = comb.gate_weights([gate_in])
    assert weights.shape == (4, 2, 3)
    torch.testing.assert_close(weights.sum(dim=2), torch.ones(4, 2))
    expected = torch.softmax(comb.gates[1](gate_in), dim=1)
    torch.testing.assert_close(weights[:, 1], expected)
    mixed = comb(outs, [gate_in])
    manual = sum(weights[:, 1, e : e + 1] * outs[e] for e in range(3))
    torch.testing.assert_close(mixed[:, 1], manual)


def test_one_gate_input_per_gate() -> None:
    comb = MixtureCombiner(CombineConfig(), (3, 3), num_gates=2, gate_input_dims=(5, 7))
    out = comb(_outputs(2), [torch.randn(4, 5), torch.randn(4, 7)])
    assert out.shape == (4, 2, 3)
    with pytest.raises(ValueError, match="gate inputs"):
        comb(_outputs(2), [torch.randn(4, 5), torch.randn(4, 7), torch.randn(4, 7)])


def test_expert_inputs_gate_uses_each_experts_own_vector() -> None:
    torch.manual_seed(2)
    cfg = CombineConfig(gate_source="expert_inputs")
    comb = MixtureCombiner(cfg, (3, 3), num_gates=2, gate_input_dims=(6, 8))
    gate_ins = [torch.randn(4, 6), torch.randn(4, 8)]
    logits = torch.stack([comb.gates[0](gate_ins[0]), comb.gates[1](gate_ins[1])], dim=2)
    torch.testing.assert_close(comb.gate_weights(gate_ins), torch.softmax(logits, dim=2))
    with pytest.raises(ValueError, match="one per expert"):
        MixtureCombiner(cfg, (3, 3), gate_input_dims=(6,))


def test_allowed_mask_zeroes_excluded_experts() -> None:
    torch.manual_seed(3)
    allowed = [[True, True, False], [False, False, True]]
    for source, dims in (("vector", (5,)), ("expert_inputs", (5, 5, 5))):
        cfg = CombineConfig(gate_source=source)
        comb = MixtureCombiner(cfg, (3, 3, 3), num_gates=2, gate_input_dims=dims, allowed=allowed)
        gate_ins = [torch.randn(4, 5) for _ in dims]
        weights = comb.gate_weights(gate_ins)
        assert torch.equal(weights[:, 0, 2], torch.zeros(4))
        torch.testing.assert_close(weights[:, 1], torch.tensor([0.0, 0.0, 1.0]).expand(4, 3))
    mean = MixtureCombiner(CombineConfig(method="mean"), (3, 3, 3), num_gates=2, allowed=allowed)
    torch.testing.assert_close(mean.gate_weights()[0, 0], torch.tensor([0.5, 0.5, 0.0]))
    with pytest.raises(ValueError, match="allowed expert"):
        MixtureCombiner(CombineConfig(), (3, 3), allowed=[[False, False]], gate_input_dims=(5,))
    with pytest.raises(ValueError, match="allowed must be"):
        MixtureCombiner(CombineConfig(), (3, 3), allowed=[[True]], gate_input_dims=(5,))


def test_detached_experts_get_no_gradient_from_that_gate_and_same_forward() -> None:
    """STEM's AFTB: task 0's loss must not reach expert 1 (task 1's specific expert)."""
    torch.manual_seed(4)
    detached = [[False, True, False], [True, False, False]]
    kwargs = {"num_gates": 2, "gate_input_dims": (5,)}
    torch.manual_seed(5)
    cut = MixtureCombiner(CombineConfig(), (3, 3, 3), detached=detached, **kwargs)
    torch.manual_seed(5)
    plain = MixtureCombiner(CombineConfig(), (3, 3, 3), **kwargs)
    outs, gate_in = _outputs(3), torch.randn(4, 5)
    mixed = cut(outs, [gate_in])
    torch.testing.assert_close(mixed, plain(outs, [gate_in]))
    mixed[:, 0].square().sum().backward()
    assert torch.equal(outs[1].grad, torch.zeros_like(outs[1]))
    assert outs[0].grad.abs().sum() > 0 and outs[2].grad.abs().sum() > 0
    gate_grad = cut.gates[0][1].weight.grad
    assert gate_grad is not None and gate_grad.abs().sum() > 0  # the gate still learns


class _Wrapped(torch.nn.Module):
    """Positional tensors in, so ``torch.export`` can bind them."""

    def __init__(self, comb: MixtureCombiner) -> None:
        super().__init__()
        self.comb = comb

    def forward(self, a, b, c, g):
        return self.comb([a, b, c], [g])


def test_masked_and_detached_gates_export_and_match_eager() -> None:
    """No branch or boolean-mask index on a tensor's values in forward: torch.export traces it
    with a dynamic batch dim (STEM's masks: a single-expert gate and a detached expert)."""
    torch.manual_seed(7)
    allowed = [[True, True, True], [False, False, True]]
    detached = [[False, True, False], [False, False, False]]
    comb = MixtureCombiner(
        CombineConfig(), (3, 3, 3), num_gates=2, gate_input_dims=(5,), allowed=allowed,
        detached=detached,
    )  # fmt: skip
    args = (*_outputs(3, batch=4), torch.randn(4, 5))
    batch = torch.export.Dim("batch")
    program = torch.export.export(_Wrapped(comb), args, dynamic_shapes=[{0: batch}] * 4)
    other = (*_outputs(3, batch=7), torch.randn(7, 5))
    for inputs in (args, other):
        torch.testing.assert_close(program.module()(*inputs), comb(inputs[:3], [inputs[3]]))


def test_projection_for_different_widths() -> None:
    outs = [torch.randn(4, 3), torch.randn(4, 5)]
    with pytest.raises(ValueError, match="output_dim"):
        MixtureCombiner(CombineConfig(method="mean"), (3, 5))
    comb = MixtureCombiner(CombineConfig(method="mean", output_dim=6), (3, 5))
    assert comb.output_dim == 6
    expected = 0.5 * (comb.projections[0](outs[0]) + comb.projections[1](outs[1]))
    torch.testing.assert_close(comb(outs)[:, 0], expected)
    with pytest.raises(ConfigError, match="output_dim"):
        CombineConfig(output_dim=0)


@pytest.mark.parametrize("method", ["mean", "sum", "gate"])
@pytest.mark.parametrize("source", ["vector", "expert_inputs"])
def test_every_parameter_gets_a_finite_gradient(method: str, source: str) -> None:
    torch.manual_seed(6)
    cfg = CombineConfig(
        method=method,
        learnable_sum_weights=True,
        gate_source=source,
        gate_mlp=MLPConfig(hidden_dims=(4,)),
        output_dim=2,
    )
    dims = (5,) if source == "vector" else (5, 5)
    comb = MixtureCombiner(cfg, (3, 4), num_gates=2, gate_input_dims=dims)
    comb(
        [torch.randn(4, 3), torch.randn(4, 4)], [torch.randn(4, 5) for _ in dims]
    ).square().sum().backward()
    for name, param in comb.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_seeded_reference_value() -> None:
    torch.manual_seed(0)
    comb = MixtureCombiner(CombineConfig(), (3, 3), num_gates=2, gate_input_dims=(4,))
    gate_in = torch.linspace(-1, 1, 8).view(2, 4)
    assert comb.gate_weights([gate_in])[:, :, 0].sum().item() == pytest.approx(
        REFERENCE_GATE_SUM, abs=1e-5
    )


def test_every_numeric_knob_has_an_effect() -> None:
    base = CombineConfig(gate_mlp=MLPConfig(hidden_dims=(4,)), output_dim=3)

    def count(cfg: CombineConfig) -> int:
        comb = MixtureCombiner(cfg, (3, 3), gate_input_dims=(5,))
        return sum(p.numel() for p in comb.parameters())

    assert count(apply_overrides(base, {"output_dim": 4})) != count(base)
    assert count(apply_overrides(base, {"gate_mlp.hidden_dims": [6]})) != count(base)
    torch.manual_seed(7)
    comb = MixtureCombiner(
        apply_overrides(base, {"gate_mlp.dropout": 0.5}), (3, 3), gate_input_dims=(5,)
    )
    gate_in = torch.randn(16, 5)
    torch.manual_seed(8)
    first = comb.gate_weights([gate_in])
    assert not torch.equal(first, comb.gate_weights([gate_in]))  # dropout active in train mode


def test_fixed_weights_follow_the_outputs_dtype() -> None:
    outs = [torch.randn(2, 3, dtype=torch.float64) for _ in range(2)]
    mixed = MixtureCombiner(CombineConfig(method="mean"), (3, 3))(outs)
    assert mixed.dtype == torch.float64
