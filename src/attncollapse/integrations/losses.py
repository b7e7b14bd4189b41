"""The study's regularizers as loss objects, and a context manager exposing the rows, for any loop.

    with watch(model) as w:                 # the vision tower found inside `model`
        logits = model(pixel_values=x).logits
        loss = F.cross_entropy(logits, y) + floor(w.rows)

The math is `train.regularizers` (APR, entropy floor) — the same functions the study's
own loop trains with; these classes only hold their constants.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from ..measure import ProbeRows, attention_modules, probing, stack_rows
from ..train.regularizers import apr, entropy_floor
from .towers import find_tower, fixed_set_table


class AttentionPriorLoss(nn.Module):
    """Attention Preservation Regularization: `λ · mean_l mean_{b,h} KL(rows ‖ ref_rows)`.

    Call with the training forward's rows and the pretrained model's rows on the same batch
    (`cls_rows(frozen_tower, x)` under `torch.no_grad()`), both (L, B, H, T).
    """

    def __init__(self, lam: float = 0.1):
        super().__init__()
        self.lam = lam

    def forward(self, rows: Tensor, ref_rows: Tensor) -> Tensor:
        return apr(rows, ref_rows, self.lam)


class EntropyFloorLoss(nn.Module):
    """Entropy floor: `λ · Σ_l mean_{b,h} relu(ratio · H⁰_l − H)`.

    Args:
        initial_entropy: (L,) H⁰_l, the pretrained per-layer entropy (see `from_tower`).
        ratio: the floor as a fraction of H⁰ (reports: 0.7).
        lam: λ.
    """

    def __init__(self, initial_entropy, *, ratio: float = 0.7, lam: float = 0.1):
        super().__init__()
        self.register_buffer("floor", ratio * torch.as_tensor(initial_entropy, dtype=torch.float32))
        self.lam = lam

    @classmethod
    def from_tower(cls, tower: nn.Module, pixel_values: Tensor, *, ratio: float = 0.7, lam: float = 0.1,
                   group_size: int = 32) -> "EntropyFloorLoss":
        """H⁰ measured on `pixel_values` (N, 3, S, S) by the tower as it is now (before training)."""
        h0 = fixed_set_table(find_tower(tower), pixel_values, group_size=group_size)["entropy"]
        return cls(h0, ratio=ratio, lam=lam)

    def forward(self, rows: Tensor) -> Tensor:
        return entropy_floor(rows, self.floor, self.lam)


class Watch:
    """The rows of the latest forward inside a `watch` block."""

    def __init__(self, tower: nn.Module, rows: ProbeRows, n_layers: int):
        self.tower, self._rows, self.n_layers = tower, rows, n_layers

    @property
    def rows(self) -> Tensor:
        """(L, B, H, 1 + P) fp32 rows of the latest forward, differentiable."""
        return stack_rows(self._rows, self.n_layers)


@contextmanager
def watch(model: nn.Module, *, tower: nn.Module | None = None) -> Iterator[Watch]:
    """Within the block every forward of `model` also records the tower's rows (`w.rows`).

    Args:
        model: the trained model (the vision tower is found inside it, `find_tower`).
        tower: the vision tower itself, when it cannot be found.
    """
    tower = tower if tower is not None else find_tower(model)
    with probing(tower) as rows:
        yield Watch(tower, rows, len(attention_modules(tower)))
