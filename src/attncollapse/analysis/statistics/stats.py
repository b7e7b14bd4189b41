"""The study's statistical tests, on plain arrays and on a finished matrix directory.

numpy/scipy only (the analysis stage reads files only: tests/test_layout.py). The tests are the English
report's §2.5 — Welch's t, Mann–Whitney U, bootstrap 95% CIs (10,000 resamples), Cohen's
d, one-way ANOVA over layer-position groups, Pearson + Spearman — plus Holm's correction
over every family of tests, which the study lacked (docs/STUDY.md "What this tool adds"). Small
samples get exact p-values: Spearman by enumerating all n! pairings (n ≤ 9), Mann–Whitney
by its exact U distribution (scipy's rule: no ties and a sample of ≤ 8).

The runs each test compares come from `table.load` and `roles.select` (the results
table, shared with figures and report), so every stage agrees on which run is "the
full-FT reference" or "the LR sweep". Every comparison entry names its unit of analysis:
"layers" (per-layer Δ% of one run per configuration, seeds averaged) or "runs" (each
seed's run-level Δ% is one observation).

The primitives on plain arrays (`correlate`, `compare`, `anova`, `holm`) live in
`inference`, the convergence criterion in `convergence`, the reports' future-work
analyses (early warning, weight drift, model families) in `links`; this module runs them
all on a matrix and writes stats.json (`analyze`), and re-exports the primitives.
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from ..._io import read_json, write_json
from . import links
from .convergence import CONVERGENCE_DEFAULT, CONVERGENCE_FIG14, converged, convergence
from .inference import (ALPHA, EXACT_SPEARMAN_MAX_N, MWU_EXACT_MAX_N, UNITS, anova, cohens_d, compare, correlate,
                        family, holm, layer_thirds, mwu_method, single, skip, spearman_exact_p, unit_name)
from .reports_tests import reports_tests
from ..roles import by_config, close, describe, select
from .seeds import write_aggregate_csv
from ..table import METRICS, Matrix, Run, load

__all__ = ["ALPHA", "CONVERGENCE_DEFAULT", "CONVERGENCE_FIG14", "EXACT_SPEARMAN_MAX_N", "MWU_EXACT_MAX_N", "UNITS",
           "analyze", "anova", "cohens_d", "compare", "converged", "convergence", "correlate", "holm",
           "layer_thirds", "mwu_method", "read", "spearman_exact_p"]


# ----------------------------------------------------------------------------- analysis

def _unit(*sets: list[Run]) -> str:
    """"runs" when every config involved has several seeds, else "layers"."""
    cfgs = [len(v) for s in sets for v in by_config(s).values()]
    return "runs" if cfgs and min(cfgs) >= 2 else "layers"


def _config_layers(rs: list[Run], metric: str = "entropy") -> np.ndarray | None:
    """(L,) per-layer Δ% of one config, averaged over its seeds (None if no run has them)."""
    layers = [v for r in rs if (v := r.layer_delta(metric)) is not None]
    if not layers or len({len(v) for v in layers}) != 1:
        return None
    with warnings.catch_warnings():  # a layer NaN in every seed stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack(layers), 0)


def _sample(runs: list[Run], unit: str, metric: str = "entropy") -> np.ndarray:
    """One side's observations: each run's Δ% (unit "runs": a seed is one observation), or
    each config's per-layer Δ% averaged over its seeds, concatenated (unit "layers")."""
    if unit == "runs":
        a = np.asarray([v for r in runs if (v := r.delta(metric)) is not None], float)
    else:
        parts = [v for rs in by_config(runs).values() if (v := _config_layers(rs, metric)) is not None]
        a = np.concatenate(parts) if parts else np.empty(0)
    return a[np.isfinite(a)]


def _compare_entry(label: str, a_runs: list[Run], b_runs: list[Run], *, n_boot: int, seed: int,
                   unit: str | None = None) -> dict:
    """compare() on two sets of runs; unit None picks "runs" when every config has ≥ 2 seeds."""
    base = {"label": label, "runs_a": [r.run_id for r in a_runs], "runs_b": [r.run_id for r in b_runs],
            "metric": "entropy_delta_pct"}
    if not a_runs or not b_runs:
        return {**base, **skip(f"missing runs: {'a' if not a_runs else 'b'} side has none")}
    seeds = {cid: len(rs) for cid, rs in by_config(a_runs + b_runs).items()}
    u = _unit(a_runs, b_runs) if unit is None else unit_name(unit)
    base.update({"unit": u, "seeds_per_config": seeds})
    if u == "runs" and min(seeds.values()) < 2:
        few = sorted(c for c, k in seeds.items() if k < 2)
        return {**base, **skip(f"unit 'runs' (seeds) needs ≥ 2 seeds per configuration; one seed: {', '.join(few)}")}
    a, b = _sample(a_runs, u), _sample(b_runs, u)
    if len(a) < 2 or len(b) < 2:
        return {**base, **skip(f"fewer than 2 {u} per side ({len(a)} vs {len(b)})")}
    return {**base, **compare(a, b, n_boot=n_boot, seed=seed, unit=u)}




def _vs_reference(cands: list[Run], ref: list[Run], **kw) -> list[dict]:
    """Each candidate config (not equal to the reference) vs the reference runs."""
    ref_ids = {r.config_id for r in ref}
    return [_compare_entry(f"{cid}: {describe(rs[0])}", rs, ref, **kw)
            for cid, rs in by_config(cands).items() if cid not in ref_ids]




def _pooled_fullft_vs_lora(s: dict, **kw) -> dict:
    """Full FT vs LoRA per-layer entropy Δ%, pooled over datasets (beside the per-dataset family).

    Which sample gave the reports' Welch t = −2.50, p = 0.019, d = 0.71 (English report
    finding 2)? The reports publish no per-layer Δ% of fine-tuned runs, but t, d and the
    sample sizes pin it down: with D the mean difference, d fixes the pooled variance
    (D/d)² and t fixes va/n_a + vb/n_b = (D/t)², so (va, vb) follow up to the common factor
    D², and with them Welch's df and p — whatever D is. Of n_a, n_b ∈ {12, …, 72} (1–6 runs
    of 12 layers) only 12 vs 36 (either way round) gives p = 0.019 (df ≈ 26); 24 vs 48 gives
    0.017–0.018, 24 vs 36 0.017, and equal sizes (24 vs 24) cannot give t = −2.50 with d = 0.71
    at all (equal n forces |t| = |d|·√(n/2) ≤ 2.48). 12 vs 36 is E2 vs E4+E5+E6 — EuroSAT
    alone, i.e. this module's per-dataset `fullft_vs_lora` entry for EuroSAT; the original
    `enhanced_analysis.py` says so ("Use EuroSAT for controlled comparison") and computes
    d as LoRA − full FT (+0.71; ours is full FT − LoRA, so −0.71). tests/test_stats.py checks
    this arithmetic.

    So no pooling reproduces the reports; this entry is the natural pooled test: every
    dataset's full-FT reference runs (E2, E3) vs the LoRA QV runs at the ranks that every
    dataset has (r = 8: E5, E7). Rank-matching keeps the design balanced — each side holds
    the same datasets in the same proportion — so the dataset effect (Pets changes entropy
    more than EuroSAT) cancels from the difference; taking all ranks (E4–E7) would weigh
    EuroSAT 3:1 on the LoRA side only. With no rank common to all datasets it falls back to
    all ranks and says so in `pooling`.
    """
    dss = [ds for ds in s["datasets"] if s["reference"][ds] and s["lora"][ds]]
    if len(dss) < 2:
        return skip(f"needs full-FT and LoRA runs on ≥ 2 datasets, found {len(dss)} ({', '.join(dss) or 'none'})")
    ranks = [{r.get("lora_rank") for r in s["lora"][ds]} for ds in dss]
    common = set.intersection(*ranks) - {None}
    lora = [r for ds in dss for r in s["lora"][ds] if not common or r.get("lora_rank") in common]
    full = [r for ds in dss for r in s["reference"][ds]]
    e = _compare_entry(f"pooled over {', '.join(dss)}", full, lora, **kw)
    e.update({"datasets": dss, "lora_ranks": sorted(common) if common else sorted(set().union(*ranks) - {None}),
              "pooling": ("rank-matched: the LoRA ranks every dataset has" if common
                          else "all LoRA ranks (no rank common to every dataset): unbalanced")})
    return single(e, ("welch_p", "mwu_p"))


def _entropy_vs_accuracy(runs: list[Run], datasets: list[str]) -> dict:
    """English report §5.3 ("weak entropy–accuracy correlation"): run-level entropy Δ% vs
    task accuracy (best_acc) and vs zero-shot accuracy where runs have it, across runs —
    over all runs and per dataset (accuracy levels differ between datasets)."""
    scopes = [("all runs", runs)] + ([(ds, [r for r in runs if r.get("dataset") == ds]) for ds in datasets]
                                     if len(datasets) > 1 else [])
    entries = []
    for col, what in (("best_acc", "accuracy"), ("zeroshot_acc", "zero-shot accuracy")):
        if col == "zeroshot_acc" and not any(r.get(col) is not None for r in runs):
            continue  # no zero-shot results: no entry
        for scope, rs in scopes:
            pts = [(r.run_id, r.delta(), r.get(col)) for r in rs if r.delta() is not None and r.get(col) is not None]
            pts = [p for p in pts if math.isfinite(p[1]) and math.isfinite(float(p[2]))]
            label = f"entropy Δ% vs {what}{' as trained (secondary to RQ3)' if col == 'zeroshot_acc' else ''} ({scope})"
            if len(pts) < 3:
                entries.append({"label": label, **skip(f"needs ≥ 3 runs with {col}, found {len(pts)}")})
                continue
            ids, x, y = zip(*pts)
            entries.append({"label": label, "x": "entropy_delta_pct", "y": col, "scope": scope, "unit": "runs",
                            "runs": list(ids), **correlate(x, [float(v) for v in y])})
    return family("scope and accuracy", entries, ("pearson_p", "spearman_p"), "no finished runs")


REPORTS_ZS = {"full": "zeroshot_acc_frozen_projection", "lora": "zeroshot_acc_base_only"}
"""The reports' zero-shot protocol per method (docs/STUDY.md): the original evaluated the best
checkpoint with only its `vision_model.` keys loaded into a fresh pretrained CLIP — full FT's
tower with the pretrained projection, LoRA's pretrained model (its keys start `base_model.`)."""


def _collapse_vs_zeroshot(runs: list[Run]) -> dict:
    """Experiment report §4.3 (RQ3), on the reports' protocol: final entropy Δ% vs zero-shot
    accuracy across runs (each seed a point), zero-shot as the reports measured it —
    frozen projection for full FT, adapters off for LoRA (REPORTS_ZS)."""
    pts = [(r.run_id, r.delta(), r.get(REPORTS_ZS.get(r.get("method") or "full", REPORTS_ZS["full"])))
           for r in runs]
    pts = [p for p in pts if p[1] is not None and p[2] is not None and math.isfinite(p[1])]
    if len(pts) < 3:
        return skip(f"needs ≥ 3 runs with the reports' zero-shot protocol (frozen projection / adapters off), "
                    f"found {len(pts)}")
    ids, x, y = zip(*pts)
    return single({"label": "final entropy Δ% vs zero-shot acc, the reports' protocol (full FT: pretrained "
                            "projection; LoRA: adapters off)", "unit": "runs", "runs": list(ids), "primary": True,
                   "x": "entropy_delta_pct (final step)", "y": "zeroshot_acc_frozen_projection (full FT) / "
                   "zeroshot_acc_base_only (LoRA)", "protocol": "reports", **correlate(x, [float(v) for v in y])})


def _collapse_vs_zeroshot_as_trained(runs: list[Run]) -> dict:
    """A secondary view of RQ3: entropy Δ% vs zero-shot accuracy as trained (fine-tuned tower
    and projection, adapters active), both at the checkpoint zero-shot was measured on
    (`best_step`, `Run.zeroshot_delta`); `checkpoint` lists runs whose history has no such
    point (their final Δ% is used)."""
    pts = [(r.run_id, *r.zeroshot_delta(), r.get("zeroshot_acc")) for r in runs if r.get("zeroshot_acc") is not None]
    pts = [p for p in pts if p[1] is not None and math.isfinite(p[1])]
    if len(pts) < 3:
        return skip(f"needs ≥ 3 runs with zero-shot results, found {len(pts)}")
    ids, x, where, y = zip(*pts)
    final_ids = [i for i, w in zip(ids, where) if w == "final"]
    return single({"label": "entropy Δ% at the zero-shot checkpoint vs zero-shot acc as trained (secondary)",
                   "unit": "runs", "runs": list(ids), "primary": False, "protocol": "as_trained",
                   "x": "entropy_delta_pct at the zero-shot checkpoint", "y": "zeroshot_acc",
                   "checkpoint": "best-accuracy step (best_step)" + (
                       f"; final step for {', '.join(final_ids)} (no history point at best_step)" if final_ids else ""),
                   "runs_at_final_step": final_ids, **correlate(x, [float(v) for v in y])})


def _method_tests(s: dict, kw: dict) -> dict[str, Any]:
    """English report §4.2: Full FT vs LoRA per-layer entropy Δ, per dataset (the EuroSAT entry
    is the reports' t = −2.50, p = 0.019, d = 0.71: see _pooled_fullft_vs_lora), and pooled."""
    pairs = [(ds, s["reference"][ds], s["lora"][ds]) for ds in s["datasets"]
             if s["reference"][ds] or s["lora"][ds]]
    return {"fullft_vs_lora": family("dataset", [_compare_entry(ds, full, lora, **kw) for ds, full, lora in pairs],
                                     ("welch_p", "mwu_p"), "no full-FT or LoRA runs"),
            "fullft_vs_lora_pooled": _pooled_fullft_vs_lora(s, **kw)}


def _lr_tests(s: dict, kw: dict) -> dict[str, Any]:
    """Experiment report §3.4 / §6.4: log10 lr vs entropy Δ over A1 + E2, and each lr vs the default."""
    sweep = [r for r in s["lr_sweep"] if r.delta() is not None]
    if len({r.get("lr") for r in sweep}) < 3:
        corr = skip(f"LR sweep needs ≥ 3 distinct learning rates, found {len({r.get('lr') for r in sweep})}")
    else:
        x = np.log10([r.get("lr") for r in sweep])
        e = {"label": "log10 lr vs entropy Δ%", "unit": "runs", "runs": [r.run_id for r in sweep],
             "lr": [r.get("lr") for r in sweep], **correlate(x, [r.delta() for r in sweep])}
        e["other_metrics"] = {mt: correlate(x, [r.delta(mt) for r in sweep]) for mt in METRICS[1:]
                              if all(r.delta(mt) is not None for r in sweep)}
        corr = single(e)
    lr_ref = [r for r in s["lr_sweep"] if close(r.get("lr"), s["default_lr"])]
    return {"lr_sweep": corr,
            "lr_vs_default": family("learning rate", _vs_reference(s["lr_sweep"], lr_ref, **kw),
                                    ("welch_p", "mwu_p"), "no LR sweep runs")}


def _acc_mean(rs: list[Run]) -> float | None:
    v = [float(r.get("best_acc")) for r in rs if r.get("best_acc") is not None]
    return float(np.mean(v)) if v else None


def _accuracy_vs_reference(cands: list[Run], ref: list[Run]) -> dict[str, Any]:
    """RQ4's "without hurting task accuracy": each config's best accuracy (seed mean) minus the
    best of the reference configs', in pp. Descriptive (the reports test no accuracy difference)."""
    refs = [a for rs in by_config(ref).values() if (a := _acc_mean(rs)) is not None]
    if not refs:
        return skip("no reference best_acc")
    base = max(refs)
    diff = {cid: 100 * (a - base) for cid, rs in by_config(cands).items() if (a := _acc_mean(rs)) is not None}
    return {"label": "best accuracy minus the unregularized reference's (pp), not tested", "reference_best_acc": base,
            "diff_pp": diff, "min_pp": min(diff.values(), default=None), "max_pp": max(diff.values(), default=None),
            "seed_means": any(len(rs) > 1 for rs in by_config(cands + ref).values())}


def _control_tests(s: dict, kw: dict) -> dict[str, Any]:
    """Experiment report §3.7 / English §7: each regularizer, weight decay, freezing vs none."""
    ref = s["reference"].get(s["primary"], [])
    regs = family("regularizer", _vs_reference(s["regularized"], ref, **kw), ("welch_p", "mwu_p"),
                  "no regularized runs (R1, R2)")
    if not regs.get("skipped"):
        regs["accuracy"] = _accuracy_vs_reference(s["regularized"], ref)
    return {"regularizers": regs,
            "weight_decay": family("weight decay", _vs_reference(s["wd_sweep"], ref, **kw),
                                   ("welch_p", "mwu_p"), "no weight-decay runs (R3)"),
            "freezing": family("frozen layers", _vs_reference(s["freezing"], ref, **kw),
                               ("welch_p", "mwu_p"), "no layer-freezing runs (A3)")}


def _matrix_tests(m: Matrix, s: dict, convergence_criterion: dict | None) -> dict[str, Any]:
    """Tests over every finished run: layer groups, correlations, zero-shot, future work, convergence."""
    deltas = [d for r in m.done if (d := r.delta()) is not None and math.isfinite(d)]
    return {
        # RQ1's count (document._rq1): each finished run's entropy Δ% by sign.
        "entropy_direction": {"label": "runs whose layer-mean entropy fell / rose / did not change", "unit": "runs",
                              "n": len(deltas), "fell": sum(d < 0 for d in deltas), "rose": sum(d > 0 for d in deltas),
                              "unchanged": sum(d == 0 for d in deltas)},
        "layer_groups": _layer_groups(m),
        "layer_groups_pooled": _layer_groups_pooled(m),
        "metric_correlations": _metric_correlations(m.done),
        "entropy_vs_accuracy": _entropy_vs_accuracy(m.done, s["datasets"]),
        "collapse_vs_zeroshot": _collapse_vs_zeroshot(m.done),
        "collapse_vs_zeroshot_as_trained": _collapse_vs_zeroshot_as_trained(m.done),
        # The reports' future work (docs/FORMATS.md "stats.json": definitions in `links`).
        "early_warning": links.early_warning(m.done, m.baseline),
        "weight_drift": links.weight_drift(m.done, m.baseline),
        "model_families": links.families(m.done, m.baseline),
        # English report §4.6: "all 21 runs satisfy the late-epoch stability criterion".
        "convergence": convergence(m.done, convergence_criterion) if m.done else skip("no finished runs"),
    }


def _header(m: Matrix, s: dict, *, n_boot: int, seed: int, unit: str | None) -> dict[str, Any]:
    """stats.json's fields before `tests`: settings, run counts, the unit rule and the p methods."""
    return {"schema": 1, "alpha": ALPHA, "metric": "entropy", "n_boot": n_boot, "seed": seed,
            "primary_dataset": s["primary"], "default_lr": s["default_lr"], "default_wd": s["default_wd"],
            "runs_done": len(m.done), "runs_total": len(m.runs), "notes": m.notes,
            "seeds_per_config": {cid: len(rs) for cid, rs in by_config(m.done).items()},
            "unit_rule": "per-layer Δ% (each config's seeds averaged per layer) with layers as samples "
                         "(unit 'layers') unless every config involved has ≥ 2 seeds, then run-level Δ% with "
                         "each seed's run as one sample (unit 'runs')",
            "unit_requested": unit_name(unit) or "auto",
            "p_methods": {"spearman": f"exact permutation over all n! pairings when n ≤ {EXACT_SPEARMAN_MAX_N}, "
                                      "else asymptotic (t approximation); entries say which (spearman_p_method)",
                          "mann_whitney": f"exact when a sample has ≤ {MWU_EXACT_MAX_N} values and there are no "
                                          "ties (scipy's 'auto' rule), else asymptotic with continuity "
                                          "correction; entries say which (mwu_method)"}}


def analyze(matrix_dir: str | Path, *, n_boot: int = 10000, seed: int = 0, write: bool = True,
            unit: str | None = None, convergence_criterion: dict | None = None) -> dict:
    """Run the reports' tests on a finished matrix and write `stats.json`.

    Args:
        matrix_dir: a matrix directory (docs/FORMATS.md).
        n_boot: bootstrap resamples per comparison (reports: 10,000).
        seed: bootstrap seed.
        write: write `<matrix_dir>/stats.json` and `results_by_config.csv` (seed means, SDs
            and t-intervals: `seeds.write_aggregate_csv`), atomically.
        unit: unit of the two-sample comparisons: None (auto: "runs" when every config
            compared has ≥ 2 seeds, else "layers"), "seed"/"runs" or "layer"/"layers".
        convergence_criterion: `converged` keyword arguments over CONVERGENCE_DEFAULT.

    Returns:
        The stats dict: `tests` maps a test name to an entry, a family (`entries` with raw and
        Holm-adjusted p side by side) or `{"skipped": true, "reason": ...}`.
    """
    m = load(matrix_dir)
    s = select(m)
    kw = {"n_boot": n_boot, "seed": seed, "unit": unit}
    tests = {**_method_tests(s, kw), **_lr_tests(s, kw), **_control_tests(s, kw),
             **reports_tests(s, n_boot=n_boot, seed=seed), **_matrix_tests(m, s, convergence_criterion)}
    out = {**_header(m, s, n_boot=n_boot, seed=seed, unit=unit), "tests": tests}
    if write:
        write_json(Path(matrix_dir) / "stats.json", out)
        write_aggregate_csv(matrix_dir, m)
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


LAYER_GROUP_NAMES = ("early", "middle", "late")


def _grouping(n_layers: int) -> dict[str, Any]:
    """How the layer-position ANOVA groups layers, as recorded in stats.json."""
    return {"grouping": "layer thirds (numpy.array_split of layers 1..L into 3, the earlier "
                        "groups taking the remainder)", "group_names": list(LAYER_GROUP_NAMES),
            "groups": [[int(i) + 1 for i in g] for g in layer_thirds(n_layers)]}


def _layer_groups(m: Matrix) -> dict:
    """English report §7.4: one-way ANOVA of per-layer entropy Δ over layer thirds, per config."""
    entries = []
    for cid, rs in by_config(m.done).items():
        mean = _config_layers(rs)
        if mean is None:
            entries.append({"label": cid, **skip("no per-layer Δ in final.json")})
            continue
        groups = layer_thirds(len(mean))
        base = {"label": cid, "unit": "layers", "seeds_averaged": sum(r.layer_delta() is not None for r in rs),
                **_grouping(len(mean))}
        if min(len(g) for g in groups) < 2:
            entries.append({**base, **skip(f"{len(mean)} layers: needs ≥ 6 for 2 per third")})
            continue
        entries.append({**base, **anova([mean[g] for g in groups])})
    return family("run", entries, ("p",), "no finished runs")


def _layer_groups_pooled(m: Matrix) -> dict:
    """One-way ANOVA of every config's per-layer entropy Δ% (seeds averaged), pooled, by layer third.

    Each configuration puts its layers in every group, so the configuration effect (one
    config's Δ is larger everywhere) lands in the within-group variance: the group means
    stay unbiased, but the test ignores that blocking and the layers' dependence within a run.
    """
    rows = {cid: v for cid, rs in by_config(m.done).items() if (v := _config_layers(rs)) is not None}
    if not rows:
        return skip("no per-layer Δ in final.json")
    L = max({len(v) for v in rows.values()}, key=lambda n: sum(len(v) == n for v in rows.values()))
    used = {cid: v for cid, v in rows.items() if len(v) == L}
    groups = layer_thirds(L)
    base = {"label": "all configurations pooled", "unit": "layers", "configs": list(used), "n_configs": len(used),
            "excluded_configs": [c for c in rows if c not in used], **_grouping(L),
            "note": "configs are not a factor here: their effect goes into the within-group variance"}
    arr = np.stack(list(used.values()))
    vals = [arr[:, g].ravel() for g in groups]
    vals = [v[np.isfinite(v)] for v in vals]
    if min(len(v) for v in vals) < 2:
        return {**base, **skip("fewer than 2 finite values in a layer third")}
    return single({**base, **anova(vals, unit="layers")}, ("p",))


def _metric_correlations(runs: list[Run]) -> dict:
    """English report §4.5: correlations among the four metrics' run-level Δ%."""
    entries = []
    for a, b in combinations(METRICS, 2):
        pts = [(r.delta(a), r.delta(b)) for r in runs if r.delta(a) is not None and r.delta(b) is not None]
        pts = [p for p in pts if all(map(math.isfinite, p))]
        if len(pts) < 3:
            entries.append({"label": f"{a} vs {b}", **skip(f"needs ≥ 3 runs, found {len(pts)}")})
            continue
        x, y = zip(*pts)
        entries.append({"label": f"{a} vs {b}", "a": a, "b": b, "unit": "runs", **correlate(x, y)})
    return family("metric pair", entries, ("pearson_p", "spearman_p"), "no finished runs")
