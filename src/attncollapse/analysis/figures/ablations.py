"""The ablation figures: learning-rate sweep (fig. 6), regularization and weight decay
(fig. 8), frozen layers (A3) and LoRA target modules (A2).

Registered in `figures.FIGURES` (the one registry); a configuration with several seeds is
drawn as its seed mean ± SD. Plumbing in `base`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import roles
from .base import (KIND_COLORS, METRIC_LABELS, OKABE_ITO, Ctx, as_ctx, bars, figure, layer_band,
                   UNSTABLE_MARK, abs_delta, abs_label, metric_panels, save, seed_mean, short, unstable_any)


def fig6(src: Ctx | str | Path, out: Path) -> Path | str:
    """Fig. 6: the LR sweep (experiment report §3.4): entropy, ERF and Gini change and the best
    accuracy against the learning rate, each on its own panel and scale (on one shared Δ% axis
    a metric with a small base flattened the others); a metric whose Δ% is unstable is drawn
    as its absolute Δ. The entropy panel's title carries the sweep's test (stats.json)."""
    ctx = as_ctx(src)
    groups = roles.by_config(ctx.roles["lr_sweep"])
    if len(groups) < 2:
        return f"LR sweep needs ≥ 2 learning rates on {ctx.roles['primary']}; found {len(groups)}"
    lrs = [rs[0].get("lr") for rs in groups.values()]
    several = any(len(rs) > 1 for rs in groups.values())
    fig, ax = figure(12.0, 3.2, 1, 4)
    e = ctx.test("lr_sweep")
    sub = "" if e.get("skipped") else f"\nr={e['pearson_r']:.3f}, p={e['pearson_p']:.3g}; ρ={e['spearman_rho']:.2f}"
    for i, (a, mt) in enumerate(zip(ax[0], ("entropy", "erf", "gini"))):
        absolute = unstable_any(mt, [r.get(f"{mt}_initial") for r in ctx.roles["lr_sweep"]])
        v = [seed_mean(rs, (lambda r: abs_delta(r, mt)) if absolute else (lambda r: r.delta(mt)))
             for rs in groups.values()]
        a.errorbar(lrs, [x[0] for x in v], [x[1] for x in v] if several else None, marker="o", ms=4,
                   color=OKABE_ITO[i], capsize=2)
        a.axhline(0, color="black", lw=0.6)
        name = METRIC_LABELS[mt].split(" (")[0]
        a.set(xscale="log", xlabel="learning rate", ylabel=abs_label(mt) if absolute else f"{name} Δ% (final vs initial)",
              title=name + (f" {UNSTABLE_MARK}" if absolute else "") + (sub if mt == "entropy" else ""))
    v = [seed_mean(rs, lambda r: r.get("best_acc")) for rs in groups.values()]
    ax[0, 3].errorbar(lrs, [100 * x[0] for x in v], [100 * x[1] for x in v] if several else None, marker="s",
                      color=OKABE_ITO[3], capsize=2)
    ax[0, 3].set(xscale="log", xlabel="learning rate", ylabel="best accuracy (%)", title="Task accuracy")
    return save(fig, out)


def fig8(src: Ctx | str | Path, out: Path) -> Path | str:
    """Fig. 8: regularizers and weight decay vs the unregularized run (§3.7)."""
    ctx = as_ctx(src)
    ref = ctx.roles["reference"].get(ctx.roles["primary"], [])
    cands = ctx.roles["regularized"] + [r for r in ctx.roles["wd_sweep"] if r not in ref]
    if not ref or not cands:
        return "needs the unregularized reference run and regularized or weight-decay runs"
    groups = roles.by_config(ref + cands)
    colors = [KIND_COLORS.get(ctx.kind(rs[0]), "black") for rs in groups.values()]
    fig, ax = figure(8.0, 3.6, 1, 2)
    bars(ax[0, 0], groups, lambda r: r.delta(), colors, ylabel="entropy Δ%")
    ps = {e["label"].split(":")[0]: e for t in ("regularizers", "weight_decay")
          for e in ctx.test(t).get("entries", []) if not e.get("skipped")}
    # left ticks: id + Holm p (the right panel's ticks carry the descriptions)
    ax[0, 0].set_xticks(range(len(groups)), [c + (f"\nHolm p={ps[c]['p_holm']:.2g}" if c in ps else "\n(reference)")
                                             for c in groups], rotation=45, ha="right")
    ax[0, 0].set_title("Entropy change (Welch p vs no regularizer, Holm-adjusted)")
    bars(ax[0, 1], groups, lambda r: 100 * r.get("best_acc", np.nan), colors, ylabel="best accuracy (%)")
    # Bars start at 0 (a bar's length is its value; a truncated axis would inflate 0.3 pp into
    # half the panel), so the small differences are printed on the bars instead.
    ax[0, 1].set_ylim(0, 105)
    for x, rs in enumerate(groups.values()):
        m, sd = seed_mean(rs, lambda r: 100 * r.get("best_acc", np.nan))
        if np.isfinite(m):
            ax[0, 1].text(x, m / 2, f"{m:.2f}" + (f"\n±{sd:.2f}" if len(rs) > 1 else ""), ha="center", va="center",
                          fontsize=6, rotation=90, color="white", fontweight="bold")
    ax[0, 1].set_title("Task accuracy (value printed on each bar)")
    return save(fig, out)


def extra_frozen_layers(src: Ctx | str | Path, out: Path) -> Path | str:
    """Frozen-layer ablation (A3, experiment report §3.5)."""
    ctx = as_ctx(src)
    groups = roles.by_config(ctx.roles["freezing"])
    if len(groups) < 2 or all(not rs[0].get("freeze_layers") for rs in groups.values()):
        return "needs layer-freezing runs (A3) and the unfrozen reference"
    ks = [rs[0].get("freeze_layers") or 0 for rs in groups.values()]
    fig, ax = figure(8.0, 3.2, 1, 2)
    v = [seed_mean(rs, lambda r: r.delta()) for rs in groups.values()]
    several = any(len(rs) > 1 for rs in groups.values())
    ax[0, 0].errorbar(ks, [x[0] for x in v], [x[1] for x in v] if several else None, marker="o", color=OKABE_ITO[0],
                      capsize=2, label="entropy Δ%")
    t = ax[0, 0].twinx()
    acc = [100 * seed_mean(rs, lambda r: r.get("best_acc"))[0] for rs in groups.values()]
    t.plot(ks, acc, marker="s", color=OKABE_ITO[1], label="best accuracy (%)")
    t.set_ylim(max(0.0, np.nanmin(acc) - 5), min(100.5, np.nanmax(acc) + 5))  # never above 100%
    ax[0, 0].set(xlabel="frozen encoder layers", title="Entropy change (circles) and accuracy (squares)")
    ax[0, 0].set_ylabel("entropy Δ% (circles)", color=OKABE_ITO[0])
    ax[0, 0].set_xticks(sorted(set(ks)))
    t.set_ylabel("best accuracy (%) (squares)", color=OKABE_ITO[1])
    for i, (k, rs) in enumerate(zip(ks, groups.values())):
        layer_band(ax[0, 1], rs, color=OKABE_ITO[i % 8], label=f"freeze {k}")
    ax[0, 1].set(xlabel="layer", ylabel="entropy Δ%", title="Per-layer entropy Δ")
    ax[0, 1].legend()
    return save(fig, out)


def extra_lora_qkvo(src: Ctx | str | Path, out: Path) -> Path | str:
    """LoRA targets QV vs QKVO at the same rank (A2, experiment report §3.6)."""
    ctx = as_ctx(src)
    lora = ctx.roles["lora_all"]
    qkvo = [r for r in lora if (r.get("lora_targets") or "qv") != "qv"]
    if not qkvo:
        return "no LoRA run with extended targets (A2)"
    qv = [r for r in lora if (r.get("lora_targets") or "qv") == "qv" and r.get("lora_rank") == qkvo[0].get("lora_rank")]
    if not qv:
        return f"no LoRA QV run at rank {qkvo[0].get('lora_rank')} to compare with"
    groups = roles.by_config(qv + qkvo)
    fig, ax = figure(9.5, 3.0, 1, 4)
    labels = [f"{short(rs[0]).replace(chr(10), ': ')}\nacc {100 * seed_mean(rs, lambda r: r.get('best_acc'))[0]:.2f}%"
              for rs in groups.values()]
    metric_panels(ax[0], groups, labels=labels)
    fig.suptitle("LoRA target modules: each metric on its own scale", fontsize=9)
    return save(fig, out)
