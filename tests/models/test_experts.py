from __future__ import annotations

import pytest
import torch

from hmoe.config import ConfigError, apply_overrides
from hmoe.models.common import MLPConfig
from hmoe.models.experts import (
    EXPERT_KINDS,
    CrossNetworkV2,
    DCNV2Config,
    ExpertsConfig,
    FMInteraction,
    GwPFMConfig,
    GwPFMInteraction,
    InnerProductInteraction,
    build_expert,
    expand_counts,
    group_indices,
    required_embedding_dim,
)

GROUPS = ("user", "item", "user", "context", "item")
SMALL_MLP = MLPConfig(hidden_dims=(6, 3))
# sum of each expert's output for the seeded setup of test_seeded_reference_values
REFERENCE_SUMS = {  # torch.manual_seed(7), CPU float32
    "gwpfm": 1.277033,
    "ipnn": 0.076566,
    "dcnv2": 1.167869,
    "mlp": 0.628652,
    "fm": 1.183117,
}


def _small_experts() -> ExpertsConfig:
    return ExpertsConfig(
        counts={kind: 1 for kind in EXPERT_KINDS},
        gwpfm=GwPFMConfig(mlp=SMALL_MLP, use_linear=True),
        ipnn={"mlp": SMALL_MLP, "include_flat": True},
        dcnv2={"mlp": SMALL_MLP, "num_layers": 2},
        mlp={"mlp": SMALL_MLP},
        fm={"mlp": SMALL_MLP},
    )


def _tokens(kind: str, batch: int, groups: tuple[str, ...], base_dim: int = 2) -> torch.Tensor:
    dim = required_embedding_dim(kind, base_dim, groups)
    return torch.randn(batch, len(groups), dim)


def gwpfm_loop(tokens_BFD: torch.Tensor, groups: tuple[int, ...], r: torch.Tensor) -> torch.Tensor:
    """Slow reference: the double loop over i < j of the paper's formula."""
    num_groups = max(groups) + 1
    batch, num_fields, dim = tokens_BFD.shape
    parts = tokens_BFD.view(batch, num_fields, num_groups, dim // num_groups)
    phi = torch.zeros(batch, dim // num_groups)
    for i in range(num_fields):
        for j in range(i + 1, num_fields):
            gi, gj = groups[i], groups[j]
            phi = phi + r[gi, gj] * parts[:, i, gj] * parts[:, j, gi]
    return phi


def test_gwpfm_equals_double_loop_reference() -> None:
    torch.manual_seed(0)
    gw = GwPFMInteraction(GROUPS, 3 * 4, GwPFMConfig())
    with torch.no_grad():
        gw.pair_weight.copy_(torch.randn_like(gw.pair_weight))
    tokens = torch.randn(7, 5, 12)
    expected = gwpfm_loop(tokens, group_indices(GROUPS), gw.group_pair_weights())
    torch.testing.assert_close(gw(tokens), expected)


def test_gwpfm_with_one_group_is_fwfm_with_one_weight_times_fm() -> None:
    torch.manual_seed(1)
    gw = GwPFMInteraction(("a",) * 4, 5, GwPFMConfig(pair_weight_init=0.3))
    tokens = torch.randn(3, 4, 5)
    torch.testing.assert_close(gw(tokens), 0.3 * FMInteraction(5)(tokens))
    assert gw.group_pair_weights().shape == (1, 1)


def test_gwpfm_pair_weights_symmetric_and_only_present_pairs() -> None:
    gw = GwPFMInteraction(("u", "i", "i"), 4, GwPFMConfig(pair_weight_init=1.0))
    # pairs present: (u, i) and (i, i); (u, u) never occurs
    assert gw.pair_weight.numel() == 2
    r = gw.group_pair_weights()
    torch.testing.assert_close(r, torch.tensor([[0.0, 1.0], [1.0, 1.0]]))


def test_gwpfm_linear_term_and_regularization() -> None:
    cfg = GwPFMConfig(use_linear=True, pair_weight_l2=0.5, pair_weight_init=2.0)
    gw = GwPFMInteraction(("u", "i"), 4, cfg)
    with torch.no_grad():
        gw.linear_FD.fill_(1.0)
    tokens = torch.randn(3, 2, 4)
    out = gw(tokens)
    assert out.shape == (3, 3)
    torch.testing.assert_close(out[:, 2], tokens.sum(dim=(1, 2)))
    torch.testing.assert_close(gw.regularization_loss(), torch.tensor(0.5 * 4.0))


def test_gwpfm_rejects_bad_dims() -> None:
    with pytest.raises(ValueError, match="multiple"):
        GwPFMInteraction(("u", "i"), 5, GwPFMConfig())
    with pytest.raises(ValueError, match=">= 2 fields"):
        GwPFMInteraction(("u",), 4, GwPFMConfig())


def test_cross_network_equals_step_by_step() -> None:
    torch.manual_seed(2)
    cross = CrossNetworkV2(6, 3)
    with torch.no_grad():
        for layer in cross.layers:
            layer.bias.normal_()
    x0 = torch.randn(4, 6)
    x = x0
    for layer in cross.layers:
        x = x0 * (x @ layer.weight.T + layer.bias) + x
    torch.testing.assert_close(cross(x0), x)
    assert torch.equal(CrossNetworkV2(6, 1).layers[0].bias, torch.zeros(6))


def test_cross_network_depth_zero_is_identity() -> None:
    x = torch.randn(2, 5)
    assert torch.equal(CrossNetworkV2(5, 0)(x), x)


def test_inner_products_equal_loop() -> None:
    torch.manual_seed(3)
    tokens = torch.randn(3, 4, 5)
    ipnn = InnerProductInteraction(4, 5, include_flat=True)
    expected = [tokens[:, i] @ tokens[:, j].T for i in range(4) for j in range(i + 1, 4)]
    products = torch.stack([e.diagonal() for e in expected], dim=1)
    out = ipnn(tokens)
    assert ipnn.output_dim == 6 + 20 == out.shape[1]
    torch.testing.assert_close(out[:, :6], products)
    torch.testing.assert_close(out[:, 6:], tokens.flatten(1))


def test_fm_equals_pairwise_sum() -> None:
    tokens = torch.randn(3, 4, 5)
    pairs = sum(tokens[:, i] * tokens[:, j] for i in range(4) for j in range(i + 1, 4))
    torch.testing.assert_close(FMInteraction(5)(tokens), pairs)


@pytest.mark.parametrize("kind", EXPERT_KINDS)
@pytest.mark.parametrize("groups", [GROUPS, ("a", "b"), ("a", "a", "a")], ids=["G3", "F2", "G1"])
@pytest.mark.parametrize("extra_dim", [0, 3])
def test_expert_shapes_and_finite_gradients(
    kind: str, groups: tuple[str, ...], extra_dim: int
) -> None:
    torch.manual_seed(4)
    tokens = _tokens(kind, 4, groups).requires_grad_()
    expert = build_expert(
        kind, _small_experts(), len(groups), tokens.shape[2], groups, extra_dim=extra_dim
    )
    extra = torch.randn(4, extra_dim) if extra_dim else None
    out = expert(tokens, extra)
    assert out.shape == (4, expert.output_dim)
    out.square().sum().backward()
    assert torch.isfinite(tokens.grad).all() and tokens.grad.abs().sum() > 0
    for name, param in expert.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        if name != "interaction.linear_FD":  # zero-initialised linear term: zero grad on w is ok
            assert param.grad.abs().sum() > 0, name


def test_parallel_dcn_concatenates_cross_and_deep() -> None:
    torch.manual_seed(5)
    cfg = DCNV2Config(mlp=SMALL_MLP, num_layers=2, structure="parallel")
    expert = build_expert("dcnv2", cfg, 3, 4, extra_dim=2)
    assert expert.output_dim == 12 + 3
    tokens, extra = torch.randn(5, 3, 4), torch.randn(5, 2)
    out = expert(tokens, extra)
    torch.testing.assert_close(out[:, :12], expert.interaction(tokens))
    torch.testing.assert_close(out[:, 12:], expert.mlp(torch.cat([tokens.flatten(1), extra], 1)))


def test_extra_input_is_concatenated_before_the_mlp() -> None:
    torch.manual_seed(6)
    expert = build_expert("fm", _small_experts(), 3, 4, extra_dim=2)
    tokens, extra = torch.randn(5, 3, 4), torch.randn(5, 2)
    expected = expert.mlp(torch.cat([FMInteraction(4)(tokens), extra], dim=1))
    torch.testing.assert_close(expert(tokens, extra), expected)
    with pytest.raises(ValueError, match="extra_dim=2"):
        expert(tokens)
    with pytest.raises(ValueError, match="extra_dim=0"):
        build_expert("fm", _small_experts(), 3, 4)(tokens, extra)


def test_seeded_reference_values() -> None:
    sums = {}
    for kind in EXPERT_KINDS:
        torch.manual_seed(7)
        dim = required_embedding_dim(kind, 2, GROUPS)
        expert = build_expert(kind, _small_experts(), len(GROUPS), dim, GROUPS).eval()
        tokens = torch.linspace(-1, 1, 2 * len(GROUPS) * dim).view(2, len(GROUPS), dim)
        sums[kind] = expert(tokens).sum().item()
    assert sums == pytest.approx(REFERENCE_SUMS, abs=1e-5)


def test_counts_expand_in_kind_order() -> None:
    assert expand_counts({"mlp": 2, "gwpfm": 1, "fm": 0}) == ("gwpfm", "mlp", "mlp")
    assert expand_counts(ExpertsConfig().counts) == ("gwpfm", "ipnn", "dcnv2", "mlp")


def test_required_embedding_dim() -> None:
    assert required_embedding_dim("gwpfm", 4, GROUPS) == 12
    assert required_embedding_dim("gwpfm", 4, ("a",) * 3) == 4
    for kind in ("ipnn", "dcnv2", "mlp", "fm"):
        assert required_embedding_dim(kind, 4, GROUPS) == 4
    with pytest.raises(ConfigError, match="unknown expert kind"):
        required_embedding_dim("cin", 4, GROUPS)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"gwpfm": 0, "mlp": 0}, "no expert"),
        ({}, "no expert"),
        ({"mlp": -1, "fm": 2}, ">= 0"),
        ({"cin": 1}, r"counts: unknown key\(s\) \['cin'\]; valid keys: \['gwpfm'"),
    ],
)
def test_infeasible_mix_raises_with_reason(counts: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ExpertsConfig(counts=counts)
    with pytest.raises(ConfigError, match=message):
        apply_overrides(ExpertsConfig(), {"counts": counts})


def test_build_expert_rejects_mismatched_inputs() -> None:
    with pytest.raises(ConfigError, match="unknown expert kind"):
        build_expert("cin", ExpertsConfig(), 3, 4)
    with pytest.raises(ConfigError, match="GwPFMConfig"):
        build_expert("gwpfm", DCNV2Config(), 3, 4)
    with pytest.raises(ValueError, match="labels for 3 fields"):
        build_expert("gwpfm", ExpertsConfig(), 3, 4, ("a", "b"))
    with pytest.raises(ConfigError, match="num_layers"):
        DCNV2Config(num_layers=-1)


def test_every_numeric_knob_has_an_effect() -> None:
    base = _small_experts()
    tokens = torch.randn(8, len(GROUPS), 6)

    def run(cfg: ExpertsConfig, kind: str) -> tuple[int, torch.Tensor, torch.Tensor]:
        torch.manual_seed(8)
        dim = required_embedding_dim(kind, 2, GROUPS)
        expert = build_expert(kind, cfg, len(GROUPS), dim, GROUPS).train()
        out = expert(tokens[..., :dim])
        reg = getattr(expert.interaction, "regularization_loss", lambda: torch.zeros(()))()
        return sum(p.numel() for p in expert.parameters()), out, reg

    perturbations = {
        "gwpfm.pair_weight_init": ("gwpfm", 0.5),
        "gwpfm.pair_weight_l2": ("gwpfm", 0.1),
        "dcnv2.num_layers": ("dcnv2", 3),
        "dcnv2.rank": ("dcnv2", 2),
        "ipnn.mlp.dropout": ("ipnn", 0.5),
        "mlp.mlp.hidden_dims": ("mlp", [5]),
        "fm.mlp.hidden_dims": ("fm", [6, 4]),
    }
    for path, (kind, value) in perturbations.items():
        before = run(base, kind)
        after = run(apply_overrides(base, {path: value}), kind)
        changed = (
            before[0] != after[0]
            or before[1].shape != after[1].shape
            or not torch.equal(before[1], after[1])
            or not torch.equal(before[2], after[2])
        )
        assert changed, path
    assert len(expand_counts(apply_overrides(base, {"counts.mlp": 3}).counts)) == 7


@pytest.mark.parametrize("kind", EXPERT_KINDS)
def test_experts_read_a_feature_encoders_tokens(kind: str) -> None:
    """The contract with ``FeatureEncoder``: tokens ``[B, F, D]`` and ``field_groups``."""
    from hmoe.models.features import FeatureEncoder, FeatureEncoderConfig
    from hmoe.models.testing import random_batch, tiny_schema

    torch.manual_seed(9)
    schema = tiny_schema()
    probe = FeatureEncoder(FeatureEncoderConfig(), schema, embedding_dim=2)
    dim = required_embedding_dim(kind, 2, probe.field_groups)
    encoder = FeatureEncoder(FeatureEncoderConfig(), schema, embedding_dim=dim)
    expert = build_expert(kind, _small_experts(), encoder.num_fields, dim, encoder.field_groups)
    tokens = encoder(random_batch(schema, 4, torch.Generator().manual_seed(0)))
    out = expert(tokens)
    assert out.shape == (4, expert.output_dim)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)
