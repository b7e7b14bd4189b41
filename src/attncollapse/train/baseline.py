"""Experiment E1: the pretrained model's per-layer attention table (and zero-shot) on a dataset."""

from __future__ import annotations

from pathlib import Path

from .. import _io
from .._device import effective_precision, resolve_device
from ..config import DataConfig, EvalConfig
from ..data import Feeder, load_splits
from ..measure import attention_table, layer_mean
from ..models import PRESETS, load_clip
from ..transfer import evaluate_pretrained


def baseline(model: str, source: str, *, data_cfg=None, eval_cfg=None, out_dir: str | Path,
             zeroshot_cfg=None, device: str = "auto", out_name: str | None = None,
             precision: str = "fp32") -> dict:
    """Experiment E1: the pretrained model's per-layer attention table on `source`.

    Writes `<out_dir>/<out_name or "baseline.json">` and returns its content (FORMATS.md).
    Zero-shot accuracy on `zeroshot_cfg.datasets` is added when a config is given and
    enabled (and the model has a tokenizer).
    """
    data_cfg = data_cfg or DataConfig()
    eval_cfg = eval_cfg or EvalConfig()
    dev = resolve_device(device)
    precision = effective_precision(precision, dev)
    clip = load_clip(model).to(dev)
    size = clip.config.vision_config.image_size
    splits = load_splits(source, data_cfg, image_size=size)
    feeder = Feeder(splits.eval_set, dev)
    table = attention_table(clip.vision_model, feeder, **eval_cfg.metric_options(), precision=precision)
    result = {
        "model": model, "model_random_init": model in PRESETS, "dataset": source, "images": len(splits.eval_idx),
        "eval_idx": splits.eval_idx.tolist(), "diversity": eval_cfg.diversity,
        "layers": table, "mean": layer_mean(table), "env": _io.environment(),
    }
    if zeroshot_cfg is not None and zeroshot_cfg.enabled and zeroshot_cfg.datasets:
        result["zeroshot"] = evaluate_pretrained(clip, model, zeroshot_cfg, data_cfg=data_cfg,
                                                 device=dev, precision=precision)
    _io.write_json(Path(out_dir) / (out_name or "baseline.json"), result)
    return result
