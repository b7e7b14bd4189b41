"""Zero-shot classification with text prompts: base-only vs adapter-active, frozen projection.

The reports' headline "LoRA perfectly preserves zero-shot (60.22% = baseline)" was
measured with the adapters dropped: their loader copied only `vision_model.` keys into a
plain CLIPModel (English report §6.2), i.e. it evaluated the pretrained model. Here a
LoRA run gets both numbers side by side: `acc` with adapters active (correct) and
`acc_base_only` with adapters off and the pretrained projection (the reports' protocol,
equal to the pretrained model's accuracy by construction). The same loader explains the
reports' full-FT numbers (12.71% / 5.89%): it kept the fine-tuned tower but the pretrained
visual projection, which is `acc_frozen_projection` here. Every protocol is measured on the
model passed in; training and `attncollapse zeroshot` pass the best-accuracy checkpoint
(`best.safetensors`), the checkpoint the reports evaluated.

Image features = (fine-tuned) vision tower pooled output → (fine-tuned) visual
projection → L2 norm; prediction = cosine-similarity argmax against the class text
embeddings of text.py (docs/STUDY.md "The original code, and which commit").
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .._device import autocast, effective_precision, eval_mode
from ..data import Feeder, ImageSet, load_test_split
from ..models import Classifier, image_projection, image_size, is_peft, load_tokenizer, normalization, vision_tower
from .text import TextCache, template_set, text_embeddings


def as_feeder(src: ImageSet | Feeder, device, norm: tuple | None = None) -> Feeder:
    """`src` itself when it already is a Feeder (its own normalisation), else a Feeder of
    it on `device` normalised with `norm` = (mean, std) (`models.normalization`; None = CLIP's)."""
    if isinstance(src, Feeder):
        return src
    return Feeder(src, device) if norm is None else Feeder(src, device, mean=norm[0], std=norm[1])


@torch.no_grad()
def _pooled(vision: nn.Module, feeder: Feeder, *, batch_size: int, precision: str) -> Tensor:
    """(N, hidden) pooled outputs of the vision tower over the whole feeder, in order."""
    out = []
    with eval_mode(vision), autocast(feeder.device, precision):
        for x, _ in feeder.batches(batch_size):
            out.append(vision(pixel_values=x).pooler_output)
    return torch.cat(out)


@torch.no_grad()
def _project(pooled: Tensor, projection: nn.Module, *, batch_size: int, precision: str) -> Tensor:
    """(N, hidden) → (N, D) float32 unit features, under the same autocast as the tower."""
    with autocast(pooled.device, precision):
        feats = torch.cat([projection(p) for p in pooled.split(batch_size)])
    return nn.functional.normalize(feats.float(), dim=-1)


def image_features(clf_or_fn: Classifier | Callable[[Tensor], Tensor],
                   feeder_or_imageset: ImageSet | Feeder, *, batch_size: int = 1024,
                   device: torch.device | str, precision: str = "fp32",
                   projection: nn.Module | None = None, norm: tuple | None = None) -> Tensor:
    """Zero-shot image features of every image, in order.

    `Classifier.features` without the head, always L2-normalised (whatever the
    classifier's `normalize_features`): vision tower pooled output → projection.

    Args:
        clf_or_fn: a Classifier (its vision tower, PEFT adapters as currently enabled),
            or any function (B, 3, S, S) normalised pixels → (B, D) features.
        feeder_or_imageset: uint8 images; normalisation happens on `device`.
        batch_size: images per no-grad forward.
        precision: autocast "fp16", "bf16" or "fp32" (off).
        projection: replaces `clf.projection` (the frozen-projection variant).
        norm: (mean, std) of an ImageSet's normalisation (`models.normalization`); None = CLIP's.

    Returns:
        (N, D) float32 unit rows on `device`.
    """
    feeder = as_feeder(feeder_or_imageset, device, norm)
    if isinstance(clf_or_fn, Classifier):
        pooled = _pooled(clf_or_fn.vision, feeder, batch_size=batch_size, precision=precision)
        return _project(pooled, projection or clf_or_fn.projection, batch_size=batch_size, precision=precision)
    with torch.no_grad(), autocast(feeder.device, precision):
        feats = torch.cat([clf_or_fn(x) for x, _ in feeder.batches(batch_size)])
    return nn.functional.normalize(feats.float(), dim=-1)


def zeroshot_accuracy(image_feats: Tensor, labels: Tensor | np.ndarray, text_emb: Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy of cosine-similarity classification.

    Args:
        image_feats: (N, D) unit image features.
        labels: (N,) int class indices.
        text_emb: (C, D) unit class embeddings.

    Returns:
        {"acc": top-1, "top5": top-k with k = min(5, C)}.
    """
    labels = torch.as_tensor(labels, device=image_feats.device).long()
    sims = image_feats.float() @ text_emb.float().to(image_feats.device).T  # (N, C)
    top = sims.topk(min(5, sims.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    n = len(labels)  # exact count ratios (a float32 mean would print 0.0949999988 for 19/200)
    return {"acc": hit[:, 0].sum().item() / n, "top5": hit.any(1).sum().item() / n}


def evaluate_dataset(clf: Classifier, clip: nn.Module, tokenizer, imageset: ImageSet, zcfg, *,
             method: str, pretrained_projection: nn.Module | None = None,
             device: torch.device | str, precision: str = "fp32", batch_size: int = 1024,
             cache: TextCache | dict | None = None, cache_key: str | None = None) -> dict:
    """One dataset's block of final.json's "zeroshot" (docs/FORMATS.md).

    Args:
        clf: the fine-tuned classifier (PEFT-wrapped vision tower for LoRA).
        clip: the CLIPModel holding the original text tower.
        imageset: the zero-shot test split (capped at `zcfg.max_images`, first images).
        zcfg: a `config.ZeroShotConfig` (templates, max_images).
        method: "full", "lora" or "linear_probe" (a frozen tower: scored as "full").
        pretrained_projection: the pretrained visual projection; gives
            `acc_frozen_projection` (fine-tuned tower + pretrained projection) and, for
            LoRA, the projection of the base-only pass (what the reports' loader used;
            without it the base-only pass uses the classifier's projection).

    Returns:
        {"acc", "top5", "acc_base_only", "top5_base_only", "acc_frozen_projection",
        "templates", "images"}; base-only fields are None unless method == "lora".
    """
    if method == "last_block":  # part of the tower trained: scored as "full"
        method = "full"
    if method not in ("full", "lora", "linear_probe"):
        raise ValueError(f"unknown method {method!r}; expected 'full', 'lora' or 'linear_probe'")
    if method == "lora" and not is_peft(clf.vision):
        raise ValueError("method='lora' but the classifier's vision tower has no PEFT adapters")
    imageset = capped(imageset, zcfg)
    name, _ = template_set(zcfg.templates)
    text = text_embeddings(clip, tokenizer, imageset.class_names, zcfg.templates, device=device,
                           cache=cache, cache_key=cache_key)
    feeder = as_feeder(imageset, device, normalization(clip))
    opts = dict(batch_size=batch_size, precision=precision)
    # One tower pass serves both projections: they only differ after pooling.
    pooled = _pooled(clf.vision, feeder, **opts)
    res = zeroshot_accuracy(_project(pooled, clf.projection, **opts), feeder.labels, text)
    block = {"acc": res["acc"], "top5": res["top5"], "acc_base_only": None, "top5_base_only": None,
             "acc_frozen_projection": None, "templates": name, "images": len(imageset)}
    if pretrained_projection is not None:
        block["acc_frozen_projection"] = zeroshot_accuracy(
            _project(pooled, pretrained_projection, **opts), feeder.labels, text)["acc"]
    if method == "lora":
        with clf.vision.disable_adapter():
            base = _pooled(clf.vision, feeder, **opts)
        base_res = zeroshot_accuracy(_project(base, pretrained_projection or clf.projection, **opts), feeder.labels, text)
        block["acc_base_only"], block["top5_base_only"] = base_res["acc"], base_res["top5"]
    return block


def capped(imageset: ImageSet, zcfg) -> ImageSet:
    """The zero-shot images `zcfg` asks for: the first `max_images`, class names in the
    `class_names` style (raw `aquarium_fish`, as the original's prompts, or humanized)."""
    imageset = imageset.with_class_names(zcfg.class_names)
    if zcfg.max_images is not None and zcfg.max_images < len(imageset):
        return imageset.subset(np.arange(zcfg.max_images))
    return imageset


def zeroshot_data_cfg(data_cfg, name: str, train_source: str | None = None):
    """`data_cfg` for loading zero-shot set `name`: without the training set's
    `image_column`/`label_column` (they name the training set's columns; a zero-shot
    `hf:` set names its own with `hf:<dir>#label=<col>`), unless `name` is the training set."""
    if name == train_source or data_cfg is None or not hasattr(data_cfg, "model_copy"):
        return data_cfg
    return data_cfg.model_copy(update={"image_column": None, "label_column": None})


def evaluate_pretrained(clip: nn.Module, spec: str, zcfg, *, data_cfg, device: torch.device | str,
                        precision: str = "fp32", batch_size: int = 1024,
                        cache: TextCache | dict | None = None) -> dict:
    """E1's zero-shot block (baseline.json): the pretrained model on `zcfg.datasets`.

    Same code path as the base-only pass of `evaluate_dataset`, so a LoRA run's `acc_base_only`
    equals this `acc` exactly.

    Returns:
        {dataset: {"acc", "top5", "templates", "images"}}.
    """
    tokenizer = load_tokenizer(spec)
    dev = torch.device(device)
    precision = effective_precision(precision, dev)
    size = image_size(clip)
    out = {}
    for name in zcfg.datasets:
        imageset = capped(load_test_split(name, zeroshot_data_cfg(data_cfg, name), image_size=size), zcfg)
        text = text_embeddings(clip, tokenizer, imageset.class_names, zcfg.templates, device=dev, cache=cache)
        feeder = as_feeder(imageset, dev, normalization(clip))
        pooled = _pooled(vision_tower(clip), feeder, batch_size=batch_size, precision=precision)
        res = zeroshot_accuracy(_project(pooled, image_projection(clip), batch_size=batch_size, precision=precision),
                       feeder.labels, text)
        out[name] = {**res, "templates": template_set(zcfg.templates)[0], "images": len(imageset)}
    return out
