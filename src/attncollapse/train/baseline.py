"""Experiment E1: the pretrained model's per-layer attention table (and transfer) on a dataset.

Any model family (models.FAMILIES): zero-shot needs CLIP's text tower and is skipped, with
the reason in baseline.json's "zeroshot_skipped", for the others; they get k-NN and
linear-probe accuracy instead (transfer/representation.py), the pretrained side of a
run's transfer drop.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .. import _io
from .._device import effective_precision, resolve_device
from ..config import DataConfig, EvalConfig
from ..data import Feeder, load_splits
from ..measure import (StructureReference, eval_rows_structure, layer_mean, structure_table,
                       summarize_rows)
from ..models import (PRESETS, family_of, image_size, load_model, normalization, vision_tower,
                      zeroshot_problem)
from ..transfer import (evaluate_features, evaluate_pretrained, pretrained_classifier, transfer_headline,
                        transfer_sets, wants_features, zeroshot_data_cfg)

log = logging.getLogger(__name__)


def baseline(model: str, source: str, *, data_cfg=None, eval_cfg=None, out_dir: str | Path,
             zeroshot_cfg=None, device: str = "auto", out_name: str | None = None,
             precision: str = "fp32") -> dict:
    """Experiment E1: the pretrained model's per-layer attention table on `source`.

    Writes `<out_dir>/<out_name or "baseline.json">` and returns its content (FORMATS.md).
    Transfer on `zeroshot_cfg.datasets` is added when a config is given and enabled:
    zero-shot accuracy for a CLIP (else "zeroshot_skipped" says why), k-NN and linear
    probe as `zeroshot_cfg.feature_transfer` asks, and the run-level `transfer_acc`.
    """
    data_cfg = data_cfg or DataConfig()
    eval_cfg = eval_cfg or EvalConfig()
    dev = resolve_device(device)
    precision = effective_precision(precision, dev)
    clip = load_model(model).to(dev)
    size = image_size(clip)
    splits = load_splits(source, data_cfg, image_size=size)
    mean, std = normalization(clip)  # the family's (or the checkpoint's) image constants
    feeder = Feeder(splits.eval_set, dev, mean=mean, std=std)
    # The same forwards as a run's step-0 eval point (eval_rows_structure: its rows are eval_rows')
    rows, obs = eval_rows_structure(vision_tower(clip), feeder, batch_size=eval_cfg.forward_batch_size,
                                    precision=precision)
    table = summarize_rows(rows, **eval_cfg.metric_options())
    result = {
        "model": model, "family": family_of(clip).name, "model_random_init": model in PRESETS, "dataset": source,
        "images": len(splits.eval_idx),
        "eval_idx": splits.eval_idx.tolist(), **metric_settings(eval_cfg),
        "layers": table, "mean": layer_mean(table), "env": _io.environment(),
    }
    if eval_cfg.structure:  # against itself: CKA 1 and map drift 0, the rollout and patch entropy E1's
        result["structure"] = structure_table(obs, StructureReference.of(obs), group_size=eval_cfg.batch_size,
                                              erf_q=eval_cfg.erf_q, aggregate=eval_cfg.aggregate)
    if zeroshot_cfg is not None and zeroshot_cfg.enabled and zeroshot_cfg.datasets:
        result.update(_transfer(clip, model, zeroshot_cfg, data_cfg, size, dev, precision))
    _io.write_json(Path(out_dir) / (out_name or "baseline.json"), result, checksum=True)  # read back verified
    return result


def metric_settings(eval_cfg) -> dict:
    """The EvalConfig fields that move the table's numbers, as baseline.json records them:
    "diversity", "aggregate", "group_size" (`eval.batch_size`: images per metric batch, also
    head diversity's grouping) and "erf_q" (`forward_batch_size` only sets speed: left out)."""
    return {"diversity": eval_cfg.diversity, "aggregate": eval_cfg.aggregate, "group_size": eval_cfg.batch_size,
            "erf_q": eval_cfg.erf_q}


def _transfer(clip, model: str, zcfg, data_cfg, size: int, dev, precision: str) -> dict:
    """baseline.json's "zeroshot" blocks (zero-shot and/or k-NN + linear probe) and headline."""
    out: dict = {"zeroshot": {}}
    problem = zeroshot_problem(clip)
    if problem:
        log.warning("%s: %s", model, problem)
        out["zeroshot_skipped"] = problem
    else:
        out["zeroshot"] = evaluate_pretrained(clip, model, zcfg, data_cfg=data_cfg, device=dev, precision=precision)
    if wants_features(zcfg, problem):
        clf = pretrained_classifier(clip)
        for name in zcfg.datasets:
            train, test = transfer_sets(name, zeroshot_data_cfg(data_cfg, name), zcfg, image_size=size)
            block = out["zeroshot"].setdefault(name, {"acc": None})
            block.update(evaluate_features(clf, train, test, device=dev, precision=precision,
                                           norm=normalization(clip)))
    if not out["zeroshot"]:
        del out["zeroshot"]
    return {**out, **transfer_headline(out.get("zeroshot", {}), zcfg.datasets)}
