"""Loading a model of any family, the classifier head, LoRA through PEFT and layer freezing.

A model spec is one string: a preset name from `PRESETS` (random weights, built from a
config, no download), a local directory saved with `save_pretrained`, or a hub id such
as `openai/clip-vit-base-patch32`, `google/siglip-base-patch16-224`,
`facebook/dinov2-small`, `facebook/dinov2-with-registers-small` or
`google/vit-base-patch16-224`. The family (families.py) is read from the config's
`model_type`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Sequence

import torch
import transformers
from torch import Tensor, nn
from transformers import AutoConfig, CLIPTokenizer, PretrainedConfig

from .. import _io
from .families import FAMILIES, Family, attach_probe_spec, family_of, feature_dim, image_projection, vision_config, vision_tower
from .naflex import accept_square_images, naflex_image_size
from .presets import PRESETS

# Special tokens of the tiny tokenizer; the tiny text config (presets.py) must agree with them.
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def model_config(spec: str) -> PretrainedConfig:
    """The config of `load_model(spec)` (no weights loaded)."""
    if spec in PRESETS:
        return PRESETS[spec]()
    if spec.endswith(".pt") and Path(spec).is_file():
        raise ValueError(f"{spec}: an OpenAI/OpenCLIP checkpoint file; convert it first with "
                         f"`attncollapse convert {spec} OUT_DIR` and pass OUT_DIR")
    path = Path(spec).expanduser()
    if spec.startswith((".", "/", "~")) and not path.exists():
        raise FileNotFoundError(f"model directory {spec} does not exist")
    return AutoConfig.from_pretrained(str(path) if path.exists() else spec)


def load_model(spec: str, *, seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    """Load a model of any family from a preset name, a local directory or a hub id.

    The vision tower carries its family's probe spec (`families.attach_probe_spec`).

    Args:
        spec: `PRESETS` key, a directory with `config.json`, or a hub id.
        seed: seed of the random initialisation of presets.
        attn_implementation: attention of the towers ("sdpa" fused by default; the
            probe switches the vision tower temporarily when it needs rows).

    Returns:
        The family's transformers model in eval mode (CLIPModel, SiglipModel,
        Siglip2Model, Dinov2Model, Dinov2WithRegistersModel, ViTModel); a SigLIP 2
        tower also takes (B, 3, S, S) images (`naflex.accept_square_images`).
    """
    config = model_config(spec)
    fam = family_of(config)
    cls = getattr(transformers, fam.model_class)
    kwargs = dict(fam.init_kwargs)
    if spec in PRESETS:
        config._attn_implementation = attn_implementation
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = cls(config, **kwargs)
    else:
        # A hub id or a local directory: real from_pretrained, which needs the network only
        # for a hub id that is not in the local cache.
        path = Path(spec).expanduser()
        model = from_pretrained_checked(cls, str(path) if path.exists() else spec,
                                        attn_implementation=attn_implementation, **kwargs)
    if fam.pixels == "naflex":
        accept_square_images(vision_tower(model))  # SigLIP 2: (B, 3, S, S) in, patches to the tower
    return attach_probe_spec(model).eval()


PICKLE_REFUSED = ("a weights file (.bin/.pt) holds pickled objects besides tensors, which could run code: refused "
                  "unread; use its model.safetensors, or re-save it from a source you trust")
"""Why a pickled weights file is refused (torch.load(weights_only=True) raised)."""


def pickled_code(exc: BaseException) -> bool:
    """Whether an unpickling error was a refused global or class (code), not a damaged file."""
    text = str(exc).lower()
    return isinstance(exc, pickle.UnpicklingError) and any(
        s in text for s in ("unsupported global", "unsupported class", "refused global"))


# Checkpoint entries a family's `*Model` class leaves unused by design: the task head of a
# `*ForImageClassification` checkpoint and the pooler a family is built without (ViT).
_UNUSED_BY_DESIGN = ("classifier.", "pooler.")


def from_pretrained_checked(cls, where: str, **kwargs) -> nn.Module:
    """`cls.from_pretrained(where, **kwargs)`, refusing weights that do not fit the config.

    transformers only logs missing weights (it initialises them at random) and unexpected
    ones (it drops them): a 6-layer config.json over 3-layer weights would be measured as
    3 trained layers and 3 random ones.

    Raises:
        _io.DamagedFile: missing or unexpected weights, the first few named and counted.
    """
    try:
        model, info = cls.from_pretrained(where, output_loading_info=True, **kwargs)
    except pickle.UnpicklingError as exc:  # from torch.load(weights_only=True): nothing of the file ran
        why = PICKLE_REFUSED if pickled_code(exc) else "a weights file (.bin/.pt) is not readable; save the model again"
        raise _io.DamagedFile(where, why) from None
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(k for k in info.get("unexpected_keys") or () if not k.startswith(_UNUSED_BY_DESIGN))
    problems = [f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                for what, keys in (("missing weights", missing), ("unexpected weights", unexpected)) if keys]
    if problems:
        raise _io.DamagedFile(where, f"the weights do not fit config.json ({cls.__name__}): {'; '.join(problems)}; "
                                     "save the model again with save_pretrained, or restore the config.json "
                                     "it was saved with")
    return model


load_clip = load_model  # the name of the CLIP-only days; every family loads through it


def _vision_config_of(model: str | PretrainedConfig | nn.Module) -> PretrainedConfig:
    config = model_config(model) if isinstance(model, str) else getattr(model, "config", model)
    return vision_config(config)


def image_size(model: str | PretrainedConfig | nn.Module) -> int:
    """The input resolution S of a model: a spec (read from its config, no weights loaded),
    a config, or a loaded model."""
    vision = _vision_config_of(model)
    if not hasattr(vision, "image_size") and hasattr(vision, "num_patches"):
        return naflex_image_size(vision)  # SigLIP 2: no image_size, a √num_patches position grid
    model_type = getattr(vision, "model_type", "")
    if model_type in ("dinov2", "dinov2_with_registers") and vision.image_size > FAMILIES["dinov2"].size:
        # DINOv2's config.json names its pretraining resolution (518) while its image
        # processor crops 224 and the model interpolates its position grid: feed what the
        # processor feeds (518 px would be ~5x the tokens of every other family).
        return FAMILIES["dinov2"].size
    return vision.image_size


def num_layers(model: str | PretrainedConfig | nn.Module) -> int:
    """Encoder layers of a model's vision tower: a spec (no weights loaded), a config, or a
    loaded model."""
    return _vision_config_of(model).num_hidden_layers


def zeroshot_problem(model_or_spec) -> str | None:
    """Why zero-shot classification cannot run on a model, or None when it can.

    Zero-shot needs a text tower: CLIP (cosine scoring) and SigLIP / SigLIP 2 (sigmoid of the scaled
    cosine plus a bias, whose argmax is the cosine argmax); vision-only families have none.
    """
    src = model_config(model_or_spec) if isinstance(model_or_spec, str) else model_or_spec
    fam = family_of(src)
    if fam.name in ("clip", "siglip", "siglip2"):
        return None
    if not fam.text_tower:
        return f"{fam.name} is a vision-only model (no text tower): zero-shot is skipped"
    return f"zero-shot for the {fam.name} family is not implemented yet (CLIP only): zero-shot is skipped"


def tiny_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges, matching the tiny preset's vocab.

    Each character becomes one token; enough for prompts like "a photo of a cat" and
    built entirely in memory (no download).
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {_BOS: 0, _EOS: 1}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def load_tokenizer(spec: str):
    """The tokenizer matching `load_model(spec)` (presets get the byte-level tokenizer)."""
    if spec in PRESETS:
        # Presets have random weights: any tokenizer whose ids fit the vocab serves the
        # pipeline (and speed benchmarks); the byte-level one needs no download. The tiny
        # SigLIP's and SigLIP 2's text configs use the same 514 ids, pad = <|endoftext|> = 1.
        return tiny_tokenizer()
    if family_of(model_config(spec)).name in ("siglip", "siglip2"):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(spec)  # SigLIP's SentencePiece, SigLIP 2's Gemma
    return CLIPTokenizer.from_pretrained(spec)


class Classifier(nn.Module):
    """`Linear(feature_dim, classes)` on the tower's pooled, projected image feature.

    CLIP: `visual_projection(pooler_output)` (the original study). SigLIP: the
    attention-pooling head's output. DINOv2: the final-LayerNorm [CLS] token
    (`pooler_output`). ViT: the final-LayerNorm [CLS] token (`pool="cls"`). The head lives
    outside the HF model, so PEFT never wraps it and disabling adapters never touches it.

    Args:
        vision: the vision tower (possibly PEFT-wrapped later).
        projection: the image projection (CLIP's visual projection, else `nn.Identity`).
        num_classes: output classes.
        feature_dim: width of `projection`'s output; default its `out_features`.
        pool: "pooler" (`pooler_output`) or "cls" (`last_hidden_state[:, 0]`).
        normalize_features: L2-normalise features before the head (used with a head
            initialised from text embeddings, as in WiSE-FT/FLYP).
    """

    def __init__(self, vision: nn.Module, projection: nn.Module, num_classes: int, *,
                 feature_dim: int | None = None, pool: str = "pooler", normalize_features: bool = False):
        super().__init__()
        if pool not in ("pooler", "cls"):
            raise ValueError(f"pool must be 'pooler' or 'cls', got {pool!r}")
        self.vision = vision
        self.projection = projection
        self.head = nn.Linear(feature_dim or projection.out_features, num_classes)
        self.pool = pool
        self.normalize_features = normalize_features

    def features(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, S, S) → (B, feature_dim) image features."""
        out = self.vision(pixel_values=pixel_values)
        pooled = out.pooler_output if self.pool == "pooler" else out.last_hidden_state[:, 0]
        feats = self.projection(pooled)
        if self.normalize_features:
            feats = nn.functional.normalize(feats, dim=-1)
        return feats

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.head(self.features(pixel_values))

    @property
    def base_vision(self) -> nn.Module:
        """The underlying HF vision tower (unwrapped from PEFT if needed)."""
        v = self.vision
        return v.get_base_model() if hasattr(v, "get_base_model") else v


def build_classifier(model: nn.Module, num_classes: int, *,
                     text_head: Tensor | None = None) -> Classifier:
    """Take the vision tower and image projection out of `model` and put a head on them.

    Args:
        model: a loaded model of any family (its tower and projection are shared, not copied).
        num_classes: head outputs.
        text_head: optional (classes, proj_dim) text embeddings (CLIP only); the head
            starts as the zero-shot classifier (normalised embeddings × logit scale, zero
            bias) and the features are L2-normalised.
    """
    fam: Family = family_of(model)
    clf = Classifier(vision_tower(model), image_projection(model), num_classes, feature_dim=feature_dim(model),
                     pool=fam.pool, normalize_features=text_head is not None)
    if text_head is not None:
        if not hasattr(model, "logit_scale"):
            raise ValueError(f"head_init: text needs a CLIP model with a text tower; {fam.name} has none "
                             "(set head_init: random)")
        if text_head.shape != clf.head.weight.shape:
            raise ValueError(f"text_head shape {tuple(text_head.shape)} != head {tuple(clf.head.weight.shape)}")
        with torch.no_grad():
            w = nn.functional.normalize(text_head.float(), dim=-1) * model.logit_scale.exp()
            clf.head.weight.copy_(w)
            clf.head.bias.zero_()
    return clf


# CLIP and SigLIP call the output projection `out_proj`, DINOv2 and ViT `o_proj`; PEFT needs
# only some target names to exist in the model.
LORA_TARGETS = {"qv": ["q_proj", "v_proj"], "qkvo": ["q_proj", "k_proj", "v_proj", "out_proj", "o_proj"]}


def apply_lora(clf: Classifier, *, rank: int, alpha: float | None = None, dropout: float = 0.05,
               targets: str | Sequence[str] = "qv") -> Classifier:
    """Wrap the vision tower (only) in PEFT LoRA; everything else in the tower freezes.

    Args:
        rank: LoRA rank r.
        alpha: LoRA alpha (default 2·rank, the original study's code).
        dropout: LoRA dropout (original: 0.05).
        targets: "qv" (reports' default), "qkvo" (A2) or an explicit module-name list.

    The projection and head stay outside PEFT and stay trainable (original study).
    """
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    modules = LORA_TARGETS[targets] if isinstance(targets, str) else list(targets)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank if alpha is None else alpha,
                     lora_dropout=dropout, target_modules=modules, bias="none")
    import warnings

    with warnings.catch_warnings():
        # peft reads transformers 5's deprecated `is_gradient_checkpointing` (a FutureWarning
        # per LoRA run that the user can do nothing about); only that one is silenced.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        clf.vision = get_peft_model(clf.vision, cfg)
    return clf


def _root(tower: nn.Module) -> nn.Module:
    # The module holding embeddings and blocks: the tower itself, or a CLIPVisionModel's
    # (SiglipVisionModel's) inner `vision_model`.
    return tower if hasattr(tower, "embeddings") else tower.vision_model


def _blocks(root: nn.Module) -> tuple[str, nn.ModuleList]:
    # Where each family keeps its transformer blocks: CLIP and SigLIP `encoder.layers`,
    # DINOv2 `encoder.layer`, ViT (transformers 5) `layers` on the model itself.
    for path in ("encoder.layers", "encoder.layer", "layers"):
        mod = root
        for part in path.split("."):
            mod = getattr(mod, part, None)
        if isinstance(mod, nn.ModuleList):
            return path, mod
    raise TypeError(f"{type(root).__name__}: no transformer block list (encoder.layers, encoder.layer, layers)")


def freeze_layers(clf: Classifier, n_layers: int, *, embeddings: bool = False) -> list[str]:
    """Freeze the first `n_layers` encoder layers (and, optionally, what comes before them).

    The original study's A3 (`run_all_experiments.py`, `run_full_ft_experiment`) sets
    `requires_grad=False` on `vision_model.encoder.layers[i]` for i < k only: the patch
    embedding and CLIP's pre-LayerNorm keep training. Every family means the same: its
    first k transformer blocks.

    Args:
        n_layers: blocks to freeze, from the input side (reports A3: 3, 6 or 9).
        embeddings: also freeze the embeddings (patch, position, [CLS], registers) and
            CLIP's pre-LayerNorm (`freeze_embeddings`, not the original's A3).

    Returns:
        The names of the parameters frozen, relative to the tower's transformer root.
    """
    if n_layers <= 0 and not embeddings:
        return []
    root = _root(clf.base_vision)
    attr, layers = _blocks(root)
    if n_layers > len(layers):
        raise ValueError(f"cannot freeze {n_layers} layers of a {len(layers)}-layer tower")
    before = []
    if embeddings:
        before.append(("embeddings", root.embeddings))
        if hasattr(root, "pre_layrnorm"):  # CLIP's LayerNorm before the first block
            before.append(("pre_layrnorm", root.pre_layrnorm))
    frozen = []
    for prefix, mod in before + [(f"{attr}.{i}", layers[i]) for i in range(max(n_layers, 0))]:
        for name, p in mod.named_parameters():
            p.requires_grad_(False)
            frozen.append(f"{prefix}.{name}")
    return frozen


def _effective_block_weights(blk: nn.Module) -> dict[str, Tensor]:
    """A block's weights as it computes with them, live (no copy): a LoRA-wrapped linear
    counts as its merged weight W + scale·B·A (PEFT's `get_delta_weight`)."""
    state = {}
    for name, mod in blk.named_modules():
        if hasattr(mod, "base_layer") and hasattr(mod, "get_delta_weight"):
            w = mod.base_layer.weight
            for a in mod.active_adapters:
                if a in mod.lora_A:
                    w = w + mod.get_delta_weight(a)
            state[f"{name}.weight"] = w
            if mod.base_layer.bias is not None:
                state[f"{name}.bias"] = mod.base_layer.bias
    for name, p in blk.named_parameters():
        if "lora_" not in name and ".base_layer." not in name:
            state[name] = p
    return state


def block_weights(clf: Classifier, device: torch.device | str = "cpu") -> list[dict[str, Tensor]]:
    """Effective weights of each transformer block of the tower, detached fp32 copies.

    A LoRA-wrapped linear counts as its merged weight, so full fine-tuning and LoRA drift
    are measured alike.

    Args:
        device: where the copies live; training keeps θ₀ on the model's device so that
            `weight_drift` at every eval point copies nothing to the host.

    Returns:
        One {name: fp32 tensor} per block, in layer order.
    """
    _, blocks = _blocks(_root(clf.base_vision))
    with torch.no_grad():
        return [{k: v.detach().float().to(device, copy=True) for k, v in _effective_block_weights(blk).items()}
                for blk in blocks]


def weight_drift(clf: Classifier, initial: list[dict[str, Tensor]]) -> list[float]:
    """Relative weight change per block, ‖θ − θ₀‖ / ‖θ₀‖ over each block's weights.

    Computed in float64 where the weights live (no host copy of the tower per eval point).

    Args:
        clf: the classifier being trained.
        initial: `block_weights(clf)` before training (any device).

    Returns:
        One float per block, in layer order (0 before the first step).
    """
    _, blocks = _blocks(_root(clf.base_vision))
    drift = []
    with torch.no_grad():
        for blk, start in zip(blocks, initial):
            now = _effective_block_weights(blk)
            num = sum((now[k].double() - start[k].to(now[k].device).double()).pow(2).sum() for k in start)
            den = sum(start[k].double().pow(2).sum() for k in start)
            drift.append(float((num / den) ** 0.5) if float(den) > 0 else float("nan"))
    return drift


def freeze_projection(clf: Classifier) -> None:
    for p in clf.projection.parameters():
        p.requires_grad_(False)


def count_parameters(module: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def is_peft(vision: nn.Module) -> bool:
    """Whether a vision tower is wrapped by PEFT (LoRA adapters that can be disabled)."""
    return hasattr(vision, "disable_adapter")
