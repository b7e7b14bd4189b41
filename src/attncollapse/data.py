"""Dataset sources, splits, the fixed eval subset and the uint8 image feed.

Every source ends as an `ImageSet`: uint8 images already resized and centre-cropped to
the model's resolution, (N, 3, S, S), with integer labels and class names. Training
batches are index lookups into that array (GPU-resident when it fits), normalised on the
device, so no per-image PIL work happens in the training loop.

Where the images come from is `sources.py` (the `SOURCES` registry); how they are
preprocessed once and kept on disk is `cache.py`. This module holds the split protocols
and the public entry points `load_splits` and `load_test_split`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .cache import PREPROCESS_VERSION, cache_root, cached_images, preprocess
from .sources import HF_SHORTCUTS, SOURCES, DataError, Source, resolve, stratified_split

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "DataError", "Feeder", "HF_SHORTCUTS", "ImageSet", "PREPROCESS_VERSION",
    "SOURCES", "Splits", "cache_root", "eval_subset_indices", "load_splits", "load_test_split",
    "preprocess", "synthetic",
]

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
        raise DataError(f"eval subset needs {n} images, the test split has only {len(labels)} "
                        "(lower data.eval_subset_size)")
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
        with warnings.catch_warnings():
            # a read-only memory map of the cache: never written through, so the warning
            # about non-writable arrays does not apply (and copying it would double memory)
            warnings.filterwarnings("ignore", message=".*not writable.*")
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


def _fits_on_gpu(nbytes: int, device: torch.device) -> bool:
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes < free // 4


def _load(source: str, cfg, image_size: int, splits: tuple[str, ...]) -> tuple[Source, dict[str, ImageSet]]:
    """Resolve `source` and bring the named raw splits to `ImageSet`s through the cache."""
    src = resolve(source, cfg, image_size=image_size)
    out = {}
    for split in splits:
        raw = src.splits[split]
        if raw.ready is not None:
            images = raw.ready
        else:
            images = cached_images(raw, root=cache_root(cfg), source=src.name, split=split,
                                   size=image_size, workers=cfg.cache_workers)
        out[split] = ImageSet(images, raw.labels, list(src.class_names), f"{src.name}/{split}")
    return src, out


def _gather(parts: list[ImageSet], idx: np.ndarray, name: str) -> ImageSet:
    """Images `idx` of the concatenation of `parts`, without materialising the concatenation."""
    offsets = np.cumsum([0] + [len(p) for p in parts])
    images = np.empty((len(idx),) + parts[0].images.shape[1:], dtype=np.uint8)
    labels = np.empty(len(idx), dtype=np.int64)
    for k, p in enumerate(parts):
        sel = np.flatnonzero((idx >= offsets[k]) & (idx < offsets[k + 1]))
        local = idx[sel] - offsets[k]
        images[sel], labels[sel] = p.images[local], p.labels[local]
    return ImageSet(images, labels, list(parts[0].class_names), name)


def _cap(train: ImageSet, n: int, seed: int) -> ImageSet:
    """A seeded, stratified subset of `n` training images (random if too few per class)."""
    try:
        idx, _ = stratified_split(train.labels, len(train) - n, seed)
    except DataError:
        idx = np.sort(np.random.RandomState(seed).choice(len(train), n, replace=False))
    return train.subset(idx)


def load_splits(source: str, cfg, *, image_size: int) -> Splits:
    """Train/val/test `ImageSet`s and the eval subset for a source string.

    Protocols (`cfg.split`): "hub" = the source's train and test, test doubling as val
    (original study's code); "pooled_80_20" = train+test pooled and split stratified 80/20
    with `cfg.split_seed`, the 20% serving as val and test (the reports' stated split);
    "holdout_val" = val carved stratified from train (`cfg.val_frac`), test kept apart.
    `cfg.max_train_images` then caps train (seeded, stratified). The eval subset indexes
    `test`.

    Args:
        source: a name in `HF_SHORTCUTS`, "synthetic", "digits", "hf:<id or dir>",
            "imagefolder:<path>" or "torchvision:<Name>" (see `SOURCES`).
        cfg: a `config.DataConfig`.
        image_size: the model's input resolution S.

    Raises:
        DataError: unknown source, missing path or column, unreadable image, too few images.
    """
    src, sets = _load(source, cfg, image_size, ("train", "test"))
    train, test = sets["train"], sets["test"]
    if cfg.split == "hub":
        val = test
    elif cfg.split == "pooled_80_20":
        labels = np.concatenate([train.labels, test.labels])
        tr, te = stratified_split(labels, 0.2, cfg.split_seed)
        train = _gather([train, test], tr, f"{src.name}/pooled_train")
        test = val = _gather([sets["train"], test], te, f"{src.name}/pooled_test")
    elif cfg.split == "holdout_val":
        tr, va = stratified_split(train.labels, cfg.val_frac, cfg.split_seed)
        train, val = train.subset(tr, train.name), train.subset(va, f"{src.name}/val")
    else:
        raise DataError(f"unknown split protocol {cfg.split!r}; known: hub, pooled_80_20, holdout_val")
    if cfg.max_train_images is not None and cfg.max_train_images < len(train):
        train = _cap(train, cfg.max_train_images, cfg.split_seed)
    eval_idx = eval_subset_indices(test.labels, cfg.eval_subset_size, cfg.eval_subset_seed)
    info = {"source": src.name, "sizes": {"train": len(train), "val": len(val), "test": len(test)},
            "classes": train.num_classes, "split_seed": cfg.split_seed,
            "preprocess_version": PREPROCESS_VERSION}
    return Splits(train=train, val=val, test=test, eval_idx=eval_idx, protocol=cfg.split, info=info)


def load_test_split(source: str, cfg, *, image_size: int) -> ImageSet:
    """The source's own test split, whatever `cfg.split` says (zero-shot evaluation).

    CIFAR-100 gives its 10,000 test images. Only this split is decoded and cached.

    Args:
        source: as in `load_splits`.
        cfg: a `config.DataConfig` (cache location, columns, synthetic sizes).
        image_size: the model's input resolution S.

    Returns:
        The test `ImageSet`, images (N, 3, S, S) uint8.
    """
    return _load(source, cfg, image_size, ("test",))[1]["test"]
