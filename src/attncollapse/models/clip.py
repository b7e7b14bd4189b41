"""Loading CLIP, the classifier head, LoRA through PEFT and layer freezing.

A model spec is one string: a preset name from `PRESETS` (random weights, built from a
config, no download), a local directory saved with `save_pretrained`, or a hub id such
as `openai/clip-vit-base-patch32`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from .presets import PRESETS

# Special tokens of the tiny tokenizer; the tiny text config (presets.py) must agree with them.
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def load_clip(spec: str, *, seed: int = 0, attn_implementation: str = "sdpa") -> CLIPModel:
    """Load a CLIPModel from a preset name, a local directory or a hub id.

    Args:
        spec: `PRESETS` key, a directory with `config.json`, or a hub id.
        seed: seed of the random initialisation of presets.
        attn_implementation: attention of both towers ("sdpa" fused by default; the
            probe switches the vision tower temporarily when it needs rows).
    """
    if spec in PRESETS:
        config = PRESETS[spec]()
        config._attn_implementation = attn_implementation
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = CLIPModel(config)
        return model.eval()
    if spec.endswith(".pt") and Path(spec).is_file():
        raise ValueError(
            f"{spec}: a checkpoint file, not a model directory; convert it with "
            f"`attncollapse convert {spec} <dir>` and pass <dir>"
        )
    path = Path(spec).expanduser()
    if spec.startswith((".", "/", "~")) and not path.exists():
        raise FileNotFoundError(f"model directory {spec} does not exist")
    # A hub id or a local directory: real from_pretrained, which needs the network only
    # for a hub id that is not in the local cache.
    return CLIPModel.from_pretrained(str(path) if path.exists() else spec,
                                     attn_implementation=attn_implementation).eval()


def image_size(spec: str) -> int:
    """The input resolution of `load_clip(spec)`, read from its config (no weights loaded)."""
    if spec in PRESETS:
        return PRESETS[spec]().vision_config.image_size
    return CLIPConfig.from_pretrained(spec).vision_config.image_size


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


def load_tokenizer(spec: str) -> CLIPTokenizer:
    """The tokenizer matching `load_clip(spec)` (presets get the byte-level tokenizer)."""
    if spec in PRESETS:
        # Presets have random weights: any tokenizer whose ids fit the vocab serves the
        # pipeline (and speed benchmarks); the byte-level one needs no download.
        return tiny_tokenizer()
    return CLIPTokenizer.from_pretrained(spec)


class Classifier(nn.Module):
    """`Linear(proj_dim, classes)` on `visual_projection(pooler_output)` (the original study).

    The head lives outside the HF model, so PEFT never wraps it and disabling adapters
    never touches it.

    Args:
        vision: the CLIP vision tower (CLIPVisionModel, possibly PEFT-wrapped later).
        projection: the CLIP visual projection (trainable unless frozen).
        num_classes: output classes.
        normalize_features: L2-normalise features before the head (used with a head
            initialised from text embeddings, as in WiSE-FT/FLYP).
    """

    def __init__(self, vision: nn.Module, projection: nn.Linear, num_classes: int,
                 *, normalize_features: bool = False):
        super().__init__()
        self.vision = vision
        self.projection = projection
        self.head = nn.Linear(projection.out_features, num_classes)
        self.normalize_features = normalize_features

    def features(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, S, S) → (B, proj_dim) image features."""
        pooled = self.vision(pixel_values=pixel_values).pooler_output
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


def build_classifier(clip: CLIPModel, num_classes: int, *,
                     text_head: Tensor | None = None) -> Classifier:
    """Take the vision tower and projection out of `clip` and put a head on them.

    Args:
        clip: a loaded CLIPModel (its vision tower and projection are shared, not copied).
        num_classes: head outputs.
        text_head: optional (classes, proj_dim) text embeddings; the head starts as the
            zero-shot classifier (normalised embeddings × logit scale, zero bias) and the
            features are L2-normalised.
    """
    clf = Classifier(clip.vision_model, clip.visual_projection, num_classes,
                     normalize_features=text_head is not None)
    if text_head is not None:
        if text_head.shape != clf.head.weight.shape:
            raise ValueError(f"text_head shape {tuple(text_head.shape)} != head {tuple(clf.head.weight.shape)}")
        with torch.no_grad():
            w = nn.functional.normalize(text_head.float(), dim=-1) * clip.logit_scale.exp()
            clf.head.weight.copy_(w)
            clf.head.bias.zero_()
    return clf


LORA_TARGETS = {"qv": ["q_proj", "v_proj"], "qkvo": ["q_proj", "k_proj", "v_proj", "out_proj"]}


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


def freeze_layers(clf: Classifier, n_layers: int) -> list[str]:
    """Freeze the patch embedding (+ pre-LN) and the first `n_layers` encoder layers.

    Returns the names of the parameters frozen (reports A3: 3, 6 or 9 layers).
    """
    if n_layers <= 0:
        return []
    tower = clf.base_vision
    layers = tower.encoder.layers if hasattr(tower, "encoder") else tower.vision_model.encoder.layers
    if n_layers > len(layers):
        raise ValueError(f"cannot freeze {n_layers} layers of a {len(layers)}-layer tower")
    root = tower if hasattr(tower, "embeddings") else tower.vision_model
    frozen = []
    for prefix, mod in [("embeddings", root.embeddings), ("pre_layrnorm", root.pre_layrnorm)] + [
        (f"encoder.layers.{i}", layers[i]) for i in range(n_layers)
    ]:
        for name, p in mod.named_parameters():
            p.requires_grad_(False)
            frozen.append(f"{prefix}.{name}")
    return frozen


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
