"""Which signal ranks forgetting: the predictor ranking (at the selected checkpoint and after
epoch 1) and the bootstrap over cell means of |ρ| and of the gap to CKA.

The ranking is scipy's Spearman on the rows. The bootstrap is vectorised by hand: scipy's
`rankdata(axis=1)` ranks all 4,000 resamples at once and Spearman is then the Pearson
correlation of those ranks, row by row (what `spearmanr` computes for one pair), which makes
4,000 × 11 correlations a few array operations instead of 44,000 scipy calls.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from .grid import TARGET, col, core, group, n_unique, spearman

PREDICTORS = {
    "abs_delta_entropy_pct": "|ΔH| (attention entropy)", "delta_entropy_pct": "ΔH (signed)",
    "abs_delta_erf95_pct": "|ΔERF@0.95|", "abs_delta_gini_pct": "|ΔGini|",
    "abs_delta_entropy_last_layer_pct": "|ΔH12| (last block)", "delta_entropy_last_layer_pct": "ΔH12 (signed)",
    "cka_mean": "CKA to pretrained (mean)", "cka_last": "CKA to pretrained (block 12)",
    "embedding_drift": "Embedding drift", "weight_drift_rel": "Relative weight change",
    "train_loss_final": "Final training loss", "test_acc": "Target-task accuracy",
    "log10_lr": "log10 learning rate*", "epoch1_transfer_retention_pct": "1k labelled probe*"}
"""The authors' 14 predictors (* = aliased: the same value at both stages)."""
NO_EPOCH1 = ("cka_last", "test_acc")
"""Predictors with no epoch-1 value (per-layer CKA and test accuracy exist only at the end)."""
TABLE_ORDER = ("cka_mean", "embedding_drift", "weight_drift_rel", "abs_delta_gini_pct", "abs_delta_entropy_pct",
               "abs_delta_entropy_last_layer_pct", "delta_entropy_pct", "log10_lr", "train_loss_final", "test_acc",
               "epoch1_transfer_retention_pct")
"""The 11 signals of the bootstrap (the authors' table order)."""


def predictor_ranking(rows: list[dict], stage: str = "final") -> list[dict]:
    """Spearman of each predictor with CIFAR-100 retention over the core runs: overall, mean |ρ|
    within dataset (groups of n ≥ 8), mean |ρ| and signed mean within dataset × method (n ≥ 5),
    groups counted only with more than 2 distinct values. Sorted by |ρ overall|, descending."""
    rs = core(rows)
    prefix = "" if stage == "final" else "epoch1_"
    out = []
    for key, label in PREDICTORS.items():
        if stage != "final" and key in NO_EPOCH1:
            continue
        column = prefix + key
        keep = [r for r in rs if all(np.isfinite(r.get(k, math.nan)) for k in (column, TARGET, "lr"))]
        if len(keep) < 6:
            continue
        rho, p = spearman(col(keep, column), col(keep, TARGET))
        within = [spearman(col(g, column), col(g, TARGET))[0]
                  for g in group(keep, "dataset", "method").values() if len(g) >= 5 and n_unique(col(g, column)) > 2]
        per_ds = [spearman(col(g, column), col(g, TARGET))[0]
                  for g in group(keep, "dataset").values() if len(g) >= 8 and n_unique(col(g, column)) > 2]
        out.append({
            "predictor": key, "label": label, "stage": stage, "n": len(keep), "spearman_overall": rho,
            "p_overall": p, "abs_spearman_overall": abs(rho),
            "spearman_within_mean": float(np.mean(within)) if within else math.nan,
            "abs_spearman_within_mean": float(np.mean(np.abs(within))) if within else math.nan,
            "n_groups": len(within),
            "abs_spearman_within_dataset_mean": float(np.mean(np.abs(per_ds))) if per_ds else math.nan,
            "n_datasets": len(per_ds),
            "spearman_within_groups": {f"{d}/{m}": spearman(col(g, column), col(g, TARGET))[0]
                                       for (d, m), g in group(keep, "dataset", "method").items()
                                       if len(g) >= 5 and n_unique(col(g, column)) > 2}})
    return sorted(out, key=lambda e: -e["abs_spearman_overall"] if np.isfinite(e["abs_spearman_overall"]) else 1.0)


def cell_means(rows: list[dict], keys: tuple[str, ...]) -> np.ndarray:
    """(n_cells, len(keys)) seed means per (dataset, method, lr) of the core runs; cells with a
    NaN mean dropped (as the authors' `dropna`)."""
    m = np.asarray([[np.nanmean(col(g, k)) if np.isfinite(col(g, k)).any() else math.nan for k in keys]
                    for g in group(core(rows), "dataset", "method", "lr").values()], float)
    return m[np.isfinite(m).all(axis=1)] if m.size else m.reshape(0, len(keys))


def rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ of x[b] with y[b] for every row b (average ranks for ties; NaN where a row is
    constant, as scipy). x, y: (B, n)."""
    rx = stats.rankdata(x, axis=1) - (x.shape[1] + 1) / 2
    ry = stats.rankdata(y, axis=1) - (y.shape[1] + 1) / 2
    rx -= rx.mean(axis=1, keepdims=True)  # exact zero-mean after float rounding
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_predictor_gap(rows: list[dict], reference: str = "cka_mean", n_boot: int = 4000,
                            seed: int = 0) -> list[dict] | dict:
    """Percentile 95% CIs of |ρ| with retention over cell means resampled with replacement
    (`RandomState(seed)`, n_boot draws of all cells), and of the paired gap |ρ_ref| − |ρ_signal|.

    Returns:
        One dict per signal, sorted by |ρ| on all cells; or {"unsupported": why} with fewer
        than 8 cells or no reference signal.
    """
    signals = [k for k in TABLE_ORDER if all(k in r for r in rows)]
    values = cell_means(rows, tuple(signals) + (TARGET,))
    if len(values) < 8 or reference not in signals:
        return {"unsupported": f"{len(values)} complete core cells; the cell bootstrap needs at least 8 "
                               f"and the reference signal {reference}"}
    rng = np.random.RandomState(seed)
    idx = rng.randint(0, len(values), size=(n_boot, len(values)))
    target = values[idx, -1]
    draws = {k: np.abs(rowwise_spearman(values[idx, j], target)) for j, k in enumerate(signals)}
    out = []
    for j, key in enumerate(signals):
        gap = draws[reference] - draws[key]
        finite = draws[key][np.isfinite(draws[key])]
        out.append({
            "predictor": key, "label": PREDICTORS[key],
            "abs_rho": abs(spearman(values[:, j], values[:, -1])[0]),
            "ci_low": float(np.percentile(finite, 2.5)), "ci_high": float(np.percentile(finite, 97.5)),
            "gap_vs_reference_mean": float(np.nanmean(gap)),
            "gap_ci_low": float(np.nanpercentile(gap, 2.5)), "gap_ci_high": float(np.nanpercentile(gap, 97.5)),
            # NaN gaps count as "reference does not win", as the authors' nanmean(gap > 0)
            "reference_wins_fraction": float(np.mean(gap > 0)),
            "n_undefined_draws": int(n_boot - len(finite)),
            "resampling_unit": "cell means", "n_units": len(values)})
    return sorted(out, key=lambda e: -e["abs_rho"])
