"""Split protocols, the fixed eval subset, and the entry points `load_splits` / `load_test_split`.

Every source ends as an `ImageSet`: uint8 images already resized and centre-cropped to
the model's resolution, (N, 3, S, S), with integer labels and class names. Where the
images come from is sources.py (the `SOURCES` registry); how they are preprocessed once
and kept on disk is cache.py.
"""

from __future__ import annotations

import numpy as np

from .base import DataError, ImageSet, Source, Splits, cache_root, readable_names, stratified_split
from .cache import PREPROCESS_VERSION, cached_images, variant
from .carve import carve_indices
from .sources import resolve


def eval_subset_indices(labels: np.ndarray, n: int = 200, seed: int = 42) -> np.ndarray:
    """The reports' fixed, class-balanced metric subset, in the original code's draw order.

    `n // classes` images per class drawn with `numpy.random.RandomState(seed)`, class by
    class in label order; then topped up, with the same generator, from the remaining
    images when `n` is not a multiple of the class count or a class is short (Pets:
    37 × 5 + 15), exactly as the original's `create_fixed_eval_subset`.

    The order is part of the result, not an accident: the metrics group the subset into
    batches of `eval.batch_size` in this order and average per-batch values, so sorting
    these indices changes head diversity and (with a short last batch) every metric.
    Every run records them (history.json `eval_idx`).

    Returns:
        (n,) indices into `labels`, in draw order (not sorted).
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
        # The original draws the top-up from `list(set(range(N)) - set(chosen))`. CPython
        # fixes that order (an int hashes to itself): ascending for the real test splits
        # (2,700, 3,669 images), not always for tiny ones, so the same expression is used.
        rest = np.fromiter(set(range(len(labels))) - set(chosen), dtype=np.int64)
        chosen.extend(rng.choice(rest, n - len(chosen), replace=False).tolist())
    return np.asarray(chosen, dtype=np.int64)


def _load(source: str, cfg, image_size: int, splits: tuple[str, ...]) -> tuple[Source, dict[str, ImageSet]]:
    """Resolve `source` and bring the named raw splits to `ImageSet`s through the cache."""
    src = resolve(source, cfg, image_size=image_size)
    how = variant(cfg.preprocess, cfg.alpha)
    names = readable_names(src.class_names)
    out = {}
    for split in splits:
        raw = src.splits[split]
        if raw.ready is not None:
            images = raw.ready
        else:
            images = cached_images(raw, root=cache_root(cfg), source=src.name, split=split,
                                   size=image_size, workers=cfg.cache_workers, how=how)
        out[split] = ImageSet(images, raw.labels, list(names), f"{src.name}/{split}", list(src.class_names))
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
    raw_names = parts[0].raw_class_names
    return ImageSet(images, labels, list(parts[0].class_names), name, None if raw_names is None else list(raw_names))


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
    with `cfg.split_seed`, the 20% serving as val and test (the reports' stated split; the
    hub's EuroSAT has 24,300 images, not the full 27,000, so it gives 19,440 / 4,860, not
    the reports' 21,600 / 5,400);
    "holdout_val" = val carved stratified from train (`cfg.val_frac`), test kept apart;
    "carve" = val, probe and train drawn per class from train (`cfg.carve`, carve.py), the
    probe set in `Splits.probe`, test kept apart.
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
    elif cfg.split == "carve":
        got = carve_indices(train.labels, [("val", cfg.carve.val), ("probe", cfg.carve.probe),
                                           ("train", cfg.carve.train)], cfg.split_seed)
        probe = train.subset(got["probe"], f"{src.name}/probe")
        train, val = train.subset(got["train"], train.name), train.subset(got["val"], f"{src.name}/val")
    else:
        raise DataError(f"unknown split protocol {cfg.split!r}; known: hub, pooled_80_20, holdout_val")
    if cfg.max_train_images is not None and cfg.max_train_images < len(train):
        train = _cap(train, cfg.max_train_images, cfg.split_seed)
    n_eval = cfg.eval_subset_size
    if cfg.split == "carve":  # its signals read the probe set; the test-drawn subset is only a courtesy
        n_eval = min(n_eval, len(test))
    eval_idx = eval_subset_indices(test.labels, n_eval, cfg.eval_subset_seed)
    sizes = {"train": len(train), "val": len(val), "test": len(test)}
    if cfg.split == "carve":
        sizes["probe"] = len(probe)
    info = {"source": src.name, "sizes": sizes,
            "classes": train.num_classes, "split_seed": cfg.split_seed,
            "preprocess_version": PREPROCESS_VERSION, "preprocess": variant(cfg.preprocess, cfg.alpha)}
    return Splits(train=train, val=val, test=test, eval_idx=eval_idx, protocol=cfg.split, info=info,
                  probe=probe if cfg.split == "carve" else None)


def load_named_split(source: str, cfg, split: str, *, image_size: int) -> ImageSet:
    """Any split a source provides by name (an `hf:` dataset's extra splits, e.g. EuroSAT's
    `gaussian_noise`); DataError naming the splits there are when it has none of that name."""
    src = resolve(source, cfg, image_size=image_size)
    if split not in src.splits:
        raise DataError(f"{src.name} has no split {split!r}; splits: {', '.join(src.splits)}")
    return _load(source, cfg, image_size, (split,))[1][split]


def load_test_split(source: str, cfg, *, image_size: int) -> ImageSet:
    """The source's own test split, whatever `cfg.split` says (zero-shot evaluation).

    CIFAR-100 gives its 10,000 test images. Only this split is decoded and cached.
    Its `class_names` are humanized; `.with_class_names("raw")` gives the source's own.

    Args:
        source: as in `load_splits`.
        cfg: a `config.DataConfig` (cache location, columns, synthetic sizes).
        image_size: the model's input resolution S.

    Returns:
        The test `ImageSet`, images (N, 3, S, S) uint8.
    """
    return _load(source, cfg, image_size, ("test",))[1]["test"]
