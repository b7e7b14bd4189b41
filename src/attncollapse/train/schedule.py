"""The training schedule as pure functions of the step: learning rate, batch order, flips.

A resumed run recomputes all three from the step alone, so no sampler state is checkpointed.
"""

from __future__ import annotations

import math

import torch


def lr_at(step: int, total: int, peak: float, warmup_frac: float, *, min_warmup: int = 0) -> float:
    """Linear warmup over `warmup_frac` of the steps (at least `min_warmup`), then cosine to 0
    (reports §2.3). The forgetting design uses min_warmup=1 (the authors' `max(1, int(0.05·T))`:
    step 0 has lr 0 even in a short run)."""
    warm = max(min_warmup, int(total * warmup_frac))
    if step < warm:
        return peak * step / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_indices(step: int, steps_per_epoch: int, n: int, batch: int, seed: int) -> torch.Tensor:
    # The permutation of an epoch depends only on (seed, epoch), so a resumed run sees the
    # same order without checkpointing any sampler state.
    epoch, b = divmod(step, steps_per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[b * batch:(b + 1) * batch]


def flip_mask(step: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 7_919 + step * 104_729 + 1)
    return torch.rand(size, generator=g) < 0.5
