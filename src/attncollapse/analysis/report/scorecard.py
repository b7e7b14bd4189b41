"""The reproduction scorecard: the reports' published numbers beside ours.

`published.yaml` holds every number the reports print, keyed by our run ids (E2,
A1-lr1e-06, ...). `ours(m, st)` reads the same quantities from a matrix directory's files
(through `runtables.config_summary`, so several seeds give mean and SD); `compare` sets the
two side by side and says, per number, whether ours reproduces the published one:

- with ≥ 2 seeds, when the published value lies within our mean ± 2 SD over seeds;
- with one seed, when the difference is within the tolerance of its kind (TOLERANCE);
- a p-value reproduces when it falls on the same side of α; a printed bound (p > 0.46)
  when ours satisfies it.

A matrix of randomly initialised presets, or a run on another dataset than the paper's,
is "not comparable": its rows are listed, never judged, and say why.

Like is compared with like: a published zero-shot number names its protocol
(published.yaml `protocol`: the reports' full-FT numbers are `frozen_projection`, their
LoRA number `base_only`) and is set beside exactly that protocol's accuracy of ours, on the
best checkpoint as the reports used; a published test is set beside the stats.json entry
that recomputes it as the original code ran it (STAT_TESTS; analysis/statistics/reports_tests.py).
Every row names where our number comes from ("Ours from"); no published number is dropped:
one we could not compute is "missing" with the reason.
"""

from __future__ import annotations

import math
from typing import Any

from ..published import load_published
from .render import Block, num
from .runtables import config_summary
from ..table import METRICS, Matrix

TOLERANCE = {
    "acc": ("±2 pp", lambda pub, d: abs(d) <= 2.0),
    "level": ("±2% relative, at least ±0.005", lambda pub, d: abs(d) <= max(0.02 * abs(pub), 0.005)),
    "delta": ("±50% relative or ±1 pp", lambda pub, d: abs(d) <= max(0.5 * abs(pub), 1.0)),
    "coef": ("±0.2", lambda pub, d: abs(d) <= 0.2),
    "t": ("±1.0", lambda pub, d: abs(d) <= 1.0),
}
"""One-seed tolerance per kind of number: accuracies in pp (task and zero-shot), metric levels
(initial, final, E1 means), Δ% in percent, correlation and effect-size coefficients, t."""
ALPHA = 0.05
DATASETS = {"eurosat": ("eurosat",), "pets": ("pet",), "cifar100": ("cifar100", "cifar-100", "cifar_100")}
"""Published dataset → substrings of our dataset names that denote it."""


def _same_dataset(published: str, ours: Any) -> bool:
    return any(s in str(ours or "").lower() for s in DATASETS.get(published, (published,)))


def _value(agg: dict, col: str, scale: float = 1.0) -> dict | None:
    c = agg.get(col) or {}
    if c.get("mean") is None:
        return None
    return {"mean": c["mean"] * scale, "sd": None if c.get("sd") is None else c["sd"] * scale, "n": c.get("n", 1)}


def _zs_dataset(agg: dict, name: str) -> dict | None:
    """The zero-shot block of `name` in a config's first run, or None."""
    zs = (agg["runs"][0].final or {}).get("zeroshot") or {}
    return next((b for k, b in zs.items() if _same_dataset(name, k)), None)


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
            if _same_dataset(pub, ds):
                base.update({f"{pub}.{mt}": (b.get("mean") or {}).get(mt) for mt in METRICS})
        for name, z in (b.get("zeroshot") or {}).items():
            if _same_dataset("cifar100", name) and z.get("acc") is not None:
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
             for name, z in (b.get("zeroshot") or {}).items() if _same_dataset("cifar100", name) and z.get("acc")]
    return max(found, key=lambda t: t[0])[1] if found else None


def _point(x: Any, scale: float) -> dict | None:
    return None if x is None else {"mean": x * scale, "sd": None, "n": 1}


STAT_TESTS = {
    "welch_full_vs_lora_entropy": "tests.reports_fullft_vs_lora (E2 vs E4+E5+E6 per-layer Δ%, Welch; "
                                  "d = cohens_d_lora_minus_full)",
    "lr_sweep_pearson": "tests.lr_sweep (log10 lr vs run Δ%, A1 + E2; Pearson)",
    "lr_sweep_spearman": "tests.lr_sweep (log10 lr vs run Δ%, A1 + E2; Spearman)",
    "entropy_floor_0.1": "tests.reports_regularizers, the entropy-floor λ=0.1 entry (paired t on final "
                         "per-layer entropy vs E2; raw paired_p)",
    "anova_layer_groups": "tests.reports_layer_position (per-run ANOVA of layer-third Δ%, E2 and E5; "
                          "the smaller anova_p)",
}
"""Each published test → the stats.json entry that recomputes it as the original code ran it."""


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
    elif e:
        why["welch_full_vs_lora_entropy"] = e.get("reason", "")
    e = T.get("lr_sweep") or {}
    if e and not e.get("skipped"):
        S["lr_sweep_pearson"] = {"r": e["pearson_r"], "p": e["pearson_p"]}
        S["lr_sweep_spearman"] = {"rho": e["spearman_rho"]}
        R["lr_sweep_pearson"] = R["lr_sweep_spearman"] = list(e.get("runs") or [])
    elif e:
        why["lr_sweep_pearson"] = why["lr_sweep_spearman"] = e.get("reason", "")
    regs = T.get("reports_regularizers") or {}
    e = next((e for e in regs.get("entries", []) if e.get("regularizer") == "entropy_floor"
              and e.get("reg_lambda") is not None and abs(float(e["reg_lambda"]) - 0.1) < 1e-12), None)
    if e and not e.get("skipped"):  # "each regularizer tested on its own": the raw p
        S["entropy_floor_0.1"] = {"p": e["paired_p"]}
    else:
        why["entropy_floor_0.1"] = (e or {}).get("reason") or regs.get("reason") or "no entropy-floor λ=0.1 run"
    lp = T.get("reports_layer_position") or {}
    done = [e for e in lp.get("entries", []) if not e.get("skipped")]
    if done:  # printed as the bound "p > 0.46": every per-run ANOVA must satisfy it
        S["anova_layer_groups"] = {"p_gt": min(e["anova_p"] for e in done)}
        R["anova_layer_groups"] = [e["run"] for e in done]
    else:
        why["anova_layer_groups"] = "; ".join(dict.fromkeys(e.get("reason", "") for e in lp.get("entries", []))) \
            or lp.get("reason", "")
    return S, R, why


def _judge(pub: float, our: dict | None, kind: str) -> tuple[str, str, float | None]:
    """(verdict, rule, difference ours − published) for one number."""
    if our is None or our.get("mean") is None or (isinstance(our["mean"], float) and math.isnan(our["mean"])):
        return "missing", "—", None
    d = our["mean"] - pub
    if kind == "p":
        return ("within" if (our["mean"] < ALPHA) == (pub < ALPHA) else "outside"), f"same side of α = {ALPHA}", d
    if kind == "p_gt":
        return ("within" if our["mean"] > pub else "outside"), f"ours > {pub:g} (printed bound)", d
    if (our.get("n") or 1) >= 2 and our.get("sd") is not None:
        return ("within" if abs(d) <= 2 * our["sd"] else "outside"), f"mean ± 2 sd over {our['n']} seeds", d
    rule, ok = TOLERANCE[kind]
    return ("within" if ok(pub, d) else "outside"), rule, d


def _kind(quantity: str) -> str:
    if "acc_pct" in quantity:
        return "acc"
    return "delta" if quantity.endswith("delta_pct") or ".change_pct" in quantity else "level"


def _published_run_rows(pub: dict) -> list[tuple[str, str, str, float, str]]:
    """(run id, dataset, quantity, published value, source table) for every published run number."""
    out = []
    for rid, p in pub["runs"].items():
        if p.get("best_acc_pct") is not None:
            out.append((rid, p["dataset"], "best_acc_pct", float(p["best_acc_pct"]), p["table"]))
        for mt in METRICS:
            for k, v in (p.get(mt) or {}).items():
                out.append((rid, p["dataset"], f"{mt}.{k}", float(v), p["table"]))
        z = p.get("zeroshot_cifar100") or {}
        for k in ("acc_pct", "change_pct"):
            if z.get(k) is not None:  # every published zero-shot number names its protocol
                out.append((rid, p["dataset"], f"zeroshot_cifar100.{k}_{z['protocol']}", float(z[k]), z["table"]))
    return out


def compare(our: dict[str, Any], published: dict[str, Any] | None = None) -> dict[str, Any]:
    """Published vs ours, number by number.

    Args:
        our: `ours(...)`'s mapping (or one built by hand of the same shape).
        published: `load_published()` (default).

    Returns:
        {"comparable": bool, "reasons": [text], "rows": [{"run", "quantity", "source", "published",
        "ours", "sd", "diff", "rule", "verdict", "test", "why"}], "counts": {verdict: n}, "absent_runs":
        {published run id this matrix lacks: its count of published numbers}}; verdicts: within,
        outside, missing, not comparable.
    """
    pub = published or load_published()
    reasons = (["the models are randomly initialised presets (final.json `model_random_init`), "
                "not pretrained CLIP ViT-B/32"] if our.get("random_init") else [])
    rows = []
    matched = [rid for rid in pub["runs"] if rid in our["runs"]]
    absent: dict[str, int] = {}
    for rid, ds, q, v, src in _published_run_rows(pub):
        if rid not in our["runs"]:
            absent[rid] = absent.get(rid, 0) + 1  # named in the section, not a row each
            continue
        o = our["runs"][rid]
        row = {"run": rid, "quantity": q, "source": src, "published": v, "ours": (o.get(q) or {}).get("mean"),
               "sd": (o.get(q) or {}).get("sd"), "test": _measured_by(q)}
        row["verdict"], row["rule"], row["diff"] = _judge(v, o.get(q), _kind(q))
        if reasons or not _same_dataset(ds, o.get("dataset")):
            row["verdict"] = "not comparable"
            row["why"] = reasons[0] if reasons else f"dataset {o.get('dataset')}, the paper's {ds}"
        rows.append(row)
    rows += _baseline_rows(pub, our, bool(reasons)) + _stat_rows(pub, our, bool(reasons))
    if not matched:
        reasons.append("no run id of this matrix is one of the paper's (E2 … R3-wd0.1)")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    return {"comparable": not reasons, "reasons": reasons, "rows": rows, "counts": counts, "absent_runs": absent}


def _measured_by(quantity: str) -> str:
    """Which of our numbers a run row compares with: the results.csv column, or for zero-shot
    the final.json block key of its protocol (every protocol on the best checkpoint)."""
    if quantity.startswith("zeroshot_cifar100."):
        proto = quantity.split("_pct_", 1)[1]
        key = ZS_PROTOCOL_KEYS.get(proto, "acc")
        what = "accuracy" if ".acc_pct" in quantity else "change vs E1 (relative)"
        return f"{proto} {what}: zeroshot.<cifar100>.{key}, best checkpoint"
    if quantity == "best_acc_pct":
        return "results.csv best_acc"
    mt, k = quantity.split(".")
    return f"results.csv {mt}_{k}"


def _baseline_rows(pub: dict, our: dict, blocked: bool) -> list[dict]:
    b, rows = pub["baseline_E1"], []
    items = [(f"{ds}.{mt}", float(v), b[ds]["table"]) for ds in ("eurosat", "pets") for mt, v in b[ds]["mean"].items()]
    z = b["zeroshot_cifar100"]
    items.append((f"zeroshot_cifar100.acc_pct_{z['protocol']}", float(z["acc_pct"]), z["table"]))
    for q, v, src in items:
        o = our["baseline"].get(q)
        if o is None and not our["baseline"]:
            continue
        oo = None if o is None else {"mean": float(o), "sd": None, "n": 1}
        verdict, rule, diff = _judge(v, oo, "acc" if "acc" in q else "level")
        rows.append({"run": "E1", "quantity": q, "source": src, "published": v, "ours": o, "sd": None, "diff": diff,
                     "rule": rule, "verdict": "not comparable" if blocked else verdict,
                     "test": "baseline/<dataset>.json " + ("zeroshot.<cifar100>.acc" if "acc" in q else "mean")})
    return rows


STAT_KEYS = ("t", "p", "cohens_d", "r", "rho", "p_gt")


def _stat_rows(pub: dict, our: dict, blocked: bool) -> list[dict]:
    """One row per printed statistic of every published test (none dropped: a test we could
    not compute is "missing" and says why), each naming the stats.json entry it scores."""
    rows = []
    for name, s in pub["statistics"].items():
        keys = [k for k in STAT_KEYS if k in s]
        if not keys:  # `methods`: the list of tests 000 names, no value to score
            continue
        o = our["statistics"].get(name) or {}
        same_runs = not s.get("rows") or sorted(s["rows"]) == sorted(our["stat_runs"].get(name, []))
        for key in keys:
            kind = {"t": "t", "p": "p", "p_gt": "p_gt"}.get(key, "coef")
            verdict, rule, diff = _judge(float(s[key]), None if key not in o else {"mean": o[key], "sd": None, "n": 1},
                                         kind)
            row = {"run": name, "quantity": key, "source": s["table"], "published": float(s[key]),
                   "ours": o.get(key), "sd": None, "diff": diff, "rule": rule, "verdict": verdict,
                   "test": STAT_TESTS.get(name, "—")}
            if key not in o:
                row["why"] = (our.get("stat_why") or {}).get(name) or "not computed by this matrix"
            elif blocked or not same_runs:
                row["verdict"] = "not comparable"
                row["why"] = ("the models are not the paper's" if blocked else
                              f"ours used {', '.join(our['stat_runs'].get(name, []))}, the paper {', '.join(s['rows'])}")
            rows.append(row)
    return rows


def blocks(card: dict) -> list[Block]:
    """The scorecard section: verdict, rules, counts and the table."""
    B: list[Block] = []
    if not card["comparable"]:
        B.append(("p", "**Not comparable** — these numbers cannot reproduce the paper's: " + "; ".join(card["reasons"])
                       + ". The table lists them beside the published ones for orientation only."))
    rules = "; ".join(f"{k}: {v[0]}" for k, v in TOLERANCE.items())
    B.append(("p", f"A number reproduces (*within*) when the published value lies within our mean ± 2 SD over "
                   f"seeds (≥ 2 seeds) or, with one seed, within the tolerance of its kind — {rules}; a p-value "
                   f"when it falls on the same side of α = {ALPHA}; a printed bound when ours satisfies it. "
                   "Source: the report table the published number comes from (published.yaml)."))
    if not card["rows"]:
        return B + [("p", "*No published number matches a run of this matrix.*")]
    B.append(("p", "Counts: " + ", ".join(f"{v} {k}" for k, v in sorted(card["counts"].items())) + "."))
    if card.get("absent_runs"):
        B.append(("p", "Not compared, because this matrix has no run of that id: " + ", ".join(
            f"{rid} ({n} numbers)" for rid, n in card["absent_runs"].items()) + "."))
    rows = card["rows"]
    if card["comparable"]:
        B.append(("table", ["Run / test", "Within", "Outside", "Missing"], _per_run(rows)))
    else:  # nothing is judged: the headline numbers are enough to show what would be compared
        rows = [r for r in rows if r["quantity"] in HEADLINE or r["run"] in card_statistics(rows)]
        B.append(("p", f"Shown: the headline numbers ({', '.join(HEADLINE)}) and the statistics, "
                       f"{len(rows)} of {len(card['rows'])}."))
    B.append(("table", ["Run / test", "Number", "Published", "Ours", "Ours − published", "Rule", "Verdict",
                        "Ours from", "Source"],
              [[r["run"], r["quantity"], _fmt(r["published"]),
                _fmt(r["ours"]) + (f" ± {num(r['sd'], '.3g')}" if r.get("sd") is not None else ""),
                "—" if r["diff"] is None else num(r["diff"], "+.4g"), r["rule"],
                r["verdict"] + (f" ({r['why']})" if r.get("why") and (r["verdict"] != "not comparable"
                                                                      or card["comparable"]) else ""),
                r.get("test", "—"), r["source"].split(";")[0]] for r in rows]))
    return B


HEADLINE = ("best_acc_pct", "entropy.delta_pct", "zeroshot_cifar100.acc_pct_frozen_projection",
            "zeroshot_cifar100.acc_pct_base_only", "zeroshot_cifar100.acc_pct_pretrained")


def _fmt(x: Any) -> str:
    return "—" if x is None else num(x, ".4g")


def card_statistics(rows: list[dict]) -> set[str]:
    """The names of the published tests among the rows (their `run` is the test's name)."""
    return {r["run"] for r in rows if r["quantity"] in ("t", "p", "cohens_d", "r", "rho", "p_gt")}


def _per_run(rows: list[dict]) -> list[list[str]]:
    """At a glance: per run (and test), how many of its numbers reproduce."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        out.setdefault(r["run"], {}).setdefault(r["verdict"], 0)
        out[r["run"]][r["verdict"]] += 1
    return [[k, str(v.get("within", 0)), str(v.get("outside", 0)), str(v.get("missing", 0))] for k, v in out.items()]
