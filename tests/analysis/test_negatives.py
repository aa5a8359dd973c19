"""Gradient norm on the negatives' logits: the closed forms, one negative at a time."""

from __future__ import annotations

import math

import pytest
import torch

from hmoe.platform.analysis.negatives import negative_gradient_norms


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _slow(logits: list[float], labels: list[int], beta: float, alpha: float) -> dict[str, float]:
    """BCE_w on negative j: ``w_j * sigmoid(z_j) / B`` (w = 1); pair on negative j:
    ``sum_i sigmoid(z_j - z_i) / (P * N)`` over the positives i."""
    pos = [z for z, y in zip(logits, labels, strict=True) if y == 1]
    neg = [z for z, y in zip(logits, labels, strict=True) if y == 0]
    bce = [alpha * _sigmoid(z) / len(logits) for z in neg]
    pair = [
        (1 - alpha) * sum(_sigmoid(z - p) for p in pos) / (len(pos) * len(neg)) if pos else 0.0
        for z in neg
    ]

    def norm(xs: list[float]) -> float:
        return math.sqrt(sum(x * x for x in xs))

    return {
        "bce": norm(bce),
        "pair": norm(pair),
        "total": norm([a + b for a, b in zip(bce, pair, strict=True)]),
        "negatives": float(len(neg)),
    }


@pytest.mark.parametrize(("beta", "alpha"), [(1.0, 1.0), (0.1, 0.7), (0.4, 0.0)])
def test_norms_equal_the_closed_forms(beta: float, alpha: float) -> None:
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(40, generator=g) * 2).tolist()
    labels = (torch.rand(40, generator=g) < 0.2).long().tolist()
    got = negative_gradient_norms(
        torch.tensor(logits), torch.tensor(labels, dtype=torch.float32),
        positive_weight=beta, alpha=alpha,
    )  # fmt: skip
    want = _slow(logits, labels, beta, alpha)
    assert got == pytest.approx(want, rel=1e-9)


def test_bce_gradient_on_negatives_vanishes_with_their_probability_and_pair_does_not() -> None:
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0])
    sure = negative_gradient_norms(
        torch.tensor([-11.0, -12.0, -12.0, -12.0]), labels, positive_weight=0.1, alpha=0.5
    )
    assert sure["bce"] < 1e-5 < 0.01 < sure["pair"]


def test_edge_cases() -> None:
    only_positives = negative_gradient_norms(
        torch.zeros(3), torch.ones(3), positive_weight=1.0, alpha=0.5
    )
    assert only_positives == {"negatives": 0.0, "bce": 0.0, "pair": 0.0, "total": 0.0}
    no_positive = negative_gradient_norms(
        torch.zeros(4), torch.zeros(4), positive_weight=1.0, alpha=0.5
    )
    assert no_positive["pair"] == 0.0 < no_positive["bce"]
    with pytest.raises(ValueError, match="alpha"):
        negative_gradient_norms(torch.zeros(2), torch.zeros(2), positive_weight=1.0, alpha=1.5)
    with pytest.raises(ValueError, match="shape"):
        negative_gradient_norms(torch.zeros(2), torch.zeros(3), positive_weight=1.0, alpha=0.5)
