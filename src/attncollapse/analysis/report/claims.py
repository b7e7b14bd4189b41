"""The scorecard rows that test what the reports' findings rest on, not single numbers.

- **direction**: the sign of every published Δ% (entropy, ERF, Gini, head diversity, the
  zero-shot change), and the reports' averages (+0.4% over LoRA, −79% / −90% zero-shot);
- **ordering**: the orderings the findings state in words (published.yaml `claims`: full FT
  below LoRA, the LoRA rank order, the learning-rate order, the zero-shot drop order);
- **size**: "negligible" made a number (freezing and weight decay move entropy less than
  one step of the learning-rate sweep);
- **significance**: which tests are significant (only the entropy floor λ=0.1 among the
  regularizers).

A run of full FT that raises entropy where the reports' lowered it fails its direction
rows and every ordering it enters, whatever the size of the numbers. Rows have the
scorecard's shape (`scorecard.compare`) plus `category`.
"""

from __future__ import annotations

from typing import Any

from .rules import ALPHA, judge, printed_unit, sign


def _mean(our: dict, rid: str, q: str) -> float | None:
    v = ((our["runs"].get(rid) or {}).get(q) or {}).get("mean")
    return None if v is None or v != v else float(v)


def _values(our: dict, rids: list[str], q: str) -> tuple[list[float], list[str]]:
    """Our values of `q` for `rids`, and the runs that lack one."""
    vals = {r: _mean(our, r, q) for r in rids}
    return ([v for v in vals.values() if v is not None],
            [r if r not in our["runs"] else f"{q} for {r}" for r, v in vals.items() if v is None])


def _fmt(xs: list[float]) -> str:
    return ", ".join(f"{x:+.4g}" for x in xs) or "—"


def _row(name: str, quantity: str, category: str, src: str, published: Any, ours: Any, rule: str,
         verdict: str, test: str, why: str | None = None) -> dict:
    row = {"run": name, "quantity": quantity, "category": category, "source": src, "published": published,
           "ours": ours, "sd": None, "diff": None, "rule": rule, "verdict": verdict, "test": test}
    if why:
        row["why"] = why
    return row


def direction_rows(pub: dict, printed: dict, our: dict) -> list[dict]:
    """One row per published non-zero Δ% of a run this matrix has: does ours have its sign?"""
    rows = []
    for rid, p in pub["runs"].items():
        if rid not in our["runs"]:
            continue
        items = [(f"{mt}.delta_pct", (p.get(mt) or {}).get("delta_pct"), (printed[rid].get(mt) or {}).get("delta_pct"))
                 for mt in ("entropy", "erf", "gini", "head_diversity")]
        z, zp = p.get("zeroshot_cifar100") or {}, printed[rid].get("zeroshot_cifar100") or {}
        if z.get("change_pct") is not None:
            items.append((f"zeroshot_cifar100.change_pct_{z['protocol']}", z["change_pct"], zp["change_pct"]))
        for q, v, s in items:
            if v is None or sign(float(v), printed_unit(s)) == 0:
                continue  # a published 0 has no direction: its value row scores it
            o = (our["runs"][rid].get(q) or {})
            verdict, rule, diff = judge(float(v), o or None, "sign", unit=printed_unit(s))
            row = _row(rid, f"{q} sign", "direction", p["table"] if "zeroshot" not in q else z["table"],
                       float(v), o.get("mean"), rule, verdict, "the sign of the same number's value row",
                       f"{rid} has no {q}" if verdict == "missing" else None)
            row["diff"] = diff
            rows.append(row)
    return rows


def summary_rows(pub: dict, printed: dict, our: dict) -> list[dict]:
    """The reports' averages and rounded headlines, against the same average of ours."""
    rows = []
    s, sp = pub["summaries"]["lora_mean_entropy_delta"], printed["summaries"]["lora_mean_entropy_delta"]
    vals, lack = _values(our, s["runs"], s["quantity"])
    o = None if lack else {"mean": sum(vals) / len(vals), "sd": None, "n": 1}
    verdict, rule, diff = judge(float(s["delta_pct"]), o, "delta", unit=printed_unit(sp["delta_pct"]))
    rows.append({**_row("lora_mean_entropy_delta", "entropy.delta_pct mean", "direction", s["table"],
                        float(s["delta_pct"]), None if o is None else o["mean"], rule, verdict,
                        f"mean of {', '.join(s['runs'])} entropy Δ%",
                        f"no run {', '.join(lack)}" if lack else None), "diff": diff})
    s, sp = pub["summaries"]["full_ft_zeroshot_change"], printed["summaries"]["full_ft_zeroshot_change"]
    for rid, v, vp in zip(s["runs"], s["change_pct"], sp["change_pct"]):
        m = _mean(our, rid, s["quantity"])
        verdict, rule, diff = judge(float(v), None if m is None else {"mean": m, "sd": None, "n": 1}, "delta",
                                    unit=printed_unit(vp))
        rows.append({**_row("full_ft_zeroshot_change", f"{rid} {s['quantity']}", "direction", s["table"], float(v),
                            m, rule, verdict, f"{rid}'s {s['quantity']}",
                            None if m is not None else f"no {s['quantity']} for {rid}"),
                     "diff": diff})
    return rows


def _check(c: dict, our: dict) -> tuple[str, str, str, list[str]]:
    """(ours as text, verdict, rule, runs lacking) for one claim."""
    q = c.get("quantity", "")
    if c["check"] == "below":
        low, lack_l = _values(our, c["low"], q)
        high, lack_h = _values(our, c["high"], q)
        ok = bool(low and high) and max(low) < min(high)
        return (f"{'/'.join(c['low'])} {_fmt(low)} vs {'/'.join(c['high'])} {_fmt(high)}", "within" if ok else "outside",
                f"every {'/'.join(c['low'])} below every {'/'.join(c['high'])}", lack_l + lack_h)
    if c["check"] == "decreasing":
        v, lack = _values(our, c["runs"], q)
        ok = len(v) == len(c["runs"]) and all(a > b for a, b in zip(v, v[1:]))
        return _fmt(v), "within" if ok else "outside", f"strictly falling in the order {' > '.join(c['runs'])}", lack
    if c["check"] == "smaller_than":
        v, lack = _values(our, c["runs"], q)
        ref, lref = _values(our, [c["reference"]], q)
        sc, lsc = _values(our, c["scale"], q)
        lack += lref + lsc
        rule = f"every |run − {c['reference']}| < |{c['scale'][0]} − {c['scale'][1]}|"
        if lack:
            return "—", "missing", rule, lack
        step = abs(sc[0] - sc[1])
        far = max(abs(x - ref[0]) for x in v)
        return (f"max |run − {c['reference']}| = {far:.3g} vs step {step:.3g}", "within" if far < step else "outside",
                rule, [])
    if c["check"] == "only_significant":
        ps = {t: (our["statistics"].get(t) or {}).get("p") for t in c["tests"]}
        lack = [t for t, p in ps.items() if p is None]
        sig = sorted(t for t, p in ps.items() if p is not None and p < ALPHA)
        return (", ".join(sig) or "none", "within" if not lack and sig == sorted(c["significant"]) else "outside",
                f"exactly these p < α = {ALPHA}", lack)
    raise ValueError(f"published.yaml claims: unknown check {c['check']!r} (below, decreasing, smaller_than, "
                     "only_significant)")


CATEGORY = {"below": "ordering", "decreasing": "ordering", "smaller_than": "size", "only_significant": "significance"}


def claim_rows(pub: dict, our: dict) -> list[dict]:
    """One row per published.yaml `claims` entry."""
    rows = []
    for name, c in pub.get("claims", {}).items():
        txt, verdict, rule, lack = _check(c, our)
        published = (", ".join(c["significant"]) if c["check"] == "only_significant" else c["claim"])
        rows.append(_row(name, c.get("quantity") or "p of " + ", ".join(c["tests"]), CATEGORY[c["check"]], c["table"],
                         published, txt, rule, "missing" if lack else verdict,
                         "scorecard quantities of the named runs" if c["check"] != "only_significant"
                         else "stats.json tests.reports_regularizers paired_p",
                         f"no {', '.join(lack)}" if lack else None))
    return rows
