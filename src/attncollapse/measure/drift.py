"""Forgetting signals against a reference model: CKA per block, embedding drift, weight change.

The authors' final study (docs/FORGETTING.md) asks which label-free signal, read after
one epoch on a few hundred unlabelled target images, tells that a fine-tune is destroying
zero-shot transfer. Besides the attention metrics it reads three drifts against the model
before its first step, defined here once for the study runner and the callbacks alike:

- CKA per block: linear CKA (`structure.linear_cka`) of the [CLS] token's hidden state after
  each block l = 1..L, current against reference, over the probe images (the embedding
  layer is skipped: its [CLS] row is the same for every image).
- embedding drift: 1 − mean over images of cos(z₀ᵢ, zᵢ), z the projected image embedding
  (`visual_projection(pooler_output)` for CLIP; the pooled output where a tower has no
  projection). The projection is the live one, so its training counts.
- weight change: √(Σ_k ‖W_k − W0_k‖²_F) / √(Σ_k ‖W0_k‖²_F) over every parameter of the
  vision tower with LoRA updates merged (scaling·B·A added to the base weight); the
  projection and the head are outside the tower and not counted, as in the authors' code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .structure import linear_cka


def cka_per_block(reference: Tensor, current: Tensor) -> list[float]:
    """Linear CKA of each block's [CLS] states, current against reference.

    Args:
        reference, current: (L, N, D) [CLS] hidden state after each of L blocks, N images.

    Returns:
        L values in [0, 1] (1 = same representation up to rotation and scale).
    """
    if reference.shape[:2] != current.shape[:2]:
        raise ValueError(f"CKA needs the same blocks and images: reference {tuple(reference.shape)}, "
                         f"current {tuple(current.shape)}")
    return [linear_cka(r, c) for r, c in zip(reference, current)]


def embedding_drift(reference: Tensor, current: Tensor) -> float:
    """1 − mean cosine similarity of each image's embedding now and in the reference.

    Args:
        reference, current: (N, E) image embeddings of the same N images.

    Returns:
        A value in [0, 2]; 0 = every embedding points where it pointed.
    """
    if reference.shape != current.shape:
        raise ValueError(f"embedding drift needs embeddings of the same images: reference "
                         f"{tuple(reference.shape)}, current {tuple(current.shape)}")
    cos = nn.functional.cosine_similarity(reference.double(), current.double(), dim=-1)
    return float(1.0 - cos.mean())


def _lora_delta(module: nn.Module) -> Tensor | None:
    # PEFT's LoraLayer: `get_delta_weight(adapter)` (public) is scaling·B·A in the base
    # weight's layout; only active adapters count (as in the forward pass).
    if not (hasattr(module, "lora_A") and callable(getattr(module, "get_delta_weight", None))):
        return None
    names = [a for a in getattr(module, "active_adapters", []) if a in module.lora_A]
    if not names or getattr(module, "disable_adapters", False):
        return None
    return sum(module.get_delta_weight(a).detach().float() for a in names)


@torch.no_grad()
def encoder_weights(tower: nn.Module) -> dict[str, Tensor]:
    """The tower's effective weights, fp32 copies, LoRA updates merged, adapter factors dropped.

    Args:
        tower: the vision tower (a PEFT-wrapped one included: names lose `.base_layer`).

    Returns:
        {canonical parameter name: fp32 tensor on the parameter's device}.
    """
    out: dict[str, Tensor] = {}
    for name, p in tower.named_parameters():
        if ".lora_" in f".{name}" or "lora_embedding" in name or "lora_magnitude" in name:
            continue
        out[name.replace(".base_layer", "")] = p.detach().float().clone()
    for name, module in tower.named_modules():
        delta = _lora_delta(module)
        if delta is not None:
            key = f"{name}.weight".replace(".base_layer", "")
            out[key] = out[key] + delta.to(out[key].device)
    return out


def weight_drift_rel(reference: dict[str, Tensor], current: dict[str, Tensor]) -> float:
    """Global relative Frobenius change √(Σ‖W − W0‖²) / √(Σ‖W0‖²) over the shared names.

    Args:
        reference, current: `encoder_weights` of the same tower before and now.

    Raises:
        ValueError: the two hold different parameter names (not the same tower).
    """
    if reference.keys() != current.keys():
        missing = sorted(set(reference) ^ set(current))[:3]
        raise ValueError(f"weight change needs the same tower before and now; names differ: {missing}")
    num = sum(float((current[k].double() - reference[k].to(current[k].device).double()).square().sum())
              for k in reference)
    den = sum(float(reference[k].double().square().sum()) for k in reference)
    return (num ** 0.5) / max(den ** 0.5, 1e-30)
