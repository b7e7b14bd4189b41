"""The training stage: one run (build, loop, schedule, step, regularizers, checkpoints),
the E1 baseline, and a finished run loaded back or re-evaluated.

Imports `transfer`, `measure`, `models`, `data`, `config`, `_io` and `_device` of attncollapse.
"""

from .baseline import baseline
from .build import build, load_trained
from .checkpoints import ConfigMismatch
from .forgetting import run_forgetting
from .loop import TrainingDiverged, TrainState, run
from .posthoc import evaluate_run
from .schedule import lr_at

__all__ = ["ConfigMismatch", "TrainState", "TrainingDiverged", "baseline", "build", "evaluate_run",
           "load_trained", "lr_at", "run", "run_forgetting"]
