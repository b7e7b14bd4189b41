"""report.md and a self-contained report.html from a matrix directory's result files.

Reading and formatting only (DESIGN.md: the report computes nothing new): the numbers come
from results.csv, the runs' final.json, baseline/*.json and stats.json; the figures from
figures/figures.json. The section order follows the experiment report (§2 setup, §3.1–§3.8
results, §6 tables) and the English report (§4.5 statistics, §6.3 both zero-shot protocols).
Both files are built from one list of blocks, so they always say the same thing.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from . import roles, stats, table
from .._io import read_json, read_yaml, write_text

# The offline sources of the data stage (synthetic images, scikit-learn's digits).
DEMO_DATASETS = ("synthetic", "digits")
BANNER = ("PIPELINE DEMONSTRATION — NOT A SCIENTIFIC RESULT. {why} The numbers below show that the "
          "pipeline runs end to end; they say nothing about how fine-tuning changes CLIP's attention.")
Block = tuple  # ("h", level, text) | ("p", text) | ("list", [text]) | ("table", head, rows) | ("fig", name) | ("banner", text)


# ----------------------------------------------------------------------------- formatting

def _f(x: Any, fmt: str = ".3f") -> str:
    """A number, "—" when absent, "n/a" when NaN (a statistic without variance to test)."""
    if x is None:
        return "—"
    return "n/a" if isinstance(x, float) and math.isnan(x) else format(x, fmt)


def _pct(x: Any) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _d(x: Any) -> str:
    return _f(x, "+.2f") + ("%" if x is not None else "")


def _p(x: Any) -> str:
    if x == 0:
        return "< 1e-16"  # below double precision (e.g. Spearman's p at |ρ| = 1)
    return _f(x, ".2g" if x is not None and x < 0.001 else ".3f")


def _lt(p: Any, alpha: float) -> bool:
    return p is not None and not math.isnan(p) and p < alpha


def _sig(e: dict, alpha: float, key: str = "p_holm") -> str:
    if e[key] is None or math.isnan(e[key]):
        return "not testable (no variance)"
    return ("significant" if _lt(e[key], alpha) else "not significant") + f" at α = {alpha}" + (
        " after Holm correction" if key.endswith("holm") else "")


def _ran(test: dict) -> list[dict]:
    return [e for e in test.get("entries", []) if not e.get("skipped")]


def _missing(test: dict, what: str) -> Block:
    return ("p", f"*Not run: {test.get('reason', 'no runs')}.* ({what})")


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
    cfg = read_yaml(r0.dir / "config.yaml") if r0 and (r0.dir / "config.yaml").exists() else {}
    o, ev, dc = cfg.get("optim", {}), cfg.get("eval", {}), cfg.get("data", {})
    lr_ = next((r for r in m.runs if r.get("method") == "lora" and (r.dir / "config.yaml").exists()), None)
    lcfg = (read_yaml(lr_.dir / "config.yaml") or {}).get("lora", {}) if lr_ else {}
    env = m.env or ((read_json(r0.dir / "env.json") if r0 and (r0.dir / "env.json").exists() else {}))
    gpu = env.get("gpu") or {}
    seeds = sorted({r.get("seed") for r in m.runs if r.get("seed") is not None})
    rows = [
        ["Model", ", ".join(sorted({str(r.get("model")) for r in m.runs})) or "—"],
        ["Training datasets", ", ".join(sel["datasets"]) or "—"],
        ["Zero-shot datasets", ", ".join(sorted({n for r in m.done for n in (r.final or {}).get("zeroshot", {})})) or "—"],
        ["Default lr (full FT) / weight decay", f"{_f(sel['default_lr'], 'g')} / {_f(sel['default_wd'], 'g')}"],
        ["Epochs / batch size", f"{', '.join(sorted({_f(r.get('epochs'), 'g') for r in m.runs}))} / "
                                f"{', '.join(sorted({_f(r.get('batch_size'), 'g') for r in m.runs}))}"],
        ["Warmup / grad clip / precision", f"{o.get('warmup_frac', '—')} / {o.get('grad_clip', '—')} / {o.get('precision', '—')}"],
        ["LoRA alpha / dropout", (f"{lcfg.get('alpha') or '2·rank'} / {lcfg.get('dropout', '—')}" if lcfg
                                  else "— (no LoRA runs)")],
        ["Split protocol", f"{dc.get('split', '—')} (eval subset seed {dc.get('eval_subset_seed', '—')})"],
        ["Metric eval", f"{dc.get('eval_subset_size', '—')} images, batches of "
                        f"{ev.get('batch_size', '—')}, head diversity {ev.get('diversity', '—')}, "
                        f"{ev.get('points_per_epoch', '—')} points per epoch"],
        ["Zero-shot prompts", str((cfg.get("zeroshot") or {}).get("templates", "—"))],
        ["Seeds", ", ".join(map(str, seeds)) or "—"],
        ["Hardware", f"{gpu.get('name', 'CPU')} ×{gpu.get('count', 1)}" if gpu else f"CPU ({env.get('cpu_count', '?')} cores)"],
        ["Versions", ", ".join(f"{k} {env[k]}" for k in ("python", "torch", "transformers", "peft") if env.get(k)) or "—"],
        ["Git commit", str(env.get("git_commit") or "—")],
        ["Runs", f"{len(m.done)} finished of {len(m.runs)}"],
    ]
    return [("h", 2, "1. Setup"), ("table", ["Item", "Value"], rows)] + [("p", n) for n in m.notes]


def _baseline(m: table.Matrix) -> list[Block]:
    out: list[Block] = [("h", 2, "2. Pretrained baseline (E1)")]
    if not m.baseline:
        return out + [("p", "*No baseline/<dataset>.json in this matrix.*")]
    for ds, b in m.baseline.items():
        lay = b.get("layers") or {}
        L = len(lay.get("entropy", []))
        out.append(("p", f"**{ds}** ({b.get('images', '?')} eval images, model `{b.get('model', '?')}`): "
                         + "; ".join(f"{mt} mean {_f((b.get('mean') or {}).get(mt))}, range "
                                     f"{_f(min(lay[mt]))}–{_f(max(lay[mt]))}"
                                     for mt in table.METRICS if lay.get(mt))))
        out.append(("table", ["Layer"] + list(table.METRICS),
                    [[str(i + 1)] + [_f(lay[mt][i]) for mt in table.METRICS] for i in range(L)]))
    return out + [("fig", "fig2_baseline_structure")]


def _grand(m: table.Matrix) -> list[Block]:
    head = ["Run", "Configuration", "Best acc"] + [f"{mt} (Δ%)" for mt in table.METRICS] + ["Zero-shot"]
    rows = [[r.run_id, roles.describe(r), _pct(r.get("best_acc"))]
            + [f"{_f(r.get(f'{mt}_final'))} ({_d(r.get(f'{mt}_delta_pct'))})" for mt in table.METRICS]
            + [_pct(r.get("zeroshot_acc"))] for r in m.done]
    return [("h", 2, "3. Grand comparison"), ("table", head, rows) if rows else ("p", "*No finished runs.*")]


def _family_table(test: dict, alpha: float, a: str = "a", b: str = "reference") -> Block:
    head = ["Comparison", "n (unit)", f"mean Δ% {a}", f"mean Δ% {b}", "diff [95% CI]", "Welch t", "p", "Holm p",
            "MW p", "MW Holm p", "Cohen's d"]
    rows = []
    for e in test.get("entries", []):
        if e.get("skipped"):
            rows.append([e["label"], "skipped: " + e["reason"]] + [""] * 9)
            continue
        rows.append([e["label"], f"{e['n_a']}+{e['n_b']} {e['unit']}", _d(e["mean_a"]), _d(e["mean_b"]),
                     f"{_f(e['diff'], '+.2f')} [{_f(e['ci_low'], '+.2f')}, {_f(e['ci_high'], '+.2f')}]",
                     _f(e["welch_t"], ".2f"), _p(e["welch_p"]), _p(e["welch_p_holm"]), _p(e["mwu_p"]),
                     _p(e["mwu_p_holm"]), _f(e["cohens_d"], ".2f")])
    return ("table", head, rows)


def _runs_table(runs: list[table.Run], extra: list[tuple[str, Any]] = ()) -> Block:
    head = ["Run", "Configuration", "Best acc", "ΔEntropy", "ΔERF", "ΔGini", "ΔHead div"] + [h for h, _ in extra]
    return ("table", head, [[r.run_id, roles.describe(r), _pct(r.get("best_acc"))]
                            + [_d(r.delta(mt)) for mt in table.METRICS] + [fn(r) for _, fn in extra] for r in runs])


def _family_sentence(test: dict, alpha: float, what: str) -> str:
    """How many of a family differ from the reference after Holm, with direction and size."""
    ran = _ran(test)
    if not ran:
        return f"{what}: not tested ({test.get('reason', 'no runs')})."
    sig = [e for e in ran if _lt(e["p_holm"], alpha)]
    if not sig:
        best = min(ran, key=lambda e: e["p"] if _lt(e["p"], 2.0) else 2.0)
        return (f"{what}: none of the {len(ran)} configuration(s) changes entropy Δ significantly "
                f"(smallest p = {_p(best['p'])} for {best['label']}, Holm p = {_p(best['p_holm'])}; not significant).")
    parts = [f"{e['label']} ({'higher' if e['diff'] > 0 else 'lower'} by {abs(e['diff']):.2f} pp, "
             f"p = {_p(e['p'])}, Holm p = {_p(e['p_holm'])}, d = {_f(e['cohens_d'], '.2f')})" for e in sig]
    return (f"{what}: {len(sig)} of {len(ran)} configuration(s) differ significantly after Holm correction: "
            + "; ".join(parts) + ".")


def _findings(m: table.Matrix, st: dict, sel: dict) -> list[str]:
    T, alpha, out = st["tests"], st.get("alpha", 0.05), []
    for e in _ran(T.get("fullft_vs_lora", {})):
        rel = (f"{'higher' if e['mean_b'] > e['mean_a'] else 'lower'} by {abs(e['diff']):.2f} pp"
               if e["mean_b"] != e["mean_a"] else "the same")
        out.append(f"Full FT vs LoRA on {e['label']}: full FT changed per-layer entropy by {_d(e['mean_a'])} on "
                   f"average, LoRA by {_d(e['mean_b'])}, so LoRA's entropy Δ is {rel} "
                   f"(95% CI of full − LoRA [{_f(e['ci_low'], '+.2f')}, {_f(e['ci_high'], '+.2f')}]; Welch t = "
                   f"{_f(e['welch_t'], '.2f')}, p = {_p(e['p'])}, Holm p = {_p(e['p_holm'])}; Mann–Whitney p = "
                   f"{_p(e['mwu_p'])}; Cohen's d = {_f(e['cohens_d'], '.2f')}; n = {e['n_a']}+{e['n_b']} {e['unit']})"
                   f" — {_sig(e, alpha)}.")
    e = T.get("lr_sweep", {})
    if not e.get("skipped") and e:
        d = "falls" if e["pearson_r"] < 0 else "rises" if e["pearson_r"] > 0 else "does not change"
        out.append(f"Learning rate: entropy Δ {d} as the learning rate rises (log10 lr vs Δ: Pearson r = "
                   f"{_f(e['pearson_r'])}, p = {_p(e['pearson_p'])}; Spearman ρ = {_f(e['spearman_rho'], '.2f')}, "
                   f"p = {_p(e['spearman_p'])}; n = {e['n']} runs) — {_sig(e, alpha, 'pearson_p')}.")
    # zeroshot_acc is the first zero-shot dataset's (FORMATS.md); compare with its baseline
    for ds in sel["datasets"]:
        for r in sel["reference"][ds][:1] + sel["lora"][ds]:
            zs, zb = r.get("zeroshot_acc"), r.get("zeroshot_acc_base_only")
            name = next(iter((r.final or {}).get("zeroshot") or {}), None)
            base = next((acc for b in m.baseline.values()
                         if (acc := (((b.get("zeroshot") or {}).get(name) or {}).get("acc"))) is not None), None)
            if zs is None or base is None:
                continue
            txt = f"Zero-shot on {name} ({roles.describe(r)}): {_pct(base)} pretrained → {_pct(zs)}"
            txt += f" adapter-active ({100 * (zs - base) / base:+.1f}% relative)"
            if zb is not None:
                txt += f", {_pct(zb)} with adapters off (the reports' protocol, {100 * (zb - base) / base:+.1f}%)"
            out.append(txt + ".")
    out.append(_family_sentence(T.get("regularizers", {}), alpha, "Regularizers vs no regularizer"))
    out.append(_family_sentence(T.get("weight_decay", {}), alpha, "Weight decay vs the default"))
    out.append(_family_sentence(T.get("freezing", {}), alpha, "Layer freezing vs no freezing"))
    lg = _ran(T.get("layer_groups", {}))
    if lg:
        sig = [e for e in lg if _lt(e["p_holm"], alpha)]
        low = min(lg, key=lambda e: e["p"] if _lt(e["p"], 2.0) else 2.0)
        out.append(f"Layer position: the early/middle/late thirds differ in entropy Δ in {len(sig)} of {len(lg)} "
                   f"configurations after Holm correction (one-way ANOVA; smallest p = {_p(low['p'])} for "
                   f"{low['label']}, Holm p = {_p(low['p_holm'])})" + ("" if sig else " — not significant") + ".")
    mc = _ran(T.get("metric_correlations", {}))
    if mc:
        out.append("Metric coupling across runs: " + "; ".join(
            f"{e['a']}–{e['b']} r = {_f(e['pearson_r'], '.2f')} (Holm p = {_p(e['pearson_p_holm'])}, "
            f"{_sig(e, alpha, 'pearson_p_holm')})" for e in mc) + ".")
    e = T.get("collapse_vs_zeroshot", {})
    if e and not e.get("skipped"):
        out.append(f"Collapse vs zero-shot across runs: Pearson r = {_f(e['pearson_r'], '.2f')}, p = "
                   f"{_p(e['pearson_p'])} (n = {e['n']} runs) — {_sig(e, alpha, 'pearson_p')}; "
                   "an association, not a cause (experiment report §4.3).")
    return out


def _blocks(m: table.Matrix, st: dict, figs: dict) -> list[Block]:
    sel, T, alpha = roles.select(m), st["tests"], st.get("alpha", 0.05)
    prim = sel["primary"]
    title = f"Attention collapse in fine-tuning: {m.spec.get('name') or m.dir.name}"
    B: list[Block] = [("h", 1, title)]
    why = _demo_reasons(m)
    if why:
        B.append(("banner", BANNER.format(why="Why: " + "; ".join(why) + ".")))
    if m.spec.get("description"):
        B.append(("p", str(m.spec["description"]).strip()))
    B += _setup(m, sel) + _baseline(m) + _grand(m)

    B.append(("h", 2, "4. Full fine-tuning vs LoRA"))
    t = T.get("fullft_vs_lora", {})
    B += [_family_table(t, alpha, "full FT", "LoRA"), ("fig", "fig5_fullft_vs_lora"),
          ("fig", "fig5b_fullft_vs_lora_pets")] if _ran(t) or t.get("entries") else [_missing(t, "E2–E7")]

    B.append(("h", 2, "5. LoRA rank"))
    lora = [r for ds in sel["datasets"] for r in sorted(sel["lora"][ds], key=lambda r: r.get("lora_rank") or 0)]
    B.append(_runs_table(lora) if lora else ("p", "*No LoRA runs (E4–E7) in this matrix.*"))

    B.append(("h", 2, "6. Zero-shot transfer (both protocols)"))
    names = sorted({n for r in m.done for n in (r.final or {}).get("zeroshot", {})})
    if names:
        rows = [["Pretrained (E1)", "baseline"] + [
            _pct(next((((b.get("zeroshot") or {}).get(n) or {}).get("acc") for b in m.baseline.values()), None)) + " / —"
            for n in names]]
        rows += [[r.run_id, roles.describe(r)] + [
            f"{_pct(r.final['zeroshot'].get(n, {}).get('acc'))} / {_pct(r.final['zeroshot'].get(n, {}).get('acc_base_only'))}"
            for n in names] for r in m.done]
        B += [("p", "Each cell: adapter-active (the fine-tuned model as trained) / base-only (LoRA adapters "
                    "off: the reports' protocol, English report §6.2; — where not applicable)."),
              ("table", ["Run", "Configuration"] + names, rows)]
    else:
        B.append(("p", "*No zero-shot results in this matrix.*"))
    B += [("fig", "fig7_collapse_vs_zeroshot"), ("fig", "fig15_zeroshot_extended"), ("fig", "extra_wise_interpolation")]

    B.append(("h", 2, "7. Learning-rate sweep"))
    if sel["lr_sweep"]:
        B.append(_runs_table(sel["lr_sweep"], [("lr", lambda r: _f(r.get("lr"), "g"))]))
    e = T.get("lr_sweep", {})
    B.append(("p", f"log10 lr vs entropy Δ: Pearson r = {_f(e['pearson_r'])} (p = {_p(e['pearson_p'])}), Spearman "
                   f"ρ = {_f(e['spearman_rho'], '.2f')} (p = {_p(e['spearman_p'])}), n = {e['n']} runs.")
             if e and not e.get("skipped") else _missing(e, "A1 + E2"))
    if _ran(T.get("lr_vs_default", {})):
        B.append(_family_table(T["lr_vs_default"], alpha, "this lr", "default lr"))
    B.append(("fig", "fig6_lr_sweep"))

    for num, title, key, runs, what, fig in (
            ("8", "Layer freezing", "freezing", sel["freezing"], "A3", "extra_frozen_layers"),
            ("9", "LoRA target modules", None, sel["lora_all"], "A2", "extra_lora_qkvo"),
            ("10", "Regularization (APR, entropy floor)", "regularizers", sel["reference"].get(prim, []) + sel["regularized"], "R1, R2", "fig8_regularization"),
            ("11", "Weight decay", "weight_decay", sel["wd_sweep"], "R3", None)):
        B.append(("h", 2, f"{num}. {title}"))
        has = len(roles.by_config(runs)) >= 2
        B.append(_runs_table(runs) if has else ("p", f"*No {what} runs in this matrix.*"))
        if key and has:
            B.append(_family_table(T.get(key, {}), alpha, title.split(" (")[0].lower(), "reference"))
        if fig:
            B.append(("fig", fig))

    B.append(("h", 2, "12. Layer-wise patterns"))
    lg = T.get("layer_groups", {})
    if lg.get("entries"):
        B.append(("table", ["Run", "groups (layers)", "mean Δ% per third", "F", "p", "Holm p"], [
            [e["label"], "skipped: " + e["reason"], "", "", "", ""] if e.get("skipped") else
            [e["label"], " | ".join(f"{g[0]}–{g[-1]}" for g in e["groups"]), " | ".join(f"{x:+.2f}" for x in e["group_means"]),
             _f(e["F"], ".2f"), _p(e["p"]), _p(e["p_holm"])] for e in lg["entries"]]))
    else:
        B.append(_missing(lg, "per-layer Δ"))
    B += [("fig", "fig4_layer_entropy_heatmap"), ("fig", "fig10_per_layer_delta_heatmap")]

    B.append(("h", 2, "13. Statistics"))
    B.append(("p", f"Unit of analysis: {st.get('unit_rule', '')}. Bootstrap: {st.get('n_boot')} resamples, seed "
                   f"{st.get('seed')}. Holm correction within each family of tests."))
    mc = T.get("metric_correlations", {})
    if _ran(mc):
        B.append(("table", ["Pair", "n", "Pearson r", "p", "Holm p", "Spearman ρ", "p", "Holm p"], [
            [e["label"], str(e["n"]), _f(e["pearson_r"]), _p(e["pearson_p"]), _p(e["pearson_p_holm"]),
             _f(e["spearman_rho"]), _p(e["spearman_p"]), _p(e["spearman_p_holm"])] for e in _ran(mc)]))
    B += [("fig", "fig11_statistical_summary"), ("fig", "fig13_metric_correlations")]

    B.append(("h", 2, "14. Training dynamics"))
    B += [("fig", n) for n in ("fig3_triple_curve", "fig9_head_diversity", "fig17_gini_evolution",
                               "extra_erf95_evolution", "fig12_training_dynamics", "fig14_convergence",
                               "extra_attention_overlays", "fig16_dashboard")]
    placed = {b[1] for b in B if b[0] == "fig"}
    B += [("fig", n) for n in figs if n not in placed]  # a figure registered later still appears

    B += [("h", 2, "15. Findings"), ("list", _findings(m, st, sel))]
    B += [("h", 2, "16. Runs"), ("table", ["Run", "Group", "Seed", "Status", "Directory"],
                                 [[r.run_id, str(r.get("group", "")), str(r.get("seed", "")),
                                   str(r.get("status") or ("done" if r.final else "missing")), f"{r.run_id}/"]
                                  for r in m.runs])]
    B += [("h", 2, "17. Figure index"), ("table", ["Figure", "File / status"],
                                        [[n, v.get("file") or f"skipped: {v.get('skipped')}"] for n, v in figs.items()])]
    return B


# ----------------------------------------------------------------------------- rendering

def _md(B: list[Block], figs: dict) -> str:
    out = []
    for b in B:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "banner":
            out.append(f"> **⚠ {b[1]}**")
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "list":
            out.append("\n".join(f"{i}. {x}" for i, x in enumerate(b[1], 1)))
        elif b[0] == "table":
            cell = lambda x: str(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            out.append("\n".join(["| " + " | ".join(map(cell, b[1])) + " |", "|" + "---|" * len(b[1])]
                                 + ["| " + " | ".join(map(cell, r)) + " |" for r in b[2]]))
        elif b[0] == "fig":
            f = figs.get(b[1], {})
            out.append(f"![{f.get('caption', b[1])}]({f['file']})\n\n*{b[1]}: {f.get('caption', '')}*" if f.get("file")
                       else f"*Figure {b[1]} not drawn: {f.get('skipped', 'not rendered')}.*")
    return "\n\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{border-bottom:2px solid #0072B2}h2{margin-top:2em;color:#0072B2}
table{border-collapse:collapse;margin:1em 0;font-size:.85em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;white-space:nowrap}th{background:#e8f1f8}
tr:nth-child(even) td{background:#f7f7f7}figure{margin:1.2em 0}img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}.banner{border:4px solid #D55E00;background:#fff3e0;color:#7a2d00;
padding:1em;font-size:1.25em;font-weight:bold}.skip{color:#777;font-style:italic}code{background:#f2f2f2;padding:0 3px}"""


def _inline(text: str) -> str:
    """Escape, then the two markdown marks the blocks use: **bold**, *italic*, `code`."""
    import re
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"(?<![\w*])\*(?!\s)(.+?)\*(?!\w)", r"<em>\1</em>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _html(B: list[Block], figs: dict, root: Path) -> str:
    out = []
    for b in B:
        if b[0] == "h":
            out.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
        elif b[0] == "banner":
            out.append(f'<div class="banner" role="alert">⚠ {_inline(b[1])}</div>')
        elif b[0] == "p":
            out.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "list":
            out.append("<ol>" + "".join(f"<li>{_inline(x)}</li>" for x in b[1]) + "</ol>")
        elif b[0] == "table":
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in b[1]) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
                       + "</tbody></table>")
        elif b[0] == "fig":
            f = figs.get(b[1], {})
            if f.get("file") and (root / f["file"]).exists():
                data = base64.b64encode((root / f["file"]).read_bytes()).decode()
                out.append(f'<figure id="{b[1]}"><img alt="{html.escape(f.get("caption", b[1]))}" '
                           f'src="data:image/png;base64,{data}"><figcaption><b>{b[1]}</b>: '
                           f"{html.escape(f.get('caption', ''))}</figcaption></figure>")
            else:
                out.append(f'<p class="skip">Figure {b[1]} not drawn: {html.escape(str(f.get("skipped", "not rendered")))}.</p>')
    title = next((b[2] for b in B if b[0] == "h"), "report")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def write(matrix_dir: str | Path) -> tuple[Path, Path]:
    """Write `report.md` and a self-contained `report.html` into the matrix directory.

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
    B = _blocks(m, st, figs)
    md, hp = root / "report.md", root / "report.html"
    write_text(md, _md(B, figs))
    write_text(hp, _html(B, figs, root))
    return md, hp
