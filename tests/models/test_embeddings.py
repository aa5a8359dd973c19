"""FieldEmbedding: shapes, padding, pooling against a loop reference, gradients, errors."""

from __future__ import annotations

import pytest
import torch

from hmoe.models.embeddings import FieldEmbedding


def _embedding(pooling: str = "mean", vocab: int = 7, dim: int = 3) -> FieldEmbedding:
    torch.manual_seed(0)
    return FieldEmbedding(vocab, dim, pooling=pooling, init_std=0.5)


def test_single_valued_shape_and_values() -> None:
    emb = _embedding()
    ids = torch.tensor([1, 4, 0])
    out = emb(ids)
    assert out.shape == (3, 3)
    torch.testing.assert_close(out[1], emb.token_table()[4])
    assert torch.equal(out[2], torch.zeros(3))  # padding


def test_padding_row_is_zero_and_gets_no_gradient() -> None:
    emb = _embedding()
    assert torch.equal(emb.token_table()[0], torch.zeros(3))
    emb(torch.tensor([[0, 2, 0], [3, 0, 0]])).sum().backward()
    grad = emb.table.weight.grad
    assert torch.equal(grad[0], torch.zeros(3))
    assert grad[2].abs().sum() > 0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_multi_valued_pooling_matches_loop(pooling: str) -> None:
    emb = _embedding(pooling)
    ids = torch.tensor([[2, 3, 0], [0, 0, 0], [5, 0, 0], [1, 6, 6]])
    out = emb(ids)
    table = emb.token_table()
    for row, expected_ids in enumerate(ids.tolist()):
        real = [i for i in expected_ids if i != 0]
        if not real:
            expected = torch.zeros(3)
        else:
            expected = sum(table[i] for i in real)
            if pooling == "mean":
                expected = expected / len(real)
        torch.testing.assert_close(out[row], expected)


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_all_padding_gives_zero_and_finite_gradients(pooling: str) -> None:
    emb = _embedding(pooling)
    out = emb(torch.zeros(4, 5, dtype=torch.long))
    assert torch.equal(out, torch.zeros(4, 3))
    out.sum().backward()
    assert torch.isfinite(emb.table.weight.grad).all()


def test_seeded_reference_values() -> None:
    emb = _embedding(dim=2)
    out = emb(torch.tensor([1, 2]))
    expected = torch.tensor([[-0.2832, 0.1866], [-0.4460, -0.7546]])  # seed 0, std 0.5
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_lookup_keeps_sequence_shape() -> None:
    emb = _embedding()
    assert emb.lookup(torch.tensor([[1, 2, 0, 0]])).shape == (1, 4, 3)


def test_user_errors() -> None:
    with pytest.raises(ValueError, match="pooling"):
        FieldEmbedding(5, 2, pooling="max", init_std=0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vocab_size"):
        FieldEmbedding(1, 2, pooling="mean", init_std=0.1)
    emb = _embedding()
    with pytest.raises(ValueError, match="int64"):
        emb(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="shape"):
        emb(torch.ones(2, 2, 2, dtype=torch.long))
