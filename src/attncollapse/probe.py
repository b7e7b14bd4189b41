"""The [CLS] attention probe: fused attention plus the one row the study needs.

The reports read attention with `attn_implementation="eager"` and
`output_attentions=True`, which materialises every (T×T) map and turns off fused
attention for the whole run. The study only ever uses the [CLS] query's row, so we
register a transformers attention function (the public `AttentionInterface`) that
returns the fused SDPA output and, as its attention weights, `softmax(q_cls·Kᵀ·scale)`
in fp32 for the [CLS] query only: (batch, heads, 1, tokens). CLIP's encoder layer
discards the weights an attention function returns, so forward hooks on the attention
modules collect them. Exact (eager's row 0 to fp32 rounding), differentiable, and
O(tokens) extra work per head.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.clip.modeling_clip import CLIPAttention

PROBE = "attncollapse_probe"


def probe_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """SDPA output plus the fp32 [CLS] row of every head.

    Args:
        query, key, value: (B, H, T, d) projections.
        attention_mask: additive mask broadcastable to (B, H, T, T), or None (vision).

    Returns:
        (output (B, T, H, d) as SDPA returns it, cls_row (B, H, 1, T) fp32).
    """
    kwargs.pop("output_attentions", None)
    out, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    logits = (query[:, :, :1].float() @ key.float().transpose(-1, -2)) * scale
    if attention_mask is not None:
        logits = logits + attention_mask[..., :1, :].float()
    return out, logits.softmax(-1)


AttentionInterface.register(PROBE, probe_attention)


def attention_modules(vision_model: nn.Module) -> list[nn.Module]:
    """The CLIP attention modules of a vision tower, in layer order (PEFT-wrapped too)."""
    mods = [m for m in vision_model.modules() if isinstance(m, CLIPAttention)]
    if not mods:
        raise TypeError(f"{type(vision_model).__name__} has no CLIP attention layers")
    return mods


def _set_impl(vision_model: nn.Module, config, impl: str) -> None:
    # The public setter where the tower is a PreTrainedModel; a bare module (older
    # transformers' CLIPVisionTransformer) only has its config's property setter.
    setter = getattr(vision_model, "set_attn_implementation", None)
    if setter is not None:
        setter(impl)
    else:
        config._attn_implementation = impl


@contextmanager
def probing(vision_model: nn.Module) -> Iterator[list[Tensor]]:
    """Within the block, every forward of `vision_model` also records [CLS] rows.

    Yields a list that each forward appends L tensors (B, H, 1, T) to, one per layer in
    order. On exit the tower's attention implementation is restored as it was found.
    """
    mods = attention_modules(vision_model)
    config = mods[0].config
    before = config._attn_implementation
    rows: list[Tensor] = []

    def hook(_module, _args, output):
        if output[1] is not None:
            rows.append(output[1])

    handles = [m.register_forward_hook(hook) for m in mods]
    try:
        if before != PROBE:
            _set_impl(vision_model, config, PROBE)
        yield rows
    finally:
        for h in handles:
            h.remove()
        if config._attn_implementation != before:
            _set_impl(vision_model, config, before)


def stack_rows(rows: list[Tensor], n_layers: int) -> Tensor:
    """Turn one forward's recorded rows into (L, B, H, T)."""
    if len(rows) != n_layers:
        raise RuntimeError(f"probe recorded {len(rows)} rows for a {n_layers}-layer tower")
    return torch.stack([r[:, :, 0] for r in rows])


def cls_rows(vision_model: nn.Module, pixel_values: Tensor) -> Tensor:
    """[CLS]→token attention rows of every layer and head.

    Works on any HF CLIP vision tower whatever its attention implementation, leaves that
    implementation as it found it, and is differentiable (no `no_grad` inside).

    Args:
        vision_model: a CLIP vision tower (CLIPVisionModel, or one wrapped by PEFT).
        pixel_values: (B, 3, S, S) normalised images.

    Returns:
        (L, B, H, T) fp32 rows, each summing to 1 over the T tokens ([CLS] first).
    """
    n_layers = len(attention_modules(vision_model))
    with probing(vision_model) as rows:
        vision_model(pixel_values=pixel_values)
    return stack_rows(rows, n_layers)
