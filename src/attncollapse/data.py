"""Dataset sources, splits, the fixed eval subset and the uint8 image feed.

Every source ends as an `ImageSet`: uint8 images already resized and centre-cropped to
the model's resolution, (N, 3, S, S), with integer labels and class names. Training
batches are index lookups into that array (GPU-resident when it fits), normalised on the
device, so no per-image PIL work happens in the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

# CLIP's image normalisation (openai/clip-vit-base-patch32 preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageSet:
    """Preprocessed images of one split.

    Attributes:
        images: (N, 3, S, S) uint8 array (possibly a read-only memory map).
        labels: (N,) int64 class indices.
        class_names: human-readable name of each class (used for zero-shot prompts).
        name: "<source>/<split>" for messages and records.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    name: str = "images"

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, idx: np.ndarray, name: str | None = None) -> "ImageSet":
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet(np.ascontiguousarray(self.images[idx]), self.labels[idx].copy(),
                        list(self.class_names), name or self.name)


@dataclass
class Splits:
    """What one run trains and evaluates on.

    Attributes:
        train: the training images.
        val: the split used to select the best checkpoint (the test split under the
            original protocol "hub").
        test: the reported test split.
        eval_idx: indices into `test` of the fixed metric eval subset.
        protocol: the split protocol's name, recorded with every result.
    """

    train: ImageSet
    val: ImageSet
    test: ImageSet
    eval_idx: np.ndarray
    protocol: str = "hub"
    info: dict = field(default_factory=dict)

    @property
    def eval_set(self) -> ImageSet:
        return self.test.subset(self.eval_idx, name=self.test.name + "[eval]")


def eval_subset_indices(labels: np.ndarray, n: int = 200, seed: int = 42) -> np.ndarray:
    """The reports' fixed, class-balanced metric subset.

    `n // classes` images per class drawn with `numpy.random.RandomState(seed)`, class by
    class in label order; topped up from the remaining images if some class is short.

    Returns:
        (n,) sorted indices into `labels`.
    """
    labels = np.asarray(labels)
    if len(labels) < n:
        raise ValueError(f"eval subset needs {n} images, the split has only {len(labels)}")
    rng = np.random.RandomState(seed)
    classes = np.unique(labels)
    per_class = n // len(classes)
    chosen: list[int] = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        take = min(per_class, len(pool))
        chosen.extend(rng.choice(pool, take, replace=False).tolist())
    if len(chosen) < n:
        rest = np.setdiff1d(np.arange(len(labels)), np.asarray(chosen, dtype=np.int64))
        chosen.extend(rng.choice(rest, n - len(chosen), replace=False).tolist())
    return np.sort(np.asarray(chosen, dtype=np.int64))


def synthetic(n: int, num_classes: int, size: int, *, seed: int = 0, split: str = "train") -> ImageSet:
    """Procedural class-conditional images: an oriented grating and a colour per class.

    Deterministic for a given (n, num_classes, size, seed, split); any size, any number of
    classes. Learnable by a tiny ViT in a few hundred steps, with per-image noise so the
    task is not trivial.
    """
    split_off = {"train": 0, "test": 1, "val": 2}.get(split, 3)
    rng = np.random.default_rng([seed, split_off, num_classes, size])
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    cls_rng = np.random.default_rng([seed, num_classes, 7])  # class prototypes: shared by all splits
    angles = cls_rng.uniform(0, np.pi, num_classes)
    freqs = cls_rng.uniform(1.5, 4.0, num_classes)
    colours = cls_rng.uniform(0.2, 0.8, (num_classes, 3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    for i, c in enumerate(labels):
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freqs[c] * (np.cos(angles[c]) * xx + np.sin(angles[c]) * yy) + phase)
        img = colours[c][:, None, None] + 0.25 * wave[None] + rng.normal(0, 0.12, (3, size, size))
        images[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    names = [f"class {c}" for c in range(num_classes)]
    return ImageSet(images, labels.astype(np.int64), names, f"synthetic/{split}")


class Feeder:
    """Serves normalised batches from an `ImageSet` by index.

    The uint8 array moves to `device` once when `resident` (a 224-px EuroSAT is ~4 GB of
    uint8, a small part of an H100); otherwise each batch is gathered on the host, pinned
    and copied asynchronously. Normalisation (and the optional flip) run on the device.
    """

    def __init__(self, images: ImageSet, device: torch.device | str, *, resident: bool | None = None):
        self.set = images
        self.device = torch.device(device)
        if resident is None:
            resident = self.device.type == "cuda" and _fits_on_gpu(images.images.nbytes, self.device)
        self.resident = resident or self.device.type == "cpu"
        host = torch.from_numpy(np.ascontiguousarray(images.images))
        self.images = host.to(self.device) if self.resident else host
        self.labels = torch.from_numpy(np.asarray(images.labels, dtype=np.int64)).to(self.device)
        self.mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)

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
        x = (raw.float().div_(255.0) - self.mean) / self.std
        if flip is not None:
            flip = flip.to(self.device).view(-1, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        return x, self.labels.index_select(0, idx.to(self.device))

    def batches(self, batch_size: int):
        """In-order batches over the whole set (evaluation)."""
        n = len(self)
        for s in range(0, n, batch_size):
            yield self.get(torch.arange(s, min(s + batch_size, n)))


def _fits_on_gpu(nbytes: int, device: torch.device) -> bool:
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes < free // 4


def load_splits(source: str, cfg, *, image_size: int) -> Splits:
    """Train/val/test `ImageSet`s and the eval subset for a source string.

    Args:
        source: "synthetic" (more sources: see SOURCES).
        cfg: a `config.DataConfig`.
        image_size: the model's input resolution S.
    """
    if source != "synthetic":
        raise ValueError(f"unknown data source {source!r}")
    train = synthetic(cfg.synthetic_train, cfg.synthetic_classes, image_size, seed=cfg.split_seed, split="train")
    test = synthetic(cfg.synthetic_test, cfg.synthetic_classes, image_size, seed=cfg.split_seed, split="test")
    if cfg.max_train_images is not None and cfg.max_train_images < len(train):
        train = train.subset(np.arange(cfg.max_train_images))
    eval_idx = eval_subset_indices(test.labels, cfg.eval_subset_size, cfg.eval_subset_seed)
    return Splits(train=train, val=test, test=test, eval_idx=eval_idx, protocol=cfg.split)
