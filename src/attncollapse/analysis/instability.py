"""When a Δ% is unstable: its initial value is near zero, so the ratio multiplies noise.

One rule for every place a Δ% is shown (the report's tables and figures, `compare`, the
callbacks' logged deltas): Δ% over an initial value whose size is below UNSTABLE_FRAC of the
metric's range is flagged, and the absolute Δ is the number to read instead. Torch-free, so
the analysis stage and the measuring tools share it.
"""

from __future__ import annotations

import math

UNSTABLE_FRAC = 0.05
"""Δ% is marked unstable when |initial| < UNSTABLE_FRAC × the metric's range (METRIC_RANGE)."""
METRIC_RANGE = {"entropy": math.log(49), "erf": 1.0, "gini": 1.0, "head_diversity": 1.0}
"""Each metric's range: entropy 0..ln P nats (P = 49 patches of ViT-B/32 at 224 px; with
fewer patches the threshold 0.19 nats stays "near zero"); ERF, Gini and head diversity of
non-negative attention rows all lie in [0, 1]."""
UNSTABLE_MARK = "†"


def unstable(metric: str, initial: float | None) -> bool:
    """Whether a Δ% over this initial value is unstable (its base is near zero).

    A metric outside METRIC_RANGE (a structure measure, a drift) is never flagged here.
    """
    return initial is not None and metric in METRIC_RANGE and abs(initial) < UNSTABLE_FRAC * METRIC_RANGE[metric]


def unstable_rule() -> str:
    """The rule in words, with each metric's threshold."""
    th = ", ".join(f"{mt} {UNSTABLE_FRAC * r:.3g}" for mt, r in METRIC_RANGE.items())
    return (f"{UNSTABLE_MARK} Δ% unstable: |initial| < {UNSTABLE_FRAC:g} × the metric's range (entropy ln 49 nats, "
            f"ERF, Gini and head diversity 1), i.e. below {th}. A ratio over a base that small multiplies noise; "
            "read the absolute Δ instead.")
