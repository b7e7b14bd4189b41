"""`CollapseCallback`: a `CollapseMonitor` driven by a `transformers.Trainer`'s events.

`on_train_begin` takes the reference (the model before its first step) and logs it at the
current global step (0 for a fresh run); `on_evaluate` and every `every_n_steps` steps
measure at `state.global_step`, once per step. The numbers go through the monitor's own
trackers into the run's log directory, named exactly `collapse/...`: the Trainer's
`trainer.log` path would hand them to its TensorBoard callback, which renames every
training-time scalar to `train/...`. They are still appended to `state.log_history` and to
the metrics `trainer.evaluate()` returns.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from torch import Tensor
from transformers import TrainerCallback

from .monitor import CollapseMonitor


def log_dir_of(args) -> Path:
    """Where the callback's trackers write: `args.logging_dir` (transformers < 5), else
    `TENSORBOARD_LOGGING_DIR` (what transformers 5's TensorBoard callback reads), else
    `<output_dir>/collapse`."""
    found = getattr(args, "logging_dir", None) or os.environ.get("TENSORBOARD_LOGGING_DIR")
    return Path(found) if found else Path(args.output_dir) / "collapse"


class CollapseCallback(TrainerCallback):
    """Measure attention collapse at train start, at every evaluation, and every N steps if asked.

    Args:
        pixel_values: (N, 3, S, S) normalised images, or a ready `CollapseMonitor`.
        **monitor: `CollapseMonitor`'s keyword arguments (`report_to`, `tracking_set`,
            `every_n_steps`, `map_images`, `log_dir`, `tower`, ...). `log_dir` None = the
            Trainer's (`log_dir_of`).
    """

    def __init__(self, pixel_values: Tensor | CollapseMonitor, **monitor):
        self.monitor = (pixel_values if isinstance(pixel_values, CollapseMonitor)
                        else CollapseMonitor(pixel_values, who="CollapseCallback", **monitor))

    def attach(self, trainer) -> "CollapseCallback":
        """Add to `trainer` (the same as `Trainer(callbacks=[...])`)."""
        trainer.add_callback(self)
        return self

    def _start(self, args, state, model) -> None:
        if self.monitor.log_dir is None:
            self.monitor.log_dir = log_dir_of(args)
        self.monitor.start(model, step=state.global_step)

    def _record(self, state, logs: dict[str, float], new: bool) -> None:
        if new:  # one entry per measured step
            state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})

    def _measure(self, args, state, model) -> dict[str, float]:
        if not self.monitor.started:  # evaluate() without train(): the model now is the reference
            self._start(args, state, model)
            logs = self.monitor.history[-1][1]
            self._record(state, logs, True)
            return logs
        before = len(self.monitor.history)
        logs = self.monitor.measure(model, state.global_step)
        self._record(state, logs, len(self.monitor.history) > before)
        return logs

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        no_eval = getattr(args.eval_strategy, "value", args.eval_strategy) == "no"
        if no_eval and not self.monitor.every_n_steps:
            warnings.warn("CollapseCallback: eval_strategy is 'no' and every_n_steps is None, so nothing is measured "
                          "after train start; set eval_strategy or every_n_steps", stacklevel=2)
        self._start(args, state, model)
        self._record(state, self.monitor.history[-1][1], True)

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if not state.is_world_process_zero:
            return
        logs = self._measure(args, state, model)
        if metrics is not None:
            metrics.update(logs)  # what trainer.evaluate() returns

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and self.monitor.started and self.monitor.due(state.global_step):
            self._measure(args, state, model)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.monitor.close()
