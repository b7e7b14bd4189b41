"""The forgetting design's split protocol and balanced subsets (the authors' final study).

From the provided train split, one `numpy.random.RandomState(seed)` draws, in the order
val → probe → train, `k` images per class: for each class in sorted order, the ascending
list of that class's not-yet-used indices is shuffled by the generator and its first `k`
taken. Every run of a matrix gets the same splits (the seed is the data seed, not the
training seed). Balanced subsets of transfer and corruption sets use the same per-class
draw with a fresh generator each (docs/FORGETTING_RUNS.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import DataError


def take_per_class(labels: np.ndarray, k: int, rng: np.random.RandomState, used: set[int]) -> list[int]:
    """`k` unused indices per class (sorted classes; a class's ascending pool shuffled by `rng`).

    Args:
        labels: (N,) class index of every image.
        k: images per class (a class with fewer unused images gives what it has).
        rng: the generator, advanced by one shuffle per class.
        used: indices already taken (not changed here).

    Returns:
        The drawn indices, class by class, in draw order.
    """
    labels = np.asarray(labels)
    out: list[int] = []
    for c in np.unique(labels):  # sorted
        pool = [int(i) for i in np.flatnonzero(labels == c) if int(i) not in used]
        rng.shuffle(pool)
        out.extend(pool[:k])
    return out


def carve_indices(labels: np.ndarray, counts: Sequence[tuple[str, int]], seed: int) -> dict[str, np.ndarray]:
    """Disjoint per-class splits drawn in `counts` order with one generator.

    Args:
        labels: (N,) labels of the provided train split.
        counts: (name, per class) in draw order, e.g. [("val", 30), ("probe", 20), ("train", 160)].
        seed: the data seed (the study: 0).

    Returns:
        {name: sorted (n,) int64 indices into `labels`}.

    Raises:
        DataError: a class has too few images for all the counts together.
    """
    labels = np.asarray(labels)
    need = sum(k for _n, k in counts)
    classes, sizes = np.unique(labels, return_counts=True)
    if len(classes) and sizes.min() < need:
        c = classes[int(np.argmin(sizes))]
        raise DataError(f"split carve needs {need} images per class ({', '.join(f'{n} {k}' for n, k in counts)}); "
                        f"class {c} has {sizes.min()} (lower data.carve)")
    rng = np.random.RandomState(seed)
    used: set[int] = set()
    out = {}
    for name, k in counts:
        got = take_per_class(labels, k, rng, used)
        used.update(got)
        out[name] = np.asarray(sorted(got), dtype=np.int64)
    return out


def balanced_indices(labels: np.ndarray, per_class: int | None, seed: int = 0) -> np.ndarray:
    """A class-balanced subset, sorted: `per_class` per class with a fresh `RandomState(seed)`;
    None = every index."""
    labels = np.asarray(labels)
    if per_class is None:
        return np.arange(len(labels), dtype=np.int64)
    return np.asarray(sorted(take_per_class(labels, per_class, np.random.RandomState(seed), set())), dtype=np.int64)
