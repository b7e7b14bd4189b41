"""The forgetting design's measurements: the signal pass on the probe set, zero-shot transfer
as trained, and the transfer/corruption sets (docs/FORGETTING_RUNS.md).

The signal pass (epoch 0, after every epoch, at the selected checkpoint, at every α of the
interpolation) reads, from one fp32 forward per probe batch: the attention metrics per layer
(entropy, ERF@0.95, Gini; per-image means over heads, then over images), the [CLS] state
after each block (CKA against epoch 0) and the projected embedding (embedding drift); and
the tower's weights with LoRA merged (weight change). Zero-shot transfer uses the LIVE tower
(adapters on) and the LIVE projection, one prompt, class names with underscores as spaces:
the authors' "as trained" protocol, not the frozen-projection protocol of transfer/zeroshot.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .. import _io
from ..data import Feeder, ImageSet, balanced_indices, load_named_split, load_test_split
from ..measure import (cka_per_block, classifier_accuracy, embedding_drift, encoder_weights, probe_pass,
                       summarize_rows, weight_drift_rel)
from ..models import Classifier, load_tokenizer, normalization
from ..transfer import image_features, text_embeddings, zeroshot_accuracy


@dataclass
class Reference:
    """The model before its first step, on the probe set: what every drift compares against."""

    attention: dict
    states: Tensor  # (L, N, D) [CLS] after each block
    embeds: Tensor  # (N, E) projected embeddings
    weights: dict[str, Tensor]  # tower weights, LoRA merged


def attention_summary(rows: Tensor) -> dict:
    """The authors' attention block from probe rows (L, N, H, T): per-layer and layer-mean values."""
    t = summarize_rows(rows, group_size=rows.shape[1], aggregate="per_image")
    out = {"entropy_per_layer": t["entropy"], "erf95_per_layer": t["erf"], "gini_per_layer": t["gini"]}
    for m in ("entropy", "erf95", "gini"):
        vals = out[f"{m}_per_layer"]
        out[f"{m}_mean"] = float(sum(vals) / len(vals))
    return out


def pct(now: float, before: float) -> float:
    """100·(now − before)/before: the relative change of one scalar (of the layer MEAN, for ΔH)."""
    return 100.0 * (now - before) / before


def reference(clf: Classifier, probe: Feeder, *, batch_size: int = 32) -> Reference:
    """The epoch-0 snapshot of `clf` on the probe set."""
    rows, states, embeds = probe_pass(clf.vision, probe, projection=clf.projection, batch_size=batch_size)
    return Reference(attention_summary(rows), states, embeds, encoder_weights(clf.vision))


def signals(clf: Classifier, probe: Feeder, ref: Reference, *, batch_size: int = 32,
            per_layer: bool = False) -> dict:
    """Attention, ΔH/ΔERF/ΔGini %, CKA, embedding drift and weight change of `clf` now.

    Args:
        per_layer: also the per-layer ΔH % and CKA (the selected checkpoint's `final`).

    Returns:
        {"attention": {...}, "delta_entropy_pct", "delta_erf95_pct", "delta_gini_pct",
         "cka_mean", "embedding_drift", "weight_drift_rel"} (+ "delta_entropy_per_layer_pct",
         "cka_per_layer").
    """
    rows, states, embeds = probe_pass(clf.vision, probe, projection=clf.projection, batch_size=batch_size)
    att = attention_summary(rows)
    cka = cka_per_block(ref.states, states)
    out = {"attention": att,
           "delta_entropy_pct": pct(att["entropy_mean"], ref.attention["entropy_mean"]),
           "delta_erf95_pct": pct(att["erf95_mean"], ref.attention["erf95_mean"]),
           "delta_gini_pct": pct(att["gini_mean"], ref.attention["gini_mean"]),
           "cka_mean": float(np.mean(cka)), "embedding_drift": embedding_drift(ref.embeds, embeds),
           "weight_drift_rel": weight_drift_rel(ref.weights, encoder_weights(clf.vision))}
    if per_layer:
        out["delta_entropy_per_layer_pct"] = [pct(a, b) for a, b in zip(att["entropy_per_layer"],
                                                                        ref.attention["entropy_per_layer"])]
        out["cka_per_layer"] = [float(c) for c in cka]
    return out


# --- zero-shot transfer, as trained ------------------------------------------------------

@dataclass
class ZeroShotSet:
    """One transfer set ready to score: its images on the device and its class embeddings."""

    key: str  # "cifar100@10000"
    source: str
    feeder: Feeder
    text: Tensor  # (C, D) unit rows


def prompt_names(images: ImageSet) -> list[str]:
    """Class names as the authors' prompts used them: the source's own, underscores as spaces."""
    return [n.replace("_", " ") for n in images.with_class_names("raw").class_names]


def zeroshot_set(clip: nn.Module, spec: str, images: ImageSet, source: str, prompt: str, *,
                 device: torch.device, text_cache: dict) -> ZeroShotSet:
    """Text embeddings of `images`' classes (frozen text tower: the same for every run)."""
    text = text_embeddings(clip, load_tokenizer(spec), prompt_names(images), [prompt], device=device,
                           cache=text_cache)
    norm = normalization(clip)
    return ZeroShotSet(f"{source}@{len(images)}", source, Feeder(images, device, mean=norm[0], std=norm[1]), text)


def zeroshot(clf: Classifier, zs: ZeroShotSet, *, batch_size: int = 256) -> float:
    """Top-1 zero-shot accuracy through the live tower and the live projection."""
    feats = image_features(clf, zs.feeder, batch_size=batch_size, device=zs.feeder.device)
    return zeroshot_accuracy(feats, zs.feeder.labels, zs.text)["acc"]


def head_accuracy(clf: Classifier, feeder: Feeder, *, batch_size: int = 256) -> float:
    """The classifier head's top-1 accuracy (val, test, corruption sets)."""
    return classifier_accuracy(clf, feeder, batch_size=batch_size)


def transfer_images(fcfg, data_cfg, *, image_size: int) -> dict[str, tuple[str, ImageSet]]:
    """The transfer subsets a run reads: {"track", "cifar100", "cifar10"} → (source, images).

    "track" is a balanced subset of the primary set's images (`track_per_class`), drawn
    from the same test split the final primary subset comes from.
    """
    def load(source: str) -> ImageSet:
        images = load_test_split(source, _zeroshot_data(data_cfg), image_size=image_size)
        if fcfg.max_transfer_images is not None and fcfg.max_transfer_images < len(images):
            images = images.subset(np.arange(fcfg.max_transfer_images))
        return images

    primary = load(fcfg.transfer)
    out = {"track": (fcfg.transfer, primary.subset(balanced_indices(primary.labels, fcfg.track_per_class,
                                                                     fcfg.subset_seed))),
           "cifar100": (fcfg.transfer, primary.subset(balanced_indices(primary.labels, fcfg.transfer_per_class,
                                                                        fcfg.subset_seed)))}
    if fcfg.second_transfer is not None:
        second = load(fcfg.second_transfer)
        out["cifar10"] = (fcfg.second_transfer, second.subset(balanced_indices(second.labels, fcfg.second_per_class,
                                                                                fcfg.subset_seed)))
    return out


def corruption_images(dataset: str, fcfg, data_cfg, *, image_size: int) -> dict[str, ImageSet]:
    """Balanced subsets of the training source's corruption splits, by split name."""
    out = {}
    for name in fcfg.corruptions:
        images = load_named_split(dataset, data_cfg, name, image_size=image_size)
        out[name] = images.subset(balanced_indices(images.labels, fcfg.corruption_per_class, fcfg.subset_seed))
    return out


def _zeroshot_data(data_cfg):
    # a transfer set names its own columns: the training set's must not leak into it
    return data_cfg.model_copy(update={"image_column": None, "label_column": None})


# --- the per-backbone cache of pretrained transfer accuracies ----------------------------

def cache_file(cache_dir: Path, model: str) -> Path:
    """`<cache_dir>/<model, path-safe>.json`: {"<source>@<n>|<prompt>": accuracy}."""
    return Path(cache_dir) / (re.sub(r"[^A-Za-z0-9_.-]", "_", model) + ".json")


def cached_pretrained(cache_dir: Path, model: str, zs: ZeroShotSet, prompt: str) -> float | None:
    path = cache_file(cache_dir, model)
    if not path.is_file():
        return None
    try:
        return _io.read_json_checked(path).get(f"{zs.key}|{prompt}")
    except _io.DamagedFile:  # recomputed and rewritten
        return None


def store_pretrained(cache_dir: Path, model: str, zs: ZeroShotSet, prompt: str, acc: float) -> None:
    path = cache_file(cache_dir, model)
    data = {}
    if path.is_file():
        try:
            data = {k: v for k, v in _io.read_json_checked(path).items() if k != "checksum"}
        except _io.DamagedFile:
            data = {}
    data[f"{zs.key}|{prompt}"] = acc
    path.parent.mkdir(parents=True, exist_ok=True)
    _io.write_json(path, data, checksum=True)
