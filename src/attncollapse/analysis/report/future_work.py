"""The report's sections on the reports' future work: early warning, weight drift, model families.

Formatting only (the report computes nothing new): every number is read from stats.json's
`early_warning`, `weight_drift` and `model_families` entries, which `links` computed.
`report._results` places `blocks` after the statistics.
"""

from __future__ import annotations

from typing import Any

from .render import Block, below, dpct, num, pval, ran, skipped_note, verdict

_CORR_HEAD = ["Pair", "n (unit)", "Pearson r", "p", "Holm p", "Spearman ρ", "p (method)", "Holm p"]


def _corr_rows(entries: list[dict]) -> list[list[str]]:
    return [[e["label"], f"{e['n']} {e.get('unit', 'runs')}", num(e["pearson_r"]), pval(e["pearson_p"]),
             pval(e.get("pearson_p_holm")), num(e["spearman_rho"]),
             f"{pval(e['spearman_p'])} ({e.get('spearman_p_method', 'asymptotic')})", pval(e.get("spearman_p_holm"))]
            for e in entries]


def _test_blocks(test: dict, what: str) -> list[Block]:
    """A family of correlations as one table, its skipped entries in one line, or why none ran."""
    if not test or test.get("skipped"):
        return [("p", f"*Not run: {(test or {}).get('reason', 'not in stats.json')}.*")]
    B: list[Block] = [("table", _CORR_HEAD, _corr_rows(ran(test)))] if ran(test) else []
    note = skipped_note(test.get("entries", []), what)
    return B + ([note] if note else [])


def _sources(entries: list[dict]) -> str:
    src: dict[str, str] = {}
    for e in entries:
        src.update(e.get("reference_source") or {})
    by = {s: sorted(r for r, v in src.items() if v == s) for s in set(src.values())}
    names = {"baseline": "E1's pretrained score", "base_only": "the run's own LoRA base-only (adapters off) score"}
    return "; ".join(f"{names.get(s, s)} for {', '.join(rs)}" for s, rs in sorted(by.items()))


SPEARMAN_PRIMARY = ("Of the two correlations shown, Spearman's ρ is the primary test here (the verdicts below use its "
                    "Holm p): nothing makes drift or transfer change linear in each other; Pearson's r is shown beside it.")


def early_warning(T: dict, alpha: float) -> list[Block]:
    t = T.get("early_warning", {})
    B: list[Block] = [("p", "Does the first epoch tell where a run ends? For each metric, its Δ% of the layer mean at "
                            "the eval point nearest epoch 1 (vs step 0), and the mean weight drift there, against the "
                            "final transfer change: 100 · (transfer score − the pretrained model's) in pp, the transfer "
                            "score being `transfer_acc` (linear probe / k-NN) where a run has one, else zero-shot "
                            "accuracy of the best-accuracy checkpoint. Holm over the five predictors. "
                            + SPEARMAN_PRIMARY)]
    B += _test_blocks(t, "predictors")
    done = ran(t)
    if done:
        best = min(done, key=lambda e: e["spearman_p"] if below(e["spearman_p"], 2.0) else 2.0)
        B.append(("p", f"Reference scores: {_sources(done)}. Strongest predictor: {best['predictor']} (Spearman ρ = "
                       f"{num(best['spearman_rho'], '.2f')}, Holm p = {pval(best['spearman_p_holm'])}) — "
                       f"{verdict(best, alpha, 'spearman_p_holm')}."))
        late = sorted({i for e in done for i in e.get("early_is_final") or []})
        if late:
            B.append(("p", f"*{', '.join(late)} trained for about one epoch: their early point is their last.*"))
    return B + [("fig", "extra_early_warning")]


def weight_drift(T: dict, alpha: float) -> list[Block]:
    t = T.get("weight_drift", {})
    B: list[Block] = [("p", "The alternative explanation the reports raise: fine-tuning moves the weights, and the "
                            "attention change is a by-product. Weight drift is ‖θ − θ₀‖ / ‖θ₀‖ per transformer block "
                            "(history.json at every eval point; results.csv `weight_drift_final` = its mean over blocks "
                            "at the last step). If drift predicted the transfer change as well as entropy Δ does, "
                            "attention would not be needed to explain it. " + SPEARMAN_PRIMARY)]
    B += _test_blocks(t, "pairs")
    e = {x["label"]: x for x in ran(t)}
    d, h = e.get("weight drift vs transfer change"), e.get("entropy Δ% vs transfer change")
    if d and h:
        B.append(("p", f"On the same {d['n']} runs and outcome: drift ρ = {num(d['spearman_rho'], '.2f')} (Holm p = "
                       f"{pval(d['spearman_p_holm'])}), entropy Δ ρ = {num(h['spearman_rho'], '.2f')} (Holm p = "
                       f"{pval(h['spearman_p_holm'])}); drift — {verdict(d, alpha, 'spearman_p_holm')}, entropy — "
                       f"{verdict(h, alpha, 'spearman_p_holm')}."))
    return B + [("fig", "extra_weight_drift")]


def _absent(x: Any, fmt: str) -> str:
    """A mean over no runs (null in stats.json, NaN once read back) is absent, not untestable."""
    return "—" if x is None or x != x else num(x, fmt)


def _family_rows(fams: list[dict]) -> list[list[str]]:
    rows = []
    for f in fams:
        cols = ", ".join(f["transfer_columns"]) or "—"
        rows.append([f["family"], ", ".join(f["models"]), str(f["n_runs"]), dpct(f["entropy_delta_pct"]),
                     _absent(f["weight_drift_final"], ".4f"), _absent(f["transfer_change_pp"], "+.2f"),
                     f"{f['n_transfer']} ({cols})"])
        for g, s in f["by_group"].items():
            rows.append([f"  {g}", "", str(s["n_runs"]), dpct(s["entropy_delta_pct"]),
                         _absent(s["weight_drift_final"], ".4f"), _absent(s["transfer_change_pp"], "+.2f"),
                         str(s["n_transfer"])])
    return rows


def families(T: dict, alpha: float) -> list[Block]:
    t = T.get("model_families", {})
    if not t or t.get("skipped"):
        return [("p", f"*Not a cross-family matrix: {(t or {}).get('reason', 'not in stats.json')}.*")]
    B: list[Block] = [("p", "Each family's runs, and per configuration: mean entropy Δ% (last step), mean weight drift, "
                            "and mean transfer change in pp (runs with a transfer score and a pretrained reference)."),
                      ("table", ["Family / config", "Models", "Runs", "Entropy Δ%", "Weight drift", "Transfer Δ (pp)",
                                 "n transfer (score)"], _family_rows(t["families"]))]
    a = t.get("across_families", {})
    B.append(("p", f"Across families: mean entropy Δ% vs mean transfer change, Spearman ρ = "
                   f"{num(a['spearman_rho'], '.2f')} (p = {pval(a['spearman_p'])}, {a['spearman_p_method']}), n = "
                   f"{a['n']} families — {verdict(a, alpha, 'spearman_p')}." if not a.get("skipped")
                   else f"*Across families: not tested ({a.get('reason', '')}).*"))
    return B + [("fig", "extra_model_families")]


def blocks(st: dict[str, Any]) -> list[Block]:
    """The sections (level-2 headings), in order, from stats.json; "Model families" only when the
    matrix holds several (a one-family study has nothing to compare)."""
    T, alpha = st.get("tests") or {}, st.get("alpha", 0.05)
    B = ([("h", 2, "Early warning")] + early_warning(T, alpha) + [("h", 2, "Weight-drift control")]
         + weight_drift(T, alpha))
    fam = T.get("model_families") or {}
    several = bool(fam) and not fam.get("skipped")
    return B + ([("h", 2, "Model families")] + families(T, alpha) if several else [])
