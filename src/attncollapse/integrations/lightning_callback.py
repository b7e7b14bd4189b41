"""`LightningCollapseCallback`: the four metrics per layer on a fixed image set, in a `lightning.Trainer`.

At validation it logs through `pl_module.log_dict`, so every logger of the trainer
(TensorBoard, CSV, W&B) gets the numbers and `trainer.callback_metrics` holds them; every
N steps it writes to `trainer.loggers` directly, at the step measured.
"""

from __future__ import annotations

import lightning
from torch import Tensor, nn

from .towers import as_logs, find_tower, fixed_set_table


class LightningCollapseCallback(lightning.Callback):
    """Measure attention collapse at the end of every validation epoch (and every N steps if asked).

    Args:
        pixel_values: (N, 3, S, S) normalised images, the fixed set measured every time.
        tower: the vision tower to probe; None = found inside the LightningModule (`find_tower`).
        every_n_steps: also measure every N optimisation steps (None = only at validation).
        prefix: first part of the logged names (`collapse/entropy/layer_1`, `.../mean`).
        batch_size, group_size: images per forward and per metric batch (reports: 32).
    """

    def __init__(self, pixel_values: Tensor, *, tower: nn.Module | None = None, every_n_steps: int | None = None,
                 prefix: str = "collapse", batch_size: int = 256, group_size: int = 32):
        if not isinstance(pixel_values, Tensor) or pixel_values.dim() != 4:
            raise ValueError("LightningCollapseCallback: pixel_values must be a (N, 3, S, S) tensor of normalised images")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"LightningCollapseCallback: every_n_steps must be >= 1, got {every_n_steps}")
        self.pixel_values, self.tower, self.every_n_steps, self.prefix = pixel_values, tower, every_n_steps, prefix
        self.batch_size, self.group_size = batch_size, group_size

    def measure(self, pl_module: nn.Module) -> dict[str, float]:
        """The logged scalars for the module now: every layer's four metrics and their layer means."""
        tower = self.tower if self.tower is not None else find_tower(pl_module)
        table = fixed_set_table(tower, self.pixel_values, batch_size=self.batch_size, group_size=self.group_size)
        return as_logs(table, self.prefix)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        pl_module.log_dict(self.measure(pl_module), on_step=False, on_epoch=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Straight to the loggers: a `log_dict(on_step=True)` value stays in Lightning's step
        # results and is written again at later steps that did not measure.
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and trainer.is_global_zero:
            logs = self.measure(pl_module)
            for logger in trainer.loggers:
                logger.log_metrics(logs, step=trainer.global_step)
