"""SimilarityEncoder: bucket edges, clipping, NaN, lookup, gradients, config errors."""

from __future__ import annotations

import pytest
import torch

from hmoe.config import ConfigError
from hmoe.models.similarity import SimilarityEncoder, SimilarityEncoderConfig


def _encoder(num_buckets: int = 20, low: float = -1.0, high: float = 1.0) -> SimilarityEncoder:
    torch.manual_seed(0)
    config = SimilarityEncoderConfig(num_buckets=num_buckets, low=low, high=high)
    return SimilarityEncoder(4, config, init_std=0.2)


def test_bucket_edges_clipping_and_nan() -> None:
    enc = _encoder()
    values = torch.tensor([-1.0, -0.95, -0.8999, 0.0, 0.999, 1.0, 3.0, -7.0, float("nan")])
    assert enc.bucket(values).tolist() == [0, 0, 1, 10, 19, 19, 19, 0, 10]


def test_bucket_respects_custom_range() -> None:
    enc = _encoder(num_buckets=4, low=0.0, high=1.0)
    assert enc.bucket(torch.tensor([0.0, 0.26, 0.5, 0.74, 0.99, -1.0])).tolist() == [
        0, 1, 2, 2, 3, 0,
    ]  # fmt: skip


def test_forward_is_table_lookup_with_any_leading_shape() -> None:
    enc = _encoder()
    sim = torch.tensor([[0.3, -0.2, 0.0], [1.0, -1.0, 0.55]])
    out = enc(sim)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out, enc.token_table()[enc.bucket(sim)])


def test_seeded_reference_values() -> None:
    out = _encoder()(torch.tensor([0.0]))
    expected = torch.tensor([[-0.1245, -0.0927, 0.3844, -0.0805]])  # seed 0, std 0.2
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_gradients_finite_and_only_on_used_buckets() -> None:
    enc = _encoder()
    enc(torch.tensor([0.0, 0.01, float("nan"), 0.9])).sum().backward()
    grad = enc.table.weight.grad
    assert torch.isfinite(grad).all()
    used = grad.abs().sum(dim=1) > 0
    assert used.nonzero().flatten().tolist() == [10, 19]


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="num_buckets"):
        SimilarityEncoderConfig(num_buckets=1)
    with pytest.raises(ConfigError, match="low < high"):
        SimilarityEncoderConfig(low=1.0, high=1.0)
