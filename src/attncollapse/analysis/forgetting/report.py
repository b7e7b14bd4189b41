"""The forgetting study's report: report.md and report.html from stats.json alone.

Each section answers one of the study's questions with numbers read from the stats dict
(nothing is recomputed here); a statistic the design could not support shows its one-line
reason. Blocks and renderers are `analysis/report/render.py`'s, which also give it the linked
table of contents and heading anchors every report has (`render.contents`).
"""

from __future__ import annotations

from pathlib import Path

from ..report.render import html_page, markdown, num, pval
from .predictors import PREDICTORS

def _unsupported(value) -> str | None:
    return value.get("unsupported") if isinstance(value, dict) else None


def _why(value, what: str) -> list:
    return [("p", f"*{what}: not computed — {_unsupported(value) or 'no entry'}.*")]


def design(s: dict) -> list:
    d = s["design"]
    lo, hi = d["seeds_per_cell_min"], d["seeds_per_cell_max"]
    seeds = str(hi) if lo == hi else f"{lo}–{hi}"
    out = [("p", f"{s['n_runs']} runs on the primary backbone ({s['n_runs_all_backbones']} on all backbones); the core "
                 f"grid (full_ft, lora_r8) holds {d['n_core_runs']} runs in {d['n_cells']} cells: datasets "
                 f"{', '.join(d['datasets']) or '—'}, learning rates {', '.join(f'{x:g}' for x in d['learning_rates']) or '—'}, "
                 f"{seeds} seed(s) per cell. Every pooled statistic uses the "
                 "primary backbone only; the secondary backbone is analysed on its own.")]
    rows = [[c["dataset"], c["method"], f"{c['lr']:g}", c["n"], f"{num(c['test_acc'], '.2f')} ± {num(c['test_acc_sd'], '.2f')}",
             f"{num(c['delta_entropy_pct'], '+.2f')} ± {num(c['delta_entropy_sd'], '.2f')}", num(c["delta_entropy_last_layer_pct"], "+.2f"),
             f"{num(c['cifar100_retention'], '.1f')} ± {num(c['cifar100_retention_sd'], '.1f')}", num(c["cifar10_retention"], ".1f"),
             num(c["weight_drift_rel"], ".4f"), num(c["embedding_drift"], ".3f"), num(c["cka_mean"], ".3f")] for c in s["cells"]]
    out.append(("table", ["dataset", "method", "lr", "n", "test acc %", "ΔH %", "ΔH12 %", "C100 ret. %", "C10 ret. %",
                          "w-drift", "emb. drift", "CKA"], rows))
    return out


def dose(s: dict) -> list:
    dr = s["dose_response"]
    if _unsupported(dr):
        return _why(dr, "dose-response")
    rows = [[e["dataset"], e["method"], e["metric"], e["n_runs"], num(e["spearman_rho"], "+.3f"), pval(e["p_value"])] for e in dr]
    return [("p", "Spearman ρ of each quantity with log10(lr) within a (dataset, method) group. With three tied seeds per "
                  "learning rate the largest reachable |ρ| is below 1."),
            ("table", ["dataset", "method", "quantity", "n", "ρ", "p"], rows), ("fig", "dose_response")]


def paired(s: dict) -> list:
    pt = s["paired_method_tests"]
    out = _why(pt, "paired tests") if _unsupported(pt) else [
        ("p", f"Full FT − LoRA on identical (dataset, lr, seed); paired t-test (scipy `ttest_rel`), Wilcoxon signed-rank "
              f"(n ≥ 6), d_z = mean/SD of the differences; Holm over the family of {len(pt)} t-tests."),
        ("table", ["dataset", "metric", "n", "Full FT", "LoRA", "diff", "d_z", "p (t)", "p Holm", "p Wilcoxon"],
         [[e["dataset"], e["metric"], e["n_pairs"], num(e["full_ft_mean"]), num(e["lora_mean"]), num(e["mean_difference"], "+.3f"),
           num(e["cohens_dz"], "+.2f"), pval(e["t_p_value"]), pval(e["t_p_holm"]), pval(e["wilcoxon_p_value"])] for e in pt])]
    iso = s["iso_accuracy"]
    if isinstance(iso, list) and iso:
        out.append(("p", "At each method's best seed-mean validation accuracy (iso-accuracy operating points):"))
        out.append(("table", ["dataset", "Full FT lr", "test %", "C100 ret. %", "LoRA lr", "test %", "C100 ret. %"],
                    [[e["dataset"], f"{e['full_ft_lr']:g}", num(e["full_ft_test_acc"], ".2f"),
                      num(e["full_ft_cifar100_retention"], ".1f"), f"{e['lora_r8_lr']:g}", num(e["lora_r8_test_acc"], ".2f"),
                      num(e["lora_r8_cifar100_retention"], ".1f")] for e in iso]))
    return out


def ranking(s: dict) -> list:
    out = []
    for stage, what in (("final", "at the selected checkpoint"), ("epoch1", "after epoch 1")):
        pr = s[f"predictor_ranking_{stage}"]
        if _unsupported(pr):
            out += _why(pr, f"predictor ranking {what}")
            continue
        out.append(("p", f"Spearman with CIFAR-100 retention over the core runs, {what} (* = the same value at both stages)."))
        out.append(("table", ["predictor", "n", "ρ overall", "mean |ρ| within dataset", "mean |ρ| within dataset × method",
                              "signed mean ρ within"],
                    [[PREDICTORS[e["predictor"]], e["n"], num(e["spearman_overall"], "+.3f"),
                      num(e["abs_spearman_within_dataset_mean"]), num(e["abs_spearman_within_mean"]),
                      num(e["spearman_within_mean"], "+.3f")] for e in pr]))
    return out + [("fig", "predictor_bars")]


def bootstrap(s: dict) -> list:
    bg = s["bootstrap_predictor_gap"]
    if _unsupported(bg):
        return _why(bg, "bootstrap")
    n = bg[0]["n_units"]
    return [("p", f"{n} cell means resampled with replacement 4,000 times (`RandomState(0)`); percentile 95% CIs of |ρ| "
                  f"and of the paired gap |ρ_CKA| − |ρ_signal| (uncorrected). {s['bootstrap_n_gaps_excluding_zero']} of "
                  f"{s['bootstrap_n_comparisons']} gaps exclude zero."),
            ("table", ["signal", "|ρ| (cells)", "95% CI", "gap vs CKA", "gap CI", "CKA wins"],
             [[PREDICTORS[e["predictor"]], num(e["abs_rho"]), f"[{num(e['ci_low'])}, {num(e['ci_high'])}]",
               num(e["gap_vs_reference_mean"], "+.3f"), f"[{num(e['gap_ci_low'], '+.3f')}, {num(e['gap_ci_high'], '+.3f')}]",
               num(e["reference_wins_fraction"])] for e in bg])]


def selection(s: dict) -> list:
    out = [("p", "Candidates: core runs within a margin of the dataset's best validation accuracy (≥ 3 needed). Each "
                 "signal picks one run (lowest drift, highest CKA) without seeing transfer; cells give the picked run's "
                 "retention (%) and its fraction of the candidates' range.")]
    sig = ("cka_mean", "embedding_drift", "weight_drift_rel", "abs_delta_entropy_pct", "abs_delta_gini_pct")
    rows = []
    for margin, entries in s["selection_utility_margins"].items():
        if _unsupported(entries):
            out += _why(entries, f"margin {margin}")
            continue
        for e in entries:
            rows.append([e["dataset"], margin, e["n_candidates"], f"{num(e['worst_retention'], '.1f')}–{num(e['oracle_retention'], '.1f')}",
                         num(e["random_choice_retention"], ".1f")]
                        + [f"{num(e['signals'][k]['retention'], '.1f')} ({num(e['signals'][k]['fraction_of_range'], '.2f')})" for k in sig])
    out.append(("table", ["dataset", "margin", "cand.", "range", "random"] + [PREDICTORS[k] for k in sig], rows))
    skipped = [n for n in s["notes"] if n.startswith("selection_utility_margins")]
    return out + ([("p", "*Not testable: " + "; ".join(skipped) + ".*")] if skipped else [])


def early(s: dict) -> list:
    t = s["temporal_ordering"]
    if _unsupported(t):
        return _why(t, "early warning")
    out = [("p", f"{t['n_runs']} core runs; Spearman of the epoch-1 value with final retention: signed ΔH "
                 f"{num(t['epoch1_delta_entropy_pct_vs_final']['spearman_rho'], '+.3f')}, weight drift "
                 f"{num(t['epoch1_weight_drift_rel_vs_final']['spearman_rho'], '+.3f')}, CKA "
                 f"{num(t['epoch1_cka_mean_vs_final']['spearman_rho'], '+.3f')}. AUC for damaged (retention < "
                 f"{t['damaged_below_pct']:g}%) is oriented {t['orientation']}.")]
    cl = t["cell_level"]
    rows = []
    for key in ("embedding_drift", "cka_mean", "weight_drift_rel", "abs_delta_entropy_pct", "delta_entropy_pct"):
        run = t.get(f"epoch1_{key}_auc_for_damage", {})
        rows.append([PREDICTORS[key], num((cl.get(key) or {}).get("auc_oriented")), num(run.get("auc_oriented"))])
    head = (f"cell AUC ({cl['n_damaged']} damaged / {cl['n_healthy']} healthy)" if "n_damaged" in cl else "cell AUC")
    run0 = t.get("epoch1_cka_mean_auc_for_damage", {})
    out.append(("table", ["epoch-1 signal", head, f"run AUC ({run0.get('n_damaged', '—')} / {run0.get('n_healthy', '—')})"], rows))
    for part in ("cell_level", "run_level"):
        if _unsupported(t.get(part)):
            out += _why(t[part], part.replace("_", " "))
    return out


def polarity(s: dict) -> list:
    pg, bc = s["polarity_by_group"], s["backbone_check"]
    keys = ("delta_entropy_pct", "cka_mean", "weight_drift_rel", "embedding_drift")
    out = []
    if isinstance(pg, list) and pg:
        out += [("p", f"Run-level Spearman with retention on {pg[0]['on_dataset']}, per backbone model × method."),
                ("table", ["model", "backbone", "method", "n", "lrs"] + [PREDICTORS[k] for k in keys],
                 [[e["model"], e["backbone"], e["method"], e["n"], e["n_rates"]]
                  + [num((e.get(k) or {}).get("rho"), "+.3f") for k in keys] for e in pg])]
    if _unsupported(bc):
        return out + _why(bc, "second backbone")
    for model, spec in bc.items():
        preds = ", ".join(f"{PREDICTORS[k]} {num(v['spearman_rho'], '+.3f')} (n {v['n']})" for k, v in spec["predictors"].items())
        out.append(("p", f"Second backbone `{model}`, {spec['n_runs']} runs pooled over methods: {preds}."))
    return out


def layers(s: dict) -> list:
    h = s["layer_heatmap"]
    if _unsupported(h):
        return _why(h, "per-layer ΔH")
    early = max(((abs(v), g, lr, i + 1) for g, spec in h["groups"].items() for lr, row in zip(spec["lrs"], spec["grid"])
                 for i, v in enumerate(row[:4])), default=None)
    cells = {(c["dataset"], c["method"], c["lr"]): c["delta_entropy_pct"] for c in s["cells"]}
    late = {g: (spec["grid"][-1][-1], sum(spec["grid"][-1]) / len(spec["grid"][-1]),
                cells.get((*g.split("/"), spec["lrs"][-1]))) for g, spec in h["groups"].items()}
    text = ("At the highest learning rate, last-block ΔH against the mean of the per-block ΔH and against ΔH of the "
            "block-averaged entropy (the signed ΔH of the cells table): " + ", ".join(
                f"{g} {num(a, '+.2f')}% vs {num(b, '+.2f')}% / {num(c, '+.2f')}%" for g, (a, b, c) in late.items()) + ".")
    if early:
        text += (f" The largest seed-mean |ΔH| in blocks 1–4 over all core cells is {num(early[0], '.2f')}% "
                 f"({early[1]} at lr {early[2]:g}, block {early[3]}); over single runs it is "
                 f"{num(h['blocks_1_4_max_abs_run']['value'], '.2f')}% ({h['blocks_1_4_max_abs_run']['run_id']}, block "
                 f"{h['blocks_1_4_max_abs_run']['block']}).")
    return [("p", text), ("fig", "layer_heatmap")]


def interpolation(s: dict) -> list:
    it = s["interpolation"]
    if _unsupported(it):
        return _why(it, "interpolation")
    rows = [[sw["run_id"], sw["variant"], p["alpha"], num(100 * p["test_acc"], ".2f"), num(p["transfer_retention"], ".1f"),
             num(p["delta_entropy_pct"], "+.2f"), num(p["cka_mean"], ".3f"), num(p["weight_drift_rel"], ".4f")]
            for sw in it["sweeps"] for p in sw["sweep"]]
    twins = "; ".join(f"{sw['run_id']}: α = 1 retention {num(sw['sweep'][-1]['transfer_retention'], '.1f')}% vs the grid "
                      f"run's {num(sw['grid_run_retention'], '.1f')}%" for sw in it["sweeps"] if sw.get("grid_run_retention") is not None)
    return [("p", "θ(α) = (1 − α)·θ_initial + α·θ_selected, classifier kept fine-tuned; one seed per sweep (illustrative). "
                  "Per method the record with the best validation accuracy is the one the authors show: "
                  + ", ".join(f"{m}: {r}" for m, r in it["selected_by_val"].items()) + "."),
            ("p", "Each sweep retrains its configuration, so α = 1 is another sample of the cell, not the grid run"
                  + (f" ({twins})." if twins else ".")),
            ("table", ["sweep", "variant", "α", "test %", "C100 ret. %", "ΔH %", "CKA", "w-drift"], rows), ("fig", "interpolation")]


def verdict(s: dict) -> list:
    v = s["verdict"]
    if _unsupported(v):
        return _why(v, "verdict")
    return [("p", f"Signed ΔH: mean |ρ| within dataset × method {num(v['signed_dh_within_mean_abs'])}, but ρ over all core "
                  f"runs {num(v['signed_dh_overall'], '+.3f')} and signed within-group mean "
                  f"{num(v['signed_dh_within_signed_mean'], '+.3f')} (per group: "
                  + ", ".join(f"{g} {num(r, '+.3f')}" for g, r in v["signed_dh_within_groups"].items()) + "); its sign "
                  f"{'flips' if v['signed_dh_sign_flips_across_groups'] else 'does not flip'} across groups, while "
                  f"{', '.join(PREDICTORS[k] for k in v['stable_sign_signals']) or 'no drift signal'} keep one sign in every "
                  f"group. Rule ({v['rule']}): the verdict **{'holds' if v['holds'] else 'does not hold'}** in these numbers.")]


def reproduction(s: dict, card: list[dict]) -> list:
    if not card:
        return [("p", "No published summary.json was given, so nothing was compared.")]
    t = s["scorecard"]
    out = [("p", f"{t['compared']} published numbers compared (summary.json and the digest's extra columns); "
                 f"{t['match']} match, {t['differs']} differ, {t['missing_in_ours']} missing in ours (scorecard.csv).")]
    pt = {(e["dataset"], e["metric"]): e for e in s["paired_method_tests"]} if isinstance(s["paired_method_tests"], list) else {}
    notes = ["Ours is an independent implementation on the records (no pandas, scipy for every test, Holm and the "
             "vectorised bootstrap by hand); the same `RandomState(0)` draws give the same bootstrap intervals."]
    es, pe = pt.get(("eurosat", "delta_entropy_pct")), pt.get(("pets", "delta_entropy_pct"))
    if es and pe:
        notes.append(f"Paired ΔH, Full FT vs LoRA: EuroSAT p = {pval(es['t_p_value'])} (Holm {pval(es['t_p_holm'])}), Pets "
                     f"p = {pval(pe['t_p_value'])} raw and {pval(pe['t_p_holm'])} after Holm; quote one kind for both.")
    t = s["temporal_ordering"]
    if isinstance(t, dict) and "orientation" in t:
        notes.append("The AUCs for damage choose their direction from the outcome (max(AUC, 1 − AUC)); they are "
                     "upper bounds of what a signal of fixed direction achieves, as the summary's numbers are.")
    notes.append("Numbers the paper hard-codes in prose (split sizes, pretrained accuracies, the layer remarks) are "
                 "not in summary.json and not on this scorecard.")
    h = s["layer_heatmap"]
    if isinstance(h, dict) and "blocks_1_4_max_abs_run" in h:
        notes.append(f"The layer remark \"first four blocks within 1.8%\" is a single-run maximum "
                     f"({num(h['blocks_1_4_max_abs_run']['value'], '.2f')}%); seed means stay lower (see the layer "
                     "section), and a \"block mean\" there is ΔH of the block-averaged entropy, not the mean of per-block ΔH.")
    out.append(("list", notes))
    bad = [r for r in card if r["verdict"] != "match"]
    if bad:
        out.append(("table", ["stats key", "published", "ours", "rule", "verdict"],
                    [[r["key"], r["published"], r["ours"], r["rule"], r["verdict"]] for r in bad[:60]]))
    return out


def problems(s: dict) -> list:
    lines = s["record_problems"] + s["notes"]
    return [("list", lines)] if lines else [("p", "Every record was read; every statistic was computed.")]


SECTIONS = (("Design and cells", design), ("Does the learning rate order drift and forgetting?", dose),
            ("Full FT against LoRA at matched settings", paired), ("Which signal ranks forgetting?", ranking),
            ("Is the ranking separable?", bootstrap), ("Can a signal choose the run to deploy?", selection),
            ("Early warning after one epoch", early), ("Is a signal's sign stable across backbones and methods?", polarity),
            ("Where in the network does attention change?", layers),
            ("Accuracy against retention", lambda s: [("fig", "frontier")]), ("Weight interpolation", interpolation),
            ("Dose meter, not damage meter?", verdict))


def blocks(s: dict, card: list[dict], title: str) -> list:
    out = [("h", 1, title)]
    if s.get("demonstration"):
        why = "; ".join(s["demonstration"])
        out.append(("banner", f"PIPELINE DEMONSTRATION — NOT A SCIENTIFIC RESULT. {why[:1].upper() + why[1:]}. The "
                    "numbers below show that the forgetting analysis runs end to end; they say nothing about how "
                    "fine-tuning makes CLIP forget."))
    out.append(("p", "Every number below is read from stats.json; docs/FORGETTING.md defines each statistic."))
    for name, fn in SECTIONS:
        out += [("h", 2, name)] + fn(s)
    out += [("h", 2, "Reproduction of the published numbers")] + reproduction(s, card)
    out += [("h", 2, "Records left out and statistics not computed")] + problems(s)
    return out


def write(stats: dict, figs: dict, card: list[dict], out: Path, title: str = "Forgetting study") -> None:
    """report.md and report.html in `out` (figures linked from figures/)."""
    bl = blocks(stats, card, title)
    (Path(out) / "report.md").write_text(markdown(bl, figs))
    (Path(out) / "report.html").write_text(html_page(bl, figs, Path(out)))
