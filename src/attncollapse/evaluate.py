"""Evaluation shared by training and the E1 baseline: attention tables and accuracy.

An eval point is the four metrics per layer on the fixed eval subset (probe on, no
grad, forward passes of `EvalConfig.forward_batch_size` images, metrics grouped by
`EvalConfig.batch_size`), plus accuracy on the selection split when
scheduled. `baseline` is experiment E1: the same table for the pretrained model.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from . import metrics
from .data import Feeder
from .probe import attention_modules, probing, stack_rows

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def effective_precision(precision: str, device: torch.device) -> str:
    """fp16 autocast is a GPU feature; on the CPU the run falls back to fp32 (and says so)."""
    if precision == "fp16" and device.type != "cuda":
        warnings.warn("fp16 autocast needs CUDA; running this CPU run in fp32", stacklevel=2)
        return "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """Autocast context for `precision` ("fp16" | "bf16" | "fp32" = off)."""
    dtype = _DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def eval_rows(vision: nn.Module, feeder: Feeder, *, batch_size: int, precision: str) -> Tensor:
    """[CLS] rows of every eval image: (L, N, H, T) fp32, in the feeder's order."""
    was_training = vision.training
    vision.eval()
    n_layers = len(attention_modules(vision))
    chunks = []
    try:
        with probing(vision) as rows:
            for x, _ in feeder.batches(batch_size):
                rows.clear()
                with autocast(feeder.device, precision):
                    vision(pixel_values=x)
                chunks.append(stack_rows(rows, n_layers).float())
    finally:
        vision.train(was_training)
    return torch.cat(chunks, dim=1)


def summarize_rows(rows: Tensor, ecfg) -> dict[str, list[float]]:
    """Per-layer table of eval rows (L, N, H, T) under an `EvalConfig` (metrics.summarize)."""
    return metrics.summarize(rows, erf_q=ecfg.erf_q, diversity=ecfg.diversity,
                             diversity_batch=ecfg.batch_size)


def attention_table(vision: nn.Module, feeder: Feeder, ecfg, *, precision: str = "fp32") -> dict[str, list[float]]:
    """Per-layer table of the four metrics on the eval subset, as at every eval point."""
    return summarize_rows(eval_rows(vision, feeder, batch_size=ecfg.forward_batch_size, precision=precision), ecfg)


@torch.no_grad()
def accuracy(clf: nn.Module, feeder: Feeder, *, batch_size: int = 256, precision: str = "fp32") -> float:
    """Top-1 accuracy of `clf` over every image of `feeder`."""
    was_training = clf.training
    clf.eval()
    correct = torch.zeros((), dtype=torch.long, device=feeder.device)
    try:
        for x, y in feeder.batches(batch_size):
            with autocast(feeder.device, precision):
                logits = clf(x)
            correct += (logits.argmax(-1) == y).sum()
    finally:
        clf.train(was_training)
    return correct.item() / len(feeder)


def format_table(table: dict[str, list[float]]) -> str:
    """The per-layer table as aligned terminal text (plus the mean over layers)."""
    names = [m for m in metrics.METRICS if m in table]
    header = f"{'layer':>6} " + " ".join(f"{n:>15}" for n in names)
    lines = [header, "-" * len(header)]
    for i in range(len(table[names[0]])):
        lines.append(f"{i + 1:>6} " + " ".join(f"{table[n][i]:>15.4f}" for n in names))
    means = metrics.layer_mean(table)
    lines.append("-" * len(header))
    lines.append(f"{'mean':>6} " + " ".join(f"{means[n]:>15.4f}" for n in names))
    return "\n".join(lines)


def baseline(model: str, source: str, *, data_cfg=None, eval_cfg=None, out_dir: str | Path,
             zeroshot_cfg=None, device: str = "auto", out_name: str | None = None,
             precision: str = "fp32") -> dict:
    """Experiment E1: the pretrained model's per-layer attention table on `source`.

    Writes `<out_dir>/<out_name or "baseline.json">` and returns its content (FORMATS.md).
    Zero-shot accuracy on `zeroshot_cfg.datasets` is added when a config is given and
    enabled (and the model has a tokenizer).
    """
    from . import _io
    from .config import DataConfig, EvalConfig
    from .data import load_splits
    from .models import load_clip

    data_cfg = data_cfg or DataConfig()
    eval_cfg = eval_cfg or EvalConfig()
    dev = resolve_device(device)
    precision = effective_precision(precision, dev)
    clip = load_clip(model).to(dev)
    size = clip.config.vision_config.image_size
    splits = load_splits(source, data_cfg, image_size=size)
    feeder = Feeder(splits.eval_set, dev)
    table = attention_table(clip.vision_model, feeder, eval_cfg, precision=precision)
    result = {
        "model": model, "dataset": source, "images": len(splits.eval_idx),
        "eval_idx": splits.eval_idx.tolist(), "diversity": eval_cfg.diversity,
        "layers": table, "mean": metrics.layer_mean(table), "env": _io.environment(),
    }
    if zeroshot_cfg is not None and zeroshot_cfg.enabled and zeroshot_cfg.datasets:
        from . import zeroshot
        result["zeroshot"] = zeroshot.evaluate_pretrained(clip, model, zeroshot_cfg, data_cfg=data_cfg,
                                                          device=dev, precision=precision)
    _io.write_json(Path(out_dir) / (out_name or "baseline.json"), result)
    return result
