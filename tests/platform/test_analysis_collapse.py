"""Singular spectra and information abundance: exact values, invariances, the monitor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hmoe.config import ConfigError
from hmoe.platform.analysis.collapse import (
    CollapseConfig,
    information_abundance,
    information_abundance_metrics,
    metric_name,
    singular_spectrum,
    spectra_by_set,
)

CFG = CollapseConfig()


def reference_spectrum(table: np.ndarray, eps: float) -> np.ndarray:
    """The RecScope recipe done the slow, obvious way: normalise rows, full SVD."""
    rows = table / (np.linalg.norm(table, axis=1, keepdims=True) + eps)
    sigma = np.linalg.svd(rows, compute_uv=False)
    out = np.zeros(table.shape[1])
    out[: sigma.size] = sigma / sigma[0]
    return out


@pytest.mark.parametrize("dim", [1, 4, 16])
def test_identity_table_has_full_abundance(dim: int) -> None:
    assert information_abundance(torch.eye(dim), CFG) == pytest.approx(dim, abs=1e-9)


def test_rank_one_table_has_abundance_one() -> None:
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(50, 1, generator=gen) @ torch.randn(1, 12, generator=gen)
    assert information_abundance(table, CFG) == pytest.approx(1.0, abs=1e-9)
    spectrum = singular_spectrum(table, CFG)
    assert spectrum.shape == (12,) and spectrum[0] == 1.0 and np.all(spectrum[1:] == 0.0)


def test_invariant_to_scaling_rows() -> None:
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(40, 8, generator=gen)
    scales = torch.rand(40, 1, generator=gen) * 100 + 0.01
    np.testing.assert_allclose(
        singular_spectrum(table * scales, CFG), singular_spectrum(table, CFG), atol=1e-10
    )


def test_matches_full_svd_reference_in_small_chunks() -> None:
    rng = np.random.default_rng(2)
    table = rng.normal(size=(30, 6)) * np.array([5, 3, 1, 0.5, 0.1, 0.01])
    table[0] = 0.0  # the padding row
    chunked = CollapseConfig(chunk_rows=7)
    np.testing.assert_allclose(
        singular_spectrum(table, chunked), reference_spectrum(table, 1e-8), atol=1e-8
    )


def test_fewer_rows_than_dim_pads_with_zeros_and_zero_table_is_zero() -> None:
    spectrum = singular_spectrum(torch.eye(3, 8), CFG)
    np.testing.assert_allclose(spectrum, [1, 1, 1, 0, 0, 0, 0, 0], atol=1e-12)
    assert information_abundance(torch.zeros(5, 4), CFG) == 0.0


def test_bad_shapes_and_configs_raise() -> None:
    with pytest.raises(ValueError, match=r"\[V, D\]"):
        singular_spectrum(torch.ones(3), CFG)
    with pytest.raises(ConfigError, match="chunk_rows"):
        CollapseConfig(chunk_rows=0)


def test_spectra_by_set_sorts_fields_by_cardinality_and_pads_to_widest() -> None:
    tables = {
        "0": {"big": torch.randn(50, 4), "small": torch.eye(2, 4)},
        "1": {"wide": torch.randn(9, 6), "narrow": torch.eye(3)},
    }
    spectra = spectra_by_set(tables, CFG)
    assert spectra["0"].fields == ("small", "big")
    assert spectra["0"].cardinalities == (2, 50)
    assert spectra["0"].abundance[0] == pytest.approx(2.0)
    assert spectra["1"].fields == ("narrow", "wide")
    assert spectra["1"].spectra_FD.shape == (2, 6)
    np.testing.assert_allclose(spectra["1"].spectra_FD[0], [1, 1, 1, 0, 0, 0], atol=1e-12)


class TwoSets(nn.Module):
    """A stand-in model exposing ``embedding_tables`` the way the rankers do."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.eye(4))
        self.b = nn.Parameter(torch.ones(6, 1) @ torch.arange(1.0, 5.0).unsqueeze(0))

    def embedding_tables(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"s0": {"user id": self.a}, "s1": {"user id": self.b}}


def test_metrics_are_named_per_set_and_field() -> None:
    metrics = information_abundance_metrics(TwoSets(), CFG)
    assert set(metrics) == {"ia_s0_user id", "ia_s1_user id"}
    assert metrics["ia_s0_user id"] == pytest.approx(4.0)
    assert metrics["ia_s1_user id"] == pytest.approx(1.0)
    assert metric_name("ia", "set:0", "f(x)") == "ia_set-0_f-x-"


def test_model_without_tables_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="embedding_tables"):
        information_abundance_metrics(nn.Linear(2, 2), CFG)
