"""[CLS]→patch attention maps over their images, as one picture per measurement.

Every map of every layer and every step is drawn on ONE fixed colour scale, so a panel's
colour means the same share of attention wherever and whenever it appears: the share of a
patch on a log scale from 1/P (a uniform row: fully transparent) to 1 (all attention on one
patch: opaque). The colour's opacity grows with the value, and the image underneath is
shown in greyscale at reduced contrast, so strong attention stands out and weak attention
leaves the picture readable. matplotlib's object API on the Agg canvas (no pyplot state).
"""

from __future__ import annotations

import functools
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
    return ListedColormap(colors).with_extremes(under=(0, 0, 0, 0))  # below uniform: nothing drawn


def _greyscale(picture: np.ndarray) -> np.ndarray:
    """(h, w, 3) RGB in [0, 1] → (h, w, 3) grey luminance squeezed into [0.3, 0.75] (the map's background)."""
    lum = picture[..., 0] * 0.299 + picture[..., 1] * 0.587 + picture[..., 2] * 0.114
    return np.repeat((0.3 + 0.45 * np.clip(lum, 0.0, 1.0))[..., None], 3, axis=-1)


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes (patches stay sharp squares)."""
    rows = (np.arange(h) * a.shape[0] // h).clip(0, a.shape[0] - 1)
    cols = (np.arange(w) * a.shape[1] // w).clip(0, a.shape[1] - 1)
    return a[rows][:, cols]


@functools.lru_cache(maxsize=8)
def _frame(n_layers: int, n: int, p: int) -> tuple[np.ndarray, tuple]:
    """The figure without its pictures (titles, labels, colour bar) and each panel's pixel box,
    drawn once per shape: a measurement only pastes its pictures in (matplotlib's draw is slow)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    norm, cmap = LogNorm(vmin=1.0 / p, vmax=1.0), _alpha_cmap()
    fig = Figure(figsize=(0.95 * (n_layers + 1) + 1.1, 0.95 * n + 0.45), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, n_layers + 1, squeeze=False)
    for i in range(n):
        axes[i, 0].set_ylabel(f"image {i + 1}", fontsize=7)
        for j in range(n_layers + 1):
            axes[i, j].imshow(np.ones((4, 4)), cmap="gray", vmin=0, vmax=1)  # square panels
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title("image" if j == 0 else f"layer {j}", fontsize=7)
    ticks = [1.0 / p] + [t for t in (0.003, 0.01, 0.03, 0.1, 0.3, 1.0) if t > 1.6 / p]
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, ticks=ticks, fraction=0.03, pad=0.01)
    bar.ax.set_yticklabels([f"{t:.2g}" + (" = 1/P" if t == 1.0 / p else "") for t in ticks], fontsize=6)
    bar.set_label("[CLS]→patch share (log)", fontsize=7)
    fig.canvas.draw()
    frame = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    height = frame.shape[0]
    boxes = []
    for i in range(n):
        for j in range(n_layers + 1):
            b = axes[i, j].get_window_extent()
            boxes.append((i, j, int(round(height - b.y1)) + 1, int(round(height - b.y0)) - 1,
                          int(round(b.x0)) + 1, int(round(b.x1)) - 1))
    return frame, tuple(boxes)


def map_grid(pictures: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """One RGB picture: a row per image (the image, then its map at every layer) and a colour bar.

    Args:
        pictures: (N, S, S, 3) RGB images in [0, 1] (de-normalised).
        maps: (L, N, P) head-averaged [CLS]→patch attention, each row summing to 1 over
            P = g² patches in row-major order.

    Returns:
        (H, W, 3) uint8 picture.

    Raises:
        ValueError: P is not a square number (no patch grid to draw).
    """
    n_layers, n, p = maps.shape
    g = math.isqrt(p)
    if g * g != p:
        raise ValueError(f"attention maps of {p} patches are not a square grid; no map picture can be drawn")
    frame, boxes = _frame(n_layers, n, p)
    out = frame.astype(np.float32) / 255.0
    # the colour bar's LogNorm(1/P, 1) by hand (it takes no 3-D array); below 1/P is "under": transparent
    scaled = np.log(np.clip(maps, 1e-12, 1.0) * p) / math.log(p)
    colours = _alpha_cmap()(scaled).astype(np.float32)  # (L, N, P, 4)
    for i, j, y0, y1, x0, x1 in boxes:
        h, w = y1 - y0, x1 - x0
        picture = _resize(np.clip(pictures[i], 0.0, 1.0).astype(np.float32), h, w)
        if j > 0:
            rgba = _resize(colours[j - 1, i].reshape(g, g, 4), h, w)
            alpha = rgba[..., 3:]
            picture = _greyscale(picture) * (1.0 - alpha) + rgba[..., :3] * alpha
        out[y0:y1, x0:x1] = picture
    return (out * 255.0).round().astype(np.uint8)
