"""The report's section "The reports' tests, recomputed": stats.json's `reports_*` entries
(computed by `statistics.reports_tests`), each beside the published value and our own test."""

from __future__ import annotations

from ..published import published_statistics
from .render import Block, num, pval, ran


def blocks(T: dict) -> list[Block]:
    """The report's section "The reports' tests, recomputed": stats.json's reports_* entries, each
    beside the published value and our own test of the same question."""
    pub = published_statistics(as_printed=True)  # the printed decimals
    rows: list[list[str]] = []
    e = T.get("reports_fullft_vs_lora") or {}
    ours_fl = next((x for x in ran(T.get("fullft_vs_lora", {})) if x.get("runs_a") == e.get("runs_a")), None)
    own = lambda key: (f"fullft_vs_lora: {'Welch' if key == 'welch_p_holm' else 'Mann–Whitney'} Holm p = "  # noqa: E731
                       f"{pval(ours_fl[key])}" if ours_fl else "fullft_vs_lora")
    w, mw = pub["welch_full_vs_lora_entropy"], pub["mannwhitney_full_vs_lora_entropy"]
    if e and not e.get("skipped"):
        rows.append(["Full FT vs LoRA, Welch t", e["grouping"], f"t = {num(e['welch_t'], '.2f')}", pval(e["welch_p"]),
                     f"d = {num(e['cohens_d_lora_minus_full'], '+.2f')} (LoRA − full FT)",
                     f"t = {w['t']}, p = {w['p']}, d = {w['cohens_d']}", own("welch_p_holm")])
        rows.append(["Full FT vs LoRA, Mann–Whitney U", e["grouping"], f"U = {num(e['mwu_u'], '.0f')}",
                     pval(e["mwu_p"]), "—", f"U = {mw['U']}, p = {mw['p']} (original report)", own("mwu_p_holm")])
    else:
        rows.append(["Full FT vs LoRA", "—", "not computed", "—", "—", f"t = {w['t']}, p = {w['p']}",
                     (e or {}).get("reason", "no runs")])
    e = T.get("lr_sweep") or {}
    lr = pub["lr_sweep_pearson"]
    if e and not e.get("skipped"):
        sp = pub["lr_sweep_spearman"]  # the original's scipy p (t approximation); our exact p is in §Learning-rate sweep
        rows.append(["log10 lr vs run entropy Δ%, Pearson and Spearman", f"{', '.join(e['runs'])} (one point per run)",
                     f"r = {num(e['pearson_r'])}, ρ = {num(e['spearman_rho'], '.2f')}",
                     f"{pval(e['pearson_p'])}, {pval(e.get('spearman_p_asymptotic', e['spearman_p']))} (scipy)", "—",
                     f"r = {lr['r']}, p = {lr['p']}; ρ = {sp['rho']}, p {sp['p_printed']} (original report)",
                     f"lr_sweep (the same test; Spearman exact p = {pval(e['spearman_p'])})"])
    floor = pub["entropy_floor_0.1"]
    for x in (T.get("reports_regularizers") or {}).get("entries", []):
        is_floor = x.get("regularizer") == "entropy_floor" and x.get("reg_lambda") is not None and \
            abs(float(x["reg_lambda"]) - 0.1) < 1e-12
        orig = pub.get(f"regularizer_{x.get('run')}")  # the original report's paired t of the paper's run ids
        published = (f"t = {orig['t']}, p = {orig['p']}, d = {orig['cohens_d']} (original report)" if orig else
                     f"p = {floor['p']}" if is_floor else "not printed")
        if x.get("skipped"):
            rows.append([f"{x['label']}, paired t", "—", "not computed", "—", "—", published, x["reason"]])
            continue
        rows.append([f"{x['label']}, paired t", x["grouping"], f"t({x['df']}) = {num(x['t'], '.2f')}",
                     pval(x["paired_p"]), f"d = {num(x['cohens_d'], '+.2f')}; mean diff {num(x['mean_diff'], '+.4f')} nats",
                     published, "regularizers (Welch on Δ%)"])
    for x in (T.get("reports_layer_position") or {}).get("entries", []):
        a = pub["anova_E2" if x.get("role") == "full-FT reference" else "anova_E5"]
        published = f"F = {a['F']}, p = {a['p']} (original report; 000: p > {pub['anova_layer_groups']['p_gt']})"
        if x.get("skipped"):
            rows.append([f"{x['label']}, one-way ANOVA", x.get("grouping", "—"), "not computed", "—", "—", published,
                         x["reason"]])
            continue
        rows.append([f"{x['label']}, one-way ANOVA", x["grouping"], f"F({x['df_between']}, {x['df_within']}) = "
                     f"{num(x['F'], '.2f')}", pval(x["anova_p"]), "means " + " | ".join(f"{v:+.2f}" for v in x["group_means"]),
                     published, "layer_groups (every configuration, Holm)"])
    if not rows:
        return [("p", "*Not run: no runs in the roles the reports' tests need (E2, E4–E6, R1, R2).*")]
    return [("p", "The reports' statistics as the original code computed them (`enhanced_analysis.py` in the "
                  "original study's repository, reference 1 — not part of this one): "
                  "regularizers by a paired t on the final per-layer entropy of each regularized run against the "
                  "full-FT reference's (not on Δ%); layer position by one ANOVA per run, for the full-FT reference and "
                  "LoRA r=8 only; full FT vs LoRA on per-layer Δ% pooled over the LoRA ranks, with Cohen's d as LoRA − "
                  "full FT. No multiple-comparison correction, one seed, layers as samples — as in the reports; p-values "
                  "as scipy gives them (Spearman's by its t approximation, as the original). Published: the seed "
                  "reports' value, or where they print none or only a rounded bound, the original authors' own "
                  "experiment_report.md (commit 5ee6260 of their repository). The last column names our own test of "
                  "the same question (stats.json) and its p for the same statistic, which the findings use; the "
                  "scorecard scores the published numbers against this table's."),
            ("table", ["Test (as the reports ran it)", "Runs and grouping", "Statistic", "p", "Effect size",
                       "Published", "Our test (stats.json)"], rows)]
