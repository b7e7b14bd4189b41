"""The reports' future work as analyses: early warning, the weight-drift control, model families.

numpy/scipy only, on the files a matrix holds (results.csv, final.json, history.json,
baseline/*.json). Each function returns a stats.json entry (`stats.analyze` calls them).

Definitions (docs/FORMATS.md "stats.json"):
    - Transfer score of a run: `transfer_acc` (linear probe / k-NN of a vision-only family)
      when the run has one, else `zeroshot_acc` (the headline zero-shot dataset, measured
      on the best-accuracy checkpoint).
    - Transfer change (pp): 100 · (transfer score − the pretrained model's), negative for a
      drop. The pretrained score is E1's (baseline/<dataset>.json of the same model, on the
      same zero-shot dataset and number of images); without one, a LoRA run's own
      `zeroshot_acc_base_only` (adapters off = the pretrained tower, same images and prompts).
      Runs with neither are left out, and each entry lists the source per run.
    - Early Δ of a metric: Δ% of its layer mean at the history point nearest epoch 1 (ties:
      the earlier) vs step 0; for weight drift, the mean block drift at that point (its step-0
      value is 0). A run trained for one epoch has its early point at its last step: entries
      list such runs under `early_is_final`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .inference import correlate, family, single, skip
from ..roles import headline_zeroshot
from ..table import METRICS, Run

TRANSFER_COLUMNS = ("transfer_acc", "zeroshot_acc")
"""The transfer score a run is judged by, in order of preference."""
EARLY_EPOCH = 1.0
PREDICTORS = (*METRICS, "weight_drift")


def transfer(run: Run) -> tuple[float | None, str | None]:
    """(score, column): the run's first TRANSFER_COLUMNS value (results.csv, else final.json)."""
    for col in TRANSFER_COLUMNS:
        v = run.get(col, (run.final or {}).get(col))
        if v is not None and math.isfinite(float(v)):
            return float(v), col
    return None, None


def _headline_block(run: Run) -> tuple[str | None, dict]:
    blocks = (run.final or {}).get("zeroshot") or {}
    name = headline_zeroshot([run])  # zeroshot_acc is the first zero-shot dataset's (FORMATS.md)
    return name, (blocks.get(name) or {}) if name else {}


def pretrained_score(run: Run, baseline: dict[str, dict], col: str) -> tuple[float | None, str | None]:
    """The pretrained model's score on the run's transfer task, and where it came from."""
    same = [b for b in baseline.values() if b.get("model") == run.get("model")]
    if col == "transfer_acc":
        v = next((b["transfer_acc"] for b in same if b.get("transfer_acc") is not None), None)
        return (float(v), "baseline") if v is not None else (None, None)
    name, block = _headline_block(run)
    for b in same:
        ref = ((b.get("zeroshot") or {}).get(name) or {})
        n_ref, n_run = ref.get("images"), block.get("images")
        if ref.get("acc") is not None and (n_ref is None or n_run is None or n_ref == n_run):
            return float(ref["acc"]), "baseline"
    if run.get("zeroshot_acc_base_only") is not None:
        return float(run.get("zeroshot_acc_base_only")), "base_only"
    return None, None


def transfer_change(run: Run, baseline: dict[str, dict]) -> dict[str, Any] | None:
    """{"pp", "score", "column", "reference", "source"} or None when the run lacks either side."""
    score, col = transfer(run)
    if score is None:
        return None
    ref, source = pretrained_score(run, baseline, col)
    if ref is None:
        return None
    return {"pp": 100.0 * (score - ref), "score": score, "column": col, "reference": ref, "source": source}


def early_point(run: Run, epoch: float = EARLY_EPOCH) -> tuple[dict, dict, bool] | None:
    """(step-0 point, the point nearest `epoch`, whether it is the last point) from history.json."""
    pts = (run.history() or {}).get("points") or []
    later = [p for p in pts[1:] if p.get("epoch") is not None]
    if not pts or not later:
        return None
    near = min(later, key=lambda p: (abs(float(p["epoch"]) - epoch), float(p["epoch"])))
    return pts[0], near, near is pts[-1]


def early_delta(run: Run, predictor: str) -> float | None:
    """Early Δ of one predictor (a metric's Δ% or the mean weight drift), see the module doc."""
    got = early_point(run)
    if got is None:
        return None
    p0, p1, _ = got
    if predictor == "weight_drift":
        d = p1.get("weight_drift")
        return float(np.mean(d)) if d else None
    v0, v1 = (p0.get("mean") or {}).get(predictor), (p1.get("mean") or {}).get(predictor)
    return 100.0 * (float(v1) - float(v0)) / float(v0) if v0 and v1 is not None else None


def _correlation(label: str, pts: list[tuple[str, float, float]], x: str, y: str, **extra: Any) -> dict:
    pts = [p for p in pts if math.isfinite(p[1]) and math.isfinite(p[2])]
    if len(pts) < 3:
        return {"label": label, "x": x, "y": y, **skip(f"needs ≥ 3 runs with both values, found {len(pts)}")}
    ids, xs, ys = zip(*pts)
    return {"label": label, "x": x, "y": y, "unit": "runs", "runs": list(ids), "x_values": list(xs),
            "y_values": list(ys), **extra, **correlate(xs, ys)}


def early_warning(runs: list[Run], baseline: dict[str, dict]) -> dict:
    """Does each metric's Δ after the first epoch predict the final transfer change across runs?

    One correlation per predictor (the four metrics' early Δ% and the early weight drift)
    against the transfer change in pp; Holm over the five.
    """
    changes = {r.run_id: c for r in runs if (c := transfer_change(r, baseline)) is not None}
    early = {r.run_id: got for r in runs if r.run_id in changes and (got := early_point(r)) is not None}
    entries = []
    for pr in PREDICTORS:
        pts = [(r.run_id, v, changes[r.run_id]["pp"]) for r in runs
               if r.run_id in early and (v := early_delta(r, pr)) is not None]
        ids = [p[0] for p in pts]
        x = "mean weight drift at epoch ≈ 1" if pr == "weight_drift" else f"{pr} Δ% at epoch ≈ 1"
        entries.append(_correlation(f"early {pr} vs transfer change", pts, x, "transfer change (pp)",
                                    predictor=pr, early_epochs=[float(early[i][1]["epoch"]) for i in ids],
                                    reference_source={i: changes[i]["source"] for i in ids},
                                    transfer_column={i: changes[i]["column"] for i in ids},
                                    early_is_final=[i for i in ids if early[i][2]]))
    if not changes:
        return skip("no run has a transfer score and a pretrained reference (zero-shot or transfer_acc)")
    return family("predictor", entries, ("pearson_p", "spearman_p"), "no runs")


def weight_drift(runs: list[Run], baseline: dict[str, dict]) -> dict:
    """The alternative explanation "weight space, not attention", run by run.

    Entries: final mean drift vs final entropy Δ%; drift vs transfer change and entropy Δ%
    vs transfer change, both at the checkpoint transfer was measured on (`best_step`), so
    the two explanations face the same runs and the same outcome. Holm over the three.
    """
    d_ent = [(r.run_id, r.get("weight_drift_final"), r.delta()) for r in runs]
    d_ent = [(i, float(a), float(b)) for i, a, b in d_ent if a is not None and b is not None]
    at_best, rival = [], []
    for r in runs:
        c = transfer_change(r, baseline)
        if c is None:
            continue
        step = (r.final or {}).get("best_step")
        drift = r.drift_at(step) if step is not None and step >= 0 else None  # the transfer checkpoint's
        if drift:
            at_best.append((r.run_id, float(np.mean(drift)), c["pp"]))
        ent, _ = r.zeroshot_delta()
        if ent is not None:
            rival.append((r.run_id, float(ent), c["pp"]))
    entries = [
        _correlation("weight drift vs entropy Δ%", d_ent, "mean weight drift (last step)", "entropy Δ% (last step)"),
        _correlation("weight drift vs transfer change", at_best, "mean weight drift (transfer checkpoint)",
                     "transfer change (pp)"),
        _correlation("entropy Δ% vs transfer change", rival, "entropy Δ% (transfer checkpoint)",
                     "transfer change (pp)"),
    ]
    if not d_ent and not at_best:
        return skip("no run records weight drift (history.json points[].weight_drift)")
    return family("pair", entries, ("pearson_p", "spearman_p"), "no runs")


def family_name(run: Run) -> str:
    """The run's model family (final.json `model_family`, else E1's of the same model), else its model."""
    return str(run.get("model_family") or run.get("model") or "unknown")


def _mean(v: list[float]) -> float | None:
    v = [x for x in v if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def _layers_mean(rs: list[Run]) -> list[float] | None:
    ls = [v for r in rs if (v := r.layer_delta()) is not None]
    if not ls or len({len(v) for v in ls}) != 1:
        return None
    return [float(x) for x in np.nanmean(np.stack(ls), 0)]


def _summary(rs: list[Run], baseline: dict[str, dict]) -> dict[str, Any]:
    ch = [c for r in rs if (c := transfer_change(r, baseline)) is not None]
    return {"runs": [r.run_id for r in rs], "n_runs": len(rs),
            "entropy_delta_pct": _mean([r.delta() for r in rs]), "entropy_delta_pct_layers": _layers_mean(rs),
            "weight_drift_final": _mean([r.get("weight_drift_final") for r in rs]),
            "transfer_change_pp": _mean([c["pp"] for c in ch]), "n_transfer": len(ch),
            "transfer_columns": sorted({c["column"] for c in ch})}


def families(runs: list[Run], baseline: dict[str, dict]) -> dict:
    """Per model family: mean entropy Δ% (and per layer), drift and transfer change, overall and per
    configuration group (E2, E4, ...); and, with ≥ 3 families that have a transfer change, the
    correlation of the families' mean entropy Δ% with their mean transfer change (unit "families")."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(family_name(r), []).append(r)
    if len(groups) < 2:
        return skip(f"one model family in this matrix ({', '.join(groups) or 'none'})")
    out = []
    for fam, rs in groups.items():
        by_group: dict[str, list[Run]] = {}
        for r in rs:
            by_group.setdefault(str(r.get("group") or r.config_id), []).append(r)
        out.append({"family": fam, "models": sorted({str(r.get("model")) for r in rs}), **_summary(rs, baseline),
                    "by_group": {g: _summary(v, baseline) for g, v in by_group.items()}})
    pts = [(f["family"], f["entropy_delta_pct"], f["transfer_change_pp"]) for f in out
           if f["entropy_delta_pct"] is not None and f["transfer_change_pp"] is not None]
    across = _correlation("family mean entropy Δ% vs transfer change", pts, "mean entropy Δ%",
                          "mean transfer change (pp)")
    if not across.get("skipped"):
        across = single({**across, "unit": "families", "families": across.pop("runs")})
    else:
        across["reason"] = across["reason"].replace("runs", "families")
    return {"families": out, "n_families": len(out), "across_families": across}
