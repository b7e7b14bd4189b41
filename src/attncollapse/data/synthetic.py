"""Procedural class-conditional images: the offline data set of the demo and the tests."""

from __future__ import annotations

import os

import numpy as np

from .base import ImageSet


def synthetic(n: int, num_classes: int, size: int, *, seed: int = 0, split: str = "train") -> ImageSet:
    """Procedural class-conditional images: an oriented grating and a colour per class.

    Deterministic for a given (n, num_classes, size, seed, split); any size, any number of
    classes. Learnable by a tiny ViT in a few hundred steps, with per-image noise so the
    task is not trivial. Each image is `clip(255 · (colour_c + 0.25 · sin(2π f_c (cos θ_c x
    + sin θ_c y) + phase) + N(0, 0.12)))`.

    Made in chunks: the random draws stay in their per-image order (so the pixels do not
    depend on the chunking), the arithmetic runs vectorised in threads. The result of a
    call is kept in memory (`_SYNTHETIC_MEMO_BYTES`) and returned read-only, so the runs of
    a matrix, and a run's zero-shot pass, do not make the same images again.
    """
    key = (int(n), int(num_classes), int(size), int(seed), str(split))
    hit = _synthetic_memo.get(key)
    if hit is None:
        hit = _make_synthetic(*key)
        _remember(key, hit)
    images, labels = hit
    names = [f"class {c}" for c in range(num_classes)]
    return ImageSet(images, labels.copy(), names, f"synthetic/{split}")

_SYNTHETIC_MEMO_BYTES = 6 * 2**30
"""Memory kept for made synthetic sets (newest first); a 224-px EuroSAT-sized train split is 3.3 GB."""

_synthetic_memo: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _remember(key: tuple, value: tuple[np.ndarray, np.ndarray]) -> None:
    if value[0].nbytes > _SYNTHETIC_MEMO_BYTES:
        return
    _synthetic_memo[key] = value
    while sum(v[0].nbytes for v in _synthetic_memo.values()) > _SYNTHETIC_MEMO_BYTES:
        del _synthetic_memo[next(iter(_synthetic_memo))]  # the oldest entry


def _make_synthetic(n: int, num_classes: int, size: int, seed: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    from concurrent.futures import ThreadPoolExecutor

    split_off = {"train": 0, "test": 1, "val": 2}.get(split, 3)
    rng = np.random.default_rng([seed, split_off, num_classes, size])
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    cls_rng = np.random.default_rng([seed, num_classes, 7])  # class prototypes: shared by all splits
    angles = cls_rng.uniform(0, np.pi, num_classes)
    freqs = cls_rng.uniform(1.5, 4.0, num_classes)
    colours = cls_rng.uniform(0.2, 0.8, (num_classes, 3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # The grating's argument without the phase, per class (float64, as numpy promotes it).
    base = np.stack([2 * np.pi * freqs[c] * (np.cos(angles[c]) * xx + np.sin(angles[c]) * yy)
                     for c in range(num_classes)])
    images = np.empty((n, 3, size, size), dtype=np.uint8)

    def paint(lo: int, hi: int, phases: np.ndarray, noise: np.ndarray) -> None:
        c = labels[lo:hi]
        wave = base[c]
        wave += phases[:, None, None]
        np.sin(wave, out=wave)
        wave *= 0.25
        img = colours[c][:, :, None, None] + wave[:, None]
        noise *= 0.12  # Generator.normal(0, s) draws 0 + s·z from the same standard normal z
        img += noise
        img *= 255
        np.clip(img, 0, 255, out=img)
        images[lo:hi] = img.astype(np.uint8)

    chunk = max(1, (1 << 21) // (size * size))  # ~50 MB of float64 noise per chunk
    workers = max(1, min(4, (os.cpu_count() or 1) - 1))
    with ThreadPoolExecutor(workers) as pool:
        pending = []
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            phases = np.empty(hi - lo)
            noise = np.empty((hi - lo, 3, size, size))
            for j in range(hi - lo):  # the stream's order: phase, then noise, image by image
                phases[j] = rng.uniform(0, 2 * np.pi)
                rng.standard_normal(out=noise[j])
            pending.append(pool.submit(paint, lo, hi, phases, noise))
            while len(pending) > workers:  # bound the noise buffers in flight
                pending.pop(0).result()
        for f in pending:
            f.result()
    images.setflags(write=False)
    return images, labels.astype(np.int64)
