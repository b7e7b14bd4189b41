"""`LightningCollapseCallback`: a `CollapseMonitor` driven by a `lightning.Trainer`'s events.

`on_train_start` (after the sanity check, with a checkpoint's weights loaded) takes the
reference and logs it at `trainer.global_step`; the end of every validation and every
`every_n_steps` steps measure at `trainer.global_step`, once per step, so the logged steps
only increase. The numbers go through the monitor's own trackers into the trainer's log
directory, and into `trainer.callback_metrics` (so `ModelCheckpoint` or `EarlyStopping` can
monitor a `collapse/...` value).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning
import torch
from torch import Tensor

from .monitor import CollapseMonitor


class LightningCollapseCallback(lightning.Callback):
    """Measure attention collapse at train start, at every validation end, and every N steps if asked.

    Args:
        pixel_values: (N, 3, S, S) normalised images, or a ready `CollapseMonitor`.
        **monitor: `CollapseMonitor`'s keyword arguments. `log_dir` None = `trainer.log_dir`
            (the first logger's directory), else `trainer.default_root_dir`.
    """

    def __init__(self, pixel_values: Tensor | CollapseMonitor, **monitor):
        self.monitor = (pixel_values if isinstance(pixel_values, CollapseMonitor)
                        else CollapseMonitor(pixel_values, who="LightningCollapseCallback", **monitor))

    def _publish(self, trainer, logs: dict[str, float]) -> None:
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in logs.items()})

    def on_train_start(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        if not trainer.enable_validation and not self.monitor.every_n_steps:
            warnings.warn("LightningCollapseCallback: the trainer runs no validation and every_n_steps is None, "
                          "so nothing is measured after train start; add a validation loop or set every_n_steps",
                          stacklevel=2)
        if self.monitor.log_dir is None:
            self.monitor.log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        self._publish(trainer, self.monitor.start(pl_module, step=trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.is_global_zero and self.monitor.started and self.monitor.due(trainer.global_step):
            self._publish(trainer, self.monitor.measure(pl_module, trainer.global_step))

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero or not self.monitor.started:
            return  # a validate() outside fit has no reference
        self._publish(trainer, self.monitor.measure(pl_module, trainer.global_step))

    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.monitor.close()
