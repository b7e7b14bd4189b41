"""The analysis's report room: Markdown/HTML blocks (`render`), the run tables
(`runtables`), ours-vs-published (`scorecard`), the prose (`document`, `future_work`) and
the assembly of report.md/report.html (`assemble`); a controlled study's own report
(`controlled`).

Reads the results table, run roles, stats.json and figures.json; writes only the report.
"""

from . import assemble, controlled, document, future_work, render, runtables, scorecard
from .assemble import write

__all__ = ["assemble", "controlled", "document", "future_work", "render", "runtables", "scorecard", "write"]
