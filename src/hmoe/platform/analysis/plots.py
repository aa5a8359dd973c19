"""PNG figures of the three analyses, drawn with matplotlib's Agg canvas.

Figures are built as ``matplotlib.figure.Figure`` objects with an explicit ``FigureCanvasAgg``,
never through ``pyplot``: no display, no global figure registry, safe in Ray workers and threads.

Legend for shape suffixes: ``F`` fields, ``D`` dim, ``C`` categories, ``P`` positions, ``N`` pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from hmoe.config import Config, ConfigError, config
from hmoe.platform.analysis.collapse import SetSpectra
from hmoe.platform.analysis.entanglement import BAND_NAMES, distance_bands

__all__ = [
    "PlotStyle",
    "plot_correlation_heatmaps",
    "plot_entanglement_histograms",
    "plot_spectrum_heatmaps",
]

BAND_COLOURS = ("tab:green", "tab:blue", "tab:orange")  # near, middle, far (RecScope's colours)


@config
class PlotStyle(Config):
    """Sizes of a panel (inches) and the resolution of the written PNG."""

    panel_width: float = 4.5
    panel_height: float = 3.5
    dpi: int = 100

    def __post_init__(self) -> None:
        if self.panel_width <= 0 or self.panel_height <= 0 or self.dpi < 1:
            raise ConfigError("PlotStyle needs positive panel sizes and dpi >= 1")


DEFAULT_STYLE = PlotStyle()


def _new_figure(rows: int, cols: int, style: PlotStyle) -> Figure:
    fig = Figure(
        figsize=(style.panel_width * cols, style.panel_height * rows),
        dpi=style.dpi,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_spectrum_heatmaps(
    spectra: Mapping[str, SetSpectra], path: str | Path, style: PlotStyle = DEFAULT_STYLE
) -> Path:
    """One panel per embedding set: rows = fields by cardinality ascending (labelled with the
    field's IA), columns = singular-value index, colour = sigma / sigma_max."""
    if not spectra:
        raise ValueError("no embedding set to plot")
    fig = _new_figure(1, len(spectra), style)
    axes = fig.subplots(1, len(spectra), squeeze=False)[0]
    image = None
    for ax, (set_name, s) in zip(axes, spectra.items(), strict=True):
        image = ax.imshow(s.spectra_FD, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
        labels = [
            f"{f} (|V|={v}, IA={ia:.1f})"
            for f, v, ia in zip(s.fields, s.cardinalities, s.abundance, strict=True)
        ]
        ax.set_yticks(range(len(labels)), labels, fontsize="small")
        ax.set_xlabel("singular value index")
        ax.set_title(f"set {set_name}")
    fig.colorbar(image, ax=list(axes), label="sigma / sigma_max")
    return _save(fig, path)


def plot_correlation_heatmaps(
    grids: Mapping[str, np.ndarray],
    categories: Sequence[str],
    path: str | Path,
    title: str,
    style: PlotStyle = DEFAULT_STYLE,
) -> Path:
    """Side-by-side min-max-normalised (category x position) heatmaps, one per grid name
    (e.g. ground truth, planted, TIM); the panel title carries the name."""
    if not grids:
        raise ValueError("no correlation grid to plot")
    fig = _new_figure(1, len(grids), style)
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    image = None
    for ax, (name, grid_CP) in zip(axes, grids.items(), strict=True):
        if grid_CP.shape[0] != len(categories):
            raise ValueError(f"{name}: {grid_CP.shape[0]} rows for {len(categories)} categories")
        image = ax.imshow(grid_CP, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(grid_CP.shape[1]), [str(p + 1) for p in range(grid_CP.shape[1])])
        ax.set_yticks(range(len(categories)), list(categories), fontsize="small")
        ax.set_xlabel("target-relative position")
        ax.set_title(name)
    axes[0].set_ylabel("behaviour category")
    fig.suptitle(title)
    fig.colorbar(image, ax=list(axes), label="min-max normalised")
    return _save(fig, path)


def plot_entanglement_histograms(
    distances: Mapping[str, np.ndarray],
    conflict_N: np.ndarray | None,
    path: str | Path,
    *,
    num_bins: int,
    low_percentile: float,
    high_percentile: float,
    style: PlotStyle = DEFAULT_STYLE,
) -> Path:
    """One histogram per (model, table) of the user-item distances over ``num_bins`` equal bins.

    With a conflict subset, its pairs are stacked in colour by where this table places them
    (near / middle / far by this table's own percentiles) and the other pairs hatched on top;
    without one, all pairs are drawn plain.
    """
    if not distances:
        raise ValueError("no distance vector to plot")
    fig = _new_figure(1, len(distances), style)
    axes = fig.subplots(1, len(distances), squeeze=False)[0]
    for ax, (name, dist_N) in zip(axes, distances.items(), strict=True):
        dist_N = np.asarray(dist_N, dtype=np.float64)
        edges = np.histogram_bin_edges(dist_N, bins=num_bins)
        if conflict_N is None:
            ax.hist(dist_N, bins=edges, color="tab:gray")
        else:
            if conflict_N.shape != dist_N.shape:
                raise ValueError(f"{name}: conflict mask {conflict_N.shape} vs {dist_N.shape}")
            bands = distance_bands(dist_N, low_percentile, high_percentile)
            stacks = [dist_N[conflict_N & (bands == b)] for b in range(len(BAND_NAMES))]
            stacks.append(dist_N[~conflict_N])
            ax.hist(
                stacks,
                bins=edges,
                stacked=True,
                color=[*BAND_COLOURS, "none"],
                edgecolor=[*BAND_COLOURS, "tab:gray"],
                hatch=[None, None, None, "//"],
            )
        ax.set_title(name)
        ax.set_xlabel("||user - item||")
    axes[0].set_ylabel("pairs")
    if conflict_N is not None:
        handles = [
            Patch(color=c, label=f"conflict, {b}")
            for c, b in zip(BAND_COLOURS, BAND_NAMES, strict=True)
        ]
        handles.append(Patch(facecolor="none", edgecolor="tab:gray", hatch="//", label="others"))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return _save(fig, path)
