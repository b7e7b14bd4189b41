"""The [CLS] attention probe: fused attention plus the one row the study needs.

The reports read attention with `attn_implementation="eager"` and
`output_attentions=True`, which materialises every (T×T) map and turns off fused
attention for the whole run. The study only ever uses the [CLS] query's row, so we
register a transformers attention function (the public `AttentionInterface`) that
returns the fused SDPA output and, as its attention weights, the query row in fp32:
(batch, heads, 1, 1 + patches). The encoder layers discard the weights an attention
function returns, so forward hooks on the attention modules collect them. Exact (eager's
row to fp32 rounding), differentiable, and O(tokens) extra work per head.

Any transformers 5 vision tower whose attention modules call the `AttentionInterface`
works (CLIP, SigLIP, DINOv2 with or without registers, ViT). What differs per family is
a probe spec (`ProbeSpec`): which module classes to hook, how many prefix tokens ([CLS],
registers) come before the patches, and which query row stands for [CLS]. It is read
from the tower's own config (`layout.py`: `model_type`, `num_register_tokens`), never
guessed; the model stage may also write it onto the towers it loads as a plain dict
under `PROBE_SPEC_ATTR`, which wins. An unknown architecture is refused in one line.

Every family's row has one canonical layout, so the metrics and regularizers need no
family knowledge: entry 0 is the query's total mass on the prefix tokens and entries
1.. are its mass on each patch. For CLIP, ViT and DINOv2 that is exactly eager's [CLS]
row; with registers, entry 0 is [CLS] plus the registers (dropped like the [CLS] entry);
for SigLIP (no prefix tokens) entry 0 is 0.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, PretrainedConfig
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .layout import layout_fields, tower_config

PROBE = "attncollapse_probe"
PROBE_SPEC_ATTR = "attncollapse_probe"  # must equal models.families.PROBE_SPEC_ATTR
QUERIES = ("first", "mean")


@dataclass(frozen=True)
class ProbeSpec:
    """How to read one family's query row.

    Attributes:
        attention: class names of the attention modules to hook; () = every module that
            looks like a transformers attention module (q/k/v projections and a config).
        prefix_tokens: tokens before the patches ([CLS] + registers; 0 for SigLIP).
        query: "first" (the row of token 0, [CLS]) or "mean" (mean row over all queries).
    """

    attention: tuple[str, ...] = ()
    prefix_tokens: int = 1
    query: str = "first"

    def __post_init__(self):
        if self.query not in QUERIES:
            raise ValueError(f"probe query {self.query!r} unknown; expected one of {QUERIES}")
        if self.prefix_tokens < 0:
            raise ValueError(f"probe prefix_tokens must be >= 0, got {self.prefix_tokens}")


def spec_of(vision_model: nn.Module) -> ProbeSpec:
    """The probe spec of a tower (PEFT-wrapped too): the one attached to it, else read from its config.

    Raises:
        layout.UnknownLayout: no spec attached and the config's `model_type` has no known
            token layout (`layout.LAYOUTS`); the message names it and what to do.
    """
    raw = getattr(vision_model, PROBE_SPEC_ATTR, None)
    if raw is None:
        raw = layout_fields(tower_config(vision_model), type(vision_model).__name__)
    return raw if isinstance(raw, ProbeSpec) else ProbeSpec(**{**raw, "attention": tuple(raw["attention"])})


_RULE = "_attncollapse_probe_rule"  # (prefix_tokens, query) on each hooked module


def _query_row(query: Tensor, key: Tensor, mask: Tensor | None, scale: float, rule: str) -> Tensor:
    """(B, H, 1, T) fp32 softmax row of the [CLS] query or the mean over queries."""
    q = query[:, :, :1] if rule == "first" else query
    logits = (q.float() @ key.float().transpose(-1, -2)) * scale
    if mask is not None:
        m = mask[..., :1, :] if rule == "first" else mask
        logits = logits + (m.float() if m.dtype != torch.bool else torch.where(m, 0.0, float("-inf")))
    return logits.softmax(-1).mean(-2, keepdim=True)


_MAPS_ON = "_attncollapse_probe_maps"  # set on each hooked module while `probing(maps=True)`
_MAP = "_attncollapse_full_map"  # the latest forward's full map, kept on its module


def full_map(query: Tensor, key: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """(B, H, T, T) fp32 softmax map of every query (the structure measures' input, eval only).

    Only computed inside `probing(..., maps=True)`: O(T²) per head, the cost the probe
    avoids everywhere else.
    """
    logits = (query.float() @ key.float().transpose(-1, -2)) * scale
    if mask is not None:
        logits = logits + (mask.float() if mask.dtype != torch.bool else torch.where(mask, 0.0, float("-inf")))
    return logits.softmax(-1)


def canonical(row: Tensor, prefix_tokens: int) -> Tensor:
    """(..., T) row → (..., 1 + P): [mass on the prefix tokens, patch_1 … patch_P]."""
    if prefix_tokens == 1:
        return row
    head = row[..., :prefix_tokens].sum(-1, keepdim=True)  # zeros for prefix_tokens = 0
    return torch.cat([head, row[..., prefix_tokens:]], dim=-1)


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
    """SDPA output plus the fp32 canonical query row of every head.

    Args:
        query, key, value: (B, H, T, d) projections.
        attention_mask: additive mask broadcastable to (B, H, T, T), or None (vision).

    Returns:
        (output (B, T, H, d) as SDPA returns it, row (B, H, 1, 1 + P) fp32).
    """
    kwargs.pop("output_attentions", None)
    out, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )
    prefix, rule = module.__dict__.get(_RULE, (1, "first"))
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if module.__dict__.get(_MAPS_ON):
        module.__dict__[_MAP] = full_map(query, key, attention_mask, scale)
    return out, canonical(_query_row(query, key, attention_mask, scale, rule), prefix)


AttentionInterface.register(PROBE, probe_attention)


def _looks_like_attention(m: nn.Module) -> bool:
    # transformers 5 vision attention modules: q/k/v projections and the config whose
    # `_attn_implementation` picks the attention function (PEFT keeps the attribute names).
    return isinstance(getattr(m, "config", None), PretrainedConfig) and all(
        hasattr(m, p) for p in ("q_proj", "k_proj", "v_proj"))


def attention_modules(vision_model: nn.Module, classes: tuple[str, ...] | None = None) -> list[nn.Module]:
    """The attention modules of a vision tower, in layer order (PEFT-wrapped too).

    Args:
        classes: class names to match; None = the tower's spec (`spec_of`); an empty
            spec matches every transformers attention module (q/k/v projections).
    """
    classes = spec_of(vision_model).attention if classes is None else tuple(classes)
    if classes:
        mods = [m for m in vision_model.modules() if type(m).__name__ in classes]
    else:
        mods = [m for m in vision_model.modules() if _looks_like_attention(m)]
    if not mods:
        want = ", ".join(classes) or "transformers attention modules"
        raise TypeError(f"{type(vision_model).__name__} has no attention layers of the expected kind ({want})")
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
    """The query rows of the latest forward, one (B, H, 1, 1 + P) tensor per probed layer in
    layer order (a read-only sequence; `clear()` forgets them)."""

    def __init__(self, mods: list[nn.Module]):
        self._mods = mods

    def _rows(self) -> list[Tensor]:
        return [m.__dict__[_ROW] for m in self._mods if _ROW in m.__dict__]

    def clear(self) -> None:
        for m in self._mods:
            m.__dict__.pop(_ROW, None)
            m.__dict__.pop(_MAP, None)

    def maps(self) -> list[Tensor]:
        """The full (B, H, T, T) fp32 softmax maps of the latest forward, one per probed layer in
        layer order (raw token order, prefix tokens first); empty unless `probing(maps=True)`."""
        return [m.__dict__[_MAP] for m in self._mods if _MAP in m.__dict__]

    def __len__(self) -> int:
        return len(self._rows())

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self._rows())

    def __getitem__(self, i):
        return self._rows()[i]


@contextmanager
def probing(vision_model: nn.Module, spec: ProbeSpec | None = None, *, maps: bool = False) -> Iterator[ProbeRows]:
    """Within the block, every forward of `vision_model` also records query rows.

    Args:
        spec: how to read the rows; None = the tower's own (`spec_of`: attached, else read from its config).
        maps: also record each layer's full (B, H, T, T) fp32 softmax map (`ProbeRows.maps`;
            eval points with the structure measures, measure/structure.py). Still no
            `output_attentions`: the fused SDPA output is what the layer uses.

    Yields a `ProbeRows`: the L canonical rows (B, H, 1, 1 + P) of the latest forward, in
    layer order. On exit the rows are dropped and the tower's attention implementation
    is restored as it was found.
    """
    spec = spec or spec_of(vision_model)
    mods = attention_modules(vision_model, spec.attention)
    config = mods[0].config
    before = config._attn_implementation
    rows = ProbeRows(mods)
    # A block nested in another on the same tower (an eval point inside a regularized
    # training loop) puts the outer block's rules back on exit.
    outer = [m.__dict__.get(_RULE) for m in mods]
    outer_maps = [m.__dict__.get(_MAPS_ON) for m in mods]
    for m in mods:
        m.__dict__[_RULE] = (spec.prefix_tokens, spec.query)
        if maps:
            m.__dict__[_MAPS_ON] = True
    handles = [m.register_forward_hook(_keep_row) for m in mods]
    try:
        if before != PROBE:
            _set_impl(vision_model, config, PROBE)
        yield rows
    finally:
        for h in handles:
            h.remove()
        rows.clear()
        for m, rule, on in zip(mods, outer, outer_maps):
            if rule is None:
                m.__dict__.pop(_RULE, None)
            else:
                m.__dict__[_RULE] = rule
            if on is None:
                m.__dict__.pop(_MAPS_ON, None)
            else:
                m.__dict__[_MAPS_ON] = on
        if config._attn_implementation != before:
            _set_impl(vision_model, config, before)


def stack_rows(rows, n_layers: int) -> Tensor:
    """Turn one forward's recorded rows into (L, B, H, T)."""
    if len(rows) != n_layers:
        raise RuntimeError(f"probe recorded {len(rows)} rows for a {n_layers}-layer tower")
    return torch.stack([r[:, :, 0] for r in rows])


def probed_forward(tower: nn.Module, rows: ProbeRows, pixel_values: Tensor, n_layers: int) -> Tensor:
    """The one probed forward: run `tower` on a batch inside an active `probing` block.

    Forgets the previous forward's rows first, so what comes back is this batch's. Runs
    under whatever grad and autocast state the caller set.

    Args:
        tower: the vision tower `rows` is probing (or a wrapper whose forward runs it).
        rows: the `ProbeRows` of the active block.
        pixel_values: (B, 3, S, S) normalised images.
        n_layers: probed layers expected (a mismatch is an error, not a silent short stack).

    Returns:
        (L, B, H, 1 + P) rows, in the probe's dtype (fp32).
    """
    rows.clear()
    tower(pixel_values=pixel_values)
    return stack_rows(rows, n_layers)


def cls_rows(vision_model: nn.Module, pixel_values: Tensor, spec: ProbeSpec | None = None) -> Tensor:
    """[CLS]→token attention rows of every layer and head, in the canonical layout.

    Works on any transformers vision tower whatever its attention implementation, leaves
    that implementation as it found it, and is differentiable (no `no_grad` inside).

    Args:
        vision_model: a vision tower (CLIP, SigLIP, DINOv2, ViT; PEFT-wrapped too).
        pixel_values: (B, 3, S, S) normalised images.
        spec: how to read the rows; None = the tower's own (`spec_of`: attached, else read from its config).

    Returns:
        (L, B, H, 1 + P) fp32 rows, each summing to 1: the mass on the prefix tokens
        ([CLS], registers) first, then the P patches.
    """
    spec = spec or spec_of(vision_model)
    n_layers = len(attention_modules(vision_model, spec.attention))
    with probing(vision_model, spec) as rows:
        return probed_forward(vision_model, rows, pixel_values, n_layers)


def pooling_head_rows(head_attention: nn.MultiheadAttention, run) -> Tensor:
    """Per-head attention row of an attention-pooling head (SigLIP's `head.attention`).

    The head calls its `nn.MultiheadAttention` with head-averaged weights; a pre-hook asks
    for per-head ones (`average_attn_weights=False`) for the duration of `run()`.

    Args:
        head_attention: the pooling head's `nn.MultiheadAttention` (one probe query).
        run: a no-argument callable running the tower's forward.

    Returns:
        (B, H, 1, T) rows of the probe query over the last layer's T tokens.
    """
    got: list[Tensor] = []

    def pre(_mod, args, kwargs):
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def post(_mod, _args, output):
        got.append(output[1])

    handles = [head_attention.register_forward_pre_hook(pre, with_kwargs=True),
               head_attention.register_forward_hook(post)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    if not got:
        raise RuntimeError("the pooling head did not run in the forward")
    return got[-1]
