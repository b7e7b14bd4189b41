"""Model families as data: what the study needs to know about each vision transformer.

One small `Family` per architecture (a registry in the style of timm's model cards): the
attention module classes the probe hooks, the prefix tokens a row starts with, which query
row stands for [CLS], the image processor's constants, how the tower's image feature is
pooled, and whether the model has a text tower (zero-shot). `family_of(model)` reads the
family from a loaded model's `config.model_type`.

The probe (`measure.probe`) does not import this module: `attach_probe_spec` writes the
family's probe fields onto the vision tower as a plain dict under `PROBE_SPEC_ATTR`, which
the probe reads back (the same attribute name lives in both modules; a test pins them).
A tower built without `load_model` has no such dict; the probe then reads the same fields
from the tower's config (`measure.layout`), and tests/test_token_layout.py pins the two
to each other for every family.

Query rows:
    - "first": the row of token 0 (the [CLS] query), as in the reports (CLIP, ViT, DINOv2).
    - "mean": SigLIP (and SigLIP 2) has no [CLS] token (its image feature is an attention-pooling head on
      top of the encoder), so no single query row stands for the image. We read the mean
      row over all queries: the average distribution of where the layer's tokens attend.
      It is a proper distribution over tokens, exact and differentiable like [CLS]'s row,
      and for a collapsed layer (every query looking at the same few patches) it collapses
      in the same way. The pooling head's own row (its `nn.MultiheadAttention` over the
      last layer's tokens) is available separately (`measure.pooling_head_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

PROBE_SPEC_ATTR = "attncollapse_probe"  # must equal measure.probe.PROBE_SPEC_ATTR

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Family:
    """What the study needs to know about one architecture.

    Attributes:
        name: registry key.
        model_types: `config.model_type` values of the full model that belong here.
        model_class: transformers class loaded for this family (a `*Model`, no task head).
        attention: class names of the vision tower's self-attention modules (the ones
            that call transformers' `AttentionInterface`).
        query: "first" ([CLS] row) or "mean" (mean row over all queries; no [CLS]).
        cls_token: whether token 0 is a [CLS] token.
        registers: whether register tokens follow [CLS] (`config.num_register_tokens`).
        mean, std: the image processor's normalisation constants.
        size: the image processor's crop size of the public checkpoints.
        text_tower: whether the model has a text tower (zero-shot classification).
        vision_attr: attribute of the full model holding the vision tower; "" = the model.
        projection_attr: attribute holding the image projection (CLIP); "" = none.
        pool: "pooler" (the tower's `pooler_output`) or "cls" (last_hidden_state[:, 0]).
        init_kwargs: extra keyword arguments of `model_class` (e.g. no unused pooler).
        pixels: "image" (the tower takes (B, 3, S, S)) or "naflex" (SigLIP 2 takes patches;
            `load_model` puts `naflex.accept_square_images` on its tower).
    """

    name: str
    model_types: tuple[str, ...]
    model_class: str
    attention: tuple[str, ...]
    query: str
    cls_token: bool
    registers: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int
    text_tower: bool
    vision_attr: str
    projection_attr: str
    pool: str = "pooler"
    init_kwargs: tuple[tuple[str, object], ...] = ()
    pixels: str = "image"


FAMILIES: dict[str, Family] = {
    "clip": Family("clip", ("clip",), "CLIPModel", ("CLIPAttention",), "first", True, False,
                   OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, 224, True, "vision_model", "visual_projection"),
    "siglip": Family("siglip", ("siglip",), "SiglipModel", ("SiglipAttention",), "mean", False, False,
                     HALF, HALF, 224, True, "vision_model", ""),
    # SigLIP 2 (NaFlex): SigLIP's architecture and query rule; its tower takes patchified
    # pixels, fed from square images by a pre-hook (naflex.py). Size: siglip2-*-224's.
    "siglip2": Family("siglip2", ("siglip2",), "Siglip2Model", ("Siglip2Attention",), "mean", False, False,
                      HALF, HALF, 224, True, "vision_model", "", pixels="naflex"),
    "dinov2": Family("dinov2", ("dinov2",), "Dinov2Model", ("Dinov2Attention",), "first", True, False,
                     IMAGENET_MEAN, IMAGENET_STD, 224, False, "", ""),
    "dinov2-reg": Family("dinov2-reg", ("dinov2_with_registers",), "Dinov2WithRegistersModel",
                         ("Dinov2WithRegistersAttention",), "first", True, True,
                         IMAGENET_MEAN, IMAGENET_STD, 224, False, "", ""),
    # google/vit-base-patch16-224 is a ViTForImageClassification checkpoint: it has no
    # pooler weights, so the feature is the final-LayerNorm [CLS] token, not a random pooler.
    "vit": Family("vit", ("vit",), "ViTModel", ("ViTAttention",), "first", True, False,
                  HALF, HALF, 224, False, "", "", pool="cls", init_kwargs=(("add_pooling_layer", False),)),
}


def family_for_type(model_type: str) -> Family:
    """The family whose `model_types` holds `model_type` (a config's `model_type`)."""
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise ValueError(f"model_type {model_type!r} is not a known family; supported: {', '.join(known)}")


def family_of(model_or_config) -> Family:
    """The family of a loaded model or of its config (read from `config.model_type`)."""
    config = getattr(model_or_config, "config", model_or_config)
    return family_for_type(getattr(config, "model_type", ""))


def vision_config(config):
    """The vision part of a model config (two-tower configs nest it; vision-only ones are it)."""
    return getattr(config, "vision_config", None) or config


def prefix_tokens(fam: Family, config) -> int:
    """Tokens before the patches in a row: [CLS] plus registers (0 for SigLIP)."""
    regs = int(getattr(vision_config(config), "num_register_tokens", 0)) if fam.registers else 0
    return int(fam.cls_token) + regs


def vision_tower(model: nn.Module) -> nn.Module:
    """The vision tower of a loaded model (the module the probe and the classifier use)."""
    attr = family_of(model).vision_attr
    return getattr(model, attr) if attr else model


def image_projection(model: nn.Module) -> nn.Module:
    """The image projection after pooling (CLIP's `visual_projection`), else `nn.Identity`."""
    attr = family_of(model).projection_attr
    return getattr(model, attr) if attr else nn.Identity()


def feature_dim(model: nn.Module) -> int:
    """Width of the image feature `image_projection(model)(pooled)`."""
    proj = image_projection(model)
    return proj.out_features if isinstance(proj, nn.Linear) else vision_config(model.config).hidden_size


def probe_spec(model: nn.Module) -> dict:
    """The probe's view of a loaded model: {"attention", "prefix_tokens", "query"}."""
    fam = family_of(model)
    return {"attention": fam.attention, "prefix_tokens": prefix_tokens(fam, model.config), "query": fam.query}


def attach_probe_spec(model: nn.Module) -> nn.Module:
    """Write `probe_spec(model)` onto its vision tower, where `measure.probe` looks for it."""
    setattr(vision_tower(model), PROBE_SPEC_ATTR, probe_spec(model))
    return model
