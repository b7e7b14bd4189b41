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


_ROW = "_attncollapse_cls_row"


def _keep_row(module: nn.Module, _args, output) -> None:
    # One module-level hook for every layer, keeping its row on its own module: under
    # torch.compile a closure appending to a shared list is guarded on the list's length,
    # so each layer compiled on its own (`compile_scope: layers`) would need its own graph.
    if output[1] is not None:
        setattr(module, _ROW, output[1])


class ProbeRows:
    """The [CLS] rows of the latest forward, one (B, H, 1, T) tensor per probed layer in
    layer order (a read-only sequence; `clear()` forgets them)."""

    def __init__(self, mods: list[nn.Module]):
        self._mods = mods

    def _rows(self) -> list[Tensor]:
        return [m.__dict__[_ROW] for m in self._mods if _ROW in m.__dict__]

    def clear(self) -> None:
        for m in self._mods:
            m.__dict__.pop(_ROW, None)

    def __len__(self) -> int:
        return len(self._rows())

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self._rows())

    def __getitem__(self, i):
        return self._rows()[i]


@contextmanager
def probing(vision_model: nn.Module) -> Iterator[ProbeRows]:
    """Within the block, every forward of `vision_model` also records [CLS] rows.

    Yields a `ProbeRows`: the L rows (B, H, 1, T) of the latest forward, in layer order.
    On exit the rows are dropped and the tower's attention implementation is restored as
    it was found.
    """
    mods = attention_modules(vision_model)
    config = mods[0].config
    before = config._attn_implementation
    rows = ProbeRows(mods)
    handles = [m.register_forward_hook(_keep_row) for m in mods]
    try:
        if before != PROBE:
            _set_impl(vision_model, config, PROBE)
        yield rows
    finally:
        for h in handles:
            h.remove()
        rows.clear()
        if config._attn_implementation != before:
            _set_impl(vision_model, config, before)


def stack_rows(rows, n_layers: int) -> Tensor:
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
