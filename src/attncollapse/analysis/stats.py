"""The study's statistical tests, on plain arrays and on a finished matrix directory.

numpy/scipy only (DESIGN.md: stats know nothing of torch). The tests are the English
report's §2.5 — Welch's t, Mann–Whitney U, bootstrap 95% CIs (10,000 resamples), Cohen's
d, one-way ANOVA over layer-position groups, Pearson + Spearman — plus Holm's correction
over every family of tests, which the study lacked (DESIGN.md "Known flaws").

The runs each test compares come from `table.load` and `roles.select` (the results
table, shared with figures and report), so every stage agrees on which run is "the
full-FT reference" or "the LR sweep".
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats as _sp

from .._io import read_json, write_json
from .roles import by_config, close, describe, select
from .table import METRICS, Matrix, Run, load

ALPHA = 0.05


# ----------------------------------------------------------------------------- tests

def correlate(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation of two equally long samples.

    Args:
        x, y: (n,) values, n ≥ 3.

    Returns:
        `pearson_r, pearson_p, spearman_rho, spearman_p, n` (two-sided p-values).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise ValueError(f"correlate needs two 1-d samples of equal length ≥ 3, got {x.shape} and {y.shape}")
    with warnings.catch_warnings():  # constant input: NaN, which the report calls "not testable"
        warnings.simplefilter("ignore", RuntimeWarning)
        pr, sr = _sp.pearsonr(x, y), _sp.spearmanr(x, y)
    return {"pearson_r": float(pr.statistic), "pearson_p": float(pr.pvalue),
            "spearman_rho": float(sr.statistic), "spearman_p": float(sr.pvalue), "n": len(x)}


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    """(mean a − mean b) / pooled SD (ddof 1 per group), the reports' effect size."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(a), len(b)
    pooled = ((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2)
    return float((a.mean() - b.mean()) / math.sqrt(pooled)) if pooled > 0 else float("nan")


def compare(a: Sequence[float], b: Sequence[float], *, n_boot: int = 10000, seed: int = 0) -> dict[str, float]:
    """Two-sample comparison: Welch's t, Mann–Whitney U, Cohen's d, bootstrap CI.

    Args:
        a, b: samples (≥ 2 values each). Differences are a − b.
        n_boot: bootstrap resamples (reports: 10,000).
        seed: seed of the bootstrap (`numpy.random.default_rng`), so the CI is reproducible.

    Returns:
        `n_a, n_b, mean_a, mean_b, diff, welch_t, welch_df, welch_p, mwu_u, mwu_p,
        cohens_d, ci_low, ci_high` (percentile 95% CI of mean a − mean b), `n_boot`, `seed`.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"compare needs ≥ 2 values per sample, got {len(a)} and {len(b)}")
    with warnings.catch_warnings():  # zero variance: NaN statistics, reported as "not testable"
        warnings.simplefilter("ignore", RuntimeWarning)
        t = _sp.ttest_ind(a, b, equal_var=False)
        u = _sp.mannwhitneyu(a, b, alternative="two-sided")
    rng = np.random.default_rng(seed)
    # Resample each group independently (the groups are independent samples).
    boot = (a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)
            - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"n_a": len(a), "n_b": len(b), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            "diff": float(a.mean() - b.mean()), "welch_t": float(t.statistic),
            "welch_df": float(getattr(t, "df", float("nan"))), "welch_p": float(t.pvalue),
            "mwu_u": float(u.statistic), "mwu_p": float(u.pvalue), "cohens_d": cohens_d(a, b),
            "ci_low": float(lo), "ci_high": float(hi), "n_boot": n_boot, "seed": seed}


def anova(groups: Sequence[Sequence[float]]) -> dict[str, Any]:
    """One-way ANOVA (English report §2.5: layer-position groups).

    Returns:
        `F, p, df_between, df_within, n, group_means`.
    """
    gs = [np.asarray(g, float) for g in groups]
    if len(gs) < 2 or any(len(g) < 2 for g in gs):
        raise ValueError("anova needs ≥ 2 groups of ≥ 2 values")
    with warnings.catch_warnings():  # constant groups: NaN F, reported as "not testable"
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _sp.f_oneway(*gs)
    n = sum(len(g) for g in gs)
    return {"F": float(res.statistic), "p": float(res.pvalue), "df_between": len(gs) - 1,
            "df_within": n - len(gs), "n": n, "group_means": [float(g.mean()) for g in gs]}


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


# ----------------------------------------------------------------------------- analysis

def _skip(reason: str) -> dict[str, Any]:
    return {"skipped": True, "reason": reason}


def _unit(*sets: list[Run]) -> str:
    """"runs" when every config involved has several seeds, else "layers"."""
    cfgs = [len(v) for s in sets for v in by_config(s).values()]
    return "runs" if cfgs and min(cfgs) >= 2 else "layers"


def _sample(runs: list[Run], unit: str, metric: str = "entropy") -> np.ndarray:
    if unit == "runs":
        vals = [r.delta(metric) for r in runs]
    else:
        vals = [x for r in runs for x in (r.layer_delta(metric) if r.layer_delta(metric) is not None else [])]
    a = np.asarray([v for v in vals if v is not None], float)
    return a[np.isfinite(a)]


def _compare_entry(label: str, a_runs: list[Run], b_runs: list[Run], *, n_boot: int, seed: int) -> dict:
    base = {"label": label, "runs_a": [r.run_id for r in a_runs], "runs_b": [r.run_id for r in b_runs],
            "metric": "entropy_delta_pct"}
    if not a_runs or not b_runs:
        return {**base, **_skip(f"missing runs: {'a' if not a_runs else 'b'} side has none")}
    unit = _unit(a_runs, b_runs)
    a, b = _sample(a_runs, unit), _sample(b_runs, unit)
    if len(a) < 2 or len(b) < 2:
        return {**base, **_skip(f"fewer than 2 {unit} per side ({len(a)} vs {len(b)})")}
    return {**base, "unit": unit, "n": len(a) + len(b), **compare(a, b, n_boot=n_boot, seed=seed)}


def _family(kind: str, entries: list[dict], p_keys: tuple[str, ...], empty: str) -> dict:
    """Attach Holm-adjusted p-values (per key) across the entries that ran."""
    if not entries:
        return _skip(empty)
    ran = [e for e in entries if not e.get("skipped")]
    for key in p_keys:
        for e, adj in zip(ran, holm([e[key] for e in ran])):
            e[f"{key}_holm"] = float(adj)
    for e in ran:
        e["p"], e["p_holm"] = e[p_keys[0]], e[f"{p_keys[0]}_holm"]
    return {"family": kind, "correction": "holm", "m": len(ran), "entries": entries}


def _vs_reference(cands: list[Run], ref: list[Run], **kw) -> list[dict]:
    """Each candidate config (not equal to the reference) vs the reference runs."""
    ref_ids = {r.config_id for r in ref}
    return [_compare_entry(f"{cid}: {describe(rs[0])}", rs, ref, **kw)
            for cid, rs in by_config(cands).items() if cid not in ref_ids]


def _single(entry: dict) -> dict:
    """A lone test: its Holm-adjusted p is the raw p (a family of one)."""
    if not entry.get("skipped"):
        entry.update({"p": entry["pearson_p"], "p_holm": entry["pearson_p"],
                      "pearson_p_holm": entry["pearson_p"], "spearman_p_holm": entry["spearman_p"]})
    return entry


def analyze(matrix_dir: str | Path, *, n_boot: int = 10000, seed: int = 0, write: bool = True) -> dict:
    """Run the reports' tests on a finished matrix and write `stats.json`.

    Args:
        matrix_dir: a matrix directory (docs/FORMATS.md).
        n_boot: bootstrap resamples per comparison (reports: 10,000).
        seed: bootstrap seed.
        write: write `<matrix_dir>/stats.json` (atomically).

    Returns:
        The stats dict: `tests` maps a test name to an entry, a family (`entries` with raw and
        Holm-adjusted p side by side) or `{"skipped": true, "reason": ...}`.
    """
    m = load(matrix_dir)
    s = select(m)
    kw = {"n_boot": n_boot, "seed": seed}
    ref = s["reference"].get(s["primary"], [])
    T: dict[str, Any] = {}

    # English report §4.2: Full FT vs LoRA per-layer entropy Δ, per dataset.
    pairs = [(ds, s["reference"][ds], s["lora"][ds]) for ds in s["datasets"]
             if s["reference"][ds] or s["lora"][ds]]
    T["fullft_vs_lora"] = _family("dataset", [
        _compare_entry(ds, full, lora, **kw) for ds, full, lora in pairs],
        ("welch_p", "mwu_p"), "no full-FT or LoRA runs")

    # Experiment report §3.4 / §6.4: log10 lr vs entropy Δ over A1 + E2.
    sweep = [r for r in s["lr_sweep"] if r.delta() is not None]
    if len({r.get("lr") for r in sweep}) < 3:
        T["lr_sweep"] = _skip(f"LR sweep needs ≥ 3 distinct learning rates, found {len({r.get('lr') for r in sweep})}")
    else:
        x = np.log10([r.get("lr") for r in sweep])
        e = {"label": "log10 lr vs entropy Δ%", "unit": "runs", "runs": [r.run_id for r in sweep],
             "lr": [r.get("lr") for r in sweep], **correlate(x, [r.delta() for r in sweep])}
        e["other_metrics"] = {mt: correlate(x, [r.delta(mt) for r in sweep]) for mt in METRICS[1:]
                              if all(r.delta(mt) is not None for r in sweep)}
        T["lr_sweep"] = _single(e)
    lr_ref = [r for r in s["lr_sweep"] if close(r.get("lr"), s["default_lr"])]
    T["lr_vs_default"] = _family("learning rate", _vs_reference(s["lr_sweep"], lr_ref, **kw),
                                 ("welch_p", "mwu_p"), "no LR sweep runs")

    # Experiment report §3.7 / English §7: each regularizer, weight decay, freezing vs none.
    T["regularizers"] = _family("regularizer", _vs_reference(s["regularized"], ref, **kw),
                                ("welch_p", "mwu_p"), "no regularized runs (R1, R2)")
    T["weight_decay"] = _family("weight decay", _vs_reference(s["wd_sweep"], ref, **kw),
                                ("welch_p", "mwu_p"), "no weight-decay runs (R3)")
    T["freezing"] = _family("frozen layers", _vs_reference(s["freezing"], ref, **kw),
                            ("welch_p", "mwu_p"), "no layer-freezing runs (A3)")
    T["layer_groups"] = _layer_groups(m)
    T["metric_correlations"] = _metric_correlations(m.done)

    # Experiment report §4.3: collapse vs zero-shot transfer, across runs.
    zs = [r for r in m.done if r.get("zeroshot_acc") is not None and r.delta() is not None]
    T["collapse_vs_zeroshot"] = (_single({"label": "entropy Δ% vs zero-shot acc", "unit": "runs",
                                          "runs": [r.run_id for r in zs],
                                          **correlate([r.delta() for r in zs], [r.get("zeroshot_acc") for r in zs])})
                                 if len(zs) >= 3 else _skip(f"needs ≥ 3 runs with zero-shot results, found {len(zs)}"))
    out = {"schema": 1, "alpha": ALPHA, "metric": "entropy", "n_boot": n_boot, "seed": seed,
           "primary_dataset": s["primary"], "default_lr": s["default_lr"], "default_wd": s["default_wd"],
           "runs_done": len(m.done), "runs_total": len(m.runs), "notes": m.notes,
           "unit_rule": "per-layer Δ% pooled over runs (unit 'layers') unless every config involved "
                        "has ≥ 2 seeds, then run-level Δ% with runs as samples (unit 'runs')",
           "tests": T}
    if write:
        write_json(Path(matrix_dir) / "stats.json", out)
    return out


def _nan_for_null(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _nan_for_null(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_for_null(v) for v in x]
    return float("nan") if x is None else x


def read(matrix_dir: str | Path) -> dict:
    """stats.json as `analyze` returned it: JSON's null (a NaN statistic) back to NaN."""
    st = read_json(Path(matrix_dir) / "stats.json")
    st["tests"] = _nan_for_null(st.get("tests") or {})
    return st


def layer_thirds(n_layers: int) -> list[np.ndarray]:
    """Early / middle / late layer indices (12 layers: 1–4, 5–8, 9–12), 0-based."""
    return np.array_split(np.arange(n_layers), 3)


def _layer_groups(m: Matrix) -> dict:
    """English report §7.4: one-way ANOVA of per-layer entropy Δ over layer thirds, per config."""
    entries = []
    for cid, rs in by_config(m.done).items():
        layers = [r.layer_delta() for r in rs if r.layer_delta() is not None]
        if not layers:
            entries.append({"label": cid, **_skip("no per-layer Δ in final.json")})
            continue
        mean = np.nanmean(np.stack(layers), 0)
        groups = layer_thirds(len(mean))
        base = {"label": cid, "unit": "layers", "seeds_averaged": len(layers),
                "groups": [[int(i) + 1 for i in g] for g in groups]}
        if min(len(g) for g in groups) < 2:
            entries.append({**base, **_skip(f"{len(mean)} layers: needs ≥ 6 for 2 per third")})
            continue
        entries.append({**base, **anova([mean[g] for g in groups])})
    return _family("run", entries, ("p",), "no finished runs")


def _metric_correlations(runs: list[Run]) -> dict:
    """English report §4.5: correlations among the four metrics' run-level Δ%."""
    entries = []
    for a, b in combinations(METRICS, 2):
        pts = [(r.delta(a), r.delta(b)) for r in runs if r.delta(a) is not None and r.delta(b) is not None]
        pts = [p for p in pts if all(map(math.isfinite, p))]
        if len(pts) < 3:
            entries.append({"label": f"{a} vs {b}", **_skip(f"needs ≥ 3 runs, found {len(pts)}")})
            continue
        x, y = zip(*pts)
        entries.append({"label": f"{a} vs {b}", "a": a, "b": b, "unit": "runs", **correlate(x, y)})
    return _family("metric pair", entries, ("pearson_p", "spearman_p"), "no finished runs")
