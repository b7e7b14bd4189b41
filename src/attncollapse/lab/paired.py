"""The uncertainty of `compare`'s differences: paired tests over the very same images.

A and B see the same N images, so each image gives one paired difference d = B − A of a
metric per layer. On those d: the mean Δ, its 95% t confidence interval (mean ± t₀.₉₇₅,N−1 ·
SD/√N), the paired t-test and the Wilcoxon signed-rank test (scipy), and Holm's correction
over the layers of one metric. "Overall" pairs each image's mean over layers.

Head diversity is a per-image value here (1 − mean cosine among the image's own heads,
`settings.diversity = per_image`), so it is paired like the other metrics; the study's runs
use the batch-level variant, whose images are not independent units.

Torch-free: numbers in, numbers out.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

from ..analysis.instability import unstable

CONFIDENCE = 0.95
TEST_NOTE = ("paired over the same images: Δ = mean of B − A per image, 95% t interval on it, paired t-test "
             "(scipy.stats.ttest_rel) and Wilcoxon signed-rank (scipy.stats.wilcoxon, two-sided; exact for up to 50 "
             "distinct non-zero differences, else the normal approximation), "
             "Holm-corrected over layers per metric; overall = each image's mean over layers")


def _nan(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def paired_test(a: np.ndarray, b: np.ndarray) -> dict:
    """Paired statistics of B − A over images.

    Args:
        a, b: (N,) one value per image, the same images in the same order.

    Returns:
        {"n", "delta" (mean of b − a), "sd" (of the differences, ddof 1), "ci": [lo, hi]
        (95% t interval), "t", "p_t" (paired t-test), "p_wilcoxon"}; None where undefined
        (one image, or all differences equal).
    """
    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    n = len(d)
    out = {"n": n, "delta": float(d.mean()), "sd": None, "ci": [None, None], "t": None, "p_t": None,
           "p_wilcoxon": None}
    if n < 2:
        return out
    out["sd"] = float(d.std(ddof=1))
    with warnings.catch_warnings():  # identical pairs: scipy warns and returns nan, kept as None
        warnings.simplefilter("ignore")
        res = stats.ttest_rel(b, a)
        ci = res.confidence_interval(CONFIDENCE)
        out.update(t=_nan(res.statistic), p_t=_nan(res.pvalue), ci=[_nan(ci.low), _nan(ci.high)])
        if np.any(d != 0):
            out["p_wilcoxon"] = _nan(stats.wilcoxon(b, a, method=wilcoxon_method(d)).pvalue)
    if out["sd"] == 0.0:  # every image moved by exactly Δ: the interval is that point
        out["ci"] = [out["delta"], out["delta"]]
    return out


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm-adjusted p-values, None kept where a test was undefined.

    Written out (Holm 1979: the k-th smallest of m times m − k + 1, made monotone, capped at
    1) because statsmodels' `multipletests` runs a full `gc.collect()` per call (~0.7 s in a
    process holding a model), and `compare` adjusts each metric's layers separately.
    """
    idx = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for k, (p, i) in enumerate(idx):
        running = max(running, min(1.0, (len(idx) - k) * p))
        out[i] = running
    return out


def wilcoxon_method(d: np.ndarray) -> str:
    """scipy's exact null distribution for up to 50 distinct non-zero differences, else the
    normal approximation (with ties or zeros scipy would fall back to a slow permutation test)."""
    nz = d[d != 0]
    return "exact" if len(nz) == len(d) <= 50 and len(np.unique(np.abs(nz))) == len(nz) else "approx"


def paired_tables(va: np.ndarray, vb: np.ndarray, metrics: tuple[str, ...]) -> dict:
    """Per layer and overall paired statistics of every metric.

    Args:
        va, vb: (L, N, M) per-image values of A and B (M metrics in `metrics` order).

    Returns:
        {metric: {"layers": [L paired_test dicts, each with "p_t_holm", "p_wilcoxon_holm",
        "delta_pct", "delta_pct_unstable"], "overall": paired_test of the means over layers}}.
    """
    out = {}
    for k, m in enumerate(metrics):
        layers = [paired_test(va[i, :, k], vb[i, :, k]) for i in range(va.shape[0])]
        for key in ("p_t", "p_wilcoxon"):
            for row, p in zip(layers, holm([r[key] for r in layers])):
                row[key + "_holm"] = p
        overall = paired_test(va[:, :, k].mean(0), vb[:, :, k].mean(0))
        for row, base in [*zip(layers, va[:, :, k].mean(1)), (overall, va[:, :, k].mean())]:
            row["delta_pct"] = _nan(100.0 * row["delta"] / base) if base != 0 else None
            row["delta_pct_unstable"] = unstable(m, float(base))
        out[m] = {"layers": layers, "overall": overall}
    return out
