"""`CollapseCallback`: the four metrics per layer on a fixed image set, in a `transformers.Trainer`.

A `TrainerCallback` is not handed the trainer, and the evaluation's log has reached the
reporting callbacks (TensorBoard, W&B) before `on_evaluate` runs. So the callback logs
through `trainer.log` — the path every reporting callback listens on, which also appends to
`state.log_history` — once it knows the trainer (`attach(trainer)`); without it (passed as
`Trainer(callbacks=[...])`), the numbers go into `state.log_history` and the metrics that
`trainer.evaluate()` returns, and a warning says to attach.
"""

from __future__ import annotations

import warnings

from torch import Tensor, nn
from transformers import TrainerCallback

from .towers import as_logs, find_tower, fixed_set_table


class CollapseCallback(TrainerCallback):
    """Measure attention collapse at every evaluation (and every N steps if asked).

    Args:
        pixel_values: (N, 3, S, S) normalised images, the fixed set measured every time.
        tower: the vision tower to probe; None = found inside the trained model (`find_tower`).
        every_n_steps: also measure every N optimisation steps (None = only at evaluations).
        prefix: first part of the logged names (`collapse/entropy/layer_1`, `.../mean`).
        batch_size, group_size: images per forward and per metric batch (reports: 32).
    """

    def __init__(self, pixel_values: Tensor, *, tower: nn.Module | None = None, every_n_steps: int | None = None,
                 prefix: str = "collapse", batch_size: int = 256, group_size: int = 32):
        if not isinstance(pixel_values, Tensor) or pixel_values.dim() != 4:
            raise ValueError("CollapseCallback: pixel_values must be a (N, 3, S, S) tensor of normalised images")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"CollapseCallback: every_n_steps must be >= 1, got {every_n_steps}")
        self.pixel_values, self.tower, self.every_n_steps, self.prefix = pixel_values, tower, every_n_steps, prefix
        self.batch_size, self.group_size = batch_size, group_size
        self.trainer = None
        self._warned = False

    def attach(self, trainer) -> "CollapseCallback":
        """Add to `trainer` and log through `trainer.log` (what TensorBoard/W&B callbacks see)."""
        trainer.add_callback(self)
        self.trainer = trainer
        return self

    def measure(self, model: nn.Module) -> dict[str, float]:
        """The logged scalars for `model` now: every layer's four metrics and their layer means."""
        tower = self.tower if self.tower is not None else find_tower(model)
        table = fixed_set_table(tower, self.pixel_values, batch_size=self.batch_size, group_size=self.group_size)
        return as_logs(table, self.prefix)

    def _emit(self, state, logs: dict[str, float]) -> None:
        if self.trainer is not None:
            self.trainer.log(dict(logs))
            return
        state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})
        if not self._warned:
            warnings.warn("CollapseCallback: reporting callbacks (TensorBoard, W&B) only see the metrics when "
                          "the callback is added with CollapseCallback(...).attach(trainer)", stacklevel=2)
            self._warned = True

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if not state.is_world_process_zero:
            return
        logs = self.measure(model)
        if metrics is not None:
            metrics.update(logs)  # what trainer.evaluate() returns
        self._emit(state, logs)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every_n_steps and state.global_step % self.every_n_steps == 0 and state.is_world_process_zero:
            self._emit(state, self.measure(model))
