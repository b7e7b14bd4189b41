"""The reports' own tests, recomputed exactly as the original study ran them.

The reports print their statistics without saying how they were computed; the original
code (`enhanced_analysis.py` `compute_statistical_tests`, commit 5ee6260 of the authors'
repository; docs/STUDY.md "The original code, and which commit") says:

- Full FT vs LoRA: Welch's t and Mann–Whitney U on per-layer entropy Δ% of E2 (12 layers)
  vs E4 + E5 + E6 (36 layers), Cohen's d as LoRA − full FT (so its sign is the reverse of t's).
- Regularizers: a **paired** t (`scipy.stats.ttest_rel`) of each R1/R2 run's **final**
  per-layer entropy against E2's final per-layer entropy (12 pairs; not Δ%), Cohen's d of the
  two 12-value samples (pooled SD, ddof 1), and the mean paired difference.
- Layer position: one-way ANOVA of the per-layer entropy Δ% over layers 1–4, 5–8, 9–12,
  **per run**, for E2 and E5 only.
- Learning rate: Pearson and Spearman of log10 lr vs run Δ% over A1 + E2 — the same test as
  stats.json's `lr_sweep`, so it is not repeated here.

These sit beside our own tests (stats.py: Holm-corrected families, seeds as units), which
answer the same questions differently; the scorecard scores the published numbers against
these entries. Runs are found by role (`roles.select`), not by id; a configuration with
several seeds enters with its seeds averaged per layer (the reports had one seed).
`report.reports_tests.blocks` renders them as the report's section "The reports' tests,
recomputed". numpy/scipy only.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import stats as _sp

from .inference import cohens_d, compare, family, layer_thirds, single, skip
from ..roles import by_config, describe
from ..table import Run

ORIGINAL = "enhanced_analysis.py compute_statistical_tests"
"""Where the recomputed tests come from (the original study's public code)."""


def _layers(rs: list[Run], key: str) -> np.ndarray | None:
    """(L,) a configuration's per-layer entropy, seeds averaged: key "delta" = Δ%, "final" = final value."""
    vals = []
    for r in rs:
        if key == "delta":
            v = r.layer_delta("entropy")
        else:
            v = ((r.final or {}).get("final") or {}).get("entropy")
            v = None if v is None else np.asarray([np.nan if x is None else x for x in v], float)
        if v is not None:
            vals.append(np.asarray(v, float))
    if not vals or len({len(v) for v in vals}) != 1:
        return None
    return np.mean(np.stack(vals), 0)


def _first_config(rs: list[Run]) -> tuple[str, list[Run]] | None:
    cfgs = by_config(rs)
    return next(iter(cfgs.items()), None)


def fullft_vs_lora(s: dict, *, n_boot: int, seed: int) -> dict:
    """Welch t, Mann–Whitney U and Cohen's d (LoRA − full FT) on per-layer entropy Δ%: the
    primary dataset's full-FT reference (E2) vs its LoRA QV runs at every rank (E4 + E5 + E6)."""
    ds = s["primary"]
    ref, lora = _first_config(s["reference"].get(ds, [])), by_config(s["lora"].get(ds, []))
    base = {"label": f"full FT vs LoRA, per-layer entropy Δ% ({ds})", "original": ORIGINAL,
            "unit": "layers", "metric": "entropy per-layer Δ%"}
    if ref is None or not lora:
        return {**base, **skip(f"needs the full-FT reference and LoRA QV runs on {ds}")}
    a = _layers(ref[1], "delta")
    parts = {cid: v for cid, rs in lora.items() if (v := _layers(rs, "delta")) is not None}
    if a is None or not parts:
        return {**base, **skip("no per-layer Δ in final.json")}
    b = np.concatenate(list(parts.values()))
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    base.update({"runs_a": [ref[0]], "runs_b": list(parts),
                 "grouping": f"a = {ref[0]}'s {len(a)} layers; b = the layers of {' + '.join(parts)} "
                             f"concatenated ({len(b)}); each layer's Δ% = 100·(final − initial)/initial"})
    if len(a) < 2 or len(b) < 2:
        return {**base, **skip(f"fewer than 2 layers per side ({len(a)} vs {len(b)})")}
    e = {**base, **compare(a, b, n_boot=n_boot, seed=seed, unit="layers")}
    e["cohens_d_lora_minus_full"] = cohens_d(b, a)  # the original's cohens_d(lora_changes, full_ft_changes)
    return single(e, ("welch_p", "mwu_p"))


def regularizers_paired(s: dict) -> dict:
    """Paired t (`ttest_rel`) of each regularized run's final per-layer entropy vs the reference's."""
    ds = s["primary"]
    ref = _first_config(s["reference"].get(ds, []))
    if ref is None:
        return skip(f"no full-FT reference run (E2) on {ds}")
    ref_final = _layers(ref[1], "final")
    entries = []
    for cid, rs in by_config(s["regularized"]).items():
        r0 = rs[0]
        base = {"label": f"{cid}: {describe(r0)} vs {ref[0]}", "run": cid, "reference": ref[0],
                "regularizer": r0.get("regularizer"), "reg_lambda": r0.get("reg_lambda"), "original": ORIGINAL,
                "unit": "layers", "metric": "entropy per layer at the last step (nats)"}
        x = _layers(rs, "final")
        if x is None or ref_final is None or len(x) != len(ref_final):
            entries.append({**base, **skip("no final per-layer entropy in final.json (or depths differ)")})
            continue
        base["grouping"] = (f"{len(x)} pairs: layer l of {cid} with layer l of {ref[0]} "
                            f"(scipy.stats.ttest_rel({cid}, {ref[0]}))")
        if len(x) < 2:
            entries.append({**base, **skip(f"{len(x)} layer: a paired t needs ≥ 2 pairs")})
            continue
        with warnings.catch_warnings():  # identical layers: NaN t, reported as "not testable"
            warnings.simplefilter("ignore", RuntimeWarning)
            t = _sp.ttest_rel(x, ref_final)
        entries.append({**base, "n": len(x), "t": float(t.statistic), "df": len(x) - 1, "paired_p": float(t.pvalue),
                        "cohens_d": cohens_d(x, ref_final), "mean_diff": float(np.mean(x - ref_final)),
                        "mean_final": float(np.mean(x)), "mean_final_reference": float(np.mean(ref_final))})
    return family("regularizer", entries, ("paired_p",), "no regularized runs (R1, R2)")


def _e5(lora: list[Run]) -> tuple[str, list[Run], str] | None:
    """The reports' E5 among the LoRA QV runs: rank 8, else the first configuration."""
    cfgs = by_config(lora)
    for cid, rs in cfgs.items():
        if rs[0].get("lora_rank") == 8:
            return cid, rs, "LoRA QV rank 8"
    first = next(iter(cfgs.items()), None)
    return None if first is None else (first[0], first[1], "first LoRA QV configuration (no rank 8)")


def layer_position(s: dict) -> dict:
    """One-way ANOVA of per-layer entropy Δ% over the layer thirds, per run, for E2 and E5."""
    ds = s["primary"]
    picks = []
    if (ref := _first_config(s["reference"].get(ds, []))) is not None:
        picks.append((ref[0], ref[1], "full-FT reference"))
    if (e5 := _e5(s["lora"].get(ds, []))) is not None:
        picks.append(e5)
    entries = []
    for cid, rs, role in picks:
        base = {"label": f"{cid}: {describe(rs[0])}", "run": cid, "role": role, "original": ORIGINAL, "unit": "layers",
                "metric": "entropy per-layer Δ%"}
        d = _layers(rs, "delta")
        if d is None:
            entries.append({**base, **skip("no per-layer Δ in final.json")})
            continue
        groups = layer_thirds(len(d))
        base.update({"groups": [[int(i) + 1 for i in g] for g in groups],
                     "grouping": "layers " + ", ".join(f"{g[0] + 1}–{g[-1] + 1}" for g in groups)
                                 + f" of {cid} (the original's changes[:4], [4:8], [8:] at 12 layers)"})
        if min(len(g) for g in groups) < 2:
            entries.append({**base, **skip(f"{len(d)} layers: the reports' ANOVA needs ≥ 2 layers per third "
                                           "(≥ 6 layers; the reports' model has 12)")})
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = _sp.f_oneway(*[d[g] for g in groups])
        entries.append({**base, "F": float(res.statistic), "anova_p": float(res.pvalue), "n": len(d),
                        "df_between": len(groups) - 1, "df_within": len(d) - len(groups),
                        "group_means": [float(d[g].mean()) for g in groups]})
    return family("run", entries, ("anova_p",), f"neither a full-FT reference nor a LoRA QV run on {ds}")


def reports_tests(s: dict, *, n_boot: int, seed: int) -> dict[str, Any]:
    """stats.json's `reports_*` entries (docs/FORMATS.md), from `roles.select`'s mapping."""
    return {"reports_fullft_vs_lora": fullft_vs_lora(s, n_boot=n_boot, seed=seed),
            "reports_regularizers": regularizers_paired(s),
            "reports_layer_position": layer_position(s)}
