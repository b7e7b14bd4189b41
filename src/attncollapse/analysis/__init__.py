"""The analysis stage: results.csv read back, run roles, statistics, figures, the report.

It reads only files the earlier stages wrote and imports no torch and nothing of
attncollapse but `_io` (numpy, scipy, matplotlib).
"""

from . import figures, report, seeds, stats
from .roles import by_config, describe, select
from .table import METRICS, Matrix, Run, load

__all__ = ["METRICS", "Matrix", "Run", "by_config", "describe", "figures", "load", "report", "seeds", "select", "stats"]
