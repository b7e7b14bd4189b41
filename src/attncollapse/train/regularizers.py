"""Attention regularizers on probe rows: APR and the entropy floor.

Both take the training forward's [CLS] rows (L, B, H, T) from `probe.probing` and return
a scalar loss that trains through them (docs/STUDY.md "The original code, and which commit"; docs/CHOICES.md).

A sharply collapsed head underflows in an fp32 softmax: some [CLS]→patch entries are an
exact 0, and in the limit the whole patch mass is (everything on [CLS]). The loss and its
gradient stay finite there (the original study's `+1e-10` did this by smoothing): an
exact-0 entry contributes 0·ln 0 = 0 with a zero gradient (the limit of p·ln p's
contribution through the softmax, p·(−ln p) → 0), and a row with no patch mass is an
all-zero row (entropy 0, KL 0) instead of 0/0. Everywhere else the values are the exact
entropy and KL.
"""

from __future__ import annotations

import torch
from torch import Tensor

_EPS = 1e-8  # floor of the pretrained (target) rows in APR's log: a target 0 costs ln 1e8, not ∞


def renormalized_patch_rows(rows: Tensor) -> Tensor:
    """[CLS]→patch rows renormalised to sum 1; a row with no patch mass stays all zero.

    Args:
        rows: (..., T) [CLS] rows over [CLS] + P patches (fp16/bf16 computed in fp32).

    Returns:
        (..., P) rows summing to 1, or to 0 where all of the row's mass is on [CLS].
    """
    p = rows[..., 1:].to(torch.promote_types(rows.dtype, torch.float32))
    mass = p.sum(-1, keepdim=True)
    # where() rather than `+ eps`: an exact division where there is mass, and no 0/0 (NaN in
    # the loss and its gradient) where there is none.
    return p / torch.where(mass > 0, mass, torch.ones_like(mass))


def xlogx(p: Tensor) -> Tensor:
    """p·ln p elementwise, with 0·ln 0 = 0 and a finite (zero) gradient at p = 0.

    `torch.special.xlogy(p, p)` has the value but a −∞ gradient at 0, which times the
    softmax's 0 is NaN.
    """
    return p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))


def apr(rows: Tensor, ref_rows: Tensor, lam: float) -> Tensor:
    """Attention Preservation Regularization (reports §3.7.1).

    `λ · mean over layers of mean over (batch, heads) of KL(current ‖ pretrained)` on the
    renormalised [CLS]→patch rows, `Σ p ln p − p ln(q + 1e-8)`.

    Args:
        rows: (L, B, H, T) current rows (differentiable).
        ref_rows: (L, B, H, T) rows of the pretrained model on the same batch (no grad).
        lam: λ.
    """
    p = renormalized_patch_rows(rows)
    q = renormalized_patch_rows(ref_rows.detach())
    kl = (xlogx(p) - p * torch.log(q + _EPS)).sum(-1)  # (L, B, H)
    return lam * kl.mean()


def entropy_floor(rows: Tensor, floor: Tensor, lam: float) -> Tensor:
    """Entropy floor (reports §3.7.2): `λ · Σ_l mean_{b,h} relu(τ_l − H)`.

    Args:
        rows: (L, B, H, T) current rows.
        floor: (L,) τ_l = ratio × the pretrained per-layer entropy on the eval subset.
        lam: λ.
    """
    H = -xlogx(renormalized_patch_rows(rows)).sum(-1)  # (L, B, H) nats
    short = torch.relu(floor.to(H).view(-1, 1, 1) - H)
    return lam * short.mean((1, 2)).sum()
