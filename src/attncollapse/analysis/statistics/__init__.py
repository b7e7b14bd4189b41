"""The analysis's statistics room: tests on arrays (`inference`), the convergence criterion
(`convergence`), the future-work links (`links`), per-configuration seed summaries
(`seeds`), every test of a matrix into stats.json (`stats`) and a controlled (factorial)
study's statistics (`controlled`).

Reads `table` and `roles` one floor up; knows nothing of figures or the report.
"""

from . import controlled, convergence, inference, links, seeds, stats

__all__ = ["controlled", "convergence", "inference", "links", "seeds", "stats"]
