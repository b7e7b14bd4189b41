"""Serving normalised batches from uint8 images by index, on the device."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .base import CLIP_MEAN, CLIP_STD, ImageSet


class Feeder:
    """Serves normalised batches from an `ImageSet` by index.

    The uint8 array moves to `device` once when `resident` (a 224-px EuroSAT is ~4 GB of
    uint8, a small part of an H100); otherwise each batch is gathered on the host, pinned
    and copied asynchronously. Normalisation (and the optional flip) run on the device.

    Args:
        images: the uint8 images (N, 3, S, S) and their labels.
        device: where batches are served.
        resident: keep the whole uint8 array on `device` (default: on CPU always, on CUDA
            when it takes under a quarter of the free memory).
        mean, std: the model's per-channel normalisation, (x / 255 - mean) / std. The data
            stage knows no model: callers pass their family's constants
            (`models.normalization`); the default is CLIP's.
    """

    def __init__(self, images: ImageSet, device: torch.device | str, *, resident: bool | None = None,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        self.set = images
        self.device = torch.device(device)
        if resident is None:
            resident = self.device.type == "cuda" and _fits_on_gpu(images.images.nbytes, self.device)
        self.resident = resident or self.device.type == "cpu"
        with warnings.catch_warnings():
            # a read-only memory map of the cache: never written through, so the warning
            # about non-writable arrays does not apply (and copying it would double memory)
            warnings.filterwarnings("ignore", message=".*not writable.*")
            host = torch.from_numpy(np.ascontiguousarray(images.images))
        self.images = host.to(self.device) if self.resident else host
        self.labels = torch.from_numpy(np.asarray(images.labels, dtype=np.int64)).to(self.device)
        self.norm = _checked_norm(mean, std)
        self.mean = torch.tensor(self.norm[0], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.norm[1], device=self.device).view(1, 3, 1, 1)

    def of(self, images: ImageSet) -> "Feeder":
        """A Feeder of other `images` on the same device with the same normalisation."""
        return Feeder(images, self.device, mean=self.norm[0], std=self.norm[1])

    def __len__(self) -> int:
        return len(self.set)

    def get(self, idx: Tensor, *, flip: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Batch `idx` as (pixels (B, 3, S, S) float32 normalised, labels (B,) int64).

        Args:
            idx: (B,) int64 indices (any device).
            flip: optional (B,) bool mask of images to flip horizontally.
        """
        if self.resident:
            raw = self.images.index_select(0, idx.to(self.device))
        else:
            raw = self.images.index_select(0, idx.cpu()).pin_memory().to(self.device, non_blocking=True)
        if flip is not None:  # on uint8: a quarter of the bytes of flipping floats
            flip = flip.to(self.device).view(-1, 1, 1, 1)
            raw = torch.where(flip, raw.flip(-1), raw)
        x = raw.float().div_(255.0).sub_(self.mean).div_(self.std)  # in place: one float buffer
        return x, self.labels.index_select(0, idx.to(self.device))

    def batches(self, batch_size: int):
        """In-order batches over the whole set (evaluation)."""
        n = len(self)
        for s in range(0, n, batch_size):
            yield self.get(torch.arange(s, min(s + batch_size, n)))


def _checked_norm(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) as tuples of 3 floats, std positive; else a one-line ValueError."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"image normalisation needs 3 means and 3 positive stds (RGB), got mean={mean} std={std}")
    return mean, std


def _fits_on_gpu(nbytes: int, device: torch.device) -> bool:
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes < free // 4
