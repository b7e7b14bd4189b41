"""All statistics of the forgetting study in one dict (stats.json), with the authors' keys.

Every pooled statistic uses the primary backbone only; the secondary backbone enters only
`backbone_check` and `polarity_by_group`. A statistic the design cannot support is an entry
`{"unsupported": "<one line>"}` (or a line in `notes` for one part of a list), never an
exception and never a silent gap.
"""

from __future__ import annotations

from typing import Any

from . import decisions, grid, predictors

VERDICT_PREDICTORS = ("cka_mean", "embedding_drift", "weight_drift_rel")


def _safe(key: str, fn, notes: list[str]) -> Any:
    """fn(); an unexpected error becomes {"unsupported": ...} for this entry alone."""
    try:
        return fn()
    except (ValueError, KeyError, IndexError, TypeError, ZeroDivisionError) as exc:
        notes.append(f"{key}: could not be computed ({type(exc).__name__}: {exc})")
        return {"unsupported": f"could not be computed: {exc}"}


def _empty(key: str, value: Any, why: str) -> Any:
    return {"unsupported": why} if value == [] else value


def design_of(rows: list[dict]) -> dict:
    """What the primary core grid holds: datasets, methods, lrs, seeds per cell, missing cells."""
    c = grid.core(rows)
    ds, lrs = sorted({r["dataset"] for r in c}), sorted({r["lr"] for r in c})
    have = {(r["dataset"], r["method"], r["lr"]) for r in c}
    missing = [f"{d}/{m}@{lr:g}" for d in ds for m in grid.CORE_METHODS for lr in lrs if (d, m, lr) not in have]
    seeds = [len(g) for g in grid.group(c, "dataset", "method", "lr").values()]
    return {"datasets": ds, "core_methods": [m for m in grid.CORE_METHODS if any(r["method"] == m for r in c)],
            "learning_rates": lrs, "seeds_per_cell_min": min(seeds) if seeds else 0,
            "seeds_per_cell_max": max(seeds) if seeds else 0, "missing_cells": missing,
            "n_core_runs": len(c), "n_cells": len(seeds)}


def compute(all_rows: list[dict], interpolations: list[dict], problems: list[str]) -> dict:
    """stats.json's content from every readable run row (both backbones) and the sweeps."""
    rows = [r for r in all_rows if r["backbone"] == "primary"]
    notes: list[str] = []
    design = design_of(rows)
    if design["n_core_runs"] and design["seeds_per_cell_max"] < 2:
        notes.append("cells: one seed per cell; no SD, and Wilcoxon/paired tests rest on one run per (lr, seed)")
    if design["missing_cells"]:
        notes.append(f"design: the core grid lacks {len(design['missing_cells'])} cell(s): "
                     + ", ".join(design["missing_cells"]))
    paired = _safe("paired_method_tests", lambda: grid.paired_method_tests(rows, notes), notes)
    if isinstance(paired, list) and paired:
        for test, p in zip(paired, grid.holm([t["t_p_value"] for t in paired])):
            test["t_p_holm"] = p
        if len(paired) != 12:
            notes.append(f"paired_method_tests: Holm over a family of {len(paired)} t-tests (the authors' is 12)")
    boot = _safe("bootstrap_predictor_gap", lambda: predictors.bootstrap_predictor_gap(rows), notes)
    out: dict[str, Any] = {
        "n_runs": len(rows), "n_runs_all_backbones": len(all_rows), "design": design,
        "runs_by_cell": grid.runs_by_cell(rows), "cells": grid.cells(rows),
        "paired_method_tests": _empty("paired", paired, "no dataset with ≥ 3 matched full_ft/lora_r8 pairs"),
        "dose_response": _empty("dose", _safe("dose_response", lambda: grid.dose_response(rows, notes), notes),
                                "no (dataset, core method) with ≥ 3 learning rates"),
        "predictor_ranking_final": _empty("pr", _safe("predictor_ranking_final",
                                                      lambda: predictors.predictor_ranking(rows, "final"), notes),
                                          "fewer than 6 core runs with every predictor"),
        "predictor_ranking_epoch1": _empty("pr", _safe("predictor_ranking_epoch1",
                                                       lambda: predictors.predictor_ranking(rows, "epoch1"), notes),
                                           "fewer than 6 core runs with every epoch-1 predictor"),
        "bootstrap_predictor_gap": boot,
        "backbone_check": _safe("backbone_check", lambda: grid.backbone_check(all_rows), notes),
        "polarity_by_group": _safe("polarity_by_group", lambda: grid.polarity_by_group(all_rows), notes),
        "iso_accuracy": _safe("iso_accuracy", lambda: grid.iso_accuracy(rows, notes), notes),
        "selection_utility": _empty("sel", _safe("selection_utility", lambda: decisions.selection_utility(rows, 2.0, []),
                                                 notes), "no dataset with ≥ 3 candidates within 2 points (margin 2)"),
        "selection_utility_margins": {f"{m:g}": _safe(f"selection_utility_margins[{m:g}]",
                                                       lambda m=m: decisions.selection_utility(rows, m, notes), notes)
                                      for m in decisions.MARGINS},
        "temporal_ordering": _safe("temporal_ordering", lambda: decisions.temporal_ordering(rows), notes),
        "transfer_axis_agreement": _safe("transfer_axis_agreement", lambda: grid.transfer_axis_agreement(rows), notes),
        "frontier": _safe("frontier", lambda: decisions.frontier(rows), notes),
        "layer_heatmap": _safe("layer_heatmap", lambda: decisions.layer_heatmap(rows), notes),
        "interpolation": _safe("interpolation", lambda: decisions.interpolation(interpolations, rows), notes),
    }
    gaps = boot if isinstance(boot, list) else []
    out["bootstrap_n_comparisons"] = max(0, len(gaps) - 1)
    out["bootstrap_n_gaps_excluding_zero"] = sum(1 for g in gaps if g["gap_vs_reference_mean"] != 0 and g["gap_ci_low"] > 0)
    out["verdict"] = dose_meter_verdict(out)
    for key, value in out.items():
        if isinstance(value, dict) and "unsupported" in value:
            notes.append(f"{key}: {value['unsupported']}")
    out["notes"] = notes
    out["demonstration"] = demonstration(all_rows)
    out["record_problems"] = problems
    return out


def dose_meter_verdict(s: dict) -> dict:
    """"Dose meter, not damage meter": signed ΔH is strong within a (dataset, method) group but
    weak across configurations, and its within-group sign is not stable, while CKA, embedding and
    weight drift keep one sign in every group. The parts, each read from the ranking."""
    rank = {e["predictor"]: e for e in s["predictor_ranking_final"]} if isinstance(s["predictor_ranking_final"], list) else {}
    dh = rank.get("delta_entropy_pct")
    if not dh or not dh["n_groups"]:
        return {"unsupported": "signed ΔH has no within-group correlation (needs ≥ 5 runs and > 2 values per group)"}
    signs = {k: sorted({(v > 0) - (v < 0) for v in e["spearman_within_groups"].values()})
             for k, e in rank.items() if k in VERDICT_PREDICTORS + ("delta_entropy_pct",)}
    strong_within = dh["abs_spearman_within_mean"] >= 0.7
    weak_across = abs(dh["spearman_overall"]) < 0.5
    flips = len(signs["delta_entropy_pct"]) > 1
    stable = [k for k in VERDICT_PREDICTORS if k in signs and len(signs[k]) == 1]
    return {"signed_dh_within_mean_abs": dh["abs_spearman_within_mean"], "signed_dh_overall": dh["spearman_overall"],
            "signed_dh_within_signed_mean": dh["spearman_within_mean"],
            "signed_dh_within_groups": dh["spearman_within_groups"], "signed_dh_sign_flips_across_groups": flips,
            "stable_sign_signals": stable, "rule": "within mean |ρ| ≥ 0.7, |overall ρ| < 0.5, sign flips across groups",
            "holds": bool(strong_within and weak_across and flips)}


DEMO_DATASETS = ("synthetic", "digits")
"""The offline stand-in sources (docs/FORGETTING_RUNS.md): numbers on them mean nothing."""


def demonstration(rows: list[dict]) -> list[str]:
    """Why these numbers are a pipeline demonstration, not a result (empty when they are real):
    randomly initialised preset models, offline stand-in datasets."""
    why = [f"the model `{m}` is a randomly initialised preset, not pretrained CLIP"
           for m in sorted({r["model_name"] for r in rows if r.get("random_init")})]
    return why + [f"the dataset `{d}` is offline demo data, not the study's"
                  for d in sorted({r["dataset"] for r in rows}) if d in DEMO_DATASETS]
