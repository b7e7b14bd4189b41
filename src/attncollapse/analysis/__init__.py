"""The analysis stage: results.csv read back, run roles, statistics, figures, the report.

It reads only files the earlier stages wrote and imports no torch and nothing of
attncollapse but `_io` (numpy, scipy, matplotlib). Its rooms, imports running downward:
`table`, `roles`, `design`, `published` (the inputs) ← `statistics/` ← `figures/`, `report/`.
"""

from . import figures, report
from .roles import by_config, describe, select
from .statistics import seeds, stats
from .table import METRICS, Matrix, Run, load

__all__ = ["METRICS", "Matrix", "Run", "by_config", "describe", "figures", "load", "report", "seeds", "select", "stats"]
