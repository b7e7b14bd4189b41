"""The forgetting study's figures, drawn from the run rows and stats.json in the style of
`analysis/figures/base.py` (Okabe-Ito colours, constrained layout, Agg canvas).

Each `fig_*` returns the figure or a one-line reason it cannot be drawn; `render_all` saves
them as figures/<name>.png and returns {name: {"file", "caption"} | {"skipped": why}}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import NullFormatter

from ..figures.base import DIVERGING, figure, save
from .grid import CORE_METHODS, TARGET, col, core, group

COLOURS = {"full_ft": "#D55E00", "lora_r8": "#0072B2", "last_block": "#009E73", "linear_probe": "#777777",
           "lora_r8_frozen_proj": "#56B4E9"}
LABELS = {"full_ft": "Full FT", "lora_r8": "LoRA r=8", "last_block": "Last block", "linear_probe": "Linear probe",
          "lora_r8_frozen_proj": "LoRA (frozen proj.)"}
MARKERS = ["o", "^", "s", "D", "v"]
STYLES = ["-", "--", ":", "-."]


def fig_dose_response(rows: list[dict], stats: dict) -> Any:
    c = core(rows)
    if not c:
        return "no core (full_ft / lora_r8) run"
    datasets = sorted({r["dataset"] for r in c})
    metrics = (("test_acc", "target test accuracy (%)", 100.0), ("delta_entropy_pct", "ΔH, attention entropy (%)", 1.0),
               (TARGET, "CIFAR-100 retention (%)", 1.0))
    fig, axes = figure(9.0, 3.2, 1, 3)
    for ax, (metric, label, scale) in zip(axes[0], metrics):
        for i, ds in enumerate(datasets):
            for method in CORE_METHODS:
                by_lr = group([r for r in c if r["dataset"] == ds and r["method"] == method], "lr")
                if not by_lr:
                    continue
                x = np.asarray([k[0] for k in by_lr])
                v = [col(g, metric) * scale for g in by_lr.values()]
                m = np.asarray([a.mean() for a in v])
                s = np.asarray([a.std(ddof=1) if len(a) > 1 else 0.0 for a in v])
                ax.plot(x, m, STYLES[i % 4], marker=MARKERS[i % 5], ms=3.5, color=COLOURS[method],
                        label=f"{LABELS[method]}, {ds}")
                ax.fill_between(x, m - s, m + s, color=COLOURS[method], alpha=0.15, lw=0)
        if metric == "delta_entropy_pct":
            ax.axhline(0, color="0.5", lw=0.8, ls="--")
        ax.set_xscale("log")
        lrs = sorted({r["lr"] for r in c})  # tick the grid's rates only: no crowded minor labels
        ax.set_xticks(lrs, [f"{lr:.0e}" for lr in lrs])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("learning rate")
        ax.set_title(label)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=4, frameon=False)
    fig.suptitle("Dose-response: seed mean ± SD per learning rate (primary backbone)", fontsize=9)
    return fig


def fig_predictor_bars(rows: list[dict], stats: dict) -> Any:
    final, early = stats.get("predictor_ranking_final"), stats.get("predictor_ranking_epoch1")
    if not isinstance(final, list) or not final:
        return "no predictor ranking (" + str((final or {}).get("unsupported", "empty")) + ")"
    early_by = {e["predictor"]: e for e in early} if isinstance(early, list) else {}
    order = sorted(final, key=lambda e: e["abs_spearman_overall"])
    y = np.arange(len(order))
    fig, axes = figure(8.6, 3.8, 1, 2)
    ax = axes[0][0]
    ax.barh(y + 0.2, [e["abs_spearman_overall"] for e in order], 0.38, color="#0072B2", label="selected checkpoint")
    ax.barh(y - 0.2, [abs(early_by.get(e["predictor"], {}).get("spearman_overall", np.nan)) for e in order], 0.38,
            color="#56B4E9", label="after epoch 1")
    ax.set_yticks(y, [e["label"] for e in order])
    ax.set_xlim(0, 1)
    ax.set_xlabel("|Spearman ρ| with CIFAR-100 retention, all core runs")
    ax.set_title("across configurations (overall)")
    ax.legend(loc="lower right", frameon=False)
    ax = axes[0][1]
    ax.barh(y + 0.2, [e["abs_spearman_within_mean"] for e in order], 0.38, color="#D55E00", label="mean |ρ|")
    ax.barh(y - 0.2, [e["spearman_within_mean"] for e in order], 0.38, color="#E69F00", label="signed mean ρ")
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_yticks(y, [""] * len(order))
    ax.set_xlim(-1, 1)
    ax.set_xlabel("ρ within dataset × method, averaged over groups")
    ax.set_title("within configuration groups (checkpoint)")
    if all(e["n_groups"] == 0 for e in order):  # say why the panel is empty instead of drawing nothing
        ax.text(0, len(order) / 2, "no dataset × method group with ≥ 5 runs\nand > 2 distinct values:\n"
                "within-group ρ undefined", ha="center", va="center", fontsize=8, color="0.3",
                bbox={"facecolor": "white", "edgecolor": "none"})
    else:
        ax.legend(loc="lower left", frameon=False)
    return fig


def fig_layer_heatmap(rows: list[dict], stats: dict) -> Any:
    heat = stats.get("layer_heatmap") or {}
    if "groups" not in heat:
        return heat.get("unsupported", "no per-layer ΔH")
    names = list(heat["groups"])
    datasets = sorted({n.split("/")[0] for n in names})
    fig, axes = figure(8.0, 1.0 + 1.6 * len(datasets), len(datasets), len(CORE_METHODS))
    lim, image = heat["limit"], None
    for i, ds in enumerate(datasets):
        for j, method in enumerate(CORE_METHODS):
            ax, g = axes[i][j], heat["groups"].get(f"{ds}/{method}")
            if g is None:
                ax.set_axis_off()
                continue
            grid = np.asarray(g["grid"])
            image = ax.imshow(grid, cmap=DIVERGING, vmin=-lim, vmax=lim, aspect="auto",
                              extent=(0.5, grid.shape[1] + 0.5, len(g["lrs"]) - 0.5, -0.5))
            ax.set_yticks(range(len(g["lrs"])), [f"{lr:.0e}" for lr in g["lrs"]])
            ax.set_title(f"{ds}, {LABELS[method]}")
            ax.set_xlabel("layer")
            ax.set_ylabel("learning rate")
            ax.grid(False)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.85, extend="both",
                     label=f"ΔH per layer (%), clipped at ±{lim:.1f} (90th pct.)")
    return fig


def fig_interpolation(rows: list[dict], stats: dict) -> Any:
    inter = stats.get("interpolation") or {}
    if "sweeps" not in inter:
        return inter.get("unsupported", "no interpolation record")
    variants = sorted({s["variant"] for s in inter["sweeps"]})
    fig, axes = figure(8.0, 3.2 + 0.18 * len(inter["sweeps"]) / 2, 1, 2, sharex=True)
    for i, s in enumerate(inter["sweeps"]):
        a = [p["alpha"] for p in s["sweep"]]
        chosen = inter["selected_by_val"].get(s["method"]) == s["run_id"]
        # line style = variant (exact vs the authors' A/B interpolation); thin = not the method's val-best run
        kw = dict(color=COLOURS.get(s["method"], "0.3"), ls=STYLES[variants.index(s["variant"]) % 4],
                  marker=MARKERS[i % 5], ms=3.5, lw=1.6 if chosen else 0.8, alpha=1.0 if chosen else 0.6,
                  label=f"{LABELS.get(s['method'], s['method'])}, lr {s['lr']:g}"
                        + (f", {s['variant']}" if len(variants) > 1 else "") + ("" if chosen else " (not val-best)"))
        axes[0][0].plot(a, [p["transfer_retention"] for p in s["sweep"]], **kw)
        axes[0][1].plot(a, [100 * p["test_acc"] for p in s["sweep"]], **kw)
    axes[0][0].set_ylabel("CIFAR-100 retention (%)")
    axes[0][1].set_ylabel("target test accuracy (%)")
    for ax in axes[0]:
        ax.set_xlabel("α (0 = pretrained encoder, 1 = fine-tuned)")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=2, frameon=False)
    fig.suptitle("Weight interpolation θ(α) = (1 − α)·θ₀ + α·θ_ft, head kept fine-tuned", fontsize=9)
    return fig


def fig_frontier(rows: list[dict], stats: dict) -> Any:
    fr = stats.get("frontier") or {}
    if not fr or "unsupported" in fr:
        return fr.get("unsupported", "no cells")
    fig, axes = figure(4.2 * len(fr), 3.2, 1, len(fr))
    for ax, (ds, body) in zip(axes[0], fr.items()):
        front = sorted((c for c in body["cells"] if c["pareto"]), key=lambda c: c["test_acc"])
        ax.plot([c["test_acc"] for c in front], [c["retention"] for c in front], ":", color="0.3", lw=1, zorder=1)
        for method in sorted({c["method"] for c in body["cells"]}):
            cs = [c for c in body["cells"] if c["method"] == method]
            ax.scatter([c["test_acc"] for c in cs], [c["retention"] for c in cs], s=28, zorder=2,
                       color=COLOURS.get(method, "0.5"), edgecolors=["black" if c["pareto"] else "none" for c in cs],
                       label=LABELS.get(method, method))
            for c in cs:
                ax.annotate(f"{c['lr']:.0e}", (c["test_acc"], c["retention"]), xytext=(3, 2),
                            textcoords="offset points", fontsize=6, color="0.3")
        ax.set_xlabel("target test accuracy (%)")
        ax.set_ylabel("CIFAR-100 retention (%)")
        ax.set_title(f"{ds}: cell means (black edge = Pareto frontier)")
        ax.legend(loc="lower left", frameon=False)
    return fig


FIGURES = {
    "dose_response": (fig_dose_response, "Test accuracy, signed ΔH and CIFAR-100 retention against the learning rate "
                      "(seed mean ± SD) per dataset and core method."),
    "predictor_bars": (fig_predictor_bars, "Left: |ρ| of each predictor with retention over all core runs, at the "
                       "selected checkpoint and after epoch 1. Right: mean |ρ| and signed mean ρ within dataset × method."),
    "layer_heatmap": (fig_layer_heatmap, "Seed-mean ΔH per layer (%) at the selected checkpoint, per learning rate."),
    "interpolation": (fig_interpolation, "Retention and target accuracy along the weight interpolation, per sweep."),
    "frontier": (fig_frontier, "Accuracy/retention cell means of every method; the Pareto frontier joined."),
}


def render_all(rows: list[dict], stats: dict, out: Path) -> dict:
    """Draw every figure into `out` (figures/), {name: {"file", "caption"} | {"skipped": why}}."""
    result = {}
    for name, (fn, caption) in FIGURES.items():
        fig = fn(rows, stats)
        if isinstance(fig, str):
            result[name] = {"skipped": fig}
            continue
        save(fig, Path(out) / f"{name}.png")
        result[name] = {"file": f"figures/{name}.png", "caption": caption}
    return result
