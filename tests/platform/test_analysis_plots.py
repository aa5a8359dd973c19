"""The PNG figures: valid PNGs sized by the style, each panel drawing its own input in order
(changing one input changes only that panel's columns), conflict bands in their colours; bad
inputs rejected."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest
import torch

from hmoe.config import ConfigError
from hmoe.platform.analysis.collapse import CollapseConfig, spectra_by_set
from hmoe.platform.analysis.entanglement import conflict_subset
from hmoe.platform.analysis.plots import (
    BAND_COLOURS,
    PlotStyle,
    plot_correlation_heatmaps,
    plot_entanglement_histograms,
    plot_spectrum_heatmaps,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = PlotStyle(panel_width=2.0, panel_height=1.5, dpi=50)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header (IHDR)."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def changed_columns(before: Path, after: Path) -> tuple[int, int]:
    """The first and last pixel column where two same-sized PNGs differ."""
    a, b = matplotlib.image.imread(before), matplotlib.image.imread(after)
    assert a.shape == b.shape
    columns = np.flatnonzero(np.abs(a - b).max(axis=(0, 2)) > 0)
    assert columns.size, f"{after.name} draws the same picture as {before.name}"
    return int(columns[0]), int(columns[-1])


def pixels_of(path: Path, colour: str) -> int:
    """How many pixels of the PNG have exactly ``colour`` (a matplotlib colour name)."""
    rgb = np.asarray(matplotlib.colors.to_rgb(colour))
    image = matplotlib.image.imread(path)[..., :3]
    return int((np.abs(image - rgb).max(axis=2) < 1.5 / 255).sum())


def assert_left_to_right(bands: list[tuple[int, int]]) -> None:
    for (_, left_end), (right_start, _) in itertools.pairwise(bands):
        assert left_end < right_start, bands


def test_spectrum_heatmaps_one_panel_per_set(tmp_path: Path) -> None:
    tables = {
        "set0": {"a": torch.eye(4), "b": torch.randn(30, 4)},
        "set1": {"a": torch.randn(5, 6)},
    }
    spectra = spectra_by_set(tables, CollapseConfig())
    path = plot_spectrum_heatmaps(spectra, tmp_path / "sub" / "spectrum.png", SMALL)
    width, height = png_size(path)
    assert (width, height) == (2 * 2.0 * 50, 1.5 * 50)
    bands = []
    for changed_set in ("set0", "set1"):
        # the same fields, each table of rank 1: one bright column instead of a spread
        rank_one = {name: torch.ones_like(t) for name, t in tables[changed_set].items()}
        collapsed = {**tables, changed_set: rank_one}
        other = plot_spectrum_heatmaps(
            spectra_by_set(collapsed, CollapseConfig()), tmp_path / f"{changed_set}.png", SMALL
        )
        bands.append(changed_columns(path, other))
    assert_left_to_right(bands)
    one = plot_spectrum_heatmaps({"set0": spectra["set0"]}, tmp_path / "one.png", SMALL)
    assert png_size(one)[0] == 2.0 * 50
    with pytest.raises(ValueError, match="no embedding set"):
        plot_spectrum_heatmaps({}, tmp_path / "x.png")


def test_correlation_heatmaps(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grids = {"ground truth": rng.random((3, 5)), "tim": rng.random((3, 5)), "din": np.ones((3, 5))}
    path = plot_correlation_heatmaps(grids, ["2", "5", "7"], tmp_path / "c.png", "t", SMALL)
    assert png_size(path) == (3 * 2.0 * 50, 1.5 * 50)
    bands = []
    for name in grids:
        changed = {**grids, name: 1.0 - grids[name]}
        other = plot_correlation_heatmaps(
            changed, ["2", "5", "7"], tmp_path / f"c-{name}.png", "t", SMALL
        )
        bands.append(changed_columns(path, other))
    assert_left_to_right(bands)
    with pytest.raises(ValueError, match="rows for 2 categories"):
        plot_correlation_heatmaps(grids, ["2", "5"], tmp_path / "bad.png", "t", SMALL)


def test_entanglement_histograms_with_and_without_conflict(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    distances = {"mmoe / set0": rng.random(500), "stem / task:like": rng.random(500)}
    conflict = conflict_subset(distances["mmoe / set0"], rng.random(500), 60.0, 40.0)
    kwargs = {"num_bins": 39, "low_percentile": 40.0, "high_percentile": 60.0, "style": SMALL}
    coloured = plot_entanglement_histograms(distances, conflict, tmp_path / "e.png", **kwargs)
    plain = plot_entanglement_histograms(distances, None, tmp_path / "p.png", **kwargs)
    assert png_size(coloured)[0] == png_size(plain)[0] == 2 * 2.0 * 50
    for colour in BAND_COLOURS:
        assert pixels_of(coloured, colour) > 0, colour
        assert pixels_of(plain, colour) == 0, colour
    assert coloured.read_bytes() != plain.read_bytes()
    with pytest.raises(ValueError, match="conflict mask"):
        plot_entanglement_histograms(distances, conflict[:10], tmp_path / "x.png", **kwargs)


def test_plot_style_validation() -> None:
    with pytest.raises(ConfigError, match="positive"):
        PlotStyle(dpi=0)
