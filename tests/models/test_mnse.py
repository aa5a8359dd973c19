"""MNSE and the numeric value mappings: the spec's digit example, loop reference, mappings."""

from __future__ import annotations

import pytest
import torch

from hmoe.config import ConfigError
from hmoe.models.mnse import (
    MNSE,
    NumericEncoder,
    NumericEncoderConfig,
    NumericMapping,
    digits,
    num_digits,
    split_dim,
)
from hmoe.schema import NumericFeature


def _msb_first(levels: int, base: int, width: int) -> str:
    return "".join(str(d) for d in reversed(digits(torch.tensor(levels), base, width).tolist()))


def test_spec_example_51() -> None:
    assert _msb_first(51, 2, 6) == "110011"
    assert _msb_first(51, 3, 6) == "001220"
    mnse = MNSE(max_level=51, dim=4, bases=(2, 3), common_width=True, init_std=0.1)
    assert mnse.widths == (6, 6)  # the slide pads both bases to six digits
    binary, ternary = (t.weight for t in mnse.tables)
    expected_binary = sum(binary[j * 2 + d] for j, d in enumerate([1, 1, 0, 0, 1, 1]))
    expected_ternary = sum(ternary[j * 3 + d] for j, d in enumerate([0, 2, 2, 1, 0, 0]))
    expected = torch.cat([expected_binary, expected_ternary])
    torch.testing.assert_close(mnse(torch.tensor(51)), expected)


def test_num_digits() -> None:
    assert [num_digits(10**6, b) for b in (2, 3, 10)] == [20, 13, 7]  # spec §2.2
    assert num_digits(0, 2) == 1 and num_digits(1, 2) == 1 and num_digits(2, 2) == 2
    assert num_digits(80, 3) == 4 and num_digits(81, 3) == 5


def test_digits_round_trip() -> None:
    levels = torch.randint(0, 5000, (200,), generator=torch.Generator().manual_seed(1))
    for base in (2, 3, 7, 10):
        width = num_digits(4999, base)
        digit_BN = digits(levels, base, width)
        assert ((digit_BN >= 0) & (digit_BN < base)).all()
        powers = base ** torch.arange(width)
        assert torch.equal((digit_BN * powers).sum(-1), levels)


def _shared_tokens(a: int, b: int, bases: tuple[int, ...], max_level: int) -> int:
    shared = 0
    for base in bases:
        width = num_digits(max_level, base)
        shared += int(
            (digits(torch.tensor(a), base, width) == digits(torch.tensor(b), base, width)).sum()
        )
    return shared


def test_closer_numbers_share_more_digit_tokens() -> None:
    assert _shared_tokens(50, 51, (2, 3), 100) > _shared_tokens(51, 60, (2, 3), 100)


def _mnse(dim: int = 5, common_width: bool = False) -> MNSE:
    torch.manual_seed(0)
    return MNSE(max_level=100, dim=dim, bases=(2, 3), common_width=common_width, init_std=0.3)


def test_mnse_matches_loop_reference() -> None:
    mnse = _mnse()
    levels = torch.tensor([0, 1, 51, 60, 100, 250])  # 250 is clipped to 100
    out = mnse(levels)
    assert out.shape == (6, 5) and mnse.dims == (3, 2)
    for row, level in enumerate(levels.tolist()):
        level = min(level, 100)
        parts = []
        for base, width, table in zip(mnse.bases, mnse.widths, mnse.tables, strict=True):
            total = torch.zeros(table.weight.shape[1])
            for position in range(width):
                digit = (level // base**position) % base
                total = total + table.weight[position * base + digit]
            parts.append(total)
        torch.testing.assert_close(out[row], torch.cat(parts))


def test_widths_and_common_width() -> None:
    assert _mnse().widths == (7, 5)
    assert _mnse(common_width=True).widths == (7, 7)
    params = sum(p.numel() for p in _mnse().parameters())
    assert params == 7 * 2 * 3 + 5 * 3 * 2  # sum_b n_b * b * d_b


def test_split_dim() -> None:
    assert split_dim(16, 2) == (8, 8)
    assert split_dim(10, 3) == (4, 3, 3)
    with pytest.raises(ValueError, match="split"):
        split_dim(2, 3)


def test_mnse_seeded_reference_values() -> None:
    out = _mnse(dim=2)(torch.tensor([51]))
    expected = torch.tensor([[0.6100, 0.6605]])  # seed 0, std 0.3
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_mnse_gradients_are_finite_and_reach_every_table() -> None:
    mnse = _mnse()
    mnse(torch.arange(0, 101)).pow(2).sum().backward()
    for name, p in mnse.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def _feature(**kwargs) -> NumericFeature:
    defaults = {"name": "x", "min_value": 0.0, "max_value": 10.0}
    return NumericFeature(**(defaults | kwargs))


def test_integer_mapping_clips_and_shifts_negative_ranges() -> None:
    mapping = NumericMapping(_feature(is_integer=True), NumericEncoderConfig(mapping="integer"))
    assert mapping.mode == "integer" and mapping.max_level == 10
    values = torch.tensor([0.0, 3.4, 3.6, 10.0, 42.0, -5.0, float("nan")])
    assert mapping(values).tolist() == [0, 3, 4, 10, 10, 0, 0]
    shifted = NumericMapping(
        _feature(min_value=-3.0, max_value=4.0), NumericEncoderConfig(mapping="integer")
    )
    assert shifted.max_level == 7
    assert shifted(torch.tensor([-3.0, 0.0, 4.0])).tolist() == [0, 3, 7]


def test_scaled_mapping() -> None:
    config = NumericEncoderConfig(mapping="scaled", num_levels=4)
    mapping = NumericMapping(_feature(min_value=2.0, max_value=10.0), config)
    values = torch.tensor([2.0, 3.9, 4.0, 9.99, 10.0, 100.0, -1.0])
    assert mapping(values).tolist() == [0, 0, 1, 3, 3, 3, 0]
    constant = NumericMapping(_feature(min_value=5.0, max_value=5.0), config)
    assert constant(torch.tensor([5.0, 7.0])).tolist() == [0, 0]


def test_quantile_mapping() -> None:
    feature = _feature(quantiles=(1.0, 2.0, 5.0))
    mapping = NumericMapping(feature, NumericEncoderConfig(mapping="quantile"))
    assert mapping.max_level == 3
    values = torch.tensor([0.5, 1.0, 1.5, 2.0, 4.9, 5.0, 9.0])
    assert mapping(values).tolist() == [0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="quantiles"):
        NumericMapping(_feature(), NumericEncoderConfig(mapping="quantile"))


def test_auto_mapping_choice() -> None:
    config = NumericEncoderConfig(num_levels=100)
    assert NumericMapping(_feature(is_integer=True), config).mode == "integer"
    big = _feature(is_integer=True, max_value=1e6)
    assert NumericMapping(big, config).mode == "scaled"
    assert NumericMapping(_feature(max_value=1e6, quantiles=(1.0,)), config).mode == "quantile"
    assert NumericMapping(_feature(), config).mode == "scaled"  # float, no quantiles


@pytest.mark.parametrize("kind", ["mnse", "bucket"])
def test_numeric_encoder_shapes_and_token_table(kind: str) -> None:
    config = NumericEncoderConfig(kind=kind, mapping="scaled", num_levels=8)
    encoder = NumericEncoder(_feature(), 6, config, init_std=0.1)
    out = encoder(torch.tensor([[0.0, 5.0], [10.0, float("nan")]]))
    assert out.shape == (2, 2, 6) and torch.isfinite(out).all()
    table = encoder.token_table()
    assert table.shape == (8, 6)
    torch.testing.assert_close(encoder(torch.tensor([5.0])), table[4:5])


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="bases"):
        NumericEncoderConfig(bases=(1, 2))
    with pytest.raises(ConfigError, match="distinct"):
        NumericEncoderConfig(bases=(2, 2))
    with pytest.raises(ConfigError, match="num_levels"):
        NumericEncoderConfig(num_levels=1)
