"""report.md and a self-contained report.html from a matrix directory's result files.

The assembler: it reads the files once and puts the sections in order. Reading and
formatting only (the report computes nothing new): the numbers come from
results.csv, the runs' final.json and history.json, baseline/*.json and stats.json; the
figures from figures/figures.json. Prose lives in `document` (abstract, research questions,
definitions, discussion, limitations, conclusions), per-run tables in `runtables`, the
comparison with the published numbers in `scorecard`, and Markdown/HTML in `render`. The
order follows a paper: abstract, questions, methods (setup, metrics, matrix, datasets),
results (experiment report §3.1–§3.8, English report §4.5 statistics, §6.3 zero-shot),
reproduction, discussion, limitations, conclusions. Sections are numbered as assembled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import document, future_work, reports_tests, runtables, scorecard
from .. import roles, table
from ..statistics import stats
from ..._io import read_json, read_json_checked, write_text
from .render import (Block, below, dpct, html_page, markdown, num, pct, pval, ran, skipped_note,
                     verdict)

# The offline sources of the data stage (synthetic images, scikit-learn's digits).
DEMO_DATASETS = ("synthetic", "digits")
BANNER = ("PIPELINE DEMONSTRATION — NOT A SCIENTIFIC RESULT. {why} The numbers below show that the "
          "pipeline runs end to end; they say nothing about how fine-tuning changes CLIP's attention.")


PRIMARY_TWO_SAMPLE = ("Welch's t is the primary test of every comparison (the reports' test; it compares the mean "
                      "Δ%, which is what the reports' claims are about, without assuming equal variances): its Holm p "
                      "carries the verdict. Mann–Whitney U (MW) is a rank check that needs no normality, shown beside "
                      "it with its own Holm p.")

PRIMARY_CORRELATION = ("Where Pearson and Spearman are both shown, Pearson is the primary test (as in the reports): "
                       "its p, Holm-corrected within the family, carries the verdict; Spearman's rank correlation is "
                       "a check that needs no linearity.")

# ----------------------------------------------------------------------------- sections

def _demo_reasons(m: table.Matrix) -> list[str]:
    # Training and E1 record whether the model was a randomly initialised preset
    # (`model_random_init`), so the report need not know the preset names.
    random_init = {r.get("model") for r in m.runs if r.final and r.final.get("model_random_init")}
    random_init |= {b.get("model") for b in m.baseline.values() if b.get("model_random_init")}
    datasets = {r.get("dataset") for r in m.runs} | set(m.baseline)
    why = [f"the model `{x}` is a randomly initialised preset, not pretrained CLIP"
           for x in sorted(filter(None, random_init))]
    why += [f"the dataset `{x}` is offline demo data, not the study's data" for x in sorted(filter(None, datasets))
            if x in DEMO_DATASETS]
    return why


def _setup(m: table.Matrix, sel: dict) -> list[Block]:
    r0 = m.runs[0] if m.runs else None
    cfg = r0.config() if r0 else {}
    o, ev, dc = cfg.get("optim", {}), cfg.get("eval", {}), cfg.get("data", {})
    lr_ = next((r for r in m.runs if r.get("method") == "lora" and (r.dir / "config.yaml").exists()), None)
    lcfg = lr_.config().get("lora", {}) if lr_ else {}
    env = m.env or ((read_json_checked(r0.dir / "env.json") if r0 and (r0.dir / "env.json").exists() else {}))
    gpu = env.get("gpu") or {}
    seeds = sorted({r.get("seed") for r in m.runs if r.get("seed") is not None})
    rows = [
        ["Model", ", ".join(sorted({str(r.get("model")) for r in m.runs})) or "—"],
        ["Training datasets", ", ".join(sel["datasets"]) or "—"],
        ["Zero-shot datasets", ", ".join(sorted({n for r in m.done for n in (r.final or {}).get("zeroshot", {})})) or "—"],
        ["Default lr (full FT) / weight decay", f"{num(sel['default_lr'], 'g')} / {num(sel['default_wd'], 'g')}"],
        ["Epochs / batch size", f"{', '.join(sorted({num(r.get('epochs'), 'g') for r in m.runs}))} / "
                                f"{', '.join(sorted({num(r.get('batch_size'), 'g') for r in m.runs}))}"],
        ["Warmup / grad clip / precision", f"{o.get('warmup_frac', '—')} / {o.get('grad_clip', '—')} / {o.get('precision', '—')}"],
        ["LoRA alpha / dropout", (f"{_lora_alphas(m)} / {lcfg.get('dropout', '—')}" if lcfg else "— (no LoRA runs)")],
        ["Split protocol", f"{dc.get('split', '—')} (eval subset seed {dc.get('eval_subset_seed', '—')})"],
        ["Metric eval", f"{dc.get('eval_subset_size', '—')} images, batches of "
                        f"{ev.get('batch_size', '—')}, aggregation {ev.get('aggregate', '—')}, head diversity "
                        f"{ev.get('diversity', '—')}, ERF q {ev.get('erf_q', '—')}, "
                        f"{ev.get('points_per_epoch', '—')} points per epoch"],
        ["Zero-shot prompts", str((cfg.get("zeroshot") or {}).get("templates", "—"))],
        ["Seeds", ", ".join(map(str, seeds)) or "—"],
        ["Hardware", f"{gpu.get('name', 'CPU')} ×{gpu.get('count', 1)}" if gpu else f"CPU ({env.get('cpu_count', '?')} cores)"],
        ["Versions", ", ".join(f"{k} {env[k]}" for k in ("python", "torch", "transformers", "peft") if env.get(k)) or "—"],
        ["Git commit", str(env.get("git_commit") or "—")],
        ["Runs", f"{len(m.done)} finished of {len(m.runs)}"],
    ]
    return [("h", 2, "Setup"), ("table", ["Item", "Value"], rows)] + [("p", n) for n in m.notes]


def _lora_alphas(m: table.Matrix) -> str:
    """Every LoRA run's alpha with its rank and runs ("2·rank" when all are), from its config.yaml."""
    by: dict[tuple, list[str]] = {}
    for r in m.runs:
        if r.get("method") == "lora" and (r.dir / "config.yaml").exists():
            c = r.config().get("lora") or {}
            by.setdefault((c.get("rank"), c.get("alpha")), []).append(r.run_id)
    if all(a is None or (k and float(a) == 2 * float(k)) for k, a in by):
        return "2·rank (" + ", ".join(f"{2 * k:g} at rank {k}" for k, _ in sorted(by, key=lambda t: t[0] or 0) if k) + ")"
    return "; ".join(f"{'2·rank' if a is None else f'{a:g}'} at rank {k} ({', '.join(rs)})"
                     for (k, a), rs in sorted(by.items(), key=lambda t: (t[0][0] or 0, t[0][1] or 0)))


def _family_table(test: dict, alpha: float, a: str = "a", b: str = "reference") -> list[Block]:
    """A family's comparisons, one row each; its skipped entries in one line below."""
    head = ["Comparison", "n (unit)", f"mean Δ% {a}", f"mean Δ% {b}", "diff [95% CI]", "Welch t", "p", "Holm p",
            "MW p", "MW Holm p", "Cohen's d"]
    rows = []
    for e in ran(test):
        rows.append([e["label"], f"{e['n_a']}+{e['n_b']} {e['unit']}", dpct(e["mean_a"]), dpct(e["mean_b"]),
                     f"{num(e['diff'], '+.2f')} [{num(e['ci_low'], '+.2f')}, {num(e['ci_high'], '+.2f')}]",
                     num(e["welch_t"], ".2f"), pval(e["welch_p"]), pval(e["welch_p_holm"]), pval(e["mwu_p"]),
                     pval(e["mwu_p_holm"]), num(e["cohens_d"], ".2f")])
    note = skipped_note(test.get("entries", []), "comparisons")
    only_mw = [e["label"].split(":")[0] for e in ran(test) if below(e.get("mwu_p_holm"), alpha)
               and not below(e.get("welch_p_holm"), alpha)]
    why = [("p", PRIMARY_TWO_SAMPLE + (f" Here Mann–Whitney alone is below α after Holm for {', '.join(only_mw)}: the "
                                       "ranks differ while the means do not differ significantly, so the verdict "
                                       "stays not significant." if only_mw else ""))] if rows else []
    return ([("table", head, rows)] if rows else []) + why + ([note] if note else [])


def _runs_table(runs: list[table.Run], extra: list[tuple[str, Any]] = ()) -> Block:
    """One row per configuration: accuracy and each metric's Δ% (its run's value with one seed,
    mean ± sd over its seeds with several; † where the initial value is near zero).

    Args:
        runs: the runs to show (every seed of each configuration).
        extra: (header, function of the configuration's first run) for configuration-level columns.
    """
    head = (["Run", "Configuration", "Seeds", "Best acc", "ΔEntropy", "ΔERF", "ΔGini", "ΔHead div"]
            + [h for h, _ in extra])
    rows = []
    for cid, a in runtables.config_summary(runs).items():
        r0 = a["runs"][0]
        marks = [runtables.UNSTABLE_MARK if runtables.unstable(mt, (a.get(f"{mt}_initial") or {}).get("mean")) else ""
                 for mt in table.METRICS]
        rows.append([cid, roles.describe(r0), str(a["n_seeds"]), runtables.cell(a, "best_acc", pct)]
                    + [runtables.cell(a, f"{mt}_delta_pct", dpct) + mk for mt, mk in zip(table.METRICS, marks)]
                    + [fn(r0) for _, fn in extra])
    return ("table", head, rows)


def _family_sentence(test: dict, alpha: float, what: str) -> str:
    """How many of a family differ from the reference after Holm, with direction and size."""
    done = ran(test)
    if not done:
        return f"{what}: not tested ({test.get('reason', 'no runs')})."
    sig = [e for e in done if below(e["p_holm"], alpha)]
    mw = [e for e in done if below(e.get("mwu_p_holm"), alpha) and not below(e["p_holm"], alpha)]
    mw_txt = ("; Mann–Whitney, the rank check, alone is below α after Holm for " + ", ".join(
        f"{e['label'].split(':')[0]} (MW Holm p = {pval(e['mwu_p_holm'])})" for e in mw)
              + " — the verdict follows Welch's t, the primary test" if mw else "")
    if not sig:
        best = min(done, key=lambda e: e["p"] if below(e["p"], 2.0) else 2.0)
        return (f"{what}: none of the {len(done)} configuration(s) changes entropy Δ significantly by Welch's t "
                f"(smallest p = {pval(best['p'])} for {best['label']}, Holm p = {pval(best['p_holm'])}; not significant)"
                f"{mw_txt}.")
    parts = [f"{e['label']} ({'higher' if e['diff'] > 0 else 'lower'} by {abs(e['diff']):.2f} pp, "
             f"p = {pval(e['p'])}, Holm p = {pval(e['p_holm'])}, d = {num(e['cohens_d'], '.2f')})" for e in sig]
    return (f"{what}: {len(sig)} of {len(done)} configuration(s) differ significantly by Welch's t after Holm "
            "correction: " + "; ".join(parts) + mw_txt + ".")


def _zeroshot_findings(m: table.Matrix, ref: list[table.Run], lora: list[table.Run]) -> list[str]:
    """One sentence per configuration (the full-FT reference, then each LoRA config): its
    zero-shot accuracy (seed mean ± sd with several seeds) against the pretrained model's."""
    out = []
    for cid, a in runtables.config_summary(ref + lora).items():
        r0 = a["runs"][0]
        zs, zb = (a.get("zeroshot_acc") or {}).get("mean"), (a.get("zeroshot_acc_base_only") or {}).get("mean")
        zf = (a.get("zeroshot_acc_frozen_projection") or {}).get("mean")
        name = roles.headline_zeroshot([r0])
        base = roles.pretrained_zeroshot(m.baseline, name, r0.get("model"))
        if zs is None or base is None:
            continue
        lora_run = r0.get("method") == "lora"
        seeds_txt = f", {a['n_seeds']} seeds" if a["n_seeds"] > 1 else ""
        txt = (f"Zero-shot on {name} ({cid}: {roles.describe(r0)}{seeds_txt}; best-accuracy checkpoint): {pct(base)} "
               f"pretrained → {runtables.cell(a, 'zeroshot_acc', pct)} as trained"
               f"{' (adapters active)' if lora_run else ''} ({100 * (zs - base) / base:+.1f}% relative)")
        if zf is not None:
            txt += (f", {runtables.cell(a, 'zeroshot_acc_frozen_projection', pct)} with the pretrained projection "
                    f"({'the reports' + chr(39) + ' full-FT protocol, ' if not lora_run else ''}"
                    f"{100 * (zf - base) / base:+.1f}%)")
        if zb is not None:
            txt += (f", {runtables.cell(a, 'zeroshot_acc_base_only', pct)} with adapters off and the pretrained "
                    f"projection (the reports' LoRA protocol, {100 * (zb - base) / base:+.1f}%)")
        out.append(txt + ".")
    return out


def _findings(m: table.Matrix, st: dict, sel: dict) -> list[str]:
    T, alpha, out = st["tests"], st.get("alpha", 0.05), []
    for e in ran(T.get("fullft_vs_lora", {})):
        rel = (f"{'higher' if e['mean_b'] > e['mean_a'] else 'lower'} by {abs(e['diff']):.2f} pp"
               if e["mean_b"] != e["mean_a"] else "the same")
        out.append(f"Full FT vs LoRA on {e['label']}: full FT changed per-layer entropy by {dpct(e['mean_a'])} on "
                   f"average, LoRA by {dpct(e['mean_b'])}, so LoRA's entropy Δ is {rel} "
                   f"(95% CI of full − LoRA [{num(e['ci_low'], '+.2f')}, {num(e['ci_high'], '+.2f')}]; Welch t = "
                   f"{num(e['welch_t'], '.2f')}, p = {pval(e['p'])}, Holm p = {pval(e['p_holm'])}; Mann–Whitney p = "
                   f"{pval(e['mwu_p'])}; Cohen's d = {num(e['cohens_d'], '.2f')}; n = {e['n_a']}+{e['n_b']} {e['unit']})"
                   f" — {verdict(e, alpha)}.")
    e = T.get("lr_sweep", {})
    if not e.get("skipped") and e:
        d = "falls" if e["pearson_r"] < 0 else "rises" if e["pearson_r"] > 0 else "does not change"
        out.append(f"Learning rate: entropy Δ {d} as the learning rate rises (log10 lr vs Δ: Pearson r = "
                   f"{num(e['pearson_r'])}, p = {pval(e['pearson_p'])}; Spearman ρ = {num(e['spearman_rho'], '.2f')}, "
                   f"p = {pval(e['spearman_p'])}; n = {e['n']} runs) — {verdict(e, alpha, 'pearson_p')}.")
    # zeroshot_acc is the first zero-shot dataset's (FORMATS.md); compare with its baseline
    for ds in sel["datasets"]:
        ref = roles.by_config(sel["reference"][ds])
        out += _zeroshot_findings(m, ref[next(iter(ref))] if ref else [], sel["lora"][ds])
    out.append(_family_sentence(T.get("regularizers", {}), alpha, "Regularizers vs no regularizer"))
    out.append(_family_sentence(T.get("weight_decay", {}), alpha, "Weight decay vs the default"))
    out.append(_family_sentence(T.get("freezing", {}), alpha, "Layer freezing vs no freezing"))
    lg = ran(T.get("layer_groups", {}))
    if lg:
        sig = [e for e in lg if below(e["p_holm"], alpha)]
        low = min(lg, key=lambda e: e["p"] if below(e["p"], 2.0) else 2.0)
        out.append(f"Layer position: the early/middle/late thirds differ in entropy Δ in {len(sig)} of {len(lg)} "
                   f"configurations after Holm correction (one-way ANOVA; smallest p = {pval(low['p'])} for "
                   f"{low['label']}, Holm p = {pval(low['p_holm'])})" + ("" if sig else " — not significant") + ".")
    mc = ran(T.get("metric_correlations", {}))
    if mc:
        out.append("Metric coupling across runs: " + "; ".join(
            f"{e['a']}–{e['b']} r = {num(e['pearson_r'], '.2f')} (Holm p = {pval(e['pearson_p_holm'])}, "
            f"{verdict(e, alpha, 'pearson_p_holm')})" for e in mc) + ".")
    e = T.get("collapse_vs_zeroshot", {})
    if e and not e.get("skipped"):  # RQ3's one answer: the reports' protocol (the as-trained view is secondary)
        out.append(f"Collapse vs zero-shot across runs ({e['label']}): Pearson r = {num(e['pearson_r'], '.2f')}, p = "
                   f"{pval(e['pearson_p'])} (n = {e['n']} runs) — {verdict(e, alpha, 'pearson_p')}; "
                   "an association, not a cause (experiment report §4.3).")
    return out




# ----------------------------------------------------------------------------- results sections

def _fullft_lora(T: dict, alpha: float) -> list[Block]:
    t, pooled = T.get("fullft_vs_lora", {}), T.get("fullft_vs_lora_pooled", {})
    if not t.get("entries"):
        return [("p", f"*Not run: {t.get('reason', 'no runs')}.* (E2–E7)")]
    B = _family_table(t, alpha, "full FT", "LoRA")
    if pooled and not pooled.get("skipped"):
        B += _family_table({"entries": [pooled]}, alpha, "full FT", "LoRA")
        B.append(("p", f"Pooled row: {pooled.get('pooling', '')} (ranks {pooled.get('lora_ranks')}); a test of its "
                       "own, so its Holm p is its raw p."))
    elif pooled:
        B.append(("p", f"*Pooled over datasets: not run ({pooled.get('reason', '')}).*"))
    return B + [("fig", "fig5_fullft_vs_lora"), ("fig", "fig5b_fullft_vs_lora_pets")]


def _lr_sweep(sel: dict, T: dict, alpha: float) -> list[Block]:
    B: list[Block] = [_runs_table(sel["lr_sweep"], [("lr", lambda r: num(r.get("lr"), "g"))])] if sel["lr_sweep"] else []
    e = T.get("lr_sweep", {})
    B.append(("p", f"log10 lr vs entropy Δ: Pearson r = {num(e['pearson_r'])} (p = {pval(e['pearson_p'])}), Spearman "
                   f"ρ = {num(e['spearman_rho'], '.2f')} (p = {pval(e['spearman_p'])}, "
                   f"{e.get('spearman_p_method', 'asymptotic')}), n = {e['n']} runs. {PRIMARY_CORRELATION}")
             if e and not e.get("skipped") else ("p", f"*Not run: {e.get('reason', 'no runs')}.* (A1 + E2)"))
    if ran(T.get("lr_vs_default", {})):
        B += _family_table(T["lr_vs_default"], alpha, "this lr", "default lr")
    return B + [("fig", "fig6_lr_sweep")]


def _layer_groups(T: dict) -> list[Block]:
    lg, pooled = T.get("layer_groups", {}), T.get("layer_groups_pooled", {})
    B: list[Block] = []
    rows = [[e["label"], " | ".join(f"{g[0]}–{g[-1]}" for g in e["groups"]),
             " | ".join(f"{x:+.2f}" for x in e["group_means"]), num(e["F"], ".2f"), pval(e["p"]), pval(e["p_holm"])]
            for e in ran(lg)]
    if pooled and not pooled.get("skipped"):
        rows.append([f"{pooled['label']} ({pooled['n_configs']} configs)",
                     " | ".join(f"{g[0]}–{g[-1]}" for g in pooled["groups"]),
                     " | ".join(f"{x:+.2f}" for x in pooled["group_means"]), num(pooled["F"], ".2f"),
                     pval(pooled["p"]), pval(pooled["p_holm"])])
    if rows:
        B.append(("table", ["Run", "groups (layers)", "mean Δ% per third", "F", "p", "Holm p"], rows))
        grouping = (ran(lg) or [pooled])[0].get("grouping", "")
        B.append(("p", f"One-way ANOVA of per-layer entropy Δ% by layer position; grouping: {grouping}. The "
                       "pooled row puts every configuration's layers in one test "
                       f"({(pooled or {}).get('note', 'not run')})."))
    note = skipped_note(lg.get("entries", []), "configurations")
    if note:
        B.append(note)
    if not rows and not note:
        B.append(("p", f"*Not run: {lg.get('reason', 'no per-layer Δ')}.*"))
    return B + [("fig", "fig4_layer_entropy_heatmap"), ("fig", "fig10_per_layer_delta_heatmap")]


def _statistics(T: dict, st: dict) -> list[Block]:
    B: list[Block] = [("p", f"Unit of analysis: {st.get('unit_rule', '')}. Bootstrap: {st.get('n_boot')} resamples, "
                            f"seed {st.get('seed')}. Holm correction within each family of tests. p-values: "
                            + "; ".join(f"{k}: {v}" for k, v in (st.get("p_methods") or {}).items()) + ".")]
    corr = ran(T.get("metric_correlations", {})) + ran(T.get("entropy_vs_accuracy", {}))
    if corr:
        B.append(("p", PRIMARY_CORRELATION))
        B.append(("table", ["Pair", "n (unit)", "Pearson r", "p", "Holm p", "Spearman ρ", "p", "Holm p"], [
            [e["label"], f"{e['n']} {e.get('unit', 'runs')}", num(e["pearson_r"]), pval(e["pearson_p"]),
             pval(e["pearson_p_holm"]), num(e["spearman_rho"]), pval(e["spearman_p"]), pval(e["spearman_p_holm"])]
            for e in corr]))
    c = T.get("convergence", {})
    if c and not c.get("skipped"):
        late = [v["run_id"] for v in c.get("runs", []) if v.get("converged") is False]
        B.append(("p", f"Convergence ({(c.get('criterion') or {}).get('text', '')}): {c.get('n_converged')} of "
                       f"{c.get('n_runs')} runs converged" + (f"; not: {', '.join(late)}" if late else "")
                       + (f"; {c.get('n_skipped')} runs had too few points" if c.get("n_skipped") else "") + "."))
    return B + [("fig", "fig11_statistical_summary"), ("fig", "fig13_metric_correlations")]


def _families(sel: dict, T: dict, alpha: float) -> list[Block]:
    B: list[Block] = []
    prim = sel["primary"]
    for title, key, runs, what, fig in (
            ("Layer freezing", "freezing", sel["freezing"], "A3", "extra_frozen_layers"),
            ("LoRA target modules", None, sel["lora_all"], "A2", "extra_lora_qkvo"),
            ("Regularization (APR, entropy floor)", "regularizers", sel["reference"].get(prim, []) + sel["regularized"],
             "R1, R2", "fig8_regularization"),
            ("Weight decay", "weight_decay", sel["wd_sweep"], "R3", None)):
        B.append(("h", 2, title))
        has = len(roles.by_config(runs)) >= 2
        B.append(_runs_table(runs) if has else ("p", f"*No {what} runs in this matrix.*"))
        if key and has:
            B += _family_table(T.get(key, {}), alpha, title.split(" (")[0].lower(), "reference")
        if fig:
            B.append(("fig", fig))
    return B


def _results(m: table.Matrix, st: dict, sel: dict) -> list[Block]:
    T, alpha = st["tests"], st.get("alpha", 0.05)
    lora = [r for ds in sel["datasets"] for r in sorted(sel["lora"][ds], key=lambda r: r.get("lora_rank") or 0)]
    B: list[Block] = [("h", 2, "Pretrained baseline (E1)")] + runtables.baseline_blocks(m.baseline)
    B += [("fig", "fig2_baseline_structure"), ("h", 2, "Grand comparison")]
    B += runtables.grand_tables(m.done) if m.done else [("p", "*No finished runs.*")]
    B += [("h", 2, "Full fine-tuning vs LoRA")] + _fullft_lora(T, alpha)
    B += [("h", 2, "LoRA rank"), _runs_table(lora) if lora else ("p", "*No LoRA runs (E4–E7) in this matrix.*")]
    B += [("h", 2, "Zero-shot transfer (three protocols)")] + runtables.zeroshot_table(m.done, m.baseline)
    B += [("fig", "fig7_collapse_vs_zeroshot"), ("fig", "fig15_zeroshot_extended"), ("fig", "extra_wise_interpolation")]
    B += [("h", 2, "Learning-rate sweep")] + _lr_sweep(sel, T, alpha) + _families(sel, T, alpha)
    B += [("h", 2, "Layer-wise patterns")] + _layer_groups(T)
    B += [("h", 2, "Statistics")] + _statistics(T, st)
    B += [("h", 2, "The reports' tests, recomputed")] + reports_tests.blocks(T)
    B += future_work.blocks(st)  # early warning, weight drift, model families (the reports' future work)
    B += [("h", 2, "Training dynamics")] + [("fig", n) for n in (
        "fig3_triple_curve", "fig9_head_diversity", "fig17_gini_evolution", "extra_erf95_evolution",
        "fig12_training_dynamics", "fig14_convergence", "extra_attention_overlays", "fig16_dashboard")]
    return B


def _number(B: list[Block]) -> list[Block]:
    """Number the level-2 sections in order (the abstract stays unnumbered)."""
    out, i = [], 0
    for b in B:
        if b[0] == "h" and b[1] == 2 and b[2] != "Abstract":
            i += 1
            b = ("h", 2, f"{i}. {b[2]}")
        out.append(b)
    return out


def _blocks(m: table.Matrix, st: dict, figs: dict, card: dict) -> list[Block]:
    sel = roles.select(m)
    why = _demo_reasons(m)
    answers = document.research_questions(m, st, sel)
    B: list[Block] = [("h", 1, f"Attention collapse in fine-tuning: {m.spec.get('name') or m.dir.name}")]
    if why:
        B.append(("banner", BANNER.format(why="Why: " + "; ".join(why) + ".")))
    if m.spec.get("description"):
        B.append(("p", str(m.spec["description"]).strip()))
    B += [("h", 2, "Abstract")] + document.abstract(m, sel, answers, bool(why), st)
    B += [("h", 2, "Research questions")] + document.rq_blocks(answers, st)
    B += _setup(m, sel) + [("h", 2, "Training, regularizers and zero-shot")] + document.methods(m)
    B += [("h", 2, "Metric definitions")] + document.definitions(document.first_config(m))
    B += [("h", 2, "Experiment matrix")] + runtables.matrix_table(m.runs)
    B += [("h", 2, "Datasets")] + runtables.datasets_table(m.done, m.baseline)
    B += _results(m, st, sel)
    placed = {b[1] for b in B if b[0] == "fig"}
    B += [("fig", n) for n in figs if n not in placed]  # a figure registered later still appears
    B += [("h", 2, "Reproduction scorecard")] + scorecard.blocks(card)
    B += [("h", 2, "Findings"), ("list", _findings(m, st, sel))]
    B += [("h", 2, "Discussion")] + document.discussion(m, st, sel)
    B += [("h", 2, "Limitations")] + document.limitations(m, st, why)
    B += [("h", 2, "Conclusions")] + document.conclusions(answers, st)
    B += [("h", 2, "References")] + document.references()
    B += [("h", 2, "Runs"), ("table", ["Run", "Group", "Seed", "Status", "Directory"],
                             [[r.run_id, str(r.get("group", "")), str(r.get("seed", "")),
                               str(r.get("status") or ("done" if r.final else "missing")), f"{r.run_id}/"]
                              for r in m.runs])]
    B += [("h", 2, "Figure index"), ("table", ["Figure", "File / status"],
                                     [[n, v.get("file") or f"skipped: {v.get('skipped')}"] for n, v in figs.items()])]
    return _number(B)


def write(matrix_dir: str | Path) -> tuple[Path, Path]:
    """Write `report.md`, a self-contained `report.html` and every scorecard row (`scorecard.csv`)
    into the matrix directory.

    Reads results.csv (via `table.load`), stats.json (running `stats.analyze` first if it is
    missing) and figures/figures.json (or, without it, whatever figures/*.png exist).

    Returns:
        (md_path, html_path).
    """
    root = Path(matrix_dir)
    m = table.load(root)
    st = stats.read(root) if (root / "stats.json").exists() else stats.analyze(root)
    if (root / "figures" / "figures.json").exists():
        figs = read_json(root / "figures" / "figures.json")
    else:
        figs = {p.stem: {"file": f"figures/{p.name}", "caption": p.stem} for p in sorted((root / "figures").glob("*.png"))}
    card = scorecard.compare(scorecard.ours(m, st))
    scorecard.write_csv(card, root / "scorecard.csv")
    B = _blocks(m, st, figs, card)
    md, hp = root / "report.md", root / "report.html"
    write_text(md, markdown(B, figs))
    write_text(hp, html_page(B, figs, root))
    return md, hp
