"""The report of a controlled (factorial) study: its own document — design, research
questions, answers computed from stats.json, matched-LR tables, ANOVA, simple effects,
correlations, retention model, figures — written as report.md and report.html.

Every number comes from stats.json (statistics/controlled.py) or figures.json; this module
computes nothing new, so the report and stats.json cannot disagree. Absent measures (CKA,
rollout, patch-to-patch entropy) are said to be absent, in the words stats.json records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..._io import read_json, write_text
from .. import table
from ..design import MEASURES, crossing, factorial, lr_label
from ..statistics import controlled as cstats
from .render import Block, below, html_page, markdown, num, pval

DEMO_DATASETS = ("synthetic", "digits")
METHOD_NAMES = {"full": "full FT", "lora": "LoRA"}
BANNER = ("PIPELINE DEMONSTRATION — NOT A SCIENTIFIC RESULT. {why} The numbers below show that the "
          "controlled analysis runs end to end; they say nothing about how fine-tuning changes CLIP's attention.")

RQS = [
    ("RQ1", "Does the learning rate, the method, or their interaction drive the change of attention "
            "entropy, once both are crossed on one grid?"),
    ("RQ2", "At a matched learning rate, is LoRA structurally more conservative than full fine-tuning "
            "(Δentropy), and does it keep more zero-shot accuracy?"),
    ("RQ3", "Across runs, does Δentropy track zero-shot transfer more closely than in-domain accuracy?"),
    ("RQ4", "Does structural change explain zero-shot retention beyond method and learning rate?"),
    ("RQ5", "Where does the contraction sit: is it strongest in the later layers, and in which cells?"),
    ("RQ6", "Do the representation and whole-network measures (CKA to the pretrained tower, attention "
            "rollout, patch-to-patch entropy) agree with the [CLS] entropy?"),
]


def method_name(me: str) -> str:
    return METHOD_NAMES.get(me, me)


def ms(cell: dict, key: str, fmt: str = ".2f") -> str:
    """A cell's "mean ± SD" of a measure ("—" when the cell has no value)."""
    v = cell.get(key) or {}
    if v.get("mean") is None:
        return "—"
    return f"{v['mean']:{fmt}}" + (f" ± {v['sd']:.2f}" if v.get("sd") is not None else "")


def fstat(x: Any) -> str:
    return num(x, ".2f")


def p_is(x: Any) -> str:
    """"p = 0.034" or "p < 1e-16" (a p-value in running text)."""
    s = pval(x)
    return f"p {s}" if s.startswith("<") else f"p = {s}"


def demo_reasons(m: table.Matrix) -> list[str]:
    """Why the numbers are a demonstration: random-init models, offline demo datasets."""
    rand = {r.get("model") for r in m.runs if r.final and r.final.get("model_random_init")}
    rand |= {b.get("model") for b in m.baseline.values() if b.get("model_random_init")}
    why = [f"the model `{x}` is a randomly initialised preset, not pretrained CLIP" for x in sorted(filter(None, rand))]
    ds = {r.get("dataset") for r in m.runs} | set(m.baseline)
    return why + [f"the dataset `{x}` is offline demo data" for x in sorted(filter(None, ds)) if x in DEMO_DATASETS]


def seeds_text(m: table.Matrix) -> str:
    """"2 seed(s) per cell", or "1–2 seeds per cell (…)" when a cell lacks a seed: from the runs."""
    f = factorial(m)
    counts = sorted({n for ds in f.datasets for n in crossing(f, ds)["seeds"]})
    if not counts:
        return "no finished run"
    if len(counts) == 1:
        return f"{counts[0]} seed(s) per cell"
    short = [f"{ds} {method_name(me)} lr {lr_label(lr)}" for (ds, me, lr), rs in f.cells.items() if len(rs) < counts[-1]]
    return (f"{counts[0]}–{counts[-1]} seeds per cell ({len(short)} cell(s) with fewer than {counts[-1]}: "
            f"{', '.join(short[:4])}{' …' if len(short) > 4 else ''})")


def design_claim(m: table.Matrix) -> str:
    """What the design can separate, derived from the runs it has: crossed, partly crossed,
    confounded (each method only at its own lrs) or a single method, per dataset."""
    f = factorial(m)
    said, crossed = [], []
    for ds in f.datasets:
        c = crossing(f, ds)
        lrs = lambda xs: ", ".join(lr_label(x) for x in xs)  # noqa: E731
        if len(c["methods"]) < 2:
            said.append(f"On {ds} only {method_name(c['methods'][0]) if c['methods'] else 'no method'} ran: "
                        "no method effect can be estimated there.")
        elif c["crossed"]:
            crossed.append(ds)
        elif not c["shared"]:
            only = "; ".join(f"{method_name(me)} only at lr {lrs(v)}" for me, v in c["only"].items() if v)
            said.append(f"On {ds} method and learning rate are confounded ({only}): a difference between the "
                        "methods there cannot be told from a difference of learning rates.")
        else:
            only = "; ".join(f"{method_name(me)} alone at lr {lrs(v)}" for me, v in c["only"].items() if v)
            said.append(f"On {ds} the methods share only lr {lrs(c['shared'])} ({only}): the methods are "
                        "compared at the shared learning rates only, and the two-way ANOVA needs every cell.")
    if crossed and not said:
        return ("It separates what the method does from what the learning rate does, which a design that "
                "trains each method at its own learning rate cannot.")
    if crossed:
        said.insert(0, f"On {', '.join(crossed)} method and learning rate are crossed on one shared grid.")
    return " ".join(said)


# ----------------------------------------------------------------------------- sections

def design_section(m: table.Matrix, st: dict) -> list[Block]:
    fa = st["factors"]
    claim = design_claim(m)
    crossed = claim.startswith("It separates")
    r0 = next((r for r in m.done if (r.dir / "config.yaml").exists()), None)
    cfg = r0.config() if r0 else {}
    o, ev = cfg.get("optim") or {}, cfg.get("eval") or {}
    lcfg = next((r.config().get("lora") or {} for r in m.done
                 if r.get("method") == "lora" and (r.dir / "config.yaml").exists()), {})
    epochs = {ds: sorted({r.get("epochs") for r in m.done if r.get("dataset") == ds}) for ds in fa["datasets"]}
    zs = st["zeroshot"]
    pre = ", ".join(f"{k}: {100 * v:.2f}%" for k, v in (zs.get("pretrained") or {}).items()) or "not measured by E1"
    n_cells = len(fa["datasets"]) * len(fa["methods"]) * len(fa["lrs"])
    rows = [
        ["Factors", f"dataset ({len(fa['datasets'])}) × method ({len(fa['methods'])}) × learning rate "
                    f"({len(fa['lrs'])}) = {n_cells} cells"
                    + (f" ({len(factorial(m).cells)} with runs)" if len(factorial(m).cells) < n_cells else "")
                    + ", seeds as replicates"],
        ["Datasets", ", ".join(f"{ds} ({'/'.join(num(e, 'g') for e in epochs[ds])} epochs)" for ds in fa["datasets"])],
        ["Methods", ", ".join(method_name(x) for x in fa["methods"])
         + (f" (LoRA rank {lcfg.get('rank')}, alpha {lcfg.get('alpha')}, targets {lcfg.get('targets')})" if lcfg else "")],
        ["Learning rates" + (" (shared grid)" if crossed else ""), ", ".join(lr_label(x) for x in fa["lrs"])],
        ["Seeds", ", ".join(map(str, fa["seeds"])) + f" ({seeds_text(m)})"],
        ["Runs", f"{st['runs_done']} finished of {st['runs_total']}"],
        ["Model", ", ".join(sorted({str(r.get("model")) for r in m.done})) or "—"],
        ["Optimiser", f"AdamW, weight decay {o.get('weight_decay', '—')}, batch {o.get('batch_size', '—')}, warmup "
                      f"{o.get('warmup_frac', '—')} then cosine, grad clip {o.get('grad_clip', '—')}, "
                      f"{o.get('precision', '—')}"],
        ["Structure eval", f"{ev.get('points_per_epoch', '—')} point(s) per epoch; Δ = last point vs step 0, "
                           "mean over layers"],
        ["Zero-shot", f"{zs.get('dataset') or '—'} (adapter-aware: LoRA evaluated with adapters on, best-accuracy "
                      f"checkpoint); pretrained (E1): {pre}"],
        ["Retention", "run zero-shot / pretrained zero-shot × 100 (% of the pretrained accuracy kept)"],
        ["Measured beyond the four metrics", ", ".join(k for k, v in st["measured"].items() if v) or "none"],
    ]
    return [("h", 2, "Design"),
            ("p", ("Method and learning rate are crossed on one shared grid, so a difference between "
                   "methods is never a difference of learning rates. " if crossed else claim + " ")
             + "Each dataset is analysed on its own (the datasets train for different epochs and differ in "
               "difficulty); the seeds of a cell are its replicates."),
            ("table", ["Item", "Value"], rows)]


def _anova_sentence(ds: str, a: dict, alpha: float) -> str:
    if a.get("skipped"):
        return f"On {ds}: not tested ({a['reason']})."
    t, df_r = a["terms"], a["residual"]["df"]
    parts = [f"{name} F({num(t[k]['df'], 'g')}, {num(df_r, 'g')}) = {fstat(t[k]['F'])}, {p_is(t[k]['p'])}, "
             f"partial η² = {num(t[k]['partial_eta_sq'], '.2f')}"
             for k, name in (("lr", "learning rate"), ("method", "method"), ("method:lr", "interaction"))]
    sig = [name for k, name in (("lr", "learning rate"), ("method", "method"), ("method:lr", "their interaction"))
           if below(t[k]["p"], alpha)]
    verdict = (f"significant at α = {alpha}: " + ", ".join(sig)) if sig else f"no term significant at α = {alpha}"
    return f"On {ds}: {'; '.join(parts)} — {verdict}."


def _simple_sentence(ds: str, se: dict, key: str, alpha: float) -> str:
    if se.get("skipped"):
        return f"On {ds}: not tested ({se['reason']})."
    ran = [e for e in se["entries"] if not e.get("skipped")]
    if not ran:
        return f"On {ds}: no learning rate has ≥ 2 seeds per method."
    sig = [e for e in ran if below(e.get("welch_p_holm"), alpha)]
    a, b = method_name(se["a"]), method_name(se["b"])
    each = "; ".join(f"lr {lr_label(e['lr'])}: {a} − {b} = {num(e['diff'], '+.2f')} (Holm {p_is(e['welch_p_holm'])})"
                     for e in ran)
    return (f"On {ds}, {MEASURES[key][0]}: {each}. {len(sig)} of {len(ran)} learning rates differ at α = {alpha} "
            "after Holm correction.")


def _corr_text(e: dict) -> str:
    if e.get("skipped"):
        return f"not tested ({e['reason']})"
    return f"r = {num(e['pearson_r'], '.2f')} ({p_is(e['pearson_p'])}), ρ = {num(e['spearman_rho'], '.2f')}, n = {e['n']}"


def answers(st: dict) -> list[Block]:
    alpha, dss = st["alpha"], st["datasets"]
    B: list[Block] = [("h", 2, "Answers")]
    B += [("h", 3, "RQ1 — learning rate, method, interaction (two-way ANOVA on Δentropy)")]
    B += [("p", _anova_sentence(ds, d["anova"]["entropy_delta_pct"], alpha)) for ds, d in dss.items()]
    B += [("h", 3, "RQ2 — method at matched learning rates (simple effects)")]
    for key in ("entropy_delta_pct", "zeroshot_acc"):
        B += [("p", _simple_sentence(ds, d["simple_effects"][key], key, alpha)) for ds, d in dss.items()]
    B += [("h", 3, "RQ3 — Δentropy against zero-shot and against accuracy")]
    for ds, d in dss.items():
        c = d["correlations"]
        zs, acc = c["entropy_vs_zeroshot"], c["entropy_vs_accuracy"]
        line = f"On {ds}: with zero-shot {_corr_text(zs)}; with best accuracy {_corr_text(acc)}."
        if not zs.get("skipped") and not acc.get("skipped") and None not in (zs["pearson_r"], acc["pearson_r"]):
            closer = "zero-shot" if abs(zs["pearson_r"]) > abs(acc["pearson_r"]) else "accuracy"
            line += f" Δentropy tracks {closer} more closely (larger |r|)."
        B.append(("p", line))
    B += [("h", 3, "RQ4 — retention model")]
    rm = st["retention_model"]
    if rm.get("skipped"):
        B.append(("p", f"Not fitted: {rm['reason']}."))
    else:
        struct = [c for c in rm["coefficients"] if c["term"].startswith("z_")]
        txt = "; ".join(f"{MEASURES[c['term'][2:]][0]} {num(c['coef'], '+.2f')} points per SD "
                        f"[{num(c['ci_low'], '.2f')}, {num(c['ci_high'], '.2f')}]" for c in struct)
        excl = [MEASURES[c["term"][2:]][0] for c in struct if c["ci_low"] is not None and c["ci_high"] is not None
                and (c["ci_low"] > 0 or c["ci_high"] < 0)]
        B.append(("p", f"`{rm['formula']}` over {rm['n']} runs: R² = {num(rm['r2'], '.3f')} (adjusted "
                       f"{num(rm['r2_adj'], '.3f')}). Structural predictors with 95% CIs: {txt or 'none'}. "
                       + (f"CIs excluding zero: {', '.join(excl)}." if excl else
                          "No structural coefficient's 95% CI excludes zero.")
                       + "".join(f" {n}." for n in rm.get("notes", []))))
    B += [("h", 3, "RQ5 — later-layer contraction")]
    for ds, d in dss.items():
        cells = [c for c in d["cells"] if (c.get("last_layer_entropy_delta") or {}).get("mean") is not None]
        if not cells:
            B.append(("p", f"On {ds}: no per-layer entropy recorded."))
            continue
        worst = min(cells, key=lambda c: c["last_layer_entropy_delta"]["mean"])
        means = [(c["last_layer_entropy_delta"]["mean"], (c.get("entropy_delta_pct") or {}).get("mean")) for c in cells]
        later = sum(last < mean for last, mean in means if mean is not None)
        B.append(("p", f"On {ds}: the last layer contracts most in {method_name(worst['method'])} at lr "
                       f"{worst['lr_label']} ({ms(worst, 'last_layer_entropy_delta')}% over seeds); in {later} of "
                       f"{len(cells)} cells the last layer's Δentropy lies below the cell's mean over layers."))
    B += [("h", 3, "RQ6 — CKA, rollout and patch-to-patch entropy")]
    ck = st["cka_vs_entropy"]
    if ck.get("skipped"):
        B.append(("p", ck["reason"] + "."))
    else:
        B.append(("p", f"Mean CKA to the pretrained tower against Δentropy over all runs: {_corr_text(ck['run_level'])}"
                       + (f"; the strongest per-layer association is at layer {ck['strongest_layer']}."
                          if ck.get("strongest_layer") else ".")))
    for fam, key in (("rollout", "rollout_entropy_delta_pct"), ("patch_entropy", "patch_entropy_delta_pct")):
        if not st["measured"].get(fam):
            B.append(("p", st["absent"][fam] + "."))
            continue
        for ds, d in dss.items():
            a = d["anova"].get(key)
            if a:
                B.append(("p", f"{MEASURES[key][0]} — " + _anova_sentence(ds, a, alpha)))
    return B


def matched_tables(st: dict) -> list[Block]:
    keys = ["best_acc", "entropy_delta_pct", "erf_delta_pct", "zeroshot_acc", "retention_pct"]
    keys += [k for k in ("cka_final", "rollout_entropy_delta_pct", "patch_entropy_delta_pct", "map_drift_final")
             if any((c.get(k) or {}).get("mean") is not None for d in st["datasets"].values() for c in d["cells"])]
    head = ["Method", "LR", "n"] + [f"{MEASURES[k][0]} ({MEASURES[k][1]})" if MEASURES[k][1] else MEASURES[k][0]
                                    for k in keys] + ["last-layer Δentropy (%)"]
    B: list[Block] = [("h", 2, "Matched-LR tables"),
                      ("p", "Mean ± SD over seeds (SD with ddof 1) of each cell.")]
    for ds, d in st["datasets"].items():
        rows = [[method_name(c["method"]), c["lr_label"], str(c["n"])] + [ms(c, k) for k in keys]
                + [ms(c, "last_layer_entropy_delta")] for c in d["cells"]]
        B += [("h", 3, ds), ("table", head, rows)]
        if d["empty_cells"]:
            B.append(("p", "*Cells without a finished run: " + ", ".join(
                f"{method_name(e['method'])} lr {lr_label(e['lr'])}" for e in d["empty_cells"]) + ".*"))
    return B


def statistics_tables(st: dict) -> list[Block]:
    B: list[Block] = [("h", 2, "Statistics"), ("h", 3, "Two-way ANOVA per dataset (type II, seeds as replicates)")]
    rows = []
    for ds, d in st["datasets"].items():
        for key, a in d["anova"].items():
            if a.get("skipped"):
                rows.append([ds, MEASURES[key][0], "—", "—", "—", "—", f"skipped: {a['reason']}"])
                continue
            for term in ("method", "lr", "method:lr"):
                t = a["terms"][term]
                rows.append([ds, MEASURES[key][0], term, f"{num(t['df'], 'g')}, {num(a['residual']['df'], 'g')}",
                             fstat(t["F"]), pval(t["p"]), num(t["partial_eta_sq"], ".2f")])
    B.append(("table", ["Dataset", "Response", "Term", "df", "F", "p", "partial η²"], rows))
    B.append(("h", 3, "Simple effects of method at each learning rate (Welch, Holm across learning rates)"))
    rows = []
    for ds, d in st["datasets"].items():
        for key, se in d["simple_effects"].items():
            for e in [] if se.get("skipped") else se["entries"]:
                if e.get("skipped"):
                    rows.append([ds, MEASURES[key][0], lr_label(e["lr"]), "—", "—", "—", "—", e["reason"]])
                    continue
                rows.append([ds, MEASURES[key][0], lr_label(e["lr"]), num(e["diff"], "+.2f"), fstat(e["welch_t"]),
                             pval(e["welch_p"]), pval(e["welch_p_holm"]), num(e["cohens_d"], ".2f")])
    B.append(("table", ["Dataset", "Response", "LR", "diff (full − LoRA)", "t", "p", "Holm p", "Cohen's d"], rows))
    B.append(("h", 3, "Correlations per dataset (runs as samples)"))
    rows = []
    for ds, d in st["datasets"].items():
        for name, e in d["correlations"].items():
            rows.append([ds, name.replace("_", " "), *(["—"] * 4 + [e["reason"]] if e.get("skipped") else
                         [num(e["pearson_r"], ".3f"), pval(e["pearson_p"]), num(e["spearman_rho"], ".3f"),
                          pval(e["spearman_p"]), str(e["n"])])])
    B.append(("table", ["Dataset", "Pair", "Pearson r", "p", "Spearman ρ", "p", "n"], rows))
    rm = st["retention_model"]
    B.append(("h", 3, "Retention model (OLS, 95% CIs)"))
    if rm.get("skipped"):
        B.append(("p", f"Not fitted: {rm['reason']}."))
    else:
        B.append(("p", f"`{rm['formula']}`; n = {rm['n']}, R² = {num(rm['r2'], '.3f')}, adjusted R² = "
                       f"{num(rm['r2_adj'], '.3f')}. Outcome: {rm['outcome']}."))
        B.append(("table", ["Term", "Coefficient", "95% CI", "p"],
                  [[c["term"], num(c["coef"], "+.3f"), f"[{num(c['ci_low'], '.3f')}, {num(c['ci_high'], '.3f')}]",
                    pval(c["p"])] for c in rm["coefficients"]]))
    return B


FIGURE_ORDER = ("controlled_interaction", "controlled_layer_heatmaps", "controlled_correlations", "controlled_cka",
                "controlled_retention")


def blocks(m: table.Matrix, st: dict, figs: dict) -> list[Block]:
    """The whole controlled report as render blocks."""
    fa = st["factors"]
    title = f"Controlled study: {st.get('name') or m.dir.name}"
    B: list[Block] = [("h", 1, title)]
    why = demo_reasons(m)
    if why:
        B.append(("banner", BANNER.format(why=(s := "; ".join(why))[:1].upper() + s[1:] + ".")))
    B.append(("p", f"A factorial study of how fine-tuning changes the attention of a vision transformer: "
                   f"{' and '.join(method_name(x) for x in fa['methods'])} at "
                   f"{len(fa['lrs'])} learning rates, {len(fa['datasets'])} dataset(s), {seeds_text(m)} "
                   f"({st['runs_done']} runs). {design_claim(m)}"))
    B += design_section(m, st)
    B += [("h", 2, "Research questions"), ("list", [f"**{k}.** {q}" for k, q in RQS])]
    B += answers(st)
    B += matched_tables(st)
    B += statistics_tables(st)
    B += [("h", 2, "Figures")] + [("fig", n) for n in FIGURE_ORDER if n in figs]
    notes = list(st.get("notes") or [])
    B += [("h", 2, "Notes and limits"),
          ("list", notes + ["SDs use ddof 1 (the authors' own summary used the population SD, ddof 0).",
                            "Structural metrics are descriptive; correlations across runs are not causal.",
                            "Each dataset's ANOVA treats learning rate as categorical: it tests whether the "
                            "levels differ, not a trend."])]
    B += [("h", 2, "Runs"), ("table", ["Run", "Dataset", "Method", "LR", "Seed", "Status"],
                             [[r.run_id, str(r.get("dataset")), str(r.get("method")), num(r.get("lr"), "g"),
                               str(r.get("seed")), str(r.get("status") or ("done" if r.final else "missing"))]
                              for r in m.runs])]
    return B


def write(matrix_dir: str | Path) -> tuple[Path, Path]:
    """Write the controlled study's `report.md` and self-contained `report.html`.

    Reads results.csv, stats.json (computing it first when missing) and figures/figures.json.

    Returns:
        (md_path, html_path).
    """
    root = Path(matrix_dir)
    m = table.load(root)
    st = read_json(root / "stats.json") if (root / "stats.json").exists() else cstats.analyze(root)
    if st.get("design") != "controlled":
        st = cstats.analyze(root)  # a stats.json of the other design (the matrix changed design)
    figs = read_json(root / "figures" / "figures.json") if (root / "figures" / "figures.json").exists() else {}
    B = blocks(m, st, figs)
    md, hp = root / "report.md", root / "report.html"
    write_text(md, markdown(B, figs))
    write_text(hp, html_page(B, figs, root))
    return md, hp
