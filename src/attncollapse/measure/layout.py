"""Token layout read from the model itself: which tokens are [CLS], registers and patches.

A query row is only meaningful once we know where the patches start and which query
stands for the image. That is a property of the architecture, written in the tower's
config (`model_type`, `num_register_tokens`), so it is read from there, never guessed:
a SigLIP tower has no [CLS] token (its image feature is an attention-pooling head), and a
DINOv2-with-registers tower puts its registers between [CLS] and the patches. A tower
whose `model_type` is not in `LAYOUTS` is refused with one line naming it.

The model stage (`models.families`) may still attach a spec to the towers it loads
(`PROBE_SPEC_ATTR`); it carries the same fields and a test pins the two to each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig


@dataclass(frozen=True)
class Layout:
    """One architecture's token layout.

    Attributes:
        attention: class names of its self-attention modules (those calling transformers'
            `AttentionInterface`).
        cls_token: whether token 0 is a [CLS] token; without one (SigLIP) the row read is
            the mean over all queries.
        registers: whether `config.num_register_tokens` register tokens follow [CLS].
    """

    attention: tuple[str, ...]
    cls_token: bool
    registers: bool = False


_CLIP = Layout(("CLIPAttention",), cls_token=True)
_SIGLIP = Layout(("SiglipAttention",), cls_token=False)
_SIGLIP2 = Layout(("Siglip2Attention",), cls_token=False)

# `config.model_type` → layout: the vision config's type (a tower) and the two-tower
# model's (whose `vision_config` holds the tower's numbers) both map here.
LAYOUTS: dict[str, Layout] = {
    "clip": _CLIP, "clip_vision_model": _CLIP,
    "siglip": _SIGLIP, "siglip_vision_model": _SIGLIP,
    "siglip2": _SIGLIP2, "siglip2_vision_model": _SIGLIP2,
    "dinov2": Layout(("Dinov2Attention",), cls_token=True),
    "dinov2_with_registers": Layout(("Dinov2WithRegistersAttention",), cls_token=True, registers=True),
    "vit": Layout(("ViTAttention",), cls_token=True),
}


class UnknownLayout(ValueError):
    """A tower whose token layout this package does not know (one-line message)."""


def tower_config(vision_model: nn.Module) -> PretrainedConfig | None:
    """The config a tower carries (PEFT forwards `.config`), else its first attention module's."""
    config = getattr(vision_model, "config", None)
    if isinstance(config, PretrainedConfig):
        return config
    for m in vision_model.modules():
        if isinstance(getattr(m, "config", None), PretrainedConfig):
            return m.config
    return None


def layout_fields(config: PretrainedConfig | None, owner: str = "model") -> dict:
    """The probe fields of a config: {"attention", "prefix_tokens", "query"}.

    Args:
        config: a tower's or a two-tower model's config.
        owner: what to call the model in the error (its class name).

    Raises:
        UnknownLayout: the config's `model_type` is not in `LAYOUTS` (or there is no config).
    """
    model_type = getattr(config, "model_type", None)
    layout = LAYOUTS.get(model_type or "")
    if layout is None:
        known = ", ".join(sorted(LAYOUTS))
        raise UnknownLayout(
            f"{owner} (model_type {model_type!r}) has no known token layout ([CLS], registers, patches); "
            f"supported model types: {known}; pass spec=ProbeSpec(attention=..., prefix_tokens=..., query=...) "
            f"to say it yourself")
    vision = getattr(config, "vision_config", None) or config
    regs = int(getattr(vision, "num_register_tokens", 0) or 0) if layout.registers else 0
    return {"attention": layout.attention, "prefix_tokens": int(layout.cls_token) + regs,
            "query": "first" if layout.cls_token else "mean"}
