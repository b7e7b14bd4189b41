"""Attention regularizers on probe rows: APR and the entropy floor.

Both take the training forward's [CLS] rows (L, B, H, T) from `probe.probing` and return
a scalar loss that trains through them (docs/STUDY.md "The original code, and which commit"; docs/CHOICES.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..measure.metrics import entropy, patch_rows

_EPS = 1e-8  # keeps log() finite where a row entry underflows to 0 in fp32


def apr(rows: Tensor, ref_rows: Tensor, lam: float) -> Tensor:
    """Attention Preservation Regularization (reports §3.7.1).

    `λ · mean over layers of mean over (batch, heads) of KL(current ‖ pretrained)` on the
    renormalised [CLS]→patch rows.

    Args:
        rows: (L, B, H, T) current rows (differentiable).
        ref_rows: (L, B, H, T) rows of the pretrained model on the same batch (no grad).
        lam: λ.
    """
    p = patch_rows(rows)
    q = patch_rows(ref_rows.detach())
    kl = (p * (torch.log(p + _EPS) - torch.log(q + _EPS))).sum(-1)  # (L, B, H)
    return lam * kl.mean()


def entropy_floor(rows: Tensor, floor: Tensor, lam: float) -> Tensor:
    """Entropy floor (reports §3.7.2): `λ · Σ_l mean_{b,h} relu(τ_l − H)`.

    Args:
        rows: (L, B, H, T) current rows.
        floor: (L,) τ_l = ratio × the pretrained per-layer entropy on the eval subset.
        lam: λ.
    """
    H = entropy(patch_rows(rows))  # (L, B, H)
    short = torch.relu(floor.to(H).view(-1, 1, 1) - H)
    return lam * short.mean((1, 2)).sum()


