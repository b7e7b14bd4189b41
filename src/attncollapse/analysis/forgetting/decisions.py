"""Decisions and early warning: the validation-gated selection test, epoch-1 AUCs for damage,
the accuracy/retention frontier, the per-layer ΔH grid and the interpolation table.

The AUC is scipy's Mann-Whitney U over (n_damaged · n_healthy) — U counts pairs with ties as
½, exactly P(damaged < healthy) + ½ P(tie) — oriented max(AUC, 1 − AUC) as the authors do,
which picks the direction from the outcome (so it is an upper bound, said in the entry).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from .grid import CORE_METHODS, TARGET, col, core, group, mean, spearman

LOWER_IS_BETTER = {"abs_delta_entropy_pct": True, "abs_delta_entropy_last_layer_pct": True,
                   "abs_delta_erf95_pct": True, "abs_delta_gini_pct": True, "embedding_drift": True,
                   "weight_drift_rel": True, "cka_mean": False}
"""The 7 oriented signals of the selection test (signed ΔH has no orientation, so none)."""
MARGINS = (1.0, 2.0, 3.0, 5.0)
DAMAGED_BELOW = 50.0
"""A run (or cell) is "damaged" when its CIFAR-100 retention is below this many percent."""
AUC_SIGNALS = ("delta_entropy_pct", "abs_delta_entropy_pct", "weight_drift_rel", "embedding_drift", "cka_mean")
ORIENTATION = "max(AUC, 1 - AUC): the direction is chosen from the outcome, an optimistic upper bound"


def selection_utility(rows: list[dict], margin: float, notes: list[str]) -> list[dict]:
    """Per dataset: runs within `margin` points of the best validation accuracy are the
    candidates (≥ 3 needed); each signal picks one (argmin, or argmax for CKA; the first run
    in file order on ties), scored by its retention against oracle, worst and random."""
    out = []
    for (dataset,), block in group(core(rows), "dataset").items():
        cutoff = float(np.max(col(block, "val_acc"))) * 100 - margin
        cand = [r for r in block if r["val_acc"] * 100 >= cutoff]
        if len(cand) < 3:
            notes.append(f"selection_utility_margins[{margin:g}][{dataset}]: {len(cand)} candidate run(s) within "
                         f"{margin:g} points of the best validation accuracy; the test needs at least 3")
            continue
        ret = col(cand, TARGET)
        oracle, worst = float(ret.max()), float(ret.min())
        entry = {"dataset": dataset, "margin_points": margin, "n_candidates": len(cand), "accuracy_cutoff": cutoff,
                 "cutoff_basis": "validation accuracy", "oracle_retention": oracle, "worst_retention": worst,
                 "random_choice_retention": float(ret.mean()), "signals": {}}
        for signal, lower in LOWER_IS_BETTER.items():
            v = col(cand, signal)
            chosen = cand[int(np.argmin(v) if lower else np.argmax(v))]
            r = float(chosen[TARGET])
            entry["signals"][signal] = {
                "chosen_run": chosen["run_id"], "retention": r, "test_acc": chosen["test_acc"] * 100,
                "regret": oracle - r, "fraction_of_range": (r - worst) / (oracle - worst) if oracle > worst else math.nan}
        out.append(entry)
    return out


def _auc(damaged: np.ndarray, healthy: np.ndarray) -> float:
    """P(damaged < healthy) + ½ P(tie), from scipy's U statistic of (healthy, damaged)."""
    return float(stats.mannwhitneyu(healthy, damaged).statistic) / (len(damaged) * len(healthy))


def temporal_ordering(rows: list[dict]) -> dict:
    """Epoch-1 signals against final retention: Spearman over runs, and oriented AUCs for
    "damaged" (retention < 50%) over runs and over cell means."""
    early = []
    for r in core(rows):
        for h in r["history"]:
            if h.get("epoch") == 1 and np.isfinite(r[TARGET]):
                early.append({"dataset": r["dataset"], "method": r["method"], "lr": r["lr"], "final": r[TARGET],
                              "delta_entropy_pct": h["delta_entropy_pct"],
                              "abs_delta_entropy_pct": abs(h["delta_entropy_pct"]),
                              "embedding_drift": h["embedding_drift"], "weight_drift_rel": h["weight_drift_rel"],
                              "cka_mean": h["cka_mean"]})
    if len(early) < 4:
        return {"unsupported": f"{len(early)} core runs with an epoch-1 record; early warning needs at least 4"}
    out: dict = {"n_runs": len(early), "orientation": ORIENTATION, "damaged_below_pct": DAMAGED_BELOW}
    for key in ("delta_entropy_pct", "weight_drift_rel", "cka_mean"):
        rho, p = spearman(col(early, key), col(early, "final"))
        out[f"epoch1_{key}_vs_final"] = {"spearman_rho": rho, "p_value": p}
    cells = [{k: mean(col(g, k)) for k in AUC_SIGNALS + ("final",)} for g in group(early, "dataset", "method", "lr").values()]
    hurt = col(cells, "final") < DAMAGED_BELOW
    if 0 < hurt.sum() < len(cells):
        out["cell_level"] = {"n_damaged": int(hurt.sum()), "n_healthy": int((~hurt).sum())}
        for key in AUC_SIGNALS:
            raw = _auc(col(cells, key)[hurt], col(cells, key)[~hurt])
            out["cell_level"][key] = {"auc_oriented": max(raw, 1 - raw), "damaged_scores_lower": raw > 0.5}
    else:
        out["cell_level"] = {"unsupported": f"{int(hurt.sum())} of {len(cells)} cells damaged; an AUC needs both kinds"}
    hurt = col(early, "final") < DAMAGED_BELOW
    if 0 < hurt.sum() < len(early):
        for key in AUC_SIGNALS:
            v = col(early, key)
            raw = _auc(v[hurt], v[~hurt])
            out[f"epoch1_{key}_auc_for_damage"] = {
                "auc_oriented": max(raw, 1 - raw), "damaged_scores_lower": raw > 0.5, "n_damaged": int(hurt.sum()),
                "n_healthy": int((~hurt).sum()), "damaged_mean": float(v[hurt].mean()),
                "healthy_mean": float(v[~hurt].mean())}
    else:
        out["run_level"] = {"unsupported": f"{int(hurt.sum())} of {len(early)} runs damaged; an AUC needs both kinds"}
    return out


def frontier(rows: list[dict]) -> dict:
    """Per dataset, (method, lr) cell means of test accuracy and retention, and the Pareto
    frontier: walking down test accuracy, keep a cell whose retention beats every kept one."""
    out = {}
    for (dataset,), rs in group(rows, "dataset").items():
        cl = [{"method": m, "lr": lr, "n": len(g), "test_acc": mean(col(g, "test_acc")) * 100,
               "retention": mean(col(g, TARGET)), "weight_drift_rel": mean(col(g, "weight_drift_rel"))}
              for (m, lr), g in group(rs, "method", "lr").items()]
        kept: list[dict] = []
        for c in sorted(cl, key=lambda c: -c["test_acc"]):
            if all(c["retention"] > k["retention"] for k in kept):
                kept.append(c)
        for c in cl:
            c["pareto"] = any(c is k for k in kept)
        out[dataset] = {"cells": cl, "pareto": [f"{c['method']}@{c['lr']:g}" for c in kept]}
    return out


def layer_heatmap(rows: list[dict]) -> dict:
    """Seed-mean per-layer ΔH (%) per dataset × core method × lr, and the colour limit (the 90th
    percentile of |ΔH| over every core run's layers, as the authors clip)."""
    c = [r for r in core(rows) if r["delta_entropy_per_layer_pct"]]
    if not c:
        return {"unsupported": "no core run with per-layer ΔH"}
    limit = max(1e-6, float(np.percentile(np.abs(np.concatenate([r["delta_entropy_per_layer_pct"] for r in c])), 90)))
    grids = {}
    for (dataset, method), g in group(c, "dataset", "method").items():
        by_lr = group(g, "lr")
        grids[f"{dataset}/{method}"] = {
            "lrs": [k[0] for k in by_lr],
            "grid": [np.mean([r["delta_entropy_per_layer_pct"] for r in rs], axis=0).tolist() for rs in by_lr.values()]}
    top = max((abs(v), r["run_id"], i + 1) for r in c for i, v in enumerate(r["delta_entropy_per_layer_pct"][:4]))
    return {"limit": limit, "groups": grids,
            "blocks_1_4_max_abs_run": {"value": top[0], "run_id": top[1], "block": top[2]}}


def interpolation(records: list[dict], rows: list[dict]) -> dict:
    """The interpolation sweeps as a table, per method the record the authors use (highest
    best_val_acc), and the retention of the grid run with the same (dataset, method, lr, seed):
    a sweep retrains its run, so α = 1 is another sample of that cell, not the grid run."""
    if not records:
        return {"unsupported": "no interpolation record (intervention/*.json or interpolation/*.json)"}
    sweeps, chosen = [], {}
    for rec in records:
        cfg = rec["config"]
        pts = sorted(rec["sweep"], key=lambda p: p["alpha"])
        sweeps.append({"run_id": rec.get("run_id"), "method": cfg["method"], "dataset": cfg.get("dataset"),
                       "lr": cfg.get("lr"), "seed": cfg.get("seed"), "variant": rec.get("variant", "authors"),
                       "selected_epoch": rec.get("selected_epoch"), "best_val_acc": rec.get("best_val_acc"),
                       "sweep": [{k: p.get(k) for k in ("alpha", "test_acc", "transfer_retention", "delta_entropy_pct",
                                                        "cka_mean", "embedding_drift", "weight_drift_rel")} for p in pts]})
        twin = [r for r in rows if (r["dataset"], r["method"], r["lr"], r["seed"]) ==
                (cfg.get("dataset"), cfg["method"], cfg.get("lr"), cfg.get("seed"))]
        sweeps[-1]["grid_run_retention"] = twin[0][TARGET] if twin else None
        best = chosen.get(cfg["method"])
        if best is None or (rec.get("best_val_acc") or -1) > (best.get("best_val_acc") or -1):
            chosen[cfg["method"]] = sweeps[-1]
    order = {m: i for i, m in enumerate(CORE_METHODS)}
    return {"sweeps": sorted(sweeps, key=lambda s: (order.get(s["method"], 9), s["lr"] or 0)),
            "selected_by_val": {m: s["run_id"] for m, s in chosen.items()}}
