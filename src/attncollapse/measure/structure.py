"""Structure measures beyond the [CLS] row: attention rollout, patch-to-patch entropy, CKA, map drift.

The original authors' follow-up (github:xiaruize0911/Attention_Collapse_in_CLIP_Fine-tuning_repo,
`revision_v2/metrics.py` of commit b518f6d and `followup_analysis.py`, which wrote its
CKA tables) added these to the four metrics; the definitions here are theirs, in nats:

- rollout (Abnar & Zuidema 2020 as `compute_attention_rollout` writes it): R₀ = I,
  R_l = (0.5·Ā_l + 0.5·I) · R_{l−1} with Ā_l the head mean of layer l's full map; the
  [CLS] row of R_l over the patches, renormalised (`+1e-10`), is the rollout "up to and
  including layer l" (the follow-up reports only l = L, the full rollout); its entropy,
  ERF@0.95 and Gini are the four metrics' functions (metrics.py).
- patch-to-patch entropy (`compute_patch_to_patch_entropy`): each layer's map restricted
  to patch queries and patch keys, rows renormalised, entropy per row, mean over heads and
  query patches.
- linear CKA (`linear_cka`): ‖X̃ᵀỸ‖²_F / (‖X̃ᵀX̃‖_F ‖ỸᵀỸ‖_F) on column-centred features,
  X = the [CLS] token's hidden state after layer l of each eval image (N × D), Y = the
  pretrained model's (`followup_analysis.py` `extract_hidden_states` + `linear_cka`).
- map drift (the issue's definition; the follow-up names "heatmap drift" without a
  formula): Jensen–Shannon divergence (natural log) between the head-averaged
  [CLS]→patch maps of the current and the pretrained model, per image, mean over images.

Every function is pure, on tensors; `observe` turns one probed forward into what the
measures need and `structure_table` turns the eval subset's observations into the
per-layer table. A family without a [CLS] token (SigLIP, probe query "mean") uses the
mean over queries where [CLS]'s row is used and the mean token where its state is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import metrics

STRUCTURE = ("rollout_entropy", "rollout_erf", "rollout_gini", "patch_entropy", "cka", "map_drift")
"""history.json `structure` keys, each a list with one value per layer (docs/FORMATS.md)."""


def rollout_rows(mean_maps: Tensor, *, prefix_tokens: int = 1, query: str = "first") -> Tensor:
    """Rollout of the query row through layers 1..l, for every l.

    Args:
        mean_maps: (L, B, T, T) head-averaged attention maps (rows sum to 1), raw token order.
        prefix_tokens: tokens before the patches ([CLS] + registers).
        query: "first" (row of token 0, [CLS]) or "mean" (mean row over all tokens).

    Returns:
        (L, B, P) fp32: entry l is the [CLS] row of (0.5·Ā_l + 0.5·I)…(0.5·Ā_1 + 0.5·I)
        over the patches, renormalised with the follow-up's `+1e-10`.
    """
    L, B, T, _ = mean_maps.shape
    eye = torch.eye(T, dtype=torch.float32, device=mean_maps.device)
    result = eye.expand(B, T, T)
    out = []
    for a in mean_maps.float():
        result = torch.bmm(0.5 * a + 0.5 * eye, result)
        out.append(result[:, 0] if query == "first" else result.mean(1))
    rows = torch.stack(out)[..., prefix_tokens:]
    return rows / (rows.sum(-1, keepdim=True) + 1e-10)


def patch_entropy(maps: Tensor, *, prefix_tokens: int = 1) -> Tensor:
    """Mean entropy (nats) of the patch→patch rows of one layer's maps, per image.

    Args:
        maps: (..., H, T, T) attention maps of one layer (raw token order).

    Returns:
        (...) mean over heads and query patches of the entropy of each patch query's row
        over the patch keys, renormalised (`+1e-10`, the follow-up's).
    """
    pp = maps[..., prefix_tokens:, prefix_tokens:].float()
    pp = pp / (pp.sum(-1, keepdim=True) + 1e-10)
    return metrics.entropy(pp).mean((-1, -2))


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of two representations of the same N examples (Kornblith et al. 2019).

    Args:
        x: (N, D1) features; y: (N, D2) features.

    Returns:
        ‖X̃ᵀỸ‖²_F / (‖X̃ᵀX̃‖_F ‖ỸᵀỸ‖_F), X̃, Ỹ column-centred, in float64: 1 for equal
        inputs, invariant to orthogonal transforms and isotropic scaling.
    """
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    if x.shape[0] <= min(x.shape[1], y.shape[1]):
        # Gram form, N × N (the eval subset is smaller than the width): ‖X̃ᵀỸ‖²_F = ⟨X̃X̃ᵀ, ỸỸᵀ⟩
        kx, ky = x @ x.T, y @ y.T
        hsic, nx, ny = (kx * ky).sum(), kx.norm(), ky.norm()
    else:
        hsic, nx, ny = (x.T @ y).square().sum(), (x.T @ x).norm(), (y.T @ y).norm()
    return float(hsic / (nx * ny).clamp_min(1e-20))


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen–Shannon divergence in nats, ½KL(p‖m) + ½KL(q‖m), m = (p + q)/2, over the last dim.

    Args:
        p, q: (..., P) probability rows.

    Returns:
        (...) values in [0, ln 2]; 0 ln 0 = 0.
    """
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)
    kl_pm = (torch.special.xlogy(p, p) - torch.special.xlogy(p, m)).sum(-1)
    kl_qm = (torch.special.xlogy(q, q) - torch.special.xlogy(q, m)).sum(-1)
    return 0.5 * (kl_pm + kl_qm)


@dataclass
class StructureObs:
    """What eval forwards observed for the structure measures, N images in eval order.

    Attributes:
        rollout: (L, N, P) rollout rows up to each layer (`rollout_rows`).
        patch_entropy: (L, N) per-image patch→patch entropy (`patch_entropy`).
        cls_maps: (L, N, P) head-averaged [CLS]→patch maps (per-head rows renormalised).
        hidden: (L, N, D) the [CLS] token's hidden state after each layer.
    """

    rollout: Tensor
    patch_entropy: Tensor
    cls_maps: Tensor
    hidden: Tensor

    @classmethod
    def cat(cls, parts: list["StructureObs"]) -> "StructureObs":
        """Observations of consecutive batches joined along the image dimension."""
        return cls(*(torch.cat([getattr(p, f) for p in parts], dim=1)
                     for f in ("rollout", "patch_entropy", "cls_maps", "hidden")))


@dataclass
class StructureReference:
    """The pretrained model's side of CKA and map drift: its observations on the eval subset.

    Attributes:
        cls_maps: (L, N, P) head-averaged [CLS]→patch maps of the model before its first step.
        hidden: (L, N, D) its [CLS] hidden states.
    """

    cls_maps: Tensor
    hidden: Tensor

    @classmethod
    def of(cls, obs: StructureObs) -> "StructureReference":
        return cls(cls_maps=obs.cls_maps.clone(), hidden=obs.hidden.clone())


def query_token(hidden: Tensor, query: str = "first") -> Tensor:
    """(B, T, D) layer output → (B, D): the [CLS] token's state ("first") or the mean token ("mean")."""
    return hidden[:, 0] if query == "first" else hidden.mean(1)


def observe(maps: list[Tensor], rows: Tensor, tokens: Tensor, *, prefix_tokens: int = 1,
            query: str = "first") -> StructureObs:
    """One probed forward's observations.

    Args:
        maps: L full maps (B, H, T, T) (`ProbeRows.maps`).
        rows: (L, B, H, 1 + P) canonical query rows (`probed_forward`).
        tokens: (L, B, D) `query_token` of each layer's output (the hidden states 1..L).
        prefix_tokens, query: the tower's probe spec.
    """
    if len(tokens) != len(maps):
        raise RuntimeError(f"{len(tokens)} layer outputs for {len(maps)} probed layers")
    mean_maps = torch.stack([m.float().mean(1) for m in maps])  # (L, B, T, T)
    return StructureObs(
        rollout=rollout_rows(mean_maps, prefix_tokens=prefix_tokens, query=query),
        patch_entropy=torch.stack([patch_entropy(m, prefix_tokens=prefix_tokens) for m in maps]),
        cls_maps=metrics.patch_rows(rows).mean(2),
        hidden=tokens.float())


def structure_table(obs: StructureObs, ref: StructureReference, *, group_size: int = 32, erf_q: float = 0.95,
                    aggregate: str = "per_batch") -> dict[str, list[float]]:
    """The per-layer structure table of one eval point.

    Rollout and patch-entropy measures go over images as the four metrics do (`aggregate`,
    `group_size`: metrics.summarize); CKA is over all N images at once; map drift is the
    mean over images.

    Returns:
        {name: [L floats]} for every name of `STRUCTURE`.
    """
    per_image = {"rollout_entropy": metrics.entropy(obs.rollout), "rollout_erf": metrics.erf(obs.rollout, erf_q),
                 "rollout_gini": metrics.gini(obs.rollout), "patch_entropy": obs.patch_entropy}
    table = {k: _over_images(v, group_size, aggregate) for k, v in per_image.items()}
    table["cka"] = [linear_cka(x, y) for x, y in zip(obs.hidden, ref.hidden)]
    table["map_drift"] = js_divergence(obs.cls_maps, ref.cls_maps).mean(1)
    return {k: [float(x) for x in (v.tolist() if isinstance(v, Tensor) else v)] for k, v in table.items()}


def _over_images(values: Tensor, group: int, aggregate: str) -> Tensor:
    """(L, N) → (L,): mean over images, or the unweighted mean of group means (metrics.summarize)."""
    if aggregate == "per_image":
        return values.mean(1)
    return torch.stack([chunk.mean(1) for chunk in values.split(group, dim=1)], 1).mean(1)


def structure_run_values(structure: dict[str, list[float]]) -> dict[str, float]:
    """A point's run-level values: the full rollout (last layer) for rollout_*, the mean over
    layers for patch_entropy, cka and map_drift."""
    out = {k: structure[k][-1] for k in ("rollout_entropy", "rollout_erf", "rollout_gini")}
    out.update({k: sum(structure[k]) / len(structure[k]) for k in ("patch_entropy", "cka", "map_drift")})
    return out
