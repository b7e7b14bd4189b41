"""The reproduction scorecard: the reports' published numbers and claims beside ours.

`published.yaml` holds every number the reports print, keyed by our run ids (E2,
A1-lr1e-06, ...), the orderings their findings state, and the exact test values of the
original authors' own report. `ours(m, st)` (measured.py) reads the same quantities from a matrix
directory's files (through `runtables.config_summary`, so several seeds give mean and SD);
`compare` sets the two side by side and says, per row, whether ours reproduces the
published one, by the rules of `rules.py` (tolerances below the published effect, at
least the printed precision; mean ± 2 SD with seeds). Rows come in categories:

- value: one printed number (accuracy, level, Δ%, zero-shot, E1's 48 per-layer values, a
  test statistic);
- direction, ordering, size, significance: what the findings rest on (`claims.py`).

A matrix of randomly initialised presets, or a run on another dataset than the paper's,
is "not comparable": its rows are listed, never judged, and say why.

Like is compared with like: a published zero-shot number names its protocol
(published.yaml `protocol`: the reports' full-FT numbers are `frozen_projection`, their
LoRA number `base_only`) and is set beside exactly that protocol's accuracy of ours, on the
best checkpoint as the reports used; a published test is set beside the stats.json entry
that recomputes it as the original code ran it (STAT_TESTS; analysis/statistics/reports_tests.py).
Every row names where our number comes from; no published number is dropped: one we could
not compute is "missing" with the reason. `write_csv` writes every row to scorecard.csv.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from . import claims
from .measured import STAT_TESTS, ZS_PROTOCOL_KEYS, ours, same_dataset
from ..published import load_published
from .render import Block, num
from .rules import ALPHA, RULES, judge, printed_unit
from ..table import METRICS
from ..._io import write_text

__all__ = ["compare", "ours", "write_csv", "blocks", "STAT_KEYS", "STAT_TESTS"]

def _kind(quantity: str) -> str:
    if "acc_pct" in quantity:
        return "acc"
    if quantity.endswith("delta_pct") or ".change_pct" in quantity:
        return "delta"
    return "final" if quantity.endswith(".final") else "level"


def _published_run_rows(pub: dict, printed: dict) -> list[tuple[str, str, str, float, str, float, float | None]]:
    """(run id, dataset, quantity, published value, source table, printed unit, published final −
    initial for a final) for every published run number."""
    out = []
    for rid, p in pub["runs"].items():
        pp = printed["runs"][rid]
        if p.get("best_acc_pct") is not None:
            out.append((rid, p["dataset"], "best_acc_pct", float(p["best_acc_pct"]), p["table"],
                        printed_unit(pp["best_acc_pct"]), None))
        for mt in METRICS:
            m = p.get(mt) or {}
            for k, v in m.items():
                eff = float(v) - float(m["initial"]) if k == "final" and "initial" in m else None
                out.append((rid, p["dataset"], f"{mt}.{k}", float(v), p["table"], printed_unit(pp[mt][k]), eff))
        z = p.get("zeroshot_cifar100") or {}
        for k in ("acc_pct", "change_pct"):
            if z.get(k) is not None:  # every published zero-shot number names its protocol
                out.append((rid, p["dataset"], f"zeroshot_cifar100.{k}_{z['protocol']}", float(z[k]), z["table"],
                            printed_unit(pp["zeroshot_cifar100"][k]), None))
    return out


def compare(our: dict[str, Any], published: dict[str, Any] | None = None) -> dict[str, Any]:
    """Published vs ours, row by row.

    Args:
        our: `ours(...)`'s mapping (or one built by hand of the same shape).
        published: `load_published()` (default); the printed precision always comes from the
            packaged file.

    Returns:
        {"comparable": bool, "reasons": [text], "rows": [{"run", "quantity", "category", "source",
        "published", "ours", "sd", "diff", "rule", "verdict", "test", "why"}], "counts": {verdict: n},
        "absent_runs": {published run id this matrix lacks: its count of published numbers},
        "absent_rows": those numbers as rows (verdict "absent"; scorecard.csv lists them)};
        verdicts: within, outside, missing, not comparable; categories: value, direction,
        ordering, size, significance.
    """
    pub = published or load_published()
    printed = load_published(as_printed=True)
    reasons = (["the models are randomly initialised presets (final.json `model_random_init`), "
                "not pretrained CLIP ViT-B/32"] if our.get("random_init") else [])
    rows = []
    matched = [rid for rid in pub["runs"] if rid in our["runs"]]
    absent: dict[str, int] = {}
    absent_rows: list[dict] = []
    for rid, ds, q, v, src, unit, eff in _published_run_rows(pub, printed):
        if rid not in our["runs"]:
            absent[rid] = absent.get(rid, 0) + 1  # named in the section, a row of scorecard.csv
            absent_rows.append({"run": rid, "quantity": q, "category": "value", "source": src, "published": v,
                                "ours": None, "sd": None, "diff": None, "rule": "—", "verdict": "absent",
                                "why": "no run of this id in the matrix", "test": _measured_by(q)})
            continue
        o = our["runs"][rid]
        row = {"run": rid, "quantity": q, "category": "value", "source": src, "published": v,
               "ours": (o.get(q) or {}).get("mean"), "sd": (o.get(q) or {}).get("sd"), "test": _measured_by(q)}
        row["verdict"], row["rule"], row["diff"] = judge(v, o.get(q), _kind(q), unit=unit, effect=eff)
        if row["verdict"] == "missing":
            row["why"] = f"{rid} has no {row['test'].split(',')[0]}"
        rows.append(row)
    rows += _baseline_rows(pub, printed, our, absent, absent_rows) + _stat_rows(pub, printed, our)
    rows += claims.direction_rows(pub, printed["runs"], our) + claims.summary_rows(pub, printed, our)
    rows += claims.claim_rows(pub, our)
    other = {rid: o.get("dataset") for rid, o in our["runs"].items() if rid in pub["runs"]
             and not same_dataset(pub["runs"][rid]["dataset"], o.get("dataset"))}
    for row in rows:  # a row is judged only on the paper's model and data
        runs = [row["run"]] if row["run"] in pub["runs"] else _claim_runs(pub, row["run"])
        if reasons and row["verdict"] != "missing":
            row["verdict"], row["why"] = "not comparable", reasons[0]
        elif any(r in other for r in runs) and row["verdict"] != "missing":
            r = next(r for r in runs if r in other)
            row["verdict"], row["why"] = "not comparable", f"{r}: dataset {other[r]}, the paper's {pub['runs'][r]['dataset']}"
    if not matched:
        reasons.append("no run id of this matrix is one of the paper's (E2 … R3-wd0.1)")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    return {"comparable": not reasons, "reasons": reasons, "rows": rows, "counts": counts, "absent_runs": absent,
            "absent_rows": absent_rows}


def _claim_runs(pub: dict, name: str) -> list[str]:
    """The runs a summary, claim or test row rests on (for the dataset check)."""
    e = pub.get("claims", {}).get(name) or pub["summaries"].get(name) or pub["statistics"].get(name) or {}
    return [r for k in ("runs", "low", "high", "rows") for r in e.get(k) or []] + \
        ([e["reference"]] if e.get("reference") else [])


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


def _baseline_rows(pub: dict, printed: dict, our: dict, absent: dict, absent_rows: list) -> list[dict]:
    """E1: the means of both datasets, EuroSAT's 48 per-layer values, the zero-shot accuracy."""
    b, bp, rows = pub["baseline_E1"], printed["baseline_E1"], []
    items = [(f"{ds}.{mt}", float(v), bp[ds]["mean"][mt], b[ds]["table"], f"baseline/<{ds}>.json mean.{mt}")
             for ds in ("eurosat", "pets") for mt, v in b[ds]["mean"].items()]
    items += [(f"eurosat.{mt}.layer{i + 1}", float(v), bp["eurosat"]["per_layer"][mt][i], b["eurosat"]["table"],
               f"baseline/<eurosat>.json layers.{mt}[{i}]")
              for mt, vs in b["eurosat"]["per_layer"].items() for i, v in enumerate(vs)]
    z = b["zeroshot_cifar100"]
    items.append((f"zeroshot_cifar100.acc_pct_{z['protocol']}", float(z["acc_pct"]), bp["zeroshot_cifar100"]["acc_pct"],
                  z["table"], "baseline/<dataset>.json zeroshot.<cifar100>.acc"))
    for q, v, s, src, test in items:
        o = our["baseline"].get(q)
        if o is None and not our["baseline"]:
            absent["E1"] = absent.get("E1", 0) + 1  # no E1 on EuroSAT / Pets / CIFAR-100
            absent_rows.append({"run": "E1", "quantity": q, "category": "value", "source": src, "published": v,
                                "ours": None, "sd": None, "diff": None, "rule": "—", "verdict": "absent",
                                "why": "no E1 on the paper's dataset in this matrix", "test": test})
            continue
        verdict, rule, diff = judge(v, None if o is None else {"mean": float(o), "sd": None, "n": 1},
                                    "acc" if "acc" in q else "level", unit=printed_unit(s))
        rows.append({"run": "E1", "quantity": q, "category": "value", "source": src, "published": v, "ours": o,
                     "sd": None, "diff": diff, "rule": rule, "verdict": verdict, "test": test})
    return rows


STAT_KEYS = ("t", "F", "U", "p", "cohens_d", "r", "rho", "p_gt")
_STAT_KIND = {"t": "t", "F": "t", "U": "u", "p": "p", "p_gt": "p"}


def _stat_rows(pub: dict, printed: dict, our: dict) -> list[dict]:
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
            kind = _STAT_KIND.get(key, "coef")
            verdict, rule, diff = judge(float(s[key]), None if key not in o else {"mean": o[key], "sd": None, "n": 1},
                                        kind, unit=printed_unit(printed["statistics"][name][key]), u_max=s.get("u_max"))
            if key == "p_gt":
                rule = f"every per-run p on the same side of α = {ALPHA} (the bound is E5's own p rounded)"
            row = {"run": name, "quantity": key, "category": "significance" if kind == "p" else "value",
                   "source": s["table"], "published": float(s[key]), "ours": o.get(key), "sd": None, "diff": diff,
                   "rule": rule, "verdict": verdict,
                   "test": STAT_TESTS.get(name) or (f"tests.reports_regularizers, the {name[12:]} entry (t, paired_p, "
                                                    "cohens_d)" if name.startswith("regularizer_") else "—")}
            if key not in o:
                row["why"] = (our.get("stat_why") or {}).get(name) or "not computed by this matrix"
            elif not same_runs:
                row["verdict"] = "not comparable"
                row["why"] = f"ours used {', '.join(our['stat_runs'].get(name, []))}, the paper {', '.join(s['rows'])}"
            rows.append(row)
    return rows


CSV_COLUMNS = ("section", "run", "quantity", "category", "published", "ours", "sd", "diff", "rule", "verdict", "why",
               "ours_from", "source")


def _section(r: dict) -> str:
    if r["category"] != "value":
        return "claim" if r["run"] not in ("lora_mean_entropy_delta", "full_ft_zeroshot_change") else "summary"
    return "E1" if r["run"] == "E1" else "statistic" if r["quantity"] in STAT_KEYS else "run"


def write_csv(card: dict, path: str | Path) -> Path:
    """Every scorecard row to `path` (scorecard.csv, docs/FORMATS.md): published value, ours, rule,
    verdict, where ours came from and the reports' section."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in card["rows"] + card.get("absent_rows", []):
        w.writerow([_section(r), r["run"], r["quantity"], r["category"], _cell(r["published"]), _cell(r["ours"]),
                    _cell(r.get("sd")), _cell(r.get("diff")), r["rule"], r["verdict"], r.get("why", ""),
                    r.get("test", ""), r["source"]])
    write_text(Path(path), buf.getvalue())
    return Path(path)


def _cell(x: Any) -> str:
    return "" if x is None else repr(x) if isinstance(x, float) else str(x)


def blocks(card: dict) -> list[Block]:
    """The scorecard section: verdict, rules, counts, the claims table and the per-run counts
    (every row is in scorecard.csv)."""
    B: list[Block] = []
    if not card["comparable"]:
        B.append(("p", "**Not comparable** — these numbers cannot reproduce the paper's: " + "; ".join(card["reasons"])
                       + ". The rows are listed beside the published ones for orientation only."))
    rules = "; ".join(f"{k}: {v}" for k, v in RULES.items())
    B.append(("p", "A row reproduces (*within*) when the published value lies within our mean ± 2 SD over seeds "
                   f"(≥ 2 seeds) or, with one seed, by the rule of its kind — {rules}. Tolerances are below the "
                   "published effect, so a reversed result fails: every published Δ% has a direction row (its sign), "
                   "and the orderings the findings state in words (full FT below LoRA, the LoRA rank and "
                   "learning-rate orders, the zero-shot drops) and the one significant regularizer are rows of their "
                   "own. Every row, with its rule and where our number comes from, is in `scorecard.csv`."))
    if not card["rows"]:
        return B + [("p", "*No published number matches a run of this matrix.*")]
    B.append(("p", "Counts: " + ", ".join(f"{v} {k}" for k, v in sorted(card["counts"].items())) + "."))
    if card.get("absent_runs"):
        B.append(("p", "Not compared, because this matrix has no run of that id: " + ", ".join(
            f"{rid} ({n} numbers)" for rid, n in card["absent_runs"].items()) + "."))
    rows = card["rows"]
    B.append(("table", ["Category", "Within", "Outside", "Missing", "Not comparable"], _per(rows, "category")))
    B.append(("table", ["Run / test", "Within", "Outside", "Missing", "Not comparable"], _per(rows, "run")))
    shown = [r for r in rows if r["category"] in ("ordering", "size", "significance") or r["quantity"] in HEADLINE
             or r["run"] in ("lora_mean_entropy_delta", "full_ft_zeroshot_change", "anova_E2", "anova_E5")]
    B.append(("p", f"The findings' claims and the headline numbers, {len(shown)} of {len(rows)} rows "
                   "(the rest: scorecard.csv):"))
    B.append(("table", ["Run / claim", "Number", "Category", "Published", "Ours", "Rule", "Verdict", "Source"],
              [[r["run"], r["quantity"], r["category"], _fmt(r["published"]),
                _fmt(r["ours"]) + (f" ± {num(r['sd'], '.3g')}" if r.get("sd") is not None else ""), r["rule"],
                r["verdict"] + (f" ({r['why']})" if r.get("why") and (r["verdict"] != "not comparable"
                                                                      or card["comparable"]) else ""),
                r["source"].split(";")[0]] for r in shown]))
    return B


HEADLINE = ("best_acc_pct", "entropy.delta_pct", "zeroshot_cifar100.acc_pct_frozen_projection",
            "zeroshot_cifar100.acc_pct_base_only", "zeroshot_cifar100.acc_pct_pretrained")


def _fmt(x: Any) -> str:
    return "—" if x is None else num(x, ".4g") if isinstance(x, (int, float)) else str(x)


def _per(rows: list[dict], key: str) -> list[list[str]]:
    """At a glance: per category (or run, test, claim), how many rows reproduce."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        out.setdefault(r[key], {}).setdefault(r["verdict"], 0)
        out[r[key]][r["verdict"]] += 1
    return [[k, *(str(v.get(x, 0)) for x in ("within", "outside", "missing", "not comparable"))] for k, v in out.items()]
