"""The zero-shot figures: collapse vs zero-shot transfer (fig. 7) and every protocol per dataset (fig. 15).

Zero-shot accuracy is measured on the best-accuracy checkpoint (train/loop.py), so fig. 7
pairs it with the entropy Δ% of that same checkpoint (`table.Run.zeroshot_delta`), not the
last step's. Configurations with several seeds are drawn as mean ± SD over their seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import roles
from .base import (KIND_COLORS, OKABE_ITO, Ctx, as_ctx, figure, label_points, save, seed_counts, seed_err, seed_mean,
                   short)

PROTOCOLS = (("acc", "as trained (adapter-active / fine-tuned projection)"),
             ("acc_frozen_projection", "fine-tuned tower + frozen pretrained projection"),
             ("acc_base_only", "base-only (LoRA adapters off)"))
"""final.json zero-shot block keys → the protocol's name (docs/FORMATS.md)."""


def zeroshot_baseline(ctx: Ctx, name: str | None = None) -> float | None:
    """The pretrained model's zero-shot accuracy on `name` (default: the headline dataset);
    None when the runs fine-tune several models (no single pretrained line to draw)."""
    models = {r.get("model") for r in ctx.matrix.done}
    if len(models) != 1:
        return None
    return roles.pretrained_zeroshot(ctx.matrix.baseline, name or roles.headline_zeroshot(ctx.matrix.done),
                                     models.pop())


def _pct(key: str):
    return lambda r: None if r.get(key) is None else 100 * r.get(key)


def fig7(src: Ctx | str | Path, out: Path) -> Path | str:
    """Fig. 7: entropy Δ% vs zero-shot accuracy of the same (best) checkpoint (§3.3, English §6.2)."""
    ctx = as_ctx(src)
    runs = [r for r in ctx.matrix.done if r.get("zeroshot_acc") is not None and r.zeroshot_delta()[0] is not None]
    if not runs:
        return "no finished run has zero-shot results"
    fig, ax = figure(7.0, 4.6)
    a = ax[0, 0]
    pts = []
    for cid, rs in roles.by_config(runs).items():
        c = KIND_COLORS.get(ctx.kind(rs[0]), "black")
        (x, sx), (y, sy) = seed_mean(rs, lambda r: r.zeroshot_delta()[0]), seed_mean(rs, _pct("zeroshot_acc"))
        several = len(rs) > 1
        a.errorbar(x, y, xerr=sx if several else None, yerr=sy if several else None, fmt="o", color=c, mec="black",
                   mew=0.4, ecolor=c, elinewidth=0.8, capsize=2, zorder=3)
        pts.append((x, y, cid))
        yb, syb = seed_mean(rs, _pct("zeroshot_acc_base_only"))
        if np.isfinite(yb):
            a.errorbar(x, yb, yerr=syb if several else None, fmt="o", mfc="white", mec=c, ecolor=c,
                       elinewidth=0.8, capsize=2, zorder=3)
            a.plot([x, x], [y, yb], color=c, lw=0.6, ls=":")
    base = zeroshot_baseline(ctx)
    if base is not None:
        a.axhline(100 * base, color="black", ls="--", lw=0.8, label=f"pretrained {100 * base:.1f}%")
    for k in sorted({ctx.kind(r) for r in runs}):
        a.scatter([], [], color=KIND_COLORS.get(k, "black"), label=k)
    a.scatter([], [], facecolor="white", edgecolor="black", label="LoRA base-only (adapters off)")
    n = seed_counts(runs)
    e = ctx.test("collapse_vs_zeroshot_as_trained")  # the test of exactly these points (as trained, same checkpoint)
    sub = "" if e.get("skipped") else f" (r={e['pearson_r']:.2f}, p={e['pearson_p']:.3g}, n={e['n']} runs)"
    sub += f"\npoints: mean ± SD over n={n} seeds" if n else ""
    at_final = [r.run_id for r in runs if r.zeroshot_delta()[1] == "final"]
    where = "at the best-accuracy checkpoint" + (f" (final step: {len(at_final)} runs)" if at_final else "")
    zs_name = roles.headline_zeroshot(runs) or ""
    a.set(xlabel=f"entropy Δ% vs step 0, {where}",
          ylabel=f"zero-shot top-1 on {zs_name} (%), same checkpoint", title="Collapse vs zero-shot" + sub)
    a.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    missed = label_points(a, [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts])
    if missed:  # points too close to label legibly: named under the axis instead of overprinted
        a.text(0.0, -0.2, "unlabelled (crowded): " + ", ".join(sorted(missed)), transform=a.transAxes, fontsize=6,
               va="top", wrap=True)
    return save(fig, out)


def fig15(src: Ctx | str | Path, out: Path) -> Path | str:
    """Fig. 15: zero-shot accuracy under every protocol a run has, per dataset (English §6.3)."""
    ctx = as_ctx(src)
    runs = [r for r in ctx.matrix.done if (r.final or {}).get("zeroshot")]
    names = sorted({n for r in runs for n in r.final["zeroshot"]})
    if not names:
        return "no finished run has zero-shot results"
    fig, ax = figure(10.5, 3.0 * len(names), len(names), 1)
    for a, name in zip(ax[:, 0], names):
        groups = roles.by_config([r for r in runs if name in r.final["zeroshot"]])
        protos = [(k, lab) for k, lab in PROTOCOLS
                  if any(r.final["zeroshot"][name].get(k) is not None for rs in groups.values() for r in rs)]
        xs, w = np.arange(len(groups)), 0.8 / max(len(protos), 1)
        for i, (key, lab) in enumerate(protos):
            v = [seed_mean(rs, lambda r: r.final["zeroshot"][name].get(key)) for rs in groups.values()]
            err = seed_err(groups, [100 * x[1] for x in v])
            a.bar(xs + (i - (len(protos) - 1) / 2) * w, [100 * x[0] for x in v], w, yerr=err,
                  color=OKABE_ITO[i], edgecolor="black", lw=0.4, capsize=2, label=lab)
        base = zeroshot_baseline(ctx, name)
        if base is not None:
            a.axhline(100 * base, color="black", ls="--", lw=0.8, label=f"pretrained {100 * base:.1f}%")
        a.set_xticks(xs, [short(rs[0]) for rs in groups.values()], rotation=45, ha="right", fontsize=6)
        n = seed_counts([r for rs in groups.values() for r in rs])
        a.set(ylabel="top-1 (%)", title=f"Zero-shot on {name} (base-only bars only exist for LoRA)"
              + (f"; mean ± SD over n={n} seeds" if n else ""))
        a.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: inside it hid bars
    return save(fig, out)
