"""Our side of the scorecard: the published quantities as a matrix directory measured them.

`ours(m, st)` reads each run's numbers from results.csv / final.json (through
`runtables.config_summary`, so several seeds give mean and SD), E1's from
baseline/<dataset>.json, and each published test's value from the stats.json entry that
recomputes it as the original code ran it (STAT_TESTS). `scorecard.compare` sets them
beside the published numbers.
"""

from __future__ import annotations

from typing import Any

from .runtables import config_summary
from ..table import METRICS, Matrix

DATASETS = {"eurosat": ("eurosat",), "pets": ("pet",), "cifar100": ("cifar100", "cifar-100", "cifar_100")}
"""Published dataset → substrings of our dataset names that denote it."""


def same_dataset(published: str, ours: Any) -> bool:
    return any(s in str(ours or "").lower() for s in DATASETS.get(published, (published,)))


def _value(agg: dict, col: str, scale: float = 1.0) -> dict | None:
    c = agg.get(col) or {}
    if c.get("mean") is None:
        return None
    return {"mean": c["mean"] * scale, "sd": None if c.get("sd") is None else c["sd"] * scale, "n": c.get("n", 1)}


def _zs_dataset(agg: dict, name: str) -> dict | None:
    """The zero-shot block of `name` in a config's first run, or None."""
    zs = (agg["runs"][0].final or {}).get("zeroshot") or {}
    return next((b for k, b in zs.items() if same_dataset(name, k)), None)


def ours(m: Matrix, st: dict) -> dict[str, Any]:
    """The published quantities as this matrix measured them.

    Returns:
        {"runs": {run_id: {"dataset", quantity: {"mean", "sd", "n"}}}, "baseline": {quantity: value},
        "statistics": {name: {key: value}}, "stat_runs": {name: [run ids]}, "random_init": bool}.
        Quantities: `best_acc_pct`, `<metric>.initial|final|delta_pct`, and per zero-shot
        protocol (published.PROTOCOLS; all on the best checkpoint) `zeroshot_cifar100.acc_pct_<protocol>`
        and `zeroshot_cifar100.change_pct_<protocol>` (relative to E1 of the same model).
    """
    runs: dict[str, dict] = {}
    for cid, agg in config_summary(m.done).items():
        q: dict[str, Any] = {"dataset": agg["runs"][0].get("dataset"), "best_acc_pct": _value(agg, "best_acc", 100)}
        for mt in METRICS:
            for k in ("initial", "final", "delta_pct"):
                q[f"{mt}.{k}"] = _value(agg, f"{mt}_{k}")
        z = _zs_dataset(agg, "cifar100")
        if z is not None:  # one seed's block: the config's zero-shot aggregate covers the first dataset only
            e1 = _e1_zeroshot(m, agg["runs"][0].get("model"))
            for proto, key in ZS_PROTOCOL_KEYS.items():
                q[f"zeroshot_cifar100.acc_pct_{proto}"] = _point(z.get(key), 100)
                if z.get(key) is not None and e1:
                    q[f"zeroshot_cifar100.change_pct_{proto}"] = _point((z[key] - e1) / e1, 100)
        runs[cid] = q
    base: dict[str, Any] = {}
    for ds, b in m.baseline.items():
        for pub in ("eurosat", "pets"):
            if same_dataset(pub, ds):
                base.update({f"{pub}.{mt}": (b.get("mean") or {}).get(mt) for mt in METRICS})
                for mt in METRICS:  # E1's per-layer values (baseline/<dataset>.json `layers`)
                    base.update({f"{pub}.{mt}.layer{i + 1}": v for i, v in enumerate((b.get("layers") or {}).get(mt) or [])})
        for name, z in (b.get("zeroshot") or {}).items():
            if same_dataset("cifar100", name) and z.get("acc") is not None:
                base["zeroshot_cifar100.acc_pct_pretrained"] = 100 * z["acc"]
    random_init = any((r.final or {}).get("model_random_init") for r in m.done) or any(
        b.get("model_random_init") for b in m.baseline.values())
    stats, stat_runs, stat_why = _our_statistics(st.get("tests") or {})
    return {"runs": runs, "baseline": base, "statistics": stats, "stat_runs": stat_runs, "stat_why": stat_why,
            "random_init": random_init}


ZS_PROTOCOL_KEYS = {"as_trained": "acc", "frozen_projection": "acc_frozen_projection", "base_only": "acc_base_only"}
"""Zero-shot protocol (published.PROTOCOLS) → its key in a final.json zero-shot block."""


def _e1_zeroshot(m: Matrix, model: Any) -> float | None:
    """E1's CIFAR-100 zero-shot accuracy for `model` (any E1 when none names it)."""
    found = [(b.get("model") == model, z["acc"]) for b in m.baseline.values()
             for name, z in (b.get("zeroshot") or {}).items() if same_dataset("cifar100", name) and z.get("acc")]
    return max(found, key=lambda t: t[0])[1] if found else None


def _point(x: Any, scale: float) -> dict | None:
    return None if x is None else {"mean": x * scale, "sd": None, "n": 1}


_FULL_VS_LORA = "tests.reports_fullft_vs_lora (E2 vs E4+E5+E6 per-layer Δ%"
STAT_TESTS = {
    "welch_full_vs_lora_entropy": f"{_FULL_VS_LORA}, Welch; d = cohens_d_lora_minus_full)",
    "mannwhitney_full_vs_lora_entropy": f"{_FULL_VS_LORA}, Mann–Whitney mwu_u, mwu_p)",
    "lr_sweep_pearson": "tests.lr_sweep (log10 lr vs run Δ%, A1 + E2; Pearson)",
    "lr_sweep_spearman": "tests.lr_sweep (log10 lr vs run Δ%, A1 + E2; Spearman)",
    "entropy_floor_0.1": "tests.reports_regularizers, the entropy-floor λ=0.1 entry (paired t on final "
                         "per-layer entropy vs E2; raw paired_p)",
    "anova_layer_groups": "tests.reports_layer_position (per-run ANOVA of layer-third Δ%, E2 and E5; "
                          "the larger-p claim: every anova_p on the same side of α)",
    "anova_E2": "tests.reports_layer_position, the full-FT reference's entry (F, anova_p)",
    "anova_E5": "tests.reports_layer_position, the LoRA r=8 entry (F, anova_p)",
}
"""Each published test → the stats.json entry that recomputes it as the original code ran it
(the regularizer_<run> tests: tests.reports_regularizers, that run's entry)."""


def _our_statistics(T: dict) -> tuple[dict, dict, dict]:
    """Our values of the published tests, the runs each used (to check they are the paper's
    rows), and why a test has no value (the stats.json skip reason)."""
    S: dict[str, dict] = {}
    R: dict[str, list] = {}
    why: dict[str, str] = {}
    e = T.get("reports_fullft_vs_lora") or {}
    if e and not e.get("skipped"):  # the original's d is LoRA − full FT (published.yaml note)
        S["welch_full_vs_lora_entropy"] = {"t": e["welch_t"], "p": e["welch_p"],
                                           "cohens_d": e["cohens_d_lora_minus_full"]}
        S["mannwhitney_full_vs_lora_entropy"] = {"U": e["mwu_u"], "p": e["mwu_p"]}
        R["welch_full_vs_lora_entropy"] = R["mannwhitney_full_vs_lora_entropy"] = \
            list(e.get("runs_a") or []) + list(e.get("runs_b") or [])
    elif e:
        why["welch_full_vs_lora_entropy"] = why["mannwhitney_full_vs_lora_entropy"] = e.get("reason", "")
    e = T.get("lr_sweep") or {}
    if e and not e.get("skipped"):
        S["lr_sweep_pearson"] = {"r": e["pearson_r"], "p": e["pearson_p"]}
        S["lr_sweep_spearman"] = {"rho": e["spearman_rho"]}
        R["lr_sweep_pearson"] = R["lr_sweep_spearman"] = list(e.get("runs") or [])
    elif e:
        why["lr_sweep_pearson"] = why["lr_sweep_spearman"] = e.get("reason", "")
    regs = T.get("reports_regularizers") or {}
    for x in regs.get("entries", []):
        if not x.get("skipped"):  # "each regularizer tested on its own": the raw p
            S[f"regularizer_{x['run']}"] = {"t": x["t"], "p": x["paired_p"], "cohens_d": x["cohens_d"]}
            R[f"regularizer_{x['run']}"] = [x["run"]]
        else:
            why[f"regularizer_{x.get('run')}"] = x.get("reason", "")
    e = next((e for e in regs.get("entries", []) if e.get("regularizer") == "entropy_floor"
              and e.get("reg_lambda") is not None and abs(float(e["reg_lambda"]) - 0.1) < 1e-12), None)
    if e and not e.get("skipped"):
        S["entropy_floor_0.1"] = {"p": e["paired_p"]}
    else:
        why["entropy_floor_0.1"] = (e or {}).get("reason") or regs.get("reason") or "no entropy-floor λ=0.1 run"
    lp = T.get("reports_layer_position") or {}
    done = [e for e in lp.get("entries", []) if not e.get("skipped")]
    for e in done:  # the original ran one ANOVA per run: E2 (the full-FT reference) and E5 (LoRA r=8)
        name = "anova_E2" if e.get("role") == "full-FT reference" else "anova_E5"
        S[name], R[name] = {"F": e["F"], "p": e["anova_p"]}, [e["run"]]
    if done:  # 000's "p > 0.46": the claim that no per-run ANOVA is significant; the smallest p decides
        S["anova_layer_groups"] = {"p_gt": min(e["anova_p"] for e in done)}
        R["anova_layer_groups"] = [e["run"] for e in done]
    else:
        why["anova_layer_groups"] = why["anova_E2"] = why["anova_E5"] = "; ".join(
            dict.fromkeys(e.get("reason", "") for e in lp.get("entries", []))) or lp.get("reason", "")
    return S, R, why
