"""The four attention-structure metrics, as pure tensor functions.

Definitions follow docs/STUDY.md "What is measured", docs/CHOICES.md and the English report §2:
entropy in nats, ERF@q as a fraction of patches, Gini over the sorted row, head
diversity as one minus the mean pairwise cosine between heads. Every function works on
any leading dimensions; the metric is taken over the last one (patches) or the last two
(heads, patches).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

METRICS = ("entropy", "erf", "gini", "head_diversity")
Diversity = Literal["batch_mean", "per_image"]
Aggregate = Literal["per_batch", "per_image"]


def patch_rows(rows: Tensor, *, n_prefix: int = 1) -> Tensor:
    """Drop the [CLS]→[CLS] entry (and any other prefix tokens) and renormalise.

    Args:
        rows: (..., T) attention rows of the [CLS] query over all T tokens.
        n_prefix: leading non-patch tokens to drop (1 for CLIP: the [CLS] token).

    Returns:
        (..., T - n_prefix) rows over patches that sum to 1.
    """
    p = rows[..., n_prefix:].float()
    return p / p.sum(-1, keepdim=True)


def entropy(rows: Tensor) -> Tensor:
    """Shannon entropy in nats, with 0·ln 0 = 0.

    Args:
        rows: (..., P) probability rows.

    Returns:
        (...) entropy; ln P for a uniform row, 0 for a one-hot row.
    """
    return -torch.special.xlogy(rows, rows).sum(-1)


def erf(rows: Tensor, q: float = 0.95) -> Tensor:
    """Effective receptive field: smallest fraction of patches holding mass ≥ q.

    Args:
        rows: (..., P) probability rows.
        q: the mass to cover (reports: 0.95).

    Returns:
        (...) k / P, where k is the smallest count of largest entries whose sum ≥ q.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"erf: q must be in (0, 1], got {q}")
    P = rows.shape[-1]
    # float64 cumulative sum: a sum of 49 float32 terms can land a hair under q when the
    # exact value equals q, which would shift k by one.
    csum = rows.double().sort(-1, descending=True).values.cumsum(-1)
    k = (csum < q - 1e-12).sum(-1) + 1
    return k.clamp(max=P).to(rows.dtype) / P


def gini(rows: Tensor) -> Tensor:
    """Gini coefficient: G = 2 Σ i·x_(i) / (N Σ x) − (N + 1) / N with x ascending.

    Args:
        rows: (..., N) non-negative rows.

    Returns:
        (...) 0 for a uniform row, (N − 1) / N for a one-hot row.
    """
    N = rows.shape[-1]
    x = rows.sort(-1).values
    i = torch.arange(1, N + 1, dtype=x.dtype, device=x.device)
    return 2.0 * (x * i).sum(-1) / (N * x.sum(-1)) - (N + 1) / N


def head_diversity(rows: Tensor) -> Tensor:
    """One minus the mean pairwise cosine similarity among heads.

    Args:
        rows: (..., H, P) one row per head (H ≥ 2).

    Returns:
        (...) D = 1 − mean_{i<j} cos(row_i, row_j); 0 for identical heads.
    """
    H = rows.shape[-2]
    if H < 2:
        raise ValueError("head_diversity needs at least two heads")
    unit = torch.nn.functional.normalize(rows.float(), dim=-1)
    gram = unit @ unit.transpose(-1, -2)  # (..., H, H)
    off_diag = gram.sum((-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    return 1.0 - off_diag / (H * (H - 1))


def summarize(
    cls_rows: Tensor,
    *,
    n_prefix: int = 1,
    erf_q: float = 0.95,
    diversity: Diversity = "batch_mean",
    diversity_batch: int = 32,
    aggregate: Aggregate = "per_batch",
) -> dict[str, list[float]]:
    """Per-layer table of the four metrics over a set of eval images.

    The images are taken in batches of `diversity_batch`, in the order given (the eval
    subset's draw order), the last batch possibly shorter, as the original eval loop did.

    Args:
        cls_rows: (L, N, H, T) [CLS] rows for L layers, N images, H heads, T tokens.
        n_prefix: leading non-patch tokens dropped before every metric.
        erf_q: mass for ERF.
        diversity: "batch_mean" (the reports' definition: average each head's row over a
            batch of images, then D) or "per_image" (D of each image).
        diversity_batch: images per batch (reports: 32).
        aggregate: "per_batch" = unweighted mean over batches of each batch's mean (the
            original code: a batch of 8 weighs as much as one of 32) or "per_image" = mean
            over images (a batch-mean diversity counts once per image of its batch).

    Returns:
        {"entropy": [L], "erf": [L], "gini": [L], "head_diversity": [L]}; entropy, ERF
        and Gini averaged over heads first.
    """
    if cls_rows.dim() != 4:
        raise ValueError(f"summarize expects (layers, images, heads, tokens), got {tuple(cls_rows.shape)}")
    if aggregate not in ("per_batch", "per_image"):
        raise ValueError(f"unknown aggregate {aggregate!r}; expected 'per_batch' or 'per_image'")
    a = patch_rows(cls_rows, n_prefix=n_prefix)  # (L, N, H, P)
    per_image = {"entropy": entropy(a).mean(2), "erf": erf(a, erf_q).mean(2), "gini": gini(a).mean(2)}  # (L, N)
    sizes = [len(c) for c in torch.arange(a.shape[1]).split(diversity_batch)]
    if diversity == "batch_mean":
        per_batch = torch.stack([head_diversity(chunk.mean(1)) for chunk in a.split(diversity_batch, dim=1)], 1)
        # one value per batch, repeated for each of its images: (L, N)
        per_image["head_diversity"] = per_batch.repeat_interleave(torch.tensor(sizes, device=a.device), dim=1)
    elif diversity == "per_image":
        per_image["head_diversity"] = head_diversity(a)
    else:
        raise ValueError(f"unknown diversity mode {diversity!r}; expected 'batch_mean' or 'per_image'")
    table = {k: _over_images(v, diversity_batch, aggregate) for k, v in per_image.items()}
    return {k: [float(x) for x in v.tolist()] for k, v in table.items()}


def _over_images(values: Tensor, batch: int, aggregate: str) -> Tensor:
    """(L, N) per-image values -> (L,) layer values, per `summarize`'s `aggregate`."""
    if aggregate == "per_image":
        return values.mean(1)
    return torch.stack([chunk.mean(1) for chunk in values.split(batch, dim=1)], 1).mean(1)


def layer_mean(table: dict[str, list[float]]) -> dict[str, float]:
    """Run value of each metric: the mean over layers."""
    return {k: sum(v) / len(v) for k, v in table.items() if k in METRICS}


def delta_pct(initial: float, final: float) -> float:
    """Δ% = 100 · (final − initial) / initial (reports' definition)."""
    return 100.0 * (final - initial) / initial if initial != 0 else float("nan")
