"""The text side of zero-shot: prompt templates, class embeddings and their cache.

Text features = the original text tower, one embedding per class (mean of the
normalised prompt features over templates, renormalised; CLIP's prompt ensembling).
CLIP and SigLIP alike: SigLIP's sigmoid(scale·cos + bias) is monotone in the cosine, so
its zero-shot prediction is the same cosine argmax.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from .. import _io
from .._device import eval_mode
from ..models import load_tokenizer


# The original study's single prompt (no trailing period, as in its code).
_SINGLE = ["a photo of a {}"]


# The 18 CIFAR-10/100 prompts of CLIP (Radford et al. 2021; openai/CLIP data/prompts.md).
_CIFAR_ENSEMBLE = [
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.",
    "a photo of the {}.", "a blurry photo of the {}.", "a black and white photo of the {}.",
    "a low contrast photo of the {}.", "a high contrast photo of the {}.",
    "a bad photo of the {}.", "a good photo of the {}.", "a photo of the small {}.",
    "a photo of the big {}.",
]

TEMPLATES: dict[str, list[str]] = {"single": _SINGLE, "ensemble": _CIFAR_ENSEMBLE}


@dataclass
class TextCache:
    """Class text embeddings already computed, in memory and optionally on disk.

    Attributes:
        dir: directory of `<key>.safetensors` files (written atomically); None = memory only.
        memory: key → (C, D) float32 embeddings on the CPU.
    """

    dir: str | Path | None = None
    memory: dict[str, Tensor] = field(default_factory=dict)

    def _file(self, key: str) -> Path | None:
        return None if self.dir is None else Path(self.dir) / f"{re.sub(r'[^A-Za-z0-9._-]', '_', key)}.safetensors"

    def get(self, key: str) -> Tensor | None:
        if key in self.memory:
            return self.memory[key]
        path = self._file(key)
        if path is not None and path.is_file():
            from safetensors.torch import load_file

            self.memory[key] = load_file(str(path))["embeddings"]
            return self.memory[key]
        return None

    def put(self, key: str, emb: Tensor, meta: dict[str, str]) -> None:
        self.memory[key] = emb
        path = self._file(key)
        if path is not None:
            from safetensors.torch import save_file

            with _io.atomic_path(path) as tmp:
                save_file({"embeddings": emb.contiguous()}, str(tmp), metadata=meta)


def template_set(templates: str | Sequence[str]) -> tuple[str, list[str]]:
    """(name recorded in results, template list) for a `TEMPLATES` key or an explicit list."""
    if isinstance(templates, str):
        if templates not in TEMPLATES:
            raise ValueError(f"unknown template set {templates!r}; expected one of {list(TEMPLATES)}")
        return templates, TEMPLATES[templates]
    return "custom", list(templates)


def _model_digest(clip: nn.Module) -> str:
    # Cheap identity of the text side: name plus sums of the token embedding and the text
    # projection. Two random presets with different seeds get different keys; the same
    # hub model gets the same key in every process (so the disk cache is reusable).
    parts = [getattr(clip.config, "_name_or_path", "") or ""]
    last = _text_projection(clip)
    last = last if isinstance(last, nn.Linear) else clip.text_model.head  # SigLIP: the text head
    for p in (clip.text_model.get_input_embeddings().weight, last.weight):
        d = p.detach().double()
        parts.append(f"{d.sum().item():.10e},{d.square().sum().item():.10e}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def text_cache_key(clip: nn.Module, class_names: Sequence[str], templates: Sequence[str], *,
                   cache_key: str | None = None) -> str:
    """Key of one (model, class names, template set) triple.

    Args:
        cache_key: names the model (e.g. its hub id); None = a digest of its text weights.
            The class names and templates are always hashed in.
    """
    blob = json.dumps([list(class_names), list(templates)]).encode()
    return f"{cache_key or _model_digest(clip)}-{hashlib.sha256(blob).hexdigest()[:16]}"


def _text_projection(clip: nn.Module) -> nn.Module:
    # CLIP projects the pooled text feature; SigLIP's text head sits inside `text_model`.
    return getattr(clip, "text_projection", None) or nn.Identity()


def _tokenize(clip: nn.Module, tokenizer, prompts: list[str]) -> dict:
    """Token ids (and CLIP's attention mask) the way each family was trained."""
    if clip.config.model_type in ("siglip", "siglip2"):
        # SigLIP and SigLIP 2 pool the last position and were trained on prompts padded to
        # the full length without an attention mask (transformers' docs: padding="max_length").
        length = clip.config.text_config.max_position_embeddings
        enc = tokenizer(prompts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        return {"input_ids": enc["input_ids"]}
    enc = tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@torch.no_grad()
def _encode_text(clip: nn.Module, tokenizer, prompts: list[str], device, batch_size: int = 1024) -> Tensor:
    """(len(prompts), D) float32 L2-normalised projected text features."""
    out = []
    for s in range(0, len(prompts), batch_size):
        enc = {k: v.to(device) for k, v in _tokenize(clip, tokenizer, prompts[s:s + batch_size]).items()}
        # text_model + text_projection directly: `get_text_features` returns a tensor in
        # older transformers and a BaseModelOutputWithPooling in 5.2x.
        res = clip.text_model(**enc)
        pooled = res.pooler_output if hasattr(res, "pooler_output") else res[1]
        out.append(nn.functional.normalize(_text_projection(clip)(pooled).float(), dim=-1))
    return torch.cat(out)


def text_embeddings(clip: nn.Module, tokenizer, class_names: Sequence[str],
                    templates: str | Sequence[str] = "single", *, device: torch.device | str,
                    cache: TextCache | dict | None = None, cache_key: str | None = None) -> Tensor:
    """One zero-shot classifier row per class.

    Per class: mean over templates of the L2-normalised text features, renormalised
    (CLIP's prompt ensembling). Computed once per `text_cache_key` when a cache is given.

    Args:
        clip: the CLIPModel whose (pretrained) text tower and text projection are used.
        tokenizer: its CLIPTokenizer.
        class_names: C human-readable names.
        templates: a `TEMPLATES` key or a list of format strings with one `{}`.
        device: where the text tower runs and the result lives.
        cache: a `TextCache` or a plain dict (memory only); None = no caching.
        cache_key: model part of the key (see `text_cache_key`).

    Returns:
        (C, D) float32 unit rows on `device`.
    """
    _, tmpl = template_set(templates)
    if isinstance(cache, dict):
        cache = TextCache(memory=cache)
    key = text_cache_key(clip, class_names, tmpl, cache_key=cache_key) if cache is not None else None
    if cache is not None and (hit := cache.get(key)) is not None:
        return hit.to(device)
    prompts = [t.format(name) for name in class_names for t in tmpl]
    # Tokens go where the text tower is (`train.build` asks for a text head before it
    # moves the model to the GPU); the result goes to `device`.
    text_device = next(clip.text_model.parameters()).device
    with eval_mode(clip.text_model):
        feats = _encode_text(clip, tokenizer, prompts, text_device)
    emb = nn.functional.normalize(feats.view(len(class_names), len(tmpl), -1).mean(1), dim=-1)
    if cache is not None:
        cache.put(key, emb.cpu(), {"class_names": json.dumps(list(class_names)),
                                   "templates": json.dumps(tmpl)})
    return emb.to(device)


def head_from_text(clip: nn.Module, spec: str, class_names: Sequence[str], *,
                   device: torch.device | str, templates: str | Sequence[str] = "ensemble") -> Tensor:
    """Zero-shot classifier rows for a text-initialised head (`head_init: text`, WiSE-FT/FLYP).

    Args:
        clip: the pretrained CLIPModel.
        spec: its model spec (for the tokenizer, `models.load_tokenizer`).
        class_names: the C training classes.
        templates: prompt set; default the 18-prompt ensemble (WiSE-FT initialises its
            head from ensembled prompts).

    Returns:
        (C, D) float32 unit rows on `device`.
    """
    if not class_names:
        raise ValueError("a text-initialised head needs the class names")
    return text_embeddings(clip, load_tokenizer(spec), class_names, templates, device=device)
