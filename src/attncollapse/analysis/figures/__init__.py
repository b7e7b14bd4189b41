"""The analysis's figures room: plumbing (`base`), the figure families (`curves`,
`ablations`, `zeroshot`, `links`) and the one registry that draws them all (`index`); a
controlled study's figures have their own registry (`controlled`).

Reads the results table, run roles and stats.json; matplotlib only.
"""

from . import controlled
from .index import CAPTIONS, FIGURES, PER_RUN, SEED_BANDS, SEED_MEANS, Ctx, baseline_structure, caption, render_all

__all__ = ["CAPTIONS", "FIGURES", "PER_RUN", "SEED_BANDS", "SEED_MEANS", "Ctx", "baseline_structure", "caption",
           "controlled", "render_all"]
