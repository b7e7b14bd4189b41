"""The lab commands' figures: per-layer metrics (measure, compare) and [CLS]→patch maps.

matplotlib's object API on the Agg canvas in the analysis stage's style (`figures_base`);
every figure is written atomically. A figure of maps has one colour scale for all its
panels, shown by one colour bar, so two panels' colours compare directly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .. import _io
from ..analysis.figures.base import DPI, METRIC_LABELS, OKABE_ITO, SEQUENTIAL, figure

MAP_LABEL = "[CLS]→patch attention (share of the row)"
OVERLAY_ALPHA = 0.78  # map opacity over the grey image: the image orients, the attention reads first


def short_name(spec: str) -> str:
    """A MODEL or IMAGES argument as a figure or page shows it: a path by its last two parts
    (`demo/E2`, never the user's absolute path), anything else (preset, hub id, source) as given."""
    path = Path(spec).expanduser()
    if not path.exists():
        return spec
    parts = path.resolve().parts
    return "/".join(parts[-2:]) if len(parts) > 2 else path.name


def write_png(fig: Figure, out: str | Path) -> Path:
    """Save `fig` as PNG at `out`, atomically."""
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:  # layers are whole numbers
        if ax.get_xlabel() == "layer":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    out = Path(out)
    with _io.atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return out


def _band(ax, mean: np.ndarray, sd: np.ndarray, label: str, color: str, dashed: bool = False,
          bounds: tuple[float, float] = (-np.inf, np.inf)) -> None:
    """A line with its ±SD band, the band clipped to the metric's possible values."""
    x = np.arange(1, len(mean) + 1)
    ax.plot(x, mean, marker="o", ms=3, color=color, label=label, ls="--" if dashed else "-")
    ax.fill_between(x, np.clip(mean - sd, *bounds), np.clip(mean + sd, *bounds), color=color, alpha=0.2, linewidth=0)


def uniform_values(P: int, erf_q: float = 0.95) -> dict[str, float]:
    """Each metric of a uniform [CLS]→patch row over P patches (the reference line): entropy
    ln P, ERF ⌈qP⌉/P, Gini 0, head diversity 0 (every head the same uniform row)."""
    return {"entropy": math.log(P), "erf": math.ceil(erf_q * P - 1e-9) / P, "gini": 0.0, "head_diversity": 0.0}


def metrics_figure(series: list[tuple[str, dict]], *, title: str, n_patches: int, drift: dict | None = None) -> Figure:
    """Per-layer mean ± SD over images of each metric, one line per model, with the value of
    uniform attention as a dotted reference line; the legend below the panels, off the data.

    Args:
        series: (label, {metric: {"mean": [L], "sd": [L]}}) per model ("A: tiny", "B: demo/E2").
        title: the figure's title (models by short name, images).
        n_patches: P, for the uniform reference.
        drift: {"mean": [L], "sd": [L]} map drift (JS divergence) of a comparison, or None.
    """
    names = list(METRIC_LABELS)
    cols = len(names) + (drift is not None)
    fig, ax = figure(2.4 * cols, 2.9, 1, cols)
    uni = uniform_values(n_patches)
    bounds = {"entropy": (0.0, math.log(n_patches)), "erf": (1.0 / n_patches, 1.0), "gini": (0.0, 1.0),
              "head_diversity": (0.0, 1.0)}
    for j, m in enumerate(names):
        for k, (label, layers) in enumerate(series):
            _band(ax[0, j], np.asarray(layers[m]["mean"]), np.asarray(layers[m]["sd"]), label, OKABE_ITO[k], k > 0,
                  bounds[m])
        ax[0, j].axhline(uni[m], color="0.35", ls=":", lw=1, label=f"uniform attention (P = {n_patches})")
        ax[0, j].set(xlabel="layer", ylabel=METRIC_LABELS[m])
    if drift is not None:
        _band(ax[0, -1], np.asarray(drift["mean"]), np.asarray(drift["sd"]), "map drift, A vs B", OKABE_ITO[2])
        ax[0, -1].set(xlabel="layer", ylabel="map drift, JS divergence (nats)")
        ax[0, -1].set_ylim(bottom=0)
    handles, labels = ax[0, 0].get_legend_handles_labels()
    if drift is not None:
        h, lab = ax[0, -1].get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=7, frameon=False)
    fig.suptitle(title + "  (mean ± SD over images)", fontsize=8)
    return fig


def maps_figure(pictures: np.ndarray, maps: np.ndarray, *, row_labels: list[str], col_labels: list[str],
                title: str = "") -> Figure:
    """Images and their [CLS]→patch maps drawn over them, on one colour scale with one colour bar.

    Each map sits on its patch grid over a low-contrast grey copy of the image (so the map
    reads first); the colour bar marks the uniform share 1/P.

    Args:
        pictures: (N, 3, S, S) uint8 images (the first column, in colour).
        maps: (N, C, g, g) maps, one column per (model, layer, head) choice.
        row_labels: N image names; col_labels: C column titles.
        title: the figure's title (models and images by short name).

    Returns:
        The figure; every heatmap shares `vmin = 0`, `vmax = maps.max()`.
    """
    n, c = maps.shape[:2]
    g = maps.shape[-1]
    vmax = float(maps.max()) if maps.size else 1.0
    fig, ax = figure(1.25 * (c + 1) + 0.8, 1.3 * n + 0.6, n, c + 1)
    im = None
    for i in range(n):
        rgb = np.transpose(pictures[i], (1, 2, 0))
        grey = 0.35 + 0.4 * (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114])) / 255.0
        ax[i, 0].imshow(rgb, extent=(0, g, g, 0))
        ax[i, 0].set_ylabel(row_labels[i], fontsize=6)
        for j in range(c):
            ax[i, j + 1].imshow(grey, cmap="gray", vmin=0, vmax=1, extent=(0, g, g, 0))
            im = ax[i, j + 1].imshow(maps[i, j], cmap=SEQUENTIAL, vmin=0.0, vmax=vmax, interpolation="nearest",
                                     alpha=OVERLAY_ALPHA, extent=(0, g, g, 0))
            if i == 0:
                ax[i, j + 1].set_title(col_labels[j], fontsize=6)
    if n:
        ax[0, 0].set_title("image", fontsize=6)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
        a.grid(False)
        a.spines[:].set_visible(False)
    if im is not None:
        marked = 1.0 / (g * g) <= vmax
        cb = fig.colorbar(im, ax=ax[:, 1:].ravel().tolist(), shrink=0.8,
                          label=MAP_LABEL + ("\nwhite line: uniform, 1/P" if marked else ""))
        cb.solids.set_alpha(1.0)
        if marked:
            cb.ax.axhline(1.0 / (g * g), color="white", lw=1.5)
    if title:
        fig.suptitle(title, fontsize=8)
    return fig
