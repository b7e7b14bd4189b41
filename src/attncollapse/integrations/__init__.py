"""Integrations with training loops people already use: transformers' Trainer, Lightning, plain PyTorch.

`CollapseMonitor` measures, on a fixed image set, the four metrics per layer, their change
since train start, CKA, embedding drift, weight change and zero-shot retention, and logs them
to TensorBoard, W&B, MLflow or trackio (`attncollapse.track`); `CollapseCallback` (a
`transformers.TrainerCallback`) and `LightningCollapseCallback` (a Lightning `Callback`)
drive one from their trainer's events, a plain loop calls it directly; `AttentionPriorLoss`
and `EntropyFloorLoss` are the study's regularizers as loss objects; `watch(model)` exposes
the rows of a plain loop's forwards. Lightning is
imported only when `LightningCollapseCallback` is asked for. See docs/INTEGRATIONS.md.
"""

from __future__ import annotations

from typing import Any

from .hf_callback import CollapseCallback
from .losses import AttentionPriorLoss, EntropyFloorLoss, Watch, watch
from .monitor import CollapseMonitor, TrackingSet
from .towers import TOWER_ATTRS, as_logs, find_owner, find_tower, fixed_set_rows, fixed_set_table

__all__ = ["AttentionPriorLoss", "CollapseCallback", "CollapseMonitor", "EntropyFloorLoss", "LightningCollapseCallback",
           "TOWER_ATTRS", "TrackingSet", "Watch", "as_logs", "find_owner", "find_tower", "fixed_set_rows",
           "fixed_set_table", "watch"]


def __getattr__(name: str) -> Any:
    if name == "LightningCollapseCallback":  # lightning loads only for its users
        from .lightning_callback import LightningCollapseCallback
        return LightningCollapseCallback
    raise AttributeError(f"module 'attncollapse.integrations' has no attribute {name!r}")
