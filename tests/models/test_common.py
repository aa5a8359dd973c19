from __future__ import annotations

import pytest
import torch

from hmoe.config import ConfigError, apply_overrides
from hmoe.models.common import ACTIVATIONS, MLP, Dice, Dropout, MLPConfig, make_activation

REFERENCE_MLP_SUM = 0.9588494  # torch.manual_seed(0), CPU float32


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("shape", [(5, 6), (5, 3, 6), (1, 6)])
def test_mlp_shapes_any_leading_dims(shape: tuple[int, ...]) -> None:
    mlp = MLP(6, MLPConfig(hidden_dims=(7, 4)))
    out = mlp(torch.randn(*shape))
    assert out.shape == (*shape[:-1], 4)
    assert mlp.output_dim == 4


def test_mlp_without_hidden_layers_is_identity() -> None:
    mlp = MLP(6, MLPConfig(hidden_dims=()))
    x = torch.randn(3, 6)
    assert mlp.output_dim == 6
    assert torch.equal(mlp(x), x)
    assert _num_params(mlp) == 0


def test_mlp_matches_manual_layers() -> None:
    torch.manual_seed(0)
    mlp = MLP(4, MLPConfig(hidden_dims=(3, 2), activation="tanh"))
    x = torch.randn(5, 4)
    first, second = mlp.layers[0], mlp.layers[2]
    expected = torch.tanh(second(torch.tanh(first(x))))
    torch.testing.assert_close(mlp(x), expected)


def test_mlp_seeded_reference_value() -> None:
    torch.manual_seed(0)
    mlp = MLP(4, MLPConfig(hidden_dims=(3, 2)))
    x = torch.arange(8, dtype=torch.float32).view(2, 4) / 8
    assert mlp(x).sum().item() == pytest.approx(REFERENCE_MLP_SUM, abs=1e-5)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_with_batch_norm_and_dropout_gets_finite_gradients(
    activation: str,
) -> None:
    torch.manual_seed(1)
    mlp = MLP(6, MLPConfig(hidden_dims=(5, 3), activation=activation, use_batch_norm=True))
    mlp(torch.randn(8, 2, 6)).square().sum().backward()
    for name, param in mlp.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


def test_dice_matches_formula_in_training_mode() -> None:
    torch.manual_seed(2)
    dice = Dice(3)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.1, -0.5, 2.0]))
    x = torch.randn(10, 3)
    mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)
    p = torch.sigmoid((x - mean) / torch.sqrt(var + 1e-8))
    torch.testing.assert_close(dice(x), p * x + (1 - p) * dice.alpha * x)


def test_prelu_is_per_channel_on_last_dim() -> None:
    prelu = make_activation("prelu", 4)
    x = -torch.ones(2, 3, 4)
    assert prelu(x).shape == (2, 3, 4)
    assert sum(p.numel() for p in prelu.parameters()) == 4


def test_every_numeric_knob_has_an_effect() -> None:
    torch.manual_seed(3)
    base = MLPConfig(hidden_dims=(5, 3), dropout=0.0)
    x = torch.randn(16, 6)

    def run(cfg: MLPConfig) -> tuple[int, torch.Tensor]:
        torch.manual_seed(4)
        mlp = MLP(6, cfg).train()
        return _num_params(mlp), mlp(x)

    count, out = run(base)
    wider_count, _ = run(apply_overrides(base, {"hidden_dims": [6, 3]}))
    assert wider_count != count
    _, dropped = run(apply_overrides(base, {"dropout": 0.5}))
    assert not torch.equal(dropped, out)
    bn_count, _ = run(apply_overrides(base, {"use_batch_norm": True}))
    assert bn_count != count
    _, gelu = run(apply_overrides(base, {"activation": "gelu"}))
    assert not torch.equal(gelu, out)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"hidden_dims": [4, 0]}, "hidden_dims"),
        ({"activation": "swish"}, "activation"),
    ],
)
def test_invalid_mlp_config_raises(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(MLPConfig(), overrides)


def test_mlp_rejects_empty_input() -> None:
    with pytest.raises(ValueError, match="input_dim"):
        MLP(0, MLPConfig())


def test_dropout_keeps_one_minus_p_scaled_and_preserves_the_mean() -> None:
    torch.manual_seed(0)
    drop = Dropout(0.2)
    x = torch.ones(400, 500)
    y = drop(x)
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1.25))
    # 200k Bernoulli(0.8) draws: std of the mean is ~0.0009
    assert abs(kept.float().mean().item() - 0.8) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.007


def test_dropout_gradient_is_the_same_mask_and_eval_is_identity() -> None:
    torch.manual_seed(1)
    drop = Dropout(0.5)
    x = torch.randn(64, 32, requires_grad=True)
    y = drop(x)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * 2.0)
    drop.eval()
    assert drop(x) is x
    assert Dropout(0.0)(x) is x


def test_dropout_rejects_p_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="dropout p"):
        Dropout(1.0)


@pytest.mark.parametrize("activation", ["relu", "dice"])
def test_a_training_batch_of_one_row_uses_the_running_statistics(activation: str) -> None:
    # a split's last batch can hold one row: BatchNorm (and Dice's) then normalises as in eval
    mlp = MLP(4, MLPConfig(hidden_dims=(3,), activation=activation, use_batch_norm=True)).train()
    x_1X = torch.randn(1, 4)
    out = mlp(x_1X)
    out.sum().backward()
    torch.testing.assert_close(out, mlp.eval()(x_1X))
