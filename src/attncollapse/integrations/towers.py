"""Find the vision tower inside a model being trained, and measure it on a fixed image set.

Training loops hand callbacks the whole trained model (a CLIPModel, a
ViTForImageClassification, a PEFT wrapper, a LightningModule holding any of these, a
custom `nn.Module` with a `.vision_model`); the probe wants the vision tower alone (a
CLIP model's text tower has attention modules of the same class). `find_tower` unwraps
and looks where the families keep it; a `tower=` argument of the callers overrides it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._device import autocast, eval_mode
from ..measure import LAYOUTS, attention_modules, probed_forward, probing, summarize_rows
from ..track import metric_logs

# Where the supported families keep their vision tower inside a bigger model: CLIP/SigLIP
# (`vision_model`), ViT/DINOv2 task heads (`vit`, `dinov2`), LLaVA-style (`vision_tower`).
TOWER_ATTRS = ("vision_model", "vision_tower", "vit", "dinov2")


def _unwrap(model: nn.Module) -> nn.Module:
    # DataParallel/DDP (`.module`), torch.compile (`._orig_mod`), PEFT (`get_base_model()`:
    # the adapters are injected in place, so the base model still runs them).
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif callable(getattr(type(model), "get_base_model", None)):
            model = model.get_base_model()
        else:
            return model


def _search(model: nn.Module, depth: int) -> nn.Module | None:
    model = _unwrap(model)
    for attr in TOWER_ATTRS:
        sub = model._modules.get(attr)
        if isinstance(sub, nn.Module):
            return _search(sub, depth) or _unwrap(sub)
    # its own config (a wrapper's submodules' configs say nothing about the wrapper's forward)
    if getattr(getattr(model, "config", None), "model_type", None) in LAYOUTS and model._modules:
        return model  # the model is the tower (CLIPVisionModel, ViTModel, Dinov2Model, ...)
    if depth > 0:  # a wrapper (a LightningModule's `self.model`, a classifier's backbone)
        for child in model.children():
            found = _search(child, depth - 1)
            if found is not None:
                return found
    return None


def find_tower(model: nn.Module) -> nn.Module:
    """The vision tower inside `model` (the module to probe).

    Raises:
        ValueError: no vision tower of a known family found (one line: pass `tower=`).
    """
    found = _search(model, depth=2)
    if found is None:
        raise ValueError(f"no vision tower found in {type(model).__name__} (looked for "
                         f"{', '.join(TOWER_ATTRS)} and known model types); pass tower=<the vision module>")
    return found


@torch.no_grad()
def fixed_set_rows(tower: nn.Module, pixel_values: Tensor, *, batch_size: int = 256,
                   precision: str = "fp32") -> Tensor:
    """[CLS] rows of the tower on a fixed image set: (L, N, H, 1 + P) fp32 on the tower's device.

    Args:
        tower: the vision tower (eval mode inside, its mode restored after).
        pixel_values: (N, 3, S, S) normalised images.
        batch_size: images per forward pass.
        precision: autocast of the forwards ("fp32" = off, an enclosing autocast included).
    """
    param = next(tower.parameters())
    n_layers = len(attention_modules(tower))
    chunks = []
    with eval_mode(tower), probing(tower) as rows:
        for x in pixel_values.split(batch_size):
            with autocast(param.device, precision):
                chunks.append(probed_forward(tower, rows, x.to(param.device, param.dtype), n_layers).float())
    return torch.cat(chunks, dim=1)


def fixed_set_table(tower: nn.Module, pixel_values: Tensor, *, batch_size: int = 256, group_size: int = 32,
                    precision: str = "fp32") -> dict[str, list[float]]:
    """Per-layer table of the four metrics on a fixed image set, as at every eval point.

    Args:
        tower: the vision tower (eval mode inside, its mode restored after).
        pixel_values: (N, 3, S, S) normalised images, in the order the groups are taken.
        batch_size: images per forward pass.
        group_size: images per metric batch (reports: 32).
        precision: autocast of the forwards ("fp32" = off).

    Returns:
        {"entropy": [L], "erf": [L], "gini": [L], "head_diversity": [L]}.
    """
    rows = fixed_set_rows(tower, pixel_values, batch_size=batch_size, precision=precision)
    return summarize_rows(rows, group_size=group_size)


def find_owner(model: nn.Module, attr: str) -> nn.Module | None:
    """The module inside `model` (itself included, wrappers unwrapped, two levels down) that has
    a submodule `attr` (CLIP's `visual_projection`, `text_model`), or None."""
    def search(m: nn.Module, depth: int) -> nn.Module | None:
        m = _unwrap(m)
        if isinstance(m._modules.get(attr), nn.Module):
            return m
        for child in (m.children() if depth > 0 else ()):
            found = search(child, depth - 1)
            if found is not None:
                return found
        return None

    return search(model, 2)


def as_logs(table: dict[str, list[float]], prefix: str) -> dict[str, float]:
    """Flat scalars for a logger: `{prefix}/{metric}/layer_{i}` (1-based) and `{prefix}/{metric}/mean`."""
    return metric_logs(table, prefix)
