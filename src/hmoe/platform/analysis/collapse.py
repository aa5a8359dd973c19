"""Dimensional collapse: singular spectra and information abundance of embedding tables.

For one field's table ``E [V, D]`` every row is L2-normalised (``row / (||row|| + eps)``, as the
RecScope notebook does), the singular values ``sigma`` are sorted descending and divided by the
largest; the information abundance is ``IA = sum(sigma) / max(sigma)`` in ``[1, D]`` (``D`` =
balanced spectrum, ``1`` = collapsed to one direction). The singular values are taken from the
``D x D`` Gram matrix accumulated over row chunks, so a table of millions of rows costs one pass
and no copy: cheap enough for the per-epoch monitor (``hmoe.platform.analysis.monitor``).

Legend for shape suffixes: ``V`` rows (vocabulary), ``D`` embedding dim, ``F`` fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hmoe.platform.analysis.access import embedding_sets
from hmoe.platform.experiment import CollapseConfig

__all__ = [
    "CollapseConfig",
    "SetSpectra",
    "information_abundance",
    "information_abundance_metrics",
    "metric_name",
    "singular_spectrum",
    "spectra_by_set",
]

_METRIC_UNSAFE = re.compile(r"[^0-9A-Za-z_\-./ ]")


@dataclass(frozen=True)
class SetSpectra:
    """The spectra of one embedding set, fields sorted by cardinality ascending (ties by name).

    ``spectra_FD`` holds each field's normalised singular values padded with zeros to the widest
    table of the set; ``abundance`` is IA per field in the same order.
    """

    fields: tuple[str, ...]
    cardinalities: tuple[int, ...]
    spectra_FD: np.ndarray
    abundance: tuple[float, ...]


def singular_spectrum(table_VD: torch.Tensor | np.ndarray, cfg: CollapseConfig) -> np.ndarray:
    """The descending singular values of the row-normalised table divided by the largest, ``[D]``.

    A table whose rows are all zero has no direction at all; its spectrum is all zeros.
    """
    table = torch.as_tensor(table_VD).detach()
    if table.dim() != 2 or table.shape[1] < 1:
        raise ValueError(f"expected a table of shape [V, D], got {tuple(table.shape)}")
    dim = table.shape[1]
    gram_DD = torch.zeros(dim, dim, dtype=torch.float64)
    for start in range(0, table.shape[0], cfg.chunk_rows):
        rows = table[start : start + cfg.chunk_rows].to(device="cpu", dtype=torch.float64)
        rows = rows / (rows.norm(dim=1, keepdim=True) + cfg.eps)
        gram_DD += rows.T @ rows
    eigenvalues = torch.linalg.eigvalsh(gram_DD)
    # below this the eigenvalue is round-off of the Gram product, not a direction of the table
    tolerance = eigenvalues.max() * dim * torch.finfo(torch.float64).eps
    eigenvalues = torch.where(eigenvalues > tolerance, eigenvalues, 0.0)
    sigma = eigenvalues.sqrt().flip(0).numpy()
    if sigma[0] <= 0.0:
        return np.zeros(dim)
    return sigma / sigma[0]


def information_abundance(table_VD: torch.Tensor | np.ndarray, cfg: CollapseConfig) -> float:
    """``sum(sigma) / max(sigma)`` of the row-normalised table; 0 for an all-zero table."""
    return float(singular_spectrum(table_VD, cfg).sum())


def spectra_by_set(
    tables: Mapping[str, Mapping[str, torch.Tensor]], cfg: CollapseConfig
) -> dict[str, SetSpectra]:
    """Spectrum and IA of every field of every set, fields sorted by cardinality ascending."""
    result = {}
    for set_name, fields in tables.items():
        if not fields:
            raise ValueError(f"embedding set {set_name!r} has no field tables")
        order = sorted(fields, key=lambda f: (fields[f].shape[0], f))
        spectra = [singular_spectrum(fields[f], cfg) for f in order]
        width = max(s.shape[0] for s in spectra)
        spectra_FD = np.zeros((len(order), width))
        for row, spectrum in enumerate(spectra):
            spectra_FD[row, : spectrum.shape[0]] = spectrum
        result[set_name] = SetSpectra(
            fields=tuple(order),
            cardinalities=tuple(int(fields[f].shape[0]) for f in order),
            spectra_FD=spectra_FD,
            abundance=tuple(float(s.sum()) for s in spectra),
        )
    return result


def metric_name(*parts: str) -> str:
    """``"_".join(parts)`` with characters MLflow rejects replaced by ``-``."""
    return _METRIC_UNSAFE.sub("-", "_".join(parts))


def information_abundance_metrics(model: nn.Module, cfg: CollapseConfig) -> dict[str, float]:
    """IA of every field of every set as ``{"ia_{set}_{field}": value}``, ready for MLflow."""
    tables = embedding_sets(model)
    return {
        metric_name("ia", set_name, field): information_abundance(table, cfg)
        for set_name, fields in tables.items()
        for field, table in fields.items()
    }
