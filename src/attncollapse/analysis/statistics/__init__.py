"""The analysis's statistics room: tests on arrays (`inference`), the convergence criterion
(`convergence`), the future-work links (`links`), per-configuration seed summaries
(`seeds`) and every test of a matrix into stats.json (`stats`).

Reads `table` and `roles` one floor up; knows nothing of figures or the report.
"""

from . import convergence, inference, links, seeds, stats

__all__ = ["convergence", "inference", "links", "seeds", "stats"]
