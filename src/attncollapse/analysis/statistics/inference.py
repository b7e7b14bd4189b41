"""The statistical primitives of the study, on plain arrays: correlation with exact p, two-sample
comparison, one-way ANOVA, Holm's correction, and the shape of a stats.json entry.

numpy/scipy only. `stats` runs these on a finished matrix (and re-exports them, so
`stats.correlate` keeps working); `links` and `convergence` use them too, which is why they
live below both. Small samples get exact p-values: Spearman by enumerating all n! pairings
(n ≤ 9), Mann–Whitney by its exact U distribution (scipy's rule: no ties and a sample of ≤ 8).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
from scipy import stats as _sp

ALPHA = 0.05
EXACT_SPEARMAN_MAX_N = 9
"""Largest n whose Spearman p is exact (all n! = 362,880 pairings at 9: under a second)."""
MWU_EXACT_MAX_N = 8
"""scipy's `mannwhitneyu(method="auto")` rule: exact when a sample has ≤ 8 values and no ties."""
UNITS = {"layer": "layers", "layers": "layers", "seed": "runs", "seeds": "runs", "run": "runs", "runs": "runs"}
"""Accepted spellings of the unit of analysis → the name stats.json records (docs/FORMATS.md)."""

def unit_name(unit: str | None) -> str | None:
    if unit is None:
        return None
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {sorted(UNITS)}, got {unit!r}")
    return UNITS[unit]


def spearman_exact_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided permutation p of Spearman's ρ over all n! pairings of x with y.

    `scipy.stats.permutation_test` enumerates every permutation when n! ≤ `n_resamples`
    (so the p is exact, with no +1 correction); only x is permuted, ties keep mid-ranks.
    NaN when either sample is constant.
    """
    rx, ry = _sp.rankdata(x), _sp.rankdata(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan")
    b = ry - ry.mean()

    def rho(a: np.ndarray, axis: int = -1) -> np.ndarray:  # Pearson r of ranks, ry held fixed
        a = a - a.mean(axis, keepdims=True)
        return (a * b).sum(axis) / np.sqrt((a * a).sum(axis) * (b * b).sum())

    res = _sp.permutation_test((rx,), rho, permutation_type="pairings", vectorized=True,
                               n_resamples=math.factorial(len(rx)), alternative="two-sided")
    return float(res.pvalue)


def correlate(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Pearson and Spearman correlation of two equally long samples.

    Args:
        x, y: (n,) values, n ≥ 3.

    Returns:
        `pearson_r, pearson_p, spearman_rho, spearman_p, n` (two-sided p-values), plus
        `spearman_p_method` ("exact": all n! pairings, n ≤ EXACT_SPEARMAN_MAX_N; else
        "asymptotic": scipy's t approximation) and `spearman_p_asymptotic` (always the t
        approximation, which at n = 5 and ρ = −1 is ~0, against the exact 2/120).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise ValueError(f"correlate needs two 1-d samples of equal length ≥ 3, got {x.shape} and {y.shape}")
    with warnings.catch_warnings():  # constant input: NaN, which the report calls "not testable"
        warnings.simplefilter("ignore", RuntimeWarning)
        pr, sr = _sp.pearsonr(x, y), _sp.spearmanr(x, y)
    exact = len(x) <= EXACT_SPEARMAN_MAX_N
    return {"pearson_r": float(pr.statistic), "pearson_p": float(pr.pvalue),
            "spearman_rho": float(sr.statistic),
            "spearman_p": spearman_exact_p(x, y) if exact else float(sr.pvalue),
            "spearman_p_method": "exact" if exact else "asymptotic",
            "spearman_p_asymptotic": float(sr.pvalue), "n": len(x)}


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    """(mean a − mean b) / pooled SD (ddof 1 per group), the reports' effect size."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(a), len(b)
    pooled = ((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2)
    return float((a.mean() - b.mean()) / math.sqrt(pooled)) if pooled > 0 else float("nan")


def mwu_method(a: Sequence[float], b: Sequence[float]) -> str:
    """"exact" when a sample has ≤ 8 values and the pooled values have no ties, else "asymptotic".

    This is scipy's own `method="auto"` rule (scipy ≥ 1.7 `_mwu_choose_method`; note it
    asks for *one* small sample, not both); written out so the entry can record it.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    small = min(len(a), len(b)) <= MWU_EXACT_MAX_N
    ties = len(np.unique(np.concatenate([a, b]))) < len(a) + len(b)
    return "exact" if small and not ties else "asymptotic"


def compare(a: Sequence[float], b: Sequence[float], *, n_boot: int = 10000, seed: int = 0,
            unit: str | None = None) -> dict[str, Any]:
    """Two-sample comparison: Welch's t, Mann–Whitney U, Cohen's d, bootstrap CI.

    Args:
        a, b: samples (≥ 2 values each). Differences are a − b.
        n_boot: bootstrap resamples (reports: 10,000).
        seed: seed of the bootstrap (`numpy.random.default_rng`), so the CI is reproducible.
        unit: what one value is ("layer"/"layers" or "seed"/"runs"), recorded as `unit`.

    Returns:
        `n_a, n_b, n, mean_a, mean_b, diff, welch_t, welch_df, welch_p, mwu_u, mwu_p,
        mwu_method` ("exact" | "asymptotic", see `mwu_method`), `cohens_d`, `ci_low, ci_high`
        (percentile 95% CI of mean a − mean b), `n_boot`, `seed`, and `unit` when given.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"compare needs ≥ 2 values per sample, got {len(a)} and {len(b)}")
    method = mwu_method(a, b)
    with warnings.catch_warnings():  # zero variance: NaN statistics, reported as "not testable"
        warnings.simplefilter("ignore", RuntimeWarning)
        t = _sp.ttest_ind(a, b, equal_var=False)
        u = _sp.mannwhitneyu(a, b, alternative="two-sided", method=method)
    rng = np.random.default_rng(seed)
    # Resample each group independently (the groups are independent samples).
    boot = (a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)
            - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    out = {"n_a": len(a), "n_b": len(b), "n": len(a) + len(b), "mean_a": float(a.mean()),
           "mean_b": float(b.mean()), "diff": float(a.mean() - b.mean()), "welch_t": float(t.statistic),
           "welch_df": float(getattr(t, "df", float("nan"))), "welch_p": float(t.pvalue),
           "mwu_u": float(u.statistic), "mwu_p": float(u.pvalue), "mwu_method": method,
           "cohens_d": cohens_d(a, b), "ci_low": float(lo), "ci_high": float(hi), "n_boot": n_boot, "seed": seed}
    if unit is not None:
        out["unit"] = unit_name(unit)
    return out


def anova(groups: Sequence[Sequence[float]], *, unit: str | None = None) -> dict[str, Any]:
    """One-way ANOVA (English report §2.5: layer-position groups).

    Args:
        groups: ≥ 2 groups of ≥ 2 values.
        unit: what one value is, recorded as `unit` when given.

    Returns:
        `F, p, df_between, df_within, n, group_sizes, group_means` (+ `unit`).
    """
    gs = [np.asarray(g, float) for g in groups]
    if len(gs) < 2 or any(len(g) < 2 for g in gs):
        raise ValueError("anova needs ≥ 2 groups of ≥ 2 values")
    with warnings.catch_warnings():  # constant groups: NaN F, reported as "not testable"
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _sp.f_oneway(*gs)
    n = sum(len(g) for g in gs)
    out = {"F": float(res.statistic), "p": float(res.pvalue), "df_between": len(gs) - 1,
           "df_within": n - len(gs), "n": n, "group_sizes": [len(g) for g in gs],
           "group_means": [float(g.mean()) for g in gs]}
    if unit is not None:
        out["unit"] = unit_name(unit)
    return out


def layer_thirds(n_layers: int) -> list[np.ndarray]:
    """Early / middle / late layer indices (12 layers: 1–4, 5–8, 9–12), 0-based."""
    return np.array_split(np.arange(n_layers), 3)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1).

    NaN entries (tests that could not run) are ignored and stay NaN.
    """
    p = np.asarray(pvalues, float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m, running = len(ok), 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, (m - rank) * p[i])
        out[i] = min(1.0, running)
    return out



# ----------------------------------------------------------------------------- stats.json entries

def skip(reason: str) -> dict[str, Any]:
    return {"skipped": True, "reason": reason}



def single(entry: dict, p_keys: tuple[str, ...] = ("pearson_p", "spearman_p")) -> dict:
    """A lone test: its Holm-adjusted p is the raw p (a family of one)."""
    if not entry.get("skipped"):
        entry.update({f"{k}_holm": entry[k] for k in p_keys})
        entry["p"] = entry["p_holm"] = entry[p_keys[0]]
    return entry



def family(kind: str, entries: list[dict], p_keys: tuple[str, ...], empty: str) -> dict:
    """Attach Holm-adjusted p-values (per key) across the entries that ran."""
    if not entries:
        return skip(empty)
    ran = [e for e in entries if not e.get("skipped")]
    for key in p_keys:
        for e, adj in zip(ran, holm([e[key] for e in ran])):
            e[f"{key}_holm"] = float(adj)
    for e in ran:
        e["p"], e["p_holm"] = e[p_keys[0]], e[f"{p_keys[0]}_holm"]
    return {"family": kind, "correction": "holm", "m": len(ran), "entries": entries}

