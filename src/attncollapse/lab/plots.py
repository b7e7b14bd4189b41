"""The lab commands' figures: per-layer metrics (measure, compare) and [CLS]→patch maps.

matplotlib's object API on the Agg canvas in the analysis stage's style (`figures_base`);
every figure is written atomically. A figure of maps has one colour scale for all its
panels, shown by one colour bar, so two panels' colours compare directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .. import _io
from ..analysis.figures.base import DPI, METRIC_LABELS, OKABE_ITO, SEQUENTIAL, figure

MAP_LABEL = "[CLS]→patch attention (share of the row)"


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


def _band(ax, mean: np.ndarray, sd: np.ndarray, label: str, color: str) -> None:
    x = np.arange(1, len(mean) + 1)
    ax.plot(x, mean, marker="o", ms=3, color=color, label=label)
    ax.fill_between(x, mean - sd, mean + sd, color=color, alpha=0.2, linewidth=0)


def metrics_figure(series: list[tuple[str, dict]], *, title: str, drift: dict | None = None) -> Figure:
    """Per-layer mean ± SD over images of each metric, one line per model.

    Args:
        series: (label, {metric: {"mean": [L], "sd": [L]}}) per model.
        title: the figure's title (model and images).
        drift: {"mean": [L], "sd": [L]} map drift (JS divergence) of a comparison, or None.
    """
    names = list(METRIC_LABELS)
    cols = len(names) + (drift is not None)
    fig, ax = figure(2.4 * cols, 2.4, 1, cols)
    for j, m in enumerate(names):
        for k, (label, layers) in enumerate(series):
            _band(ax[0, j], np.asarray(layers[m]["mean"]), np.asarray(layers[m]["sd"]), label, OKABE_ITO[k])
        ax[0, j].set(xlabel="layer", ylabel=METRIC_LABELS[m])
    if drift is not None:
        _band(ax[0, -1], np.asarray(drift["mean"]), np.asarray(drift["sd"]), "A vs B", OKABE_ITO[2])
        ax[0, -1].set(xlabel="layer", ylabel="map drift, JS divergence (nats)")
    ax[0, 0].legend(fontsize=6)
    fig.suptitle(title + "  (mean ± SD over images)", fontsize=8)
    return fig


def maps_figure(pictures: np.ndarray, maps: np.ndarray, *, row_labels: list[str], col_labels: list[str]) -> Figure:
    """Images and their [CLS]→patch maps on one colour scale with one colour bar.

    Args:
        pictures: (N, 3, S, S) uint8 images (the first column).
        maps: (N, C, g, g) maps, one column per (model, layer, head) choice.
        row_labels: N image names; col_labels: C column titles.

    Returns:
        The figure; every heatmap shares `vmin = 0`, `vmax = maps.max()`.
    """
    n, c = maps.shape[:2]
    vmax = float(maps.max()) if maps.size else 1.0
    fig, ax = figure(1.25 * (c + 1) + 0.8, 1.3 * n + 0.4, n, c + 1)
    im = None
    for i in range(n):
        ax[i, 0].imshow(np.transpose(pictures[i], (1, 2, 0)))
        ax[i, 0].set_ylabel(row_labels[i], fontsize=6)
        for j in range(c):
            im = ax[i, j + 1].imshow(maps[i, j], cmap=SEQUENTIAL, vmin=0.0, vmax=vmax, interpolation="nearest")
            if i == 0:
                ax[i, j + 1].set_title(col_labels[j], fontsize=6)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
        a.grid(False)
    if im is not None:
        fig.colorbar(im, ax=ax[:, 1:].ravel().tolist(), shrink=0.8, label=MAP_LABEL)
    return fig
