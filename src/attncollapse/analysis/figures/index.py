"""Every figure of the reports' figure index, drawn from a matrix directory's files alone.

`FIGURES` is a plain registry, name → function(ctx or matrix_dir, out_path) returning the
written path, or a string saying why the figure was skipped: a figure whose runs are
missing is never drawn from nothing. Names are the reports' file names (experiment report
§7, English report §4). `render_all` draws them all into `<matrix_dir>/figures/` and
writes `figures/figures.json` (name → file + caption, or the skip reason) for the report.
Shared plumbing lives in `base.py`, the training-curve figures in `curves.py`, the
ablation figures (6, 8, frozen layers, LoRA targets) in `ablations.py`, the zero-shot
figures (7, 15) in `zeroshot.py`, the future-work figures in `links.py`. A
configuration with several seeds is drawn as its seed mean ± SD (error bars, bands) and
the caption in figures.json says so, with n.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
from matplotlib.patches import Patch

from ..._io import DamagedFile, disk_full_message, write_json
from .. import roles, table
from . import curves
from .ablations import extra_frozen_layers, extra_lora_qkvo, fig6, fig8
from .base import (DIVERGING, KIND_COLORS, METRIC_LABELS, OKABE_ITO, Ctx, as_ctx, bars, figure, layer_band,
                   metric_panels, p_text, pct_label, save, seed_counts, seed_mean, short,
                   unstable_any, unstable_note)
from .links import CAPTIONS as LINK_CAPTIONS, FIGURES as LINK_FIGURES
from .zeroshot import fig7, fig15, zeroshot_baseline

def baseline_structure(baseline: dict, out_path: str | Path) -> Path | str:
    """Fig. 2: the pretrained model's 4 metrics × layers (experiment report §3.1).

    Args:
        baseline: one baseline JSON (has "layers") or {dataset: baseline JSON}.
        out_path: the PNG to write.
    """
    items = {baseline.get("dataset", "baseline"): baseline} if "layers" in baseline else dict(baseline)
    items = {k: v for k, v in items.items() if (v or {}).get("layers")}
    if not items:
        return "no baseline layer table (baseline/<dataset>.json missing)"
    fig, ax = figure(7.0, 4.8, 2, 2)
    for i, (ds, b) in enumerate(items.items()):
        for a, mt in zip(ax.flat, table.METRICS):
            v = np.asarray(b["layers"][mt], float)
            a.plot(np.arange(1, len(v) + 1), v, marker="o", ms=3, color=OKABE_ITO[i % 8], label=ds)
            a.set(title=METRIC_LABELS[mt], xlabel="layer")
    ax[0, 0].legend()
    model = next(iter(items.values())).get("model", "")
    fig.suptitle(f"Pretrained attention structure ({model})", fontsize=9)
    return save(fig, out_path)


def fig2(src: Ctx | str | Path, out: Path) -> Path | str:
    ctx = as_ctx(src)
    return baseline_structure(ctx.matrix.baseline, out) if ctx.matrix.baseline else "baseline/<dataset>.json missing"


def _pairs(ctx: Ctx) -> list[str]:
    return [ds for ds in ctx.roles["datasets"] if ctx.roles["reference"][ds] and ctx.roles["lora"][ds]]


def _fullft_vs_lora(ctx: Ctx, out: Path, k: int) -> Path | str:
    """Fig. 5 / 5b: Δ% of each metric (own panel), and per-layer ΔH, full FT vs LoRA (§3.2)."""
    pairs = _pairs(ctx)
    if len(pairs) <= k:
        return f"needs full-FT and LoRA runs on {'a' if k == 0 else 'a second'} dataset; found {len(pairs)}"
    ds = pairs[k]
    groups = roles.by_config(ctx.roles["reference"][ds] + sorted(ctx.roles["lora"][ds], key=lambda r: r.get("lora_rank")))
    fig, ax = figure(9.5, 5.6, 2, 3)
    metric_panels([ax[0, 0], ax[0, 1], ax[0, 2], ax[1, 0]], groups,
                  labels=[short(rs[0]).replace("\n", ": ") for rs in groups.values()])
    for i, rs in enumerate(groups.values()):
        layer_band(ax[1, 1], rs, color=OKABE_ITO[i % 8], label=rs[0].config_id)
    e = next((e for e in ctx.test("fullft_vs_lora").get("entries", []) if e.get("label") == ds), {})
    ax[1, 1].axhline(0, color="black", lw=0.6)
    ax[1, 1].set(xlabel="layer", ylabel="entropy Δ%", title=f"Per-layer entropy Δ — {p_text(e)}")
    ax[1, 1].legend(fontsize=7)
    ax[1, 2].axis("off")
    fig.suptitle(f"Full FT vs LoRA on {ds}: each metric on its own scale", fontsize=9)
    return save(fig, out)


def fig10(src: Ctx | str | Path, out: Path) -> Path | str:
    """Fig. 10: per-layer entropy Δ% of every config (seed mean), configs × layers."""
    ctx = as_ctx(src)
    groups = {cid: rs for cid, rs in roles.by_config(ctx.matrix.done).items() if rs[0].layer_delta() is not None}
    if not groups:
        return "no finished run has per-layer Δ"
    mat = np.stack([np.nanmean([r.layer_delta() for r in rs], 0) for rs in groups.values()])
    lim = float(np.nanpercentile(np.abs(mat), 98)) or 1.0
    fig, ax = figure(4.0 + 0.45 * mat.shape[1], 1.2 + 0.28 * len(groups))  # 4 in: room for the run labels
    im = ax[0, 0].imshow(mat, cmap=DIVERGING, vmin=-lim, vmax=lim, aspect="auto")
    if mat.size <= 400:
        for (i, j), v in np.ndenumerate(mat):
            ax[0, 0].text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=5,
                          color="white" if abs(v) > 0.6 * lim else "black")
    ax[0, 0].set_xticks(range(mat.shape[1]), range(1, mat.shape[1] + 1))
    ax[0, 0].set_yticks(range(len(groups)), [f"{c}: {roles.describe(rs[0])}" for c, rs in groups.items()])
    ax[0, 0].set(xlabel="layer", title="Per-layer entropy Δ% (final vs initial)")
    ax[0, 0].grid(False)
    fig.colorbar(im, ax=ax[0, 0], label="entropy Δ%")
    return save(fig, out)


_COMPARE_TESTS = ("fullft_vs_lora", "lr_vs_default", "regularizers", "weight_decay", "freezing")


def fig11(src: Ctx | str | Path, out: Path) -> Path | str:
    """Fig. 11: forest plot of every comparison: mean Δ difference, bootstrap 95% CI, p raw/Holm."""
    ctx = as_ctx(src)
    rows = [(t, e) for t in _COMPARE_TESTS for e in ctx.test(t).get("entries", [])
            if not e.get("skipped") and np.isfinite([e["diff"], e["ci_low"], e["ci_high"]]).all()]
    if not rows:
        return "no comparison could be computed (stats.json has none that ran)"
    fig, ax = figure(8.0, 1.0 + 0.25 * len(rows))
    a, alpha = ax[0, 0], ctx.stats.get("alpha", 0.05)
    for i, (t, e) in enumerate(rows):
        c = OKABE_ITO[_COMPARE_TESTS.index(t)]
        a.plot([e["ci_low"], e["ci_high"]], [i, i], color=c, lw=1.5)
        a.scatter(e["diff"], i, color=c if e["p_holm"] < alpha else "white", edgecolor=c, zorder=3)
        a.annotate(f"p={e['p']:.2g}  Holm={e['p_holm']:.2g}  d={e['cohens_d']:.2f}  n={e['n']} {e['unit']}",
                   (1.01, i), xycoords=("axes fraction", "data"), fontsize=6, va="center")
    a.axvline(0, color="black", lw=0.6)
    a.set_yticks(range(len(rows)), [f"{t}: {e['label'].split(':')[0]}" for t, e in rows])
    a.invert_yaxis()
    a.set(xlabel="difference in mean entropy Δ% (a − b), bootstrap 95% CI",
          title=f"Statistical summary (filled: Holm-adjusted p < {alpha})")
    return save(fig, out)


def fig13(src: Ctx | str | Path, out: Path) -> Path | str:
    """Fig. 13: scatter matrix of the four metrics' run-level Δ% with Pearson r (Holm p)."""
    ctx = as_ctx(src)
    runs = [r for r in ctx.matrix.done if all(r.delta(m) is not None for m in table.METRICS)]
    if len(runs) < 3:
        return f"needs ≥ 3 finished runs, found {len(runs)}"
    ent = {(e.get("a"), e.get("b")): e for e in ctx.test("metric_correlations").get("entries", [])}
    fig, ax = figure(6.5, 6.0, 4, 4)
    for (i, mi), (j, mj) in ((x, y) for x in enumerate(table.METRICS) for y in enumerate(table.METRICS)):
        a = ax[i, j]
        if i > j:
            a.scatter([r.delta(mj) for r in runs], [r.delta(mi) for r in runs], s=8,
                      c=[KIND_COLORS.get(ctx.kind(r), "black") for r in runs])
        elif i < j:
            e = ent.get((mi, mj), {})
            txt = "skipped" if not e or e.get("skipped") else f"r={e['pearson_r']:.2f}\nHolm p={e['pearson_p_holm']:.2g}"
            a.text(0.5, 0.5, txt, ha="center", va="center", transform=a.transAxes, fontsize=8)
            a.set_axis_off()
        else:
            a.hist([r.delta(mi) for r in runs], bins=8, color=OKABE_ITO[0])
        if i == 3:
            a.set_xlabel(pct_label(mj, f"{mj} Δ%", [r.get(f"{mj}_initial") for r in runs]))
        if j == 0:
            a.set_ylabel(pct_label(mi, f"{mi} Δ%", [r.get(f"{mi}_initial") for r in runs]))
    flagged = [mt for mt in table.METRICS if unstable_any(mt, [r.get(f"{mt}_initial") for r in runs])]
    kinds = {ctx.kind(r) for r in runs}
    fig.legend(handles=[Patch(facecolor=c, edgecolor="black", linewidth=0.4, label=k) for k, c in KIND_COLORS.items()
                        if k in kinds], loc="outside lower center", ncols=len(kinds), fontsize=7)
    fig.suptitle("Correlations among the metrics' Δ% (below the diagonal: runs as points; on it: histogram, "
                 "count of runs; above: Pearson r)"
                 + (f"\n{unstable_note(flagged)}" if flagged else ""), fontsize=9 if not flagged else 8)
    return save(fig, out)


def fig16(src: Ctx | str | Path, out: Path) -> Path | str:
    """Fig. 16: one-page dashboard of accuracy, entropy Δ, zero-shot and the LR sweep.

    The family legend sits outside the panels (inside it hid bars) and the zero-shot panel
    draws the pretrained model's level, the line every fine-tuned bar is read against.
    """
    ctx = as_ctx(src)
    groups = roles.by_config(ctx.matrix.done)
    if not groups:
        return "no finished runs"
    colors = [KIND_COLORS.get(ctx.kind(rs[0]), "black") for rs in groups.values()]
    fig, ax = figure(11.0, 7.0, 2, 2)
    bars(ax[0, 0], groups, lambda r: 100 * r.get("best_acc", np.nan), colors, ylabel="best accuracy (%)", ids_only=True)
    bars(ax[0, 1], groups, lambda r: r.delta(), colors, ylabel="entropy Δ% (final vs initial)", ids_only=True)
    bars(ax[1, 0], groups, lambda r: None if r.get("zeroshot_acc") is None else 100 * r.get("zeroshot_acc"),
         colors, ylabel="zero-shot top-1 (%)", ids_only=True)
    base = zeroshot_baseline(ctx)
    if base is not None:
        ax[1, 0].axhline(100 * base, color="black", ls="--", lw=0.9, label=f"pretrained {100 * base:.1f}%")
        ax[1, 0].legend(fontsize=6, loc="upper right")
    for a, t in zip(ax.flat, ("Task accuracy", "Entropy change", "Zero-shot (adapter-active)")):
        a.set_title(t)
    sweep = roles.by_config(ctx.roles["lr_sweep"])
    if len(sweep) >= 2:
        v = [seed_mean(rs, lambda r: r.delta()) for rs in sweep.values()]
        several = any(len(rs) > 1 for rs in sweep.values())
        ax[1, 1].errorbar([rs[0].get("lr") for rs in sweep.values()], [x[0] for x in v],
                          [x[1] for x in v] if several else None, marker="o", color=KIND_COLORS["LR sweep"], capsize=2)
        ax[1, 1].axhline(0, color="black", lw=0.6)
        ax[1, 1].set(xscale="log", xlabel="learning rate", ylabel="entropy Δ% (final vs initial)", title="LR sweep")
    else:
        ax[1, 1].text(0.5, 0.5, "LR sweep runs missing", ha="center", transform=ax[1, 1].transAxes)
    kinds = {ctx.kind(rs[0]) for rs in groups.values()}
    handles = [Patch(facecolor=c, edgecolor="black", linewidth=0.4, label=k) for k, c in KIND_COLORS.items() if k in kinds]
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=7)
    return save(fig, out)


# name → function(ctx or matrix_dir, out_path) -> Path | skip reason. Names = the reports' file names.
FIGURES: dict[str, Callable[[Any, Path], Any]] = {
    "fig2_baseline_structure": fig2,
    "fig3_triple_curve": curves.fig3,
    "fig4_layer_entropy_heatmap": curves.fig4,
    "fig5_fullft_vs_lora": lambda src, out: _fullft_vs_lora(as_ctx(src), out, 0),
    "fig5b_fullft_vs_lora_pets": lambda src, out: _fullft_vs_lora(as_ctx(src), out, 1),
    "fig6_lr_sweep": fig6,
    "fig7_collapse_vs_zeroshot": fig7,
    "fig8_regularization": fig8,
    "fig9_head_diversity": curves.evolution("head_diversity"),
    "fig10_per_layer_delta_heatmap": fig10,
    "fig11_statistical_summary": fig11,
    "fig12_training_dynamics": curves.fig12,
    "fig13_metric_correlations": fig13,
    "fig14_convergence": curves.fig14,
    "fig15_zeroshot_extended": fig15,
    "fig16_dashboard": fig16,
    "fig17_gini_evolution": curves.evolution("gini"),
    "extra_erf95_evolution": curves.evolution("erf"),
    "extra_frozen_layers": extra_frozen_layers,
    "extra_lora_qkvo": extra_lora_qkvo,
    "extra_wise_interpolation": curves.wise,
    "extra_attention_overlays": curves.overlays,
    **LINK_FIGURES,  # early warning, weight drift, model families (links.py)
}

CAPTIONS = {
    "fig2_baseline_structure": "The pretrained model before any fine-tuning (E1): each panel is one metric, x the "
                               "layer, one line per dataset. This is the level every Δ in the report is measured "
                               "from; look for the layers where entropy dips and Gini peaks (already focused heads).",
    "fig3_triple_curve": "One panel per dataset, full fine-tuning reference run: blue circles = validation accuracy "
                         "(left axis, %), orange squares = mean attention entropy over layers (right axis, nats), "
                         "x = epoch. Collapse shows as entropy falling while accuracy rises; a flat orange line means "
                         "the attention kept its spread.",
    "fig4_layer_entropy_heatmap": "Per-layer entropy Δ% against step 0 as training proceeds: x = epoch, y = layer, "
                                  "one panel per run (full FT and LoRA r=8 per dataset), one colour scale for all. "
                                  "Orange = entropy fell (attention contracted), purple = rose, white = unchanged; "
                                  "look for which layers turn orange first and how deep it spreads.",
    "fig5_fullft_vs_lora": "Full FT vs LoRA on the first dataset. Four bar panels, one per metric on its own y "
                           "scale, one bar per configuration (title: the metrics' initial values); bars below 0 "
                           "= the metric fell. A panel marked † shows the absolute Δ instead of Δ%, because an "
                           "initial value near zero makes the ratio meaningless. Bottom middle: per-layer entropy "
                           "Δ% with the full-FT-vs-LoRA test in its title.",
    "fig5b_fullft_vs_lora_pets": "As fig. 5, on the second dataset: one bar panel per metric (own y scale; † = "
                                 "absolute Δ, Δ% unstable), and the per-layer entropy Δ% with its test.",
    "fig6_lr_sweep": "Learning-rate sweep (log x axis): one panel each for entropy, ERF and Gini change and one "
                     "for best accuracy, each on its own scale. A falling entropy line = more collapse at higher "
                     "learning rates (the entropy title gives the sweep's correlation); compare where accuracy "
                     "peaks with where entropy starts to fall. † = absolute Δ (Δ% unstable).",
    "fig7_collapse_vs_zeroshot": "One point per configuration: x = entropy Δ% (left = more collapse) and y = "
                                 "zero-shot top-1, both of the same (best-accuracy) checkpoint; colour = "
                                 "run family; dashed line = the pretrained model's zero-shot accuracy. Hollow "
                                 "circles (joined by a dotted line) = the same LoRA run with its adapters off. A "
                                 "rising cloud from left to right means collapse goes with lost transfer.",
    "fig8_regularization": "Left: entropy Δ% per configuration (bars; below 0 = collapse), tick labels give each "
                           "run's Holm-adjusted p against the unregularized reference. Right: best accuracy (bars "
                           "from 0, value printed on each bar). A useful regularizer lifts the left bar above the "
                           "reference's without lowering the printed accuracy. Colour = run family, as in fig. 16.",
    "fig9_head_diversity": "Head diversity (mean over layers) along training, one panel per dataset, one line per "
                           "configuration of the main runs (legend below). Rising = the heads attend to more "
                           "different places; note the y scale, which can be near zero for random models.",
    "fig10_per_layer_delta_heatmap": "Every configuration (rows) × layer (columns): final entropy Δ% against the "
                                     "pretrained model, value printed in each cell. Orange = contracted, purple = "
                                     "broadened; read across a row for where in depth a run changed, down a column "
                                     "for which runs changed a layer.",
    "fig11_statistical_summary": "Forest plot of every comparison: dot = difference in mean entropy Δ% (a − b, the "
                                 "row's run minus its reference), bar = bootstrap 95% CI, colour = family of "
                                 "tests; filled dot = significant after Holm correction. A CI crossing the "
                                 "vertical 0 line means no detectable difference; raw p, Holm p, Cohen's d and n "
                                 "are printed at the right.",
    "fig12_training_dynamics": "Every run on its own line (colour = family, line style and marker = run; legend at "
                               "the right): train loss, validation accuracy, entropy change and Gini change against "
                               "epoch. On the entropy panel ▼ marks each run's collapse onset (first eval point "
                               "1% below its initial entropy, dashed line, as the original's report). A change "
                               "panel marked † plots the absolute Δ vs step 0, because some run's initial value is "
                               "too close to zero for a Δ% to mean anything. Bottom middle: entropy velocity, the "
                               "change of the mean entropy since the previous eval point along the fraction of "
                               "training (below 0 = contracting; look for when it settles at 0). Bottom right: "
                               "each run's onset as a fraction of training (short bar = early collapse); runs "
                               "without an onset are named in its title.",
    "fig13_metric_correlations": "Scatter matrix of the four metrics' run-level Δ%: below the diagonal one point per "
                                 "run (colour = family), on the diagonal a histogram (count of runs), above it "
                                 "Pearson r with its Holm-adjusted p. Points on a line = the metrics move together; "
                                 "an axis marked † has unstable Δ% (initial near zero), so read its spread with care.",
    "fig14_convergence": "One bar per run: its late-training statistic under the report's convergence criterion "
                         "(stats.json `convergence`; title: the criterion), colour = family. A bar left of the "
                         "dashed threshold = converged; a bar past it = still moving when training stopped.",
    "fig15_zeroshot_extended": "Zero-shot top-1 per configuration under each protocol (bar colour, legend at "
                               "the right), one panel per zero-shot dataset: as trained, fine-tuned tower with the "
                               "frozen pretrained projection, and LoRA with adapters off. Dashed line = the "
                               "pretrained model; a bar well below it = transfer lost.",
    "fig16_dashboard": "One-page overview, one bar per configuration coloured by family (legend on top): task "
                       "accuracy, entropy Δ% (below 0 = collapse), zero-shot top-1 against the pretrained level "
                       "(dashed), and entropy Δ% along the learning-rate sweep (log x). Look for the runs that are "
                       "accurate, above the dashed line and near 0 entropy change.",
    "fig17_gini_evolution": "Gini of [CLS] attention (mean over layers) along training, one panel per dataset, one "
                            "line per configuration (legend below). Rising Gini = attention concentrating on fewer "
                            "patches, the mirror image of falling entropy.",
    "extra_erf95_evolution": "ERF@0.95 (share of patches holding 95% of the [CLS] attention, mean over layers) along "
                             "training, one panel per dataset, one line per configuration (legend below). Falling = "
                             "attention shrinking onto fewer patches.",
    "extra_frozen_layers": "Layer-freezing ablation. Left: entropy Δ% (blue circles, left axis) and best accuracy "
                           "(orange squares, right axis) against the number of frozen encoder layers. Right: "
                           "per-layer entropy Δ% per freezing depth; frozen layers should sit at 0.",
    "extra_lora_qkvo": "LoRA on Q,V vs on Q,K,V,O at the same rank: one bar panel per metric on its own y scale "
                       "(† = absolute Δ, Δ% unstable), tick labels give each configuration's accuracy. Taller "
                       "bars for QKVO = adapting more projections moved the attention more.",
    "extra_wise_interpolation": "WiSE-FT weight interpolation θ = (1−α)·θ₀ + α·θ, one line per run. Left: zero-shot "
                                "against task accuracy along α, from ○ (α = 0, pretrained weights) to ★ (α = 1, "
                                "the fine-tuned run); top right is the best of both. Right: mean "
                                "entropy against α (0 = pretrained, 1 = fine-tuned); a bend shows where collapse sets in.",
    "extra_attention_overlays": "[CLS]→patch attention (mean over heads) on eval images: each row one image of one "
                                "run (the image itself in the first column), then the first, middle and last "
                                "layer, pretrained beside fine-tuned, one colour scale for all panels (white line "
                                "on the colour bar = uniform attention). Brighter, fewer cells after fine-tuning = "
                                "collapse onto a few patches.",
    **LINK_CAPTIONS,
}


SEED_BANDS = {"fig3_triple_curve", "fig5_fullft_vs_lora", "fig5b_fullft_vs_lora_pets", "fig6_lr_sweep",
              "fig7_collapse_vs_zeroshot", "fig8_regularization", "fig9_head_diversity", "fig15_zeroshot_extended",
              "fig16_dashboard", "fig17_gini_evolution", "extra_erf95_evolution", "extra_frozen_layers",
              "extra_lora_qkvo"}
"""Figures that draw a configuration with several seeds as mean ± SD (error bars or bands)."""
SEED_MEANS = {"fig4_layer_entropy_heatmap", "fig10_per_layer_delta_heatmap"}
"""Figures that draw the seed mean only (heatmaps)."""
PER_RUN = {"fig12_training_dynamics", "fig13_metric_correlations", "fig14_convergence", "extra_wise_interpolation",
           "extra_early_warning", "extra_weight_drift"}
"""Figures that draw every seed's run on its own."""


def caption(name: str, n_seeds: str = "") -> str:
    """The figure's caption, saying how seeds are drawn when configurations have several (n_seeds "2", "2–3")."""
    c = CAPTIONS.get(name, name).rstrip(".")
    if not n_seeds:
        return c + "."
    if name in SEED_BANDS:
        return f"{c}. Mean ± SD over n={n_seeds} seeds per configuration (error bars, bands)."
    if name in SEED_MEANS:
        return f"{c}. Mean over n={n_seeds} seeds per configuration."
    if name in PER_RUN:
        return f"{c}. Every seed's run drawn on its own (n={n_seeds} seeds per configuration)."
    return c + "."


def render_all(matrix_dir: str | Path) -> dict[str, Path | str]:
    """Draw every registered figure into `<matrix_dir>/figures/`.

    Returns:
        name → the PNG path, or a string: why the figure was skipped (missing runs) or
        "failed: ..." if drawing raised. The same is written to `figures/figures.json`.
    """
    out_dir = Path(matrix_dir) / "figures"
    ctx = Ctx.load(matrix_dir)
    rendered: dict[str, Path | str] = {}
    for name, fn in FIGURES.items():
        try:
            rendered[name] = fn(ctx, out_dir / f"{name}.png")
        except Exception as exc:  # one broken figure must not cost the whole report ...
            if isinstance(exc, DamagedFile) or disk_full_message(exc, out_dir) is not None:
                raise  # ... but a damaged input or a full disk stops the stage with one line
            warnings.warn(f"figure {name} failed: {exc!r}")
            rendered[name] = f"failed: {type(exc).__name__}: {exc}"
        if not isinstance(rendered[name], Path) and (out_dir / f"{name}.png").exists():
            (out_dir / f"{name}.png").unlink()  # never leave a stale figure from an earlier render
    n_seeds = seed_counts(ctx.matrix.done)
    write_json(out_dir / "figures.json", {
        n: ({"file": f"figures/{p.name}", "caption": caption(n, n_seeds)} if isinstance(p, Path)
            else {"skipped": p, "caption": caption(n, n_seeds)}) for n, p in rendered.items()})
    return rendered
