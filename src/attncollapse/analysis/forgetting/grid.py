"""The core grid's descriptive statistics: cells, paired Full FT vs LoRA, dose-response,
iso-accuracy, the second backbone, polarity and the agreement of the two transfer axes.

Rows are the dicts of `records.run_row`; every function takes the rows it should use (the
caller filters the primary backbone) and returns JSON-ready dicts with the authors' keys
(docs/FORGETTING.md "Statistics"). Tests come from scipy; Holm is by hand because scipy
has no family-wise step-down correction (only `false_discovery_control`, BH/BY).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import numpy as np
from scipy import stats

CORE_METHODS = ("full_ft", "lora_r8")
TARGET = "cifar100_retention"


def col(rows: Iterable[dict], key: str) -> np.ndarray:
    """The column `key` of `rows` as float (a missing value is NaN)."""
    return np.asarray([r.get(key, math.nan) for r in rows], float)


def group(rows: Iterable[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Rows grouped by `keys`, groups in sorted key order (as pandas' groupby)."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return dict(sorted(out.items()))


def core(rows: Iterable[dict]) -> list[dict]:
    return [r for r in rows if r["method"] in CORE_METHODS]


def mean(values: np.ndarray) -> float:
    """NaN-skipping mean (pandas' default); NaN when nothing is left."""
    v = values[np.isfinite(values)]
    return float(v.mean()) if len(v) else math.nan


def sd(values: np.ndarray) -> float | None:
    """Sample SD (ddof 1) of the finite values; None with fewer than two (one seed)."""
    v = values[np.isfinite(values)]
    return float(v.std(ddof=1)) if len(v) > 1 else None


def n_unique(values: np.ndarray) -> int:
    return len(set(values[np.isfinite(values)].tolist()))


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """scipy's Spearman ρ and p (NaN, NaN for a constant input instead of a warning)."""
    if n_unique(x) < 2 or n_unique(y) < 2:
        return math.nan, math.nan
    res = stats.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def cells(rows: list[dict]) -> list[dict]:
    """Mean ± SD over seeds per (dataset, method, lr) of every method (the authors' `cells`,
    plus the digest's ΔH12, embedding drift and corruption accuracy)."""
    out = []
    for (dataset, method, lr), rs in group(rows, "dataset", "method", "lr").items():
        corr = col(rs, "corruption_mean_acc")

        def sdv(key: str, scale: float = 1.0, rs: list[dict] = rs) -> float | None:
            v = sd(col(rs, key))
            return None if v is None else v * scale
        out.append({
            "dataset": dataset, "method": method, "lr": lr, "n": len(rs),
            "test_acc": mean(col(rs, "test_acc")) * 100, "test_acc_sd": sdv("test_acc", 100.0),
            "delta_entropy_pct": mean(col(rs, "delta_entropy_pct")), "delta_entropy_sd": sdv("delta_entropy_pct"),
            "cifar100_retention": mean(col(rs, TARGET)), "cifar100_retention_sd": sdv(TARGET),
            "cifar10_retention": mean(col(rs, "cifar10_retention")),
            "weight_drift_rel": mean(col(rs, "weight_drift_rel")), "cka_mean": mean(col(rs, "cka_mean")),
            "corruption_mean_acc": mean(corr) * 100 if np.isfinite(corr).any() else None,
            "trainable_params": rs[0]["trainable_params"],
            "delta_entropy_last_layer_pct": mean(col(rs, "delta_entropy_last_layer_pct")),
            "embedding_drift": mean(col(rs, "embedding_drift")), "seeds": sorted(r["seed"] for r in rs)})
    return out


def runs_by_cell(rows: list[dict]) -> list[dict]:
    return [{"dataset": d, "method": m, "lr": lr, "n": len(rs)}
            for (d, m, lr), rs in group(rows, "dataset", "method", "lr").items()]


PAIRED_METRICS = ("delta_entropy_pct", "cifar100_retention", "cifar10_retention", "test_acc",
                  "weight_drift_rel", "cka_mean")


def paired_method_tests(rows: list[dict], notes: list[str]) -> list[dict]:
    """Full FT − LoRA on identical (lr, seed) per dataset: paired t, Wilcoxon (n ≥ 6), d_z."""
    out = []
    for (dataset,), rs in group(core(rows), "dataset").items():
        full = {(r["lr"], r["seed"]): r for r in rs if r["method"] == "full_ft"}
        lora = {(r["lr"], r["seed"]): r for r in rs if r["method"] == "lora_r8"}
        shared = sorted(set(full) & set(lora))
        if len(shared) < 3:
            notes.append(f"paired_method_tests[{dataset}]: only {len(shared)} matched (lr, seed) pairs of "
                         "full_ft and lora_r8; a paired test needs at least 3")
            continue
        for metric in PAIRED_METRICS:
            scale = 100.0 if metric == "test_acc" else 1.0
            a = np.asarray([full[k][metric] for k in shared], float) * scale
            b = np.asarray([lora[k][metric] for k in shared], float) * scale
            diff = a - b
            s = float(np.std(diff, ddof=1))
            t = stats.ttest_rel(a, b)
            w = stats.wilcoxon(a, b) if len(shared) >= 6 else None
            out.append({"dataset": dataset, "metric": metric, "n_pairs": len(shared),
                        "full_ft_mean": float(a.mean()), "lora_mean": float(b.mean()),
                        "mean_difference": float(diff.mean()),
                        "cohens_dz": float(diff.mean() / s) if s else math.nan,
                        "t_statistic": float(t.statistic), "t_p_value": float(t.pvalue),
                        "wilcoxon_p_value": float(w.pvalue) if w is not None else None})
    return out


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values: sort ascending, multiply the k-th smallest by
    (m − k), carry the running maximum, cap at 1 (Holm 1979)."""
    order = np.argsort(pvalues, kind="stable")
    m, running, out = len(pvalues), 0.0, [math.nan] * len(pvalues)
    for rank, idx in enumerate(order):
        running = max(running, (m - rank) * pvalues[idx])
        out[idx] = min(1.0, running)
    return out


def dose_response(rows: list[dict], notes: list[str]) -> list[dict]:
    """Spearman of ΔH, retention and test accuracy against log10 lr per (dataset, method)."""
    out = []
    c = core(rows)
    for dataset in sorted({r["dataset"] for r in c}):
        for method in CORE_METHODS:
            rs = [r for r in c if r["dataset"] == dataset and r["method"] == method]
            if len({r["lr"] for r in rs}) < 3:
                notes.append(f"dose_response[{dataset}/{method}]: {len({r['lr'] for r in rs})} learning "
                             "rates; a dose-response needs at least 3")
                continue
            for metric in ("delta_entropy_pct", "cifar100_retention", "test_acc"):
                rho, p = spearman(np.log10(col(rs, "lr")), col(rs, metric))
                out.append({"dataset": dataset, "method": method, "metric": metric, "n_runs": len(rs),
                            "spearman_rho": rho, "p_value": p})
    return out


def iso_accuracy(rows: list[dict], notes: list[str]) -> list[dict]:
    """Per dataset and core method, the lr with the best seed-mean validation accuracy, and
    what it costs in transfer (the authors' "iso-accuracy" operating points)."""
    out = []
    for (dataset,), rs in group(core(rows), "dataset").items():
        best: dict[str, dict] = {}
        for method in CORE_METHODS:
            by_lr = group([r for r in rs if r["method"] == method], "lr")
            if not by_lr:
                continue
            lr = max(by_lr, key=lambda k: mean(col(by_lr[k], "val_acc")))[0]  # first max in lr order
            ch = by_lr[(lr,)]
            best[method] = {"lr": lr, "val_acc": mean(col(ch, "val_acc")) * 100,
                            "test_acc": mean(col(ch, "test_acc")) * 100,
                            "test_acc_sd": (sd(col(ch, "test_acc")) or math.nan) * 100,
                            "cifar100_retention": mean(col(ch, TARGET)),
                            "cifar100_retention_sd": sd(col(ch, TARGET)) or math.nan,
                            "delta_entropy_pct": mean(col(ch, "delta_entropy_pct")), "n": len(ch)}
        if len(best) == 2:
            out.append({"dataset": dataset, "selection": "best validation accuracy",
                        **{f"{m}_{k}": v for m, spec in best.items() for k, v in spec.items()}})
        else:
            notes.append(f"iso_accuracy[{dataset}]: needs both full_ft and lora_r8 runs")
    return out


def transfer_axis_agreement(rows: list[dict]) -> dict[str, Any]:
    """Spearman of CIFAR-100 vs CIFAR-10 retention over the core runs."""
    rs = [r for r in core(rows) if np.isfinite(r[TARGET]) and np.isfinite(r["cifar10_retention"])]
    if len(rs) < 4:
        return {"unsupported": f"{len(rs)} core runs with both transfer axes; the agreement needs at least 4"}
    rho, p = spearman(col(rs, TARGET), col(rs, "cifar10_retention"))
    return {"spearman_rho": rho, "p_value": p, "n": len(rs)}


def _signal_rhos(rs: list[dict], keys: tuple[str, ...], min_n: int, fmt: Callable[[float, float, int], dict]) -> dict:
    out = {}
    for key in keys:
        keep = [r for r in rs if np.isfinite(r[key]) and np.isfinite(r[TARGET])]
        if len(keep) >= min_n and n_unique(col(keep, key)) > 2:
            rho, p = spearman(col(keep, key), col(keep, TARGET))
            out[key] = fmt(rho, p, len(keep))
    return out


def backbone_check(all_rows: list[dict]) -> dict[str, Any]:
    """Every secondary-backbone model on its own: cell means and Spearman of five signals."""
    other = [r for r in all_rows if r["backbone"] != "primary"]
    if not other:
        return {"unsupported": "no secondary-backbone run; the second-backbone check needs one"}
    out = {}
    for (model,), rs in group(other, "model_name").items():
        cl = [{"dataset": d, "method": m, "lr": lr, "n": len(c), "test_acc": mean(col(c, "test_acc")),
               "delta_entropy_pct": mean(col(c, "delta_entropy_pct")), TARGET: mean(col(c, TARGET)),
               "cka_mean": mean(col(c, "cka_mean")), "weight_drift_rel": mean(col(c, "weight_drift_rel"))}
              for (d, m, lr), c in group(rs, "dataset", "method", "lr").items()]
        keys = ("cka_mean", "embedding_drift", "weight_drift_rel", "abs_delta_entropy_pct", "delta_entropy_pct")
        preds = _signal_rhos(rs, keys, 4, lambda rho, p, n: {"spearman_rho": rho, "p_value": p, "n": n})
        out[model] = {"n_runs": len(rs), "cells": cl, "predictors": preds}
    return out


def polarity_dataset(all_rows: list[dict]) -> str | None:
    """The dataset the polarity table uses: "eurosat" when present (the authors' choice), else
    the first dataset (sorted) that the secondary backbone also ran, else the first one."""
    names = sorted({r["dataset"] for r in core(all_rows)})
    if not names or "eurosat" in names:
        return "eurosat" if names else None
    shared = sorted({r["dataset"] for r in core(all_rows) if r["backbone"] != "primary"})
    return shared[0] if shared else names[0]


def polarity_by_group(all_rows: list[dict]) -> list[dict]:
    """Run-level Spearman of signed ΔH, CKA, weight and embedding drift vs retention per
    (backbone model, method) on one dataset (whether a signal's *sign* is stable)."""
    dataset = polarity_dataset(all_rows)
    rs = [r for r in core(all_rows) if r["dataset"] == dataset]
    out = []
    for (model, method), g in group(rs, "model_name", "method").items():
        entry = {"model": model, "method": method, "backbone": g[0]["backbone"], "on_dataset": dataset,
                 "n": len(g), "n_rates": len({r["lr"] for r in g})}
        keys = ("delta_entropy_pct", "cka_mean", "weight_drift_rel", "embedding_drift")
        entry.update(_signal_rhos(g, keys, 0, lambda rho, p, n: {"rho": rho, "p_value": p}))
        out.append(entry)
    return out
