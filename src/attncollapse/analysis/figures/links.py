"""Figures of the reports' future work: early warning, the weight-drift control, model families.

Drawn from stats.json's `early_warning`, `weight_drift` and `model_families` entries (whose
points `links` computed from the run files) and the runs' history.json, so a figure shows
exactly the numbers the report's tables and tests use. Registered in `figures.FIGURES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Patch

from ..statistics import links
from .base import (METRIC_RANGE, KIND_COLORS, OKABE_ITO, Ctx, as_ctx, figure, legend_kinds, pct_label, save,
                   unstable_any, unstable_note)

LABEL_MAX = 12
"""Most points a scatter labels with their run ids."""


def _title(e: dict) -> str:
    if e.get("skipped"):
        return "skipped"
    return (f"r={e['pearson_r']:.2f} (Holm p={e['pearson_p_holm']:.2g}), n={e['n']}\n"
            f"ρ={e['spearman_rho']:.2f} (p={e['spearman_p']:.2g}, Holm {e['spearman_p_holm']:.2g})")


def _scatter(ax: Any, ctx: Ctx, e: dict, xlabel: str, ylabel: str) -> None:
    """One stats.json correlation entry as a scatter of its runs, coloured by kind of run."""
    byid = {r.run_id: r for r in ctx.matrix.done}
    if e.get("skipped"):
        ax.text(0.5, 0.5, f"skipped: {e.get('reason', '')}", ha="center", va="center", fontsize=6,
                transform=ax.transAxes, wrap=True)
    else:
        for rid, x, y in zip(e["runs"], e["x_values"], e["y_values"]):
            ax.scatter(x, y, s=18, color=KIND_COLORS.get(ctx.kind(byid[rid]), "black"), edgecolor="black", lw=0.3)
            if len(e["runs"]) <= LABEL_MAX:  # beyond that the ids overprint each other
                ax.annotate(rid, (x, y), fontsize=5, xytext=(2, 2), textcoords="offset points")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(_title(e), fontsize=7)


def early_warning(src: Ctx | str | Path, out: Path) -> Path | str:
    """Each predictor's Δ after epoch ≈ 1 vs the final transfer change (pp), runs as points."""
    ctx = as_ctx(src)
    t = ctx.test("early_warning")
    if t.get("skipped"):
        return f"early warning not tested: {t.get('reason', '')}"
    entries = {e.get("predictor"): e for e in t.get("entries", [])}
    fig, ax = figure(9.0, 6.0, 2, 3)
    for a, pr in zip(ax.flat, links.PREDICTORS):
        xl = "mean weight drift at epoch ≈ 1" if pr == "weight_drift" else pct_label(
            pr, f"{pr} Δ% at epoch ≈ 1", [r.get(f"{pr}_initial") for r in ctx.matrix.done])
        _scatter(a, ctx, entries.get(pr, {"skipped": True, "reason": "no entry"}), xl, "transfer change (pp)")
        a.axhline(0, color="black", lw=0.5)
    ax[1, 2].axis("off")
    legend_kinds(ax[1, 2], {ctx.kind(r) for r in ctx.matrix.done}, fontsize=7, loc="center")
    flagged = [pr for pr in links.PREDICTORS if pr in METRIC_RANGE
               and unstable_any(pr, [r.get(f"{pr}_initial") for r in ctx.matrix.done])]
    fig.suptitle("Early warning: the first epoch's change vs the final transfer change"
                 + (f"\n{unstable_note(flagged)}" if flagged else ""), fontsize=9)
    return save(fig, out)


def weight_drift(src: Ctx | str | Path, out: Path) -> Path | str:
    """Final weight drift vs entropy Δ% and vs transfer change, and drift per layer, per run."""
    ctx = as_ctx(src)
    t = ctx.test("weight_drift")
    if t.get("skipped"):
        return f"weight drift not analysed: {t.get('reason', '')}"
    e = {x.get("label"): x for x in t.get("entries", [])}
    fig, ax = figure(11.0, 3.3, 1, 3)
    _scatter(ax[0, 0], ctx, e.get("weight drift vs entropy Δ%", {"skipped": True}), "mean weight drift ‖θ−θ₀‖/‖θ₀‖",
             "entropy Δ%")
    _scatter(ax[0, 1], ctx, e.get("weight drift vs transfer change", {"skipped": True}),
             "mean weight drift (transfer checkpoint)", "transfer change (pp)")
    for r in ctx.matrix.done:
        if (d := r.drift_at()) is not None:
            ax[0, 2].plot(np.arange(1, len(d) + 1), d, marker="o", ms=2, lw=0.8,
                          color=KIND_COLORS.get(ctx.kind(r), "black"))
    ax[0, 2].set(xlabel="layer", ylabel="weight drift (last step)", title="Per-layer drift, one line per run")
    legend_kinds(ax[0, 0], {ctx.kind(r) for r in ctx.matrix.done}, fontsize=6)
    fig.suptitle("Weight-space control: does drift explain what attention Δ explains?", fontsize=9)
    return save(fig, out)


def families(src: Ctx | str | Path, out: Path) -> Path | str:
    """Per model family: entropy Δ% by layer (one panel per config group), collapse vs transfer."""
    ctx = as_ctx(src)
    t = ctx.test("model_families")
    if t.get("skipped"):
        return f"not a cross-family matrix: {t.get('reason', '')}"
    fams = t["families"]
    groups = list(dict.fromkeys(g for f in fams for g in f["by_group"]))
    fig, ax = figure(3.0 * (len(groups) + 1), 3.2, 1, len(groups) + 1)
    colors = {f["family"]: OKABE_ITO[i % 8] for i, f in enumerate(fams)}
    depths = {len(v) for f in fams for s in f["by_group"].values() if (v := s.get("entropy_delta_pct_layers"))}
    relative = len(depths) > 1  # families of different depth share an axis of relative depth l/L
    for a, g in zip(ax[0], groups):
        for f in fams:
            v = (f["by_group"].get(g) or {}).get("entropy_delta_pct_layers")
            if v:
                x = np.arange(1, len(v) + 1) / (len(v) if relative else 1)
                a.plot(x, v, marker="o", ms=3, color=colors[f["family"]], label=f["family"])
        a.axhline(0, color="black", lw=0.5)
        a.set(xlabel="relative depth (layer / L)" if relative else "layer", ylabel="entropy Δ%",
              title=f"{g}: per-layer entropy Δ%")
    ax[0, 0].legend(fontsize=6)
    a = ax[0, -1]
    byfam = {r.run_id: links.family_name(r) for r in ctx.matrix.done}
    for r in ctx.matrix.done:
        c, (x, _) = links.transfer_change(r, ctx.matrix.baseline), r.zeroshot_delta()
        if c is not None and x is not None:  # Δ of the checkpoint transfer was measured on
            a.scatter(x, c["pp"], color=colors.get(byfam[r.run_id], "black"), s=18, edgecolor="black", lw=0.3)
            a.annotate(r.get("group") or r.config_id, (x, c["pp"]), fontsize=5, xytext=(2, 2),
                       textcoords="offset points")
    a.axhline(0, color="black", lw=0.5)
    a.legend(handles=[Patch(facecolor=c, edgecolor="black", linewidth=0.4, label=f) for f, c in colors.items()],
             fontsize=6)
    a.set(xlabel="entropy Δ% (transfer checkpoint)", ylabel="transfer change (pp)",
          title="Collapse vs transfer, coloured by family")
    fig.suptitle("Model families compared", fontsize=9)
    return save(fig, out)


FIGURES = {"extra_early_warning": early_warning, "extra_weight_drift": weight_drift,
           "extra_model_families": families}
CAPTIONS = {
    "extra_early_warning": "Does the first epoch predict the end? One panel per predictor: x = its change at the "
                           "eval point nearest epoch 1 (a metric's Δ%, or the mean weight drift), y = the final "
                           "transfer change in pp (transfer_acc where a run has it, else zero-shot, vs the "
                           "pretrained model), one point per run coloured by family; titles give Pearson and "
                           "Spearman correlations with Holm p. A tilted cloud = an early warning; † = Δ% unstable.",
    "extra_weight_drift": "Weight-space control. Left and middle: mean relative weight drift ‖θ−θ₀‖/‖θ₀‖ over blocks "
                          "against entropy Δ% and against transfer change, one point per run coloured by family "
                          "(titles: correlations). Right: drift per layer, one line per run. If drift explains "
                          "transfer as well as entropy does, attention is not needed to explain it.",
    "extra_model_families": "Model families compared: one panel per configuration group with per-layer entropy Δ% "
                            "of each family (colour; x = relative depth when depths differ), and a last panel of "
                            "entropy Δ% against transfer change, one point per run coloured by family. Look for "
                            "whether the families collapse in the same layers and to the same cost.",
}
