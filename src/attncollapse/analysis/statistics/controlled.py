"""The statistics of a controlled (factorial) study into stats.json: per dataset, a two-way
ANOVA method × lr with seeds as replicates, simple effects of method at each lr (Welch,
Holm across lrs), matched-LR tables (mean ± SD over seeds), correlations of Δentropy with
zero-shot and with accuracy, CKA vs Δentropy (run level and per layer), later-layer
contraction per cell; pooled, the retention model (OLS of zero-shot retention on the
structural change, method and lr, 95% CIs and R²).

statsmodels fits the ANOVA and the OLS (`ols` + `anova_lm`, lr as a categorical factor);
it is imported inside the functions that fit, so `import attncollapse.analysis` stays light.
Measures a study did not record (CKA, rollout, patch-to-patch entropy) are named as absent,
never estimated.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..._io import write_json
from ..design import ABSENT, MEASURES, Factorial, factorial, layer_values, lr_label, measured, value
from ..table import Matrix, load
from .inference import ALPHA, compare, correlate, holm, layer_thirds, skip

SCHEMA = 1
ANOVA_RESPONSES = ("entropy_delta_pct", "erf_delta_pct", "best_acc", "zeroshot_acc")
"""Always tested; the optional measures (`cka_final`, rollout, patch entropy) join when measured."""
OPTIONAL_RESPONSES = ("cka_final", "rollout_entropy_delta_pct", "patch_entropy_delta_pct")
TABLE_MEASURES = ("best_acc", "entropy_delta_pct", "erf_delta_pct", "zeroshot_acc", "retention_pct",
                  "cka_final", "rollout_entropy_delta_pct", "patch_entropy_delta_pct", "map_drift_final")
N_BOOT = 2000


def _num(x: Any) -> float | None:
    """A JSON-safe float: NaN and inf become None (null)."""
    return None if x is None or not math.isfinite(float(x)) else float(x)


def frame(f: Factorial, dataset: str | None = None, keys: tuple[str, ...] = ()) -> Any:
    """The finished runs of `dataset` (all: None) as a pandas DataFrame with the factors
    (`dataset`, `method`, `lr` as its printed label, `lr_value`, `seed`) and measures `keys`."""
    import pandas as pd  # statsmodels' own dependency

    rows = [{"run_id": r.run_id, "dataset": ds, "method": me, "lr": lr_label(lr), "lr_value": lr,
             "seed": r.get("seed"), **{k: value(r, k, f) for k in keys}}
            for (ds, me, lr), rs in f.cells.items() if dataset in (None, ds) for r in rs]
    return pd.DataFrame(rows)


def two_way_anova(df: Any, response: str) -> dict[str, Any]:
    """Two-way ANOVA `response ~ C(method) * C(lr)` (type II sums of squares; a balanced
    design gives type I = II = III), seeds as replicates.

    Returns:
        `terms` {method, lr, method:lr: sum_sq, df, F, p, partial_eta_sq}, `residual`
        {sum_sq, df}, `n`, `formula`; or a skip entry saying why it cannot run.
    """
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    d = df.dropna(subset=[response])
    n_cells = d.groupby(["method", "lr"]).ngroups
    if d["method"].nunique() < 2 or d["lr"].nunique() < 2:
        return skip(f"{response}: needs ≥ 2 methods and ≥ 2 learning rates with values")
    if n_cells < d["method"].nunique() * d["lr"].nunique():
        return skip(f"{response}: a method × lr cell has no value (the design is not a full factorial)")
    if len(d) <= n_cells:
        return skip(f"{response}: one run per cell, no replicate seeds to test against")
    if d[response].std() == 0:
        return skip(f"{response}: constant over every run, not testable")
    formula = f"{response} ~ C(method) * C(lr)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = anova_lm(smf.ols(formula, data=d).fit(), typ=2)
    res_ss = float(table.loc["Residual", "sum_sq"])
    if res_ss <= 1e-12 * float(((d[response] - d[response].mean()) ** 2).sum()):
        return skip(f"{response}: no variance within any cell (seeds agree exactly), F undefined")
    names = {"C(method)": "method", "C(lr)": "lr", "C(method):C(lr)": "method:lr"}
    terms = {}
    for raw, name in names.items():
        ss = float(table.loc[raw, "sum_sq"])
        terms[name] = {"sum_sq": ss, "df": float(table.loc[raw, "df"]), "F": _num(table.loc[raw, "F"]),
                       "p": _num(table.loc[raw, "PR(>F)"]), "partial_eta_sq": _num(ss / (ss + res_ss))
                       if ss + res_ss > 0 else None}
    return {"formula": formula, "typ": 2, "n": int(len(d)), "terms": terms,
            "residual": {"sum_sq": res_ss, "df": float(table.loc["Residual", "df"])}}


def simple_effects(f: Factorial, dataset: str, key: str, *, seed: int = 0) -> dict[str, Any]:
    """Method at each lr: Welch's t of the first method vs the second over seeds, Holm across lrs."""
    if len(f.methods) < 2:
        return skip("one method only: no method effect to test")
    a_name, b_name = f.methods[:2]
    entries = []
    for lr in f.lrs:
        a = [v for r in f.cell(dataset, a_name, lr) if (v := value(r, key, f)) is not None]
        b = [v for r in f.cell(dataset, b_name, lr) if (v := value(r, key, f)) is not None]
        label = f"lr {lr_label(lr)}: {a_name} vs {b_name}"
        if len(a) < 2 or len(b) < 2:
            entries.append({"lr": lr, "label": label, **skip(f"needs ≥ 2 seeds per method, has {len(a)} and {len(b)}")})
            continue
        if np.ptp(a) == 0 and np.ptp(b) == 0:  # Welch's t is ±inf with p = 0: a degenerate "significance"
            entries.append({"lr": lr, "label": label, "diff": float(np.mean(a) - np.mean(b)),
                            **skip("no variance within either method's seeds: not testable")})
            continue
        c = compare(a, b, n_boot=N_BOOT, seed=seed, unit="runs")
        entries.append({"lr": lr, "label": label, **{k: _num(v) if isinstance(v, float) else v for k, v in c.items()}})
    ran = [e for e in entries if not e.get("skipped")]
    for e, p in zip(ran, holm([np.nan if e["welch_p"] is None else e["welch_p"] for e in ran])):
        e["welch_p_holm"] = _num(p)
    return {"a": a_name, "b": b_name, "test": "Welch's t (a − b), seeds as samples", "correction": "holm",
            "m": len(ran), "entries": entries}


def _mean_sd(vals: list[float]) -> dict[str, Any]:
    a = np.asarray(vals, float)
    return {"n": len(a), "mean": _num(a.mean()) if len(a) else None,
            "sd": _num(a.std(ddof=1)) if len(a) > 1 else None}


def cells_table(f: Factorial, dataset: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Matched-LR table rows: per method × lr, mean ± SD (ddof 1) over seeds of each measure,
    and the per-layer entropy Δ% (seed mean), its last layer and its late third."""
    out = []
    for me in f.methods:
        for lr in f.lrs:
            rs = f.cell(dataset, me, lr)
            row: dict[str, Any] = {"method": me, "lr": lr, "lr_label": lr_label(lr), "n": len(rs),
                                   "seeds": [r.get("seed") for r in rs], "runs": [r.run_id for r in rs]}
            for k in keys:
                row[k] = _mean_sd([v for r in rs if (v := value(r, k, f)) is not None])
            layers = [x for r in rs if (x := layer_values(r, "entropy")) is not None]
            if layers and len({len(x) for x in layers}) == 1:
                arr = np.vstack(layers)
                late = layer_thirds(arr.shape[1])[-1]
                row["layer_entropy_delta"] = [_num(v) for v in np.nanmean(arr, 0)]
                row["last_layer_entropy_delta"] = _mean_sd(list(arr[:, -1]))
                row["late_entropy_delta"] = _mean_sd(list(np.nanmean(arr[:, late], 1)))
                row["late_layers"] = [int(i) + 1 for i in late]
            out.append(row)
    return out


def _pairs(f: Factorial, runs: list, kx: str, ky: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in runs:
        x, y = value(r, kx, f), value(r, ky, f)
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def correlation(f: Factorial, runs: list, kx: str, ky: str) -> dict[str, Any]:
    """Pearson and Spearman of two measures over runs (n ≥ 3), or a skip entry."""
    xs, ys = _pairs(f, runs, kx, ky)
    if len(xs) < 3:
        return skip(f"{kx} vs {ky}: {len(xs)} runs with both values (needs ≥ 3)")
    c = correlate(xs, ys)
    return {"x": kx, "y": ky, **{k: _num(v) if isinstance(v, float) else v for k, v in c.items()}}


def cka_vs_entropy(f: Factorial, runs: list) -> dict[str, Any]:
    """Mean CKA to the pretrained tower vs Δentropy: run level, and per layer (layer ℓ's
    CKA vs layer ℓ's entropy Δ%) with the strongest layer (largest |Pearson r|)."""
    if not measured(f)["cka"]:
        return skip(ABSENT["cka"])
    out = {"run_level": correlation(f, runs, "cka_final", "entropy_delta_pct")}
    per_layer = []
    pairs = [(c, e) for r in runs if (c := layer_values(r, "cka")) is not None
             and (e := layer_values(r, "entropy")) is not None and len(c) == len(e)]
    if len(pairs) >= 3 and len({len(c) for c, _ in pairs}) == 1:
        for i in range(len(pairs[0][0])):
            xs, ys = [c[i] for c, _ in pairs], [e[i] for _, e in pairs]
            c = correlate(xs, ys)
            per_layer.append({"layer": i + 1, **{k: _num(v) if isinstance(v, float) else v for k, v in c.items()}})
        ok = [e for e in per_layer if e["pearson_r"] is not None]
        out["per_layer"] = per_layer
        out["strongest_layer"] = max(ok, key=lambda e: abs(e["pearson_r"]))["layer"] if ok else None
    else:
        out["per_layer"] = skip("per-layer CKA (results.csv cka_layers) missing or of unequal depth")
    return out


def retention_model(f: Factorial) -> dict[str, Any]:
    """OLS of zero-shot retention (% of E1's zero-shot) on z-scored Δentropy, ΔERF and mean
    CKA (when measured), method, log10 lr and (several datasets) dataset, over every run.

    The structural predictors are z-scored (mean 0, SD 1, ddof 1) so their coefficients read
    "retention points per SD of change" and compare with each other (as the authors'
    revision fits it); log10 lr reads "per tenfold lr". 95% CIs are t intervals.
    """
    import statsmodels.formula.api as smf

    if not f.pretrained:
        return skip(f"E1 measured no zero-shot accuracy on {f.zeroshot or 'any dataset'}: retention "
                    "(zero-shot / pretrained zero-shot) has no denominator; add the dataset to `baseline:`")
    structural = ["entropy_delta_pct", "erf_delta_pct"] + (["cka_final"] if measured(f)["cka"] else [])
    df = frame(f, None, ("retention_pct", *structural)).dropna()
    notes = [] if measured(f)["cka"] else [ABSENT["cka"] + ": the model omits it"]
    terms = []
    for k in structural:
        sd = df[k].std(ddof=1) if len(df) > 1 else 0.0
        if not sd or not math.isfinite(sd):
            notes.append(f"{k} is constant over the runs: left out")
            continue
        df[f"z_{k}"] = (df[k] - df[k].mean()) / sd
        terms.append(f"z_{k}")
    df["log10_lr"] = np.log10(df["lr_value"].astype(float))
    if df["method"].nunique() > 1:
        terms.append("C(method)")
    if df["log10_lr"].nunique() > 1:
        terms.append("log10_lr")
    if df["dataset"].nunique() > 1:
        terms.append("C(dataset)")
    if not terms:
        return skip("retention model: no predictor varies over the runs")
    if df["retention_pct"].std() == 0:
        return skip("retention is constant over every run: nothing to explain")
    formula = "retention_pct ~ " + " + ".join(terms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = smf.ols(formula, data=df).fit()
    if fit.df_resid < 1:
        return skip(f"retention model: {len(df)} runs for {len(fit.params)} parameters, no residual df")
    ci = fit.conf_int(alpha=0.05)
    coefs = [{"term": t, "coef": _num(fit.params[t]), "se": _num(fit.bse[t]), "t": _num(fit.tvalues[t]),
              "p": _num(fit.pvalues[t]), "ci_low": _num(ci.loc[t, 0]), "ci_high": _num(ci.loc[t, 1])}
             for t in fit.params.index]
    return {"formula": formula, "n": int(fit.nobs), "df_resid": float(fit.df_resid), "r2": _num(fit.rsquared),
            "r2_adj": _num(fit.rsquared_adj), "coefficients": coefs, "ci": 0.95,
            "standardized": [t[2:] for t in terms if t.startswith("z_")], "notes": notes,
            "outcome": f"zero-shot retention on {f.zeroshot}: run zero-shot / E1 zero-shot × 100"}


def _dataset_block(f: Factorial, ds: str, responses: tuple[str, ...], seed: int) -> dict[str, Any]:
    df = frame(f, ds, responses)
    runs = f.runs(ds)
    return {
        "runs": len(runs), "empty_cells": [{"method": me, "lr": lr} for me, lr in f.empty_cells(ds)],
        "cells": cells_table(f, ds, tuple(k for k in TABLE_MEASURES if any(value(r, k, f) is not None for r in runs))),
        "anova": {k: two_way_anova(df, k) for k in responses},
        "simple_effects": {k: simple_effects(f, ds, k, seed=seed) for k in responses},
        "correlations": {"entropy_vs_zeroshot": correlation(f, runs, "entropy_delta_pct", "zeroshot_acc"),
                         "entropy_vs_accuracy": correlation(f, runs, "entropy_delta_pct", "best_acc")},
        "cka_vs_entropy": cka_vs_entropy(f, runs),
    }


def analyze_matrix(m: Matrix, *, seed: int = 0) -> dict[str, Any]:
    """Every controlled-design statistic of a loaded matrix (the stats.json dict)."""
    f = factorial(m)
    have = measured(f)
    responses = ANOVA_RESPONSES + tuple(k for k in OPTIONAL_RESPONSES
                                        if any(value(r, k) is not None for r in f.runs()))
    notes = list(m.notes)
    if f.missing:
        notes.append(f"{len(f.missing)} of {len(m.runs)} runs not finished, left out: {', '.join(f.missing)}")
    if f.zeroshot is None:
        notes.append("no run measured zero-shot accuracy: zero-shot and retention are absent")
    notes += [ABSENT[fam] for fam, ok in have.items() if not ok]
    return {
        "schema": SCHEMA, "design": "controlled", "name": m.spec.get("name"), "alpha": ALPHA, "seed": seed,
        "factors": {"datasets": f.datasets, "methods": f.methods, "lrs": f.lrs, "seeds": f.seeds},
        "runs_done": len(f.runs()), "runs_total": len(m.runs), "missing": f.missing,
        "zeroshot": {"dataset": f.zeroshot, "pretrained": f.pretrained},
        "measured": have, "absent": {fam: ABSENT[fam] for fam, ok in have.items() if not ok},
        "responses": list(responses), "labels": {k: MEASURES[k][0] for k in MEASURES},
        "notes": notes,
        "datasets": {ds: _dataset_block(f, ds, responses, seed) for ds in f.datasets},
        "cka_vs_entropy": cka_vs_entropy(f, f.runs()),
        "retention_model": retention_model(f),
    }


def analyze(matrix_dir: str | Path, *, seed: int = 0, write: bool = True) -> dict[str, Any]:
    """Run the controlled design's statistics on a matrix directory and write stats.json.

    Args:
        matrix_dir: a matrix directory whose matrix.yaml says `design: controlled`.
        seed: bootstrap seed of the simple-effect CIs.
        write: write `<matrix_dir>/stats.json` (atomically).
    """
    out = analyze_matrix(load(matrix_dir), seed=seed)
    if write:
        write_json(Path(matrix_dir) / "stats.json", out)
    return out
