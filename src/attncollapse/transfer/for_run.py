"""A trained run's transfer numbers: zero-shot on every configured dataset, then WiSE-FT;
k-NN and the linear probe (representation.py) where zero-shot cannot run.

`evaluate_for_run` is what a run's final.json holds under "zeroshot" and "wise"
(docs/FORMATS.md); training calls it at the end of a run, `attncollapse zeroshot` on a
finished one.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from .._device import effective_precision
from ..data import Splits, load_splits, load_test_split
from ..models import (Classifier, image_projection, image_size, load_clip, load_tokenizer, normalization, zeroshot_problem)
from .representation import evaluate_features, transfer_headline, transfer_sets, wants_features
from .text import TextCache
from .wise import vision_state, wise
from .zeroshot import capped, evaluate_dataset, zeroshot_data_cfg

log = logging.getLogger(__name__)


def evaluate_for_run(cfg, clip: nn.Module, clf: Classifier, splits: Splits | None = None, *,
                     device: torch.device | str, precision: str = "fp32", datasets: Sequence[str] | None = None,
                     pretrained: nn.Module | None = None, pretrained_state: dict | None = None,
                     batch_size: int = 1024, cache: TextCache | dict | None = None) -> dict:
    """The transfer part of a run's final.json (docs/FORMATS.md), for a trained model.

    Zero-shot where the model has CLIP's text tower; k-NN and a linear probe
    (representation.py) where it has none, or everywhere with `zeroshot.feature_transfer:
    always`; their fields share one block per dataset.

    Args:
        cfg: the run's `RunConfig` (method, model, data, eval and zeroshot sections).
        clip: the run's pretrained model (its text tower is the pretrained one).
        clf: the trained classifier (PEFT-wrapped for LoRA).
        splits: the run's splits, for WiSE-FT's task accuracy and metrics; loaded when
            `cfg.zeroshot.wise_alphas` asks for them and none are given.
        datasets: zero-shot sources overriding `cfg.zeroshot.datasets`.
        pretrained: the pretrained CLIPModel; None = `load_clip(cfg.model)` (presets have
            one fixed init, the one `train.build` starts from).
        pretrained_state: `wise.vision_state` of the model before training (what
            `train.run` keeps); replaces `pretrained` and its reload.

    Returns:
        {"zeroshot": {dataset: block}, "zeroshot_acc", "zeroshot_acc_base_only", "wise",
        "transfer_acc", "transfer_protocol", "knn_acc", "linear_probe_acc"}; for a model
        without CLIP's text tower "zeroshot_skipped" says why its blocks hold no "acc".
    """
    datasets = list(datasets or cfg.zeroshot.datasets)
    out = {"zeroshot": {}, "zeroshot_acc": None, "zeroshot_acc_base_only": None, "wise": []}
    if not datasets:
        return {**out, **transfer_headline({}, [])}
    dev = torch.device(device)
    precision = effective_precision(precision, dev)
    opts = dict(device=dev, precision=precision, batch_size=batch_size)
    problem = zeroshot_problem(clip)
    if problem:  # vision-only families: no text tower
        log.warning("%s: %s", cfg.model, problem)
        out["zeroshot_skipped"] = problem
    else:
        out.update(_zeroshot(cfg, clip, clf, splits, datasets, pretrained=pretrained,
                             pretrained_state=pretrained_state, cache=cache, **opts))
    if wants_features(cfg.zeroshot, problem):
        size = image_size(clip)
        for name in datasets:
            train, test = transfer_sets(name, zeroshot_data_cfg(cfg.data, name, cfg.dataset), cfg.zeroshot,
                                        image_size=size)
            block = out["zeroshot"].setdefault(name, {"acc": None})
            block.update(evaluate_features(clf, train, test, norm=normalization(clip), **opts))
    return {**out, **transfer_headline(out["zeroshot"], datasets)}


def _zeroshot(cfg, clip: nn.Module, clf: Classifier, splits: Splits | None, datasets: list[str], *,
              device: torch.device, precision: str, batch_size: int, pretrained: nn.Module | None,
              pretrained_state: dict | None, cache: TextCache | dict | None) -> dict:
    """Zero-shot blocks (every protocol) and WiSE-FT of a model with CLIP's text tower."""
    zcfg, dev = cfg.zeroshot, device
    tokenizer = load_tokenizer(cfg.model)
    if pretrained_state is not None:
        pre_state = pretrained_state
        projection = nn.Identity()  # SigLIP has no image projection
        if "projection.weight" in pre_state:
            weight = pre_state["projection.weight"]
            projection = nn.Linear(weight.shape[1], weight.shape[0], bias=False).to(dev)
            with torch.no_grad():
                projection.weight.copy_(weight)
    else:
        pretrained = (pretrained if pretrained is not None else load_clip(cfg.model)).to(dev)
        pre_state, projection = vision_state(pretrained), image_projection(pretrained)
    if cfg.method == "lora":
        # LoRA never changes the base tower: a mismatch means `pretrained` is the wrong model.
        ft_state = vision_state(clf)
        bad = [k for k in ft_state if k.startswith("vision.") and not torch.equal(ft_state[k], pre_state[k])]
        if bad:
            raise ValueError(f"pretrained model differs from the LoRA run's base tower (e.g. {bad[0]})")
    cache = TextCache() if cache is None else cache
    size = image_size(clip)
    sets = {name: capped(load_test_split(name, zeroshot_data_cfg(cfg.data, name, cfg.dataset), image_size=size), zcfg)
            for name in datasets}
    blocks = {name: evaluate_dataset(clf, clip, tokenizer, s, zcfg, method=cfg.method,
                                     pretrained_projection=projection, device=dev,
                                     precision=precision, batch_size=batch_size, cache=cache)
              for name, s in sets.items()}
    first = blocks[datasets[0]]
    out = {"zeroshot": blocks, "zeroshot_acc": first["acc"],
           "zeroshot_acc_base_only": first["acc_base_only"], "wise": []}
    if zcfg.wise_alphas:
        splits = splits or load_splits(cfg.dataset, cfg.data, image_size=size)
        out["wise"] = wise(clf, pre_state, zcfg.wise_alphas, clip=clip, tokenizer=tokenizer,
                           zeroshot_set=sets[datasets[0]], task_set=splits.test, eval_set=splits.eval_set,
                           templates=zcfg.templates, device=dev, precision=precision, batch_size=batch_size,
                           eval_batch=cfg.eval.batch_size, erf_q=cfg.eval.erf_q,
                           diversity=cfg.eval.diversity, aggregate=cfg.eval.aggregate, cache=cache)
    return out
