"""[CLS]→patch attention maps over their images, as one picture per measurement.

Every map of every layer and every step is drawn on ONE fixed colour scale, so a panel's
colour means the same share of attention wherever and whenever it appears: the share of a
patch on a log scale from 1/P (a uniform row: fully transparent) to 1 (all attention on one
patch: opaque). The colour's opacity grows with the value, and the image underneath is
shown in greyscale at reduced contrast, so strong attention stands out and weak attention
leaves the picture readable. matplotlib's object API on the Agg canvas (no pyplot state).
"""

from __future__ import annotations

import math

import numpy as np

MAP_SCALE = "share of the [CLS] row per patch, log scale from 1/P (uniform, transparent) to 1 (opaque)"
CMAP = "plasma"  # perceptually uniform; its bright end stands out on grey
MAX_ALPHA = 0.9


def _alpha_cmap():
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    colors = colormaps[CMAP](np.linspace(0.0, 1.0, 256))
    colors[:, 3] = np.linspace(0.0, MAX_ALPHA, 256)
    cmap = ListedColormap(colors)
    cmap.set_under((0, 0, 0, 0))  # below uniform: nothing drawn
    return cmap


def _greyscale(picture: np.ndarray) -> np.ndarray:
    """(S, S, 3) RGB in [0, 1] → (S, S) luminance squeezed into [0.3, 0.75] (the map's background)."""
    lum = picture[..., 0] * 0.299 + picture[..., 1] * 0.587 + picture[..., 2] * 0.114
    return 0.3 + 0.45 * np.clip(lum, 0.0, 1.0)


def map_grid(pictures: np.ndarray, maps: np.ndarray, *, title: str = "") -> np.ndarray:
    """One RGB picture: a row per image (the image, then its map at every layer) and a colour bar.

    Args:
        pictures: (N, S, S, 3) RGB images in [0, 1] (de-normalised).
        maps: (L, N, P) head-averaged [CLS]→patch attention, each row summing to 1 over
            P = g² patches in row-major order.
        title: the figure's title (e.g. the step).

    Returns:
        (H, W, 3) uint8 picture.

    Raises:
        ValueError: P is not a square number (no patch grid to draw).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    n_layers, n, p = maps.shape
    g = math.isqrt(p)
    if g * g != p:
        raise ValueError(f"attention maps of {p} patches are not a square grid; no map picture can be drawn")
    norm, cmap = LogNorm(vmin=1.0 / p, vmax=1.0), _alpha_cmap()
    fig = Figure(figsize=(0.95 * (n_layers + 1) + 1.1, 0.95 * n + 0.55), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, n_layers + 1, squeeze=False)
    extent = (0, g, g, 0)
    for i in range(n):
        axes[i, 0].imshow(np.clip(pictures[i], 0, 1), extent=extent)
        axes[i, 0].set_ylabel(f"image {i + 1}", fontsize=7)
        bg = _greyscale(pictures[i])
        for layer in range(n_layers):
            ax = axes[i, layer + 1]
            ax.imshow(bg, cmap="gray", vmin=0.0, vmax=1.0, extent=extent)
            values = np.clip(maps[layer, i].reshape(g, g), 1e-12, 1.0)
            ax.imshow(values, cmap=cmap, norm=norm, extent=extent, interpolation="nearest")
            if i == 0:
                ax.set_title(f"layer {layer + 1}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    ticks = [1.0 / p] + [t for t in (0.003, 0.01, 0.03, 0.1, 0.3, 1.0) if t > 1.6 / p]
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, ticks=ticks, fraction=0.03, pad=0.01)
    bar.ax.set_yticklabels([f"{t:.2g}" + (" = 1/P" if t == 1.0 / p else "") for t in ticks], fontsize=6)
    bar.set_label("[CLS]→patch share (log)", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
