"""The streamed forward of the lab commands: per-image metrics and map drift, batch by batch.

Each batch of images is read (a background thread reads the next one while the model
runs), normalised, run once through the tower inside one `probing` block, and reduced at
once to per-image numbers, so memory stays one batch of rows whatever the image count.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from .. import _io
from ..data import Feeder, ImageSet
from ..measure import entropy, erf, gini, head_diversity, patch_rows, probed_forward, probing
from ..measure.probe import attention_modules
from .images import Images
from .load import Loaded

ERF_Q = 0.95
HEAD_METRICS = ("entropy", "erf", "gini")


def per_image_metrics(rows: Tensor, *, erf_q: float = ERF_Q) -> Tensor:
    """The four metrics of each image and layer.

    Args:
        rows: (L, B, H, 1 + P) canonical rows (`cls_rows`).
        erf_q: ERF mass.

    Returns:
        (L, B, 4) float64 in `METRICS` order: entropy, ERF and Gini averaged over heads;
        head diversity of the image's own heads (the per-image variant).
    """
    a = patch_rows(rows)  # (L, B, H, P)
    out = torch.stack([entropy(a).mean(-1), erf(a, erf_q).mean(-1), gini(a).mean(-1), head_diversity(a)], -1)
    return out.double()


def per_head_metrics(rows: Tensor, *, erf_q: float = ERF_Q) -> Tensor:
    """Entropy, ERF and Gini of each image, layer and head (head diversity has no per-head value).

    Args:
        rows: (L, B, H, 1 + P) canonical rows.

    Returns:
        (L, B, H, 3) float64 in `HEAD_METRICS` order.
    """
    a = patch_rows(rows)
    return torch.stack([entropy(a), erf(a, erf_q), gini(a)], -1).double()


def head_mean_maps(rows: Tensor) -> Tensor:
    """(L, B, H, 1 + P) rows → (L, B, P) head-averaged [CLS]→patch maps, each summing to 1."""
    return patch_rows(rows).double().mean(-2)


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon divergence in nats over the last dimension (0 … ln 2).

    Equals `scipy.spatial.distance.jensenshannon(p, q) ** 2` (scipy returns the distance,
    the square root); written out in torch so it runs on batches on the model's device.
    """
    m = 0.5 * (p + q)
    kl = lambda a: torch.special.xlogy(a, a).sum(-1) - torch.special.xlogy(a, m).sum(-1)  # noqa: E731
    return (0.5 * kl(p) + 0.5 * kl(q)).clamp_min(0.0)


def batches(images: Images, size: int, batch_size: int, *, geometry: str, alpha: str) -> Iterator[np.ndarray]:
    """(b, 3, size, size) uint8 batches of the selection, the next one read while the caller works."""
    bounds = [(s, min(s + batch_size, len(images))) for s in range(0, len(images), batch_size)]
    with ThreadPoolExecutor(1) as pool:  # PIL decodes and resizes outside the GIL
        pending = pool.submit(images.read, *bounds[0], size, geometry, alpha) if bounds else None
        for k in range(len(bounds)):
            batch = pending.result()
            if k + 1 < len(bounds):
                pending = pool.submit(images.read, *bounds[k + 1], size, geometry, alpha)
            yield batch


@torch.no_grad()
def stream(models: list[Loaded], images: Images, reduce: Callable[[list[Tensor]], None], *, batch_size: int = 64,
           geometry: str = "original", alpha: str = "drop", device: str = "cpu", desc: str = "") -> None:
    """Run every image through every model (same images, each at its model's size) and hand
    each batch's rows, one (L, B, H, 1 + P) tensor per model, to `reduce`."""
    dev = torch.device(device)
    sizes = {m.image_size for m in models}
    every = images.limit is None or images.limit >= images.total
    print(f"{desc or 'images'}: {len(images)} images" + (f" — every image of {images.spec}; --limit N measures "
          "a seeded sample of N" if every and len(images) > 1 else ""), file=sys.stderr, flush=True)
    with ExitStack() as stack:
        rows_of = [stack.enter_context(probing(m.tower)) for m in models]
        bar = _io.progress(len(images), desc=desc or "images", unit="image")
        stack.callback(bar.close)
        n_layers = [len(attention_modules(m.tower)) for m in models]
        streams = {s: batches(images, s, batch_size, geometry=geometry, alpha=alpha) for s in sizes}
        for _ in range(0, len(images), batch_size):
            raw = {s: next(it) for s, it in streams.items()}
            out = []
            for m, rows, n in zip(models, rows_of, n_layers):
                pixels = raw[m.image_size]
                feed = Feeder(ImageSet(pixels, np.zeros(len(pixels), np.int64), []), dev, mean=m.mean, std=m.std)
                x, _ = feed.get(torch.arange(len(feed)))
                out.append(probed_forward(m.tower, rows, x, n).float())
            reduce(out)
            bar.update(out[0].shape[1])


def mean_sd(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample SD (ddof 1; 0 for one image) over axis 1 of (L, N, ...) values."""
    sd = values.std(1, ddof=1) if values.shape[1] > 1 else np.zeros_like(values[:, 0])
    return values.mean(1), sd

