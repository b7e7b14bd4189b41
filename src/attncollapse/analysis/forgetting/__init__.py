"""The forgetting study's analysis (torch-free): per-run records → run-level rows → statistics,
figures, report, and a scorecard against the authors' published numbers (docs/FORGETTING.md).

`analyze(matrix_dir)` is the analysis stage of a `design: forgetting` matrix; `reanalyse(records_dir,
out)` runs the same analysis on the authors' study2 folder.
"""

from .api import analyze, reanalyse
from .records import read_runs, run_row

__all__ = ["analyze", "read_runs", "reanalyse", "run_row"]
