"""Whether a run's late training is stable: the reports' convergence criteria on history.json.

The original study's "late-epoch stability criterion" (English report §4.6; its
`enhanced_analysis.py` `verify_convergence`) and a stricter alternative, as parameters of one
function (`converged`), and every run's verdict under one criterion (`convergence`, the
`convergence` entry of stats.json). numpy only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .inference import skip
from ..table import Run

CONVERGENCE_DEFAULT = {"rule": "std", "tail_frac": 0.25, "min_points": 3, "acc_tol_pp": 0.5,
                       "ent_tol_pct": None, "per_epoch": True}
"""The original study's "late-epoch stability criterion" (English report §4.6 names it; its
`enhanced_analysis.py` `verify_convergence` defines it): the population SD of the last
max(3, n//4) per-epoch validation accuracies is below 0.5 pp."""
CONVERGENCE_FIG14 = {"rule": "change", "tail_frac": 0.2, "min_points": 2, "acc_tol_pp": 1.0,
                     "ent_tol_pct": 0.5, "per_epoch": False}
"""An alternative, stricter criterion (accuracy and entropy): over the last 20% of eval points,
|Δ accuracy| ≤ 1 pp and |Δ entropy| ≤ 0.5% of the initial entropy. Pass it as
`stats.analyze(convergence_criterion=...)`: text and fig. 14 both follow stats.json's one criterion."""



def series(history: Any, metric: str | None, per_epoch: bool) -> np.ndarray:
    """val_acc (metric None) or the layer-mean `metric` at each eval point that has one.

    history: a history.json dict (`points`), or a plain sequence of accuracies (fractions).
    per_epoch: keep each epoch's last point only (epoch e covers (e−1, e]).
    """
    if not isinstance(history, dict):
        if metric is not None:
            raise ValueError(f"a plain accuracy sequence has no {metric!r}; pass a history.json dict")
        return np.asarray([v for v in history if v is not None], float)
    pts = [(p.get("epoch", 0.0), p.get("val_acc") if metric is None else (p.get("mean") or {}).get(metric))
           for p in history.get("points") or []]
    pts = [(e, v) for e, v in pts if v is not None]
    if per_epoch:
        last: dict[int, float] = {}
        for e, v in pts:
            last[math.ceil(float(e) - 1e-9)] = v  # later points overwrite: the epoch's last
        return np.asarray([last[k] for k in sorted(last)], float)
    return np.asarray([v for _, v in pts], float)


def _tail_stats(v: np.ndarray, k: int, scale: float) -> dict[str, float]:
    t = v[-k:] * scale
    return {"change": float(t[-1] - t[0]), "std": float(t.std()), "range": float(t.max() - t.min())}


def converged(history: Any, *, rule: str = "std", tail_frac: float = 0.25, acc_tol_pp: float = 0.5,
              ent_tol_pct: float | None = None, min_points: int = 3, per_epoch: bool = True) -> dict[str, Any]:
    """Whether a run's late training is stable, by a stated criterion (defaults: CONVERGENCE_DEFAULT).

    The tail is the last max(min_points, ⌊tail_frac · n⌋) of the n eval points that have a
    value (the original's `max(3, n // 4)` at tail_frac 0.25; fig. 14 cuts at 80% of the
    epoch span instead, which selects the same points when eval points are evenly spaced and
    may differ by one otherwise). Over the tail, accuracy in pp (val_acc × 100) and entropy
    in % of the run's first entropy value are summarised by `rule`: "std" (population SD,
    the original's `np.std`), "range" (max − min) or "change" (|last − first|, fig. 14).

    Args:
        history: a history.json dict, or a sequence of accuracies (fractions; no entropy).
        rule: "std" | "range" | "change".
        tail_frac: fraction of the eval points that forms the tail.
        acc_tol_pp: accuracy tolerance (percentage points); the statistic must be ≤ it.
        ent_tol_pct: entropy tolerance (% of initial entropy), or None to ignore entropy.
        min_points: fewest tail points (and fewest points overall).
        per_epoch: use each epoch's last eval point only (the original logged accuracy per epoch).

    Returns:
        `converged` (bool), `n_points`, `tail_points`, `acc_change_pp` (signed, last −
        first), `acc_std_pp`, `acc_range_pp`, and the `entropy_*_pct` three when the history
        has entropy; or `{"skipped": true, "reason": ...}` when there are too few points.
    """
    if rule not in ("std", "range", "change"):
        raise ValueError(f"rule must be 'std', 'range' or 'change', got {rule!r}")
    acc = series(history, None, per_epoch)
    need = max(min_points, 2)
    if len(acc) < need:
        return skip(f"{len(acc)} accuracy points, needs ≥ {need}")
    k = min(len(acc), max(min_points, math.floor(tail_frac * len(acc) + 1e-9)))
    a = _tail_stats(acc, k, 100.0)
    out: dict[str, Any] = {"n_points": len(acc), "tail_points": k,
                           **{f"acc_{s}_pp": v for s, v in a.items()}}
    ok = abs(a[rule]) <= acc_tol_pp
    ent = series(history, "entropy", per_epoch) if isinstance(history, dict) else np.empty(0)
    if len(ent) >= need:
        ke = min(len(ent), max(min_points, math.floor(tail_frac * len(ent) + 1e-9)))
        e = _tail_stats(ent, ke, 100.0 / ent[0])
        out.update({f"entropy_{s}_pct": v for s, v in e.items()})
        if ent_tol_pct is not None:
            ok = ok and abs(e[rule]) <= ent_tol_pct
    elif ent_tol_pct is not None:
        return skip(f"{len(ent)} entropy points, needs ≥ {need} (ent_tol_pct is set)")
    return {"converged": bool(ok), **out}


def _criterion_text(c: dict) -> str:
    what = {"std": "SD", "range": "range (max − min)", "change": "|last − first|"}[c["rule"]]
    ent = f" and entropy's ≤ {c['ent_tol_pct']:g}% of initial" if c.get("ent_tol_pct") is not None else ""
    pts = "per-epoch " if c["per_epoch"] else ""
    return (f"over the last max({c['min_points']}, ⌊{c['tail_frac']:g}·n⌋) of n {pts}eval points, "
            f"validation accuracy's {what} ≤ {c['acc_tol_pp']:g} pp{ent}")


def convergence(runs: list[Run], criterion: dict | None = None) -> dict[str, Any]:
    """Every run's `converged` verdict under one criterion, and the count.

    Args:
        runs: finished runs (their history.json is read).
        criterion: `converged` keyword arguments overriding CONVERGENCE_DEFAULT.

    Returns:
        `criterion` (parameters + `text`), `runs` (one verdict per run, `run_id` first),
        `n_converged`, `n_runs` (runs with enough points), `n_skipped`, `summary`
        ("N of M runs converge").
    """
    crit = {**CONVERGENCE_DEFAULT, **(criterion or {})}
    unknown = set(crit) - set(CONVERGENCE_DEFAULT)
    if unknown:
        raise ValueError(f"unknown convergence criterion keys {sorted(unknown)}; valid: {sorted(CONVERGENCE_DEFAULT)}")
    verdicts = []
    for r in runs:
        h = r.history()
        verdicts.append({"run_id": r.run_id, **(converged(h, **crit) if h else skip("no history.json"))})
    ok = [v for v in verdicts if not v.get("skipped")]
    n = sum(v["converged"] for v in ok)
    return {"criterion": {**{k: v for k, v in crit.items() if v is not None}, "text": _criterion_text(crit)},
            "runs": verdicts, "n_converged": n, "n_runs": len(ok), "n_skipped": len(verdicts) - len(ok),
            "summary": f"{n} of {len(ok)} runs converge"}

