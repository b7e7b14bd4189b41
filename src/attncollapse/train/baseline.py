"""Experiment E1: the pretrained model's per-layer attention table (and zero-shot) on a dataset.

Any model family (models.FAMILIES): zero-shot needs CLIP's text tower and is skipped, with
the reason in baseline.json's "zeroshot_skipped", for the others.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .. import _io
from .._device import effective_precision, resolve_device
from ..config import DataConfig, EvalConfig
from ..data import Feeder, load_splits
from ..measure import attention_table, layer_mean
from ..models import PRESETS, family_of, image_size, load_model, vision_tower, zeroshot_problem
from ..transfer import evaluate_pretrained

log = logging.getLogger(__name__)


def baseline(model: str, source: str, *, data_cfg=None, eval_cfg=None, out_dir: str | Path,
             zeroshot_cfg=None, device: str = "auto", out_name: str | None = None,
             precision: str = "fp32") -> dict:
    """Experiment E1: the pretrained model's per-layer attention table on `source`.

    Writes `<out_dir>/<out_name or "baseline.json">` and returns its content (FORMATS.md).
    Zero-shot accuracy on `zeroshot_cfg.datasets` is added when a config is given and
    enabled and the model is a CLIP (else "zeroshot_skipped" says why).
    """
    data_cfg = data_cfg or DataConfig()
    eval_cfg = eval_cfg or EvalConfig()
    dev = resolve_device(device)
    precision = effective_precision(precision, dev)
    clip = load_model(model).to(dev)
    splits = load_splits(source, data_cfg, image_size=image_size(clip))
    feeder = Feeder(splits.eval_set, dev)
    table = attention_table(vision_tower(clip), feeder, **eval_cfg.metric_options(), precision=precision)
    result = {
        "model": model, "family": family_of(clip).name, "model_random_init": model in PRESETS, "dataset": source,
        "images": len(splits.eval_idx),
        "eval_idx": splits.eval_idx.tolist(), "diversity": eval_cfg.diversity,
        "layers": table, "mean": layer_mean(table), "env": _io.environment(),
    }
    wants_zeroshot = zeroshot_cfg is not None and zeroshot_cfg.enabled and zeroshot_cfg.datasets
    problem = zeroshot_problem(clip) if wants_zeroshot else None
    if problem:
        log.warning("%s: %s", model, problem)
        result["zeroshot_skipped"] = problem
    elif wants_zeroshot:
        result["zeroshot"] = evaluate_pretrained(clip, model, zeroshot_cfg, data_cfg=data_cfg,
                                                 device=dev, precision=precision)
    _io.write_json(Path(out_dir) / (out_name or "baseline.json"), result)
    return result
