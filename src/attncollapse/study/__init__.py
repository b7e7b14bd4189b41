"""The study stage: a matrix planned into tasks, locked, executed (locally, per GPU, Ray,
Slurm), collected into results.csv and analysed.

Imports `train`, `config`, `analysis` and `_io` of attncollapse.
"""

from .collect import results_rows, write_results
from .execute import execute_task
from .locks import acquire_lock, inspect_lock, lock_timeout_s, read_lock, release_lock
from .preflight import HubUnavailable, check_hub, hub_needs
from .runner import format_status, format_summary, held_line, run_analysis, run_matrix, status
from .tasks import BASELINE_ID, Task, matrix_of, plan, run_state

__all__ = [
    "BASELINE_ID", "HubUnavailable", "Task", "check_hub", "hub_needs", "acquire_lock", "execute_task", "format_status", "format_summary", "held_line",
    "inspect_lock", "lock_timeout_s", "matrix_of",
    "plan", "read_lock", "release_lock", "results_rows", "run_analysis", "run_matrix", "run_state", "status",
    "write_results",
]
