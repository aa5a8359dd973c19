"""SimilarityEncoder: MNSE (default) and the bucket table: levels, clipping, NaN, reference
values, shapes, gradients, config errors."""

from __future__ import annotations

import pytest
import torch

from hmoe.config import ConfigError
from hmoe.models.similarity import SimilarityEncoder, SimilarityEncoderConfig

DIM = 4


def _encoder(**overrides: object) -> SimilarityEncoder:
    torch.manual_seed(0)
    return SimilarityEncoder(DIM, SimilarityEncoderConfig(**overrides), init_std=0.2)


def _buckets(num_levels: int = 20, low: float = -1.0, high: float = 1.0) -> SimilarityEncoder:
    return _encoder(kind="bucket", num_levels=num_levels, low=low, high=high)


def _slow_mnse(enc: SimilarityEncoder, value: float) -> torch.Tensor:
    """Independent reference: level by hand, digits by repeated division, one row per digit."""
    cfg = SimilarityEncoderConfig()
    level = min(max(int((value - cfg.low) / (cfg.high - cfg.low) * cfg.num_levels), 0), 1023)
    mnse = enc.encoder.encoder
    parts = []
    for base, width, table in zip(mnse.bases, mnse.widths, mnse.tables, strict=True):
        rest, token = level, torch.zeros(table.weight.shape[1])
        for position in range(width):
            token = token + table.weight[position * base + rest % base]
            rest //= base
        parts.append(token)
    return torch.cat(parts)


def test_default_is_mnse_over_1024_levels() -> None:
    enc = _encoder()
    assert enc.kind == "mnse" and enc.token_table().shape == (1024, DIM)
    values = torch.tensor([-1.0, -0.999, 0.0, 0.997, 1.0, 3.0, -7.0, float("nan")])
    assert enc.level(values).tolist() == [0, 0, 512, 1022, 1023, 1023, 0, 512]
    # 10 binary and 7 ternary digits, the dimension split 2 + 2
    assert enc.encoder.encoder.widths == (10, 7) and enc.encoder.encoder.dims == (2, 2)


def test_mnse_matches_the_slow_reference() -> None:
    enc = _encoder()
    values = [-1.0, -0.31, 0.0, 0.2, 0.9999, 2.0]
    out = enc(torch.tensor(values))
    expected = torch.stack([_slow_mnse(enc, v) for v in values])
    torch.testing.assert_close(out.detach(), expected.detach())
    torch.testing.assert_close(enc(torch.tensor([float("nan")])), enc(torch.tensor([0.0])))


def test_mnse_any_leading_shape_and_token_table() -> None:
    enc = _encoder()
    sim = torch.tensor([[0.3, -0.2, 0.0], [1.0, -1.0, 0.55]])
    out = enc(sim)
    assert out.shape == (2, 3, DIM)
    torch.testing.assert_close(out, enc.token_table()[enc.level(sim)])


def test_mnse_seeded_reference_values() -> None:
    out = _encoder()(torch.tensor([0.0]))
    expected = torch.tensor([[1.0676, 0.1088, 0.0176, -0.0143]])  # seed 0, std 0.2
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_mnse_gradients_finite_and_only_on_used_digits() -> None:
    enc = _encoder()
    enc(torch.tensor([0.0, float("nan")])).sum().backward()  # both level 512
    binary, ternary = enc.encoder.encoder.tables
    assert torch.isfinite(binary.weight.grad).all() and torch.isfinite(ternary.weight.grad).all()
    # 512 = 2 ** 9: digit 0 at binary positions 0..8, digit 1 at position 9 (rows 2 j + d)
    used = (binary.weight.grad.abs().sum(dim=1) > 0).nonzero().flatten().tolist()
    assert used == [0, 2, 4, 6, 8, 10, 12, 14, 16, 19]
    # 512 = 200222 in base 3 (least significant first: 2, 2, 2, 0, 0, 2, 0)
    used = (ternary.weight.grad.abs().sum(dim=1) > 0).nonzero().flatten().tolist()
    assert used == [2, 5, 8, 9, 12, 17, 18]


def test_bucket_edges_clipping_and_nan() -> None:
    enc = _buckets()
    values = torch.tensor([-1.0, -0.95, -0.8999, 0.0, 0.999, 1.0, 3.0, -7.0, float("nan")])
    assert enc.level(values).tolist() == [0, 0, 1, 10, 19, 19, 19, 0, 10]


def test_bucket_respects_custom_range() -> None:
    enc = _buckets(num_levels=4, low=0.0, high=1.0)
    assert enc.level(torch.tensor([0.0, 0.26, 0.5, 0.74, 0.99, -1.0])).tolist() == [
        0, 1, 2, 2, 3, 0,
    ]  # fmt: skip


def test_bucket_forward_is_table_lookup_with_any_leading_shape() -> None:
    enc = _buckets()
    sim = torch.tensor([[0.3, -0.2, 0.0], [1.0, -1.0, 0.55]])
    out = enc(sim)
    assert out.shape == (2, 3, DIM)
    torch.testing.assert_close(out, enc.token_table()[enc.level(sim)])


def test_bucket_seeded_reference_values() -> None:
    out = _buckets()(torch.tensor([0.0]))
    expected = torch.tensor([[-0.1245, -0.0927, 0.3844, -0.0805]])  # seed 0, std 0.2
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_bucket_gradients_finite_and_only_on_used_buckets() -> None:
    enc = _buckets()
    enc(torch.tensor([0.0, 0.01, float("nan"), 0.9])).sum().backward()
    grad = enc.encoder.weight.grad
    assert torch.isfinite(grad).all()
    used = grad.abs().sum(dim=1) > 0
    assert used.nonzero().flatten().tolist() == [10, 19]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"low": 1.0, "high": 1.0}, "low < high"),
        ({"num_levels": 1}, "num_levels"),
        ({"kind": "bucket", "num_levels": 1}, "num_levels"),
        ({"bases": (1, 3)}, "bases"),
        ({"bases": (2, 2)}, "bases"),
        ({"bases": ()}, "bases"),
        ({"kind": "table"}, "kind"),
    ],
)
def test_config_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SimilarityEncoderConfig.from_dict(overrides)
