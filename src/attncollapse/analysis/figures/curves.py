"""The training-curve figures: drawn from history.json, final.json "wise" and overlays.npz.

Figs 3, 4, 9, 12, 14, 17, the ERF evolution, WiSE-FT interpolation and the attention
overlays; registered in `index.FIGURES` (the one registry). Plumbing in `base`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from matplotlib.patches import Patch

from ..._io import DamagedFile, load_arrays_checked
from .. import roles, table
from .base import (DIVERGING, KIND_COLORS, METRIC_LABELS, OKABE_ITO, Ctx, abs_label, as_ctx, curve, figure,
                   plot_seeds, run_styles, save, seed_counts, short, style_for, unstable_any)


def fig3(src: "Ctx | str | Path", out: Path) -> Path | str:
    """Fig. 3: accuracy and mean entropy over training, full FT reference runs (§3.2)."""
    ctx = as_ctx(src)
    dss = [ds for ds in ctx.roles["datasets"] if any(r.history() for r in ctx.roles["reference"][ds])]
    if not dss:
        return "no full-FT reference run with history.json"
    fig, ax = figure(4.0 * len(dss), 3.2, 1, len(dss))
    for a, ds in zip(ax[0], dss):
        t = a.twinx()
        for i, rs in enumerate(roles.by_config(ctx.roles["reference"][ds]).values()):
            plot_seeds(a, rs, None, scale=100, color=OKABE_ITO[0], marker="o", ms=2, n_in_label=False,
                       label="val acc" if i == 0 else None)
            plot_seeds(t, rs, "entropy", color=OKABE_ITO[3], marker="s", ms=2, n_in_label=False,
                       label="mean entropy" if i == 0 else None)
        n = seed_counts(ctx.roles["reference"][ds])
        a.set(xlabel="epoch", ylabel="accuracy (%)", title=roles.describe(ctx.roles["reference"][ds][0])
              + (f"\nmean ± SD over n={n} seeds" if n else ""))
        t.set_ylabel("mean entropy (nats)", color=OKABE_ITO[3])
        a.legend(loc="lower left")
        t.legend(loc="lower right")
    return save(fig, out)


def fig4(src: "Ctx | str | Path", out: Path) -> Path | str:
    """Fig. 4: per-layer entropy Δ% vs step 0 along training, full FT and LoRA (§3.8)."""
    ctx = as_ctx(src)
    picks = []
    for ds in ctx.roles["datasets"][:2]:
        picks += ctx.roles["reference"][ds][:1]
        lora = sorted(ctx.roles["lora"][ds], key=lambda r: abs((r.get("lora_rank") or 8) - 8))  # reports show r=8
        picks += lora[:1]
    picks = [r for r in picks if r.history() and r.history()["points"]]
    if not picks:
        return "no full-FT or LoRA run with history.json"
    mats, seeds = [], roles.by_config(ctx.matrix.done)
    for r in picks:
        per_seed = []  # the config's seeds with the same eval points as this one: averaged
        for q in seeds.get(r.config_id, [r]):
            pts = (q.history() or {}).get("points") or []
            h = np.asarray([p["layers"]["entropy"] for p in pts], float)  # (points, L)
            if not per_seed or h.shape == per_seed[0][1].shape:
                per_seed.append((np.asarray([p.get("epoch", 0.0) for p in pts]), 100 * (h - h[0]) / h[0]))
        mats.append((per_seed[0][0], np.mean([m for _, m in per_seed], 0)))
    lim = max(float(np.nanmax(np.abs(m))) for _, m in mats) or 1.0
    fig, ax = figure(3.2 * len(picks), 3.0, 1, len(picks))
    for a, r, (ep, m) in zip(ax[0], picks, mats):
        im = a.imshow(m.T, cmap=DIVERGING, vmin=-lim, vmax=lim, aspect="auto", origin="lower",
                      extent=[ep[0], ep[-1], 0.5, m.shape[1] + 0.5])
        a.set(xlabel="epoch", ylabel="layer", title=roles.describe(r))
        a.grid(False)
    fig.colorbar(im, ax=ax[0].tolist(), label="entropy Δ% vs step 0")
    return save(fig, out)


def evolution(metric: str):
    """A figure function: the metric's mean over layers along training (figs 9, 17, ERF extra)."""
    def draw(src: "Ctx | str | Path", out: Path) -> Path | str:
        ctx = as_ctx(src)
        dss = [ds for ds in ctx.roles["datasets"] if any(r.history() for r in ctx.main_runs(ds))]
        if not dss:
            return "no full-FT, LoRA or LR-sweep run with history.json"
        fig, ax = figure(4.5 * len(dss), 4.4, 1, len(dss))
        for a, ds in zip(ax[0], dss):
            for i, rs in enumerate(roles.by_config(ctx.main_runs(ds)).values()):
                plot_seeds(a, rs, metric, lw=1.2, label=short(rs[0]).replace("\n", ": "), **style_for(i))
            a.set(xlabel="epoch", ylabel=METRIC_LABELS[metric], title=f"{METRIC_LABELS[metric]} on {ds}")
            a.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2)  # below: inside it hid curves
        return save(fig, out)
    draw.__doc__ = f"{METRIC_LABELS[metric]} mean over layers along training, main runs per dataset."
    return draw


def fig12(src: "Ctx | str | Path", out: Path) -> Path | str:
    """Fig. 12: loss, accuracy, entropy and Gini change, entropy velocity and collapse onset.

    Each run has its own style (colour = family, then line style and marker, `run_styles`)
    and a legend entry, so 21 runs stay apart. The entropy and Gini panels show Δ% vs step 0,
    or the absolute Δ when a run's step-0 value makes its Δ% unstable (`instability.unstable`).
    As the original's report drew it: each run's collapse onset (`table.collapse_onset`, the
    first eval point 1% below the initial mean entropy) is marked ▼ on the entropy panel and
    given as a fraction of training in its own panel, beside the entropy velocity (the change
    of the layer-mean entropy from one eval point to the next) along the fraction of training.
    """
    ctx = as_ctx(src)
    runs = sorted((r for r in ctx.matrix.done if r.history()), key=lambda r: (ctx.kind(r), r.run_id))
    if not runs:
        return "no finished run with history.json"
    styles = run_styles(runs, ctx.kind)
    fig, ax = figure(15.0, 6.2, 2, 3)

    def first(r, metric):
        x, y = curve(r, metric)
        return y[0] if len(y) else None

    absolute = {mt: unstable_any(mt, [first(r, mt) for r in runs]) for mt in ("entropy", "gini")}
    spec = (("train_loss", "train loss"), (None, "val accuracy"),
            ("entropy", abs_label("entropy") if absolute["entropy"] else "entropy Δ% vs step 0"),
            ("gini", abs_label("gini") if absolute["gini"] else "Gini Δ% vs step 0"))
    for a, (metric, lab) in zip(ax.flat, spec):
        rel = metric in absolute
        for r in runs:
            x, y = curve(r, metric, relative=rel, absolute=absolute.get(metric, False))
            a.plot(x, y, lw=0.9, ms=3, markevery=max(1, len(x) // 6), label=r.run_id, **styles[r.run_id])
        a.set(xlabel="epoch", ylabel=lab)
    ent = ax.flat[2]
    onsets: list[tuple[table.Run, float]] = []
    for r in runs:
        on = table.collapse_onset(r.history())
        if on is not None:
            x, y = curve(r, "entropy", relative=True, absolute=absolute["entropy"])
            ent.plot(x[on["index"]], y[on["index"]], "v", color=styles[r.run_id]["color"], mec="black",
                     mew=0.4, ms=6, zorder=4)
            onsets.append((r, on["fraction"]))
    if not absolute["entropy"]:
        ent.axhline(-table.ONSET_PCT, color="black", ls="--", lw=0.6)
    ent.set_title(f"▼ collapse onset (first point {table.ONSET_PCT:g}% below initial): "
                  f"{len(onsets)} of {len(runs)} runs", fontsize=7)
    vel = ax.flat[4]
    for r in runs:
        frac, v = entropy_velocity(r)
        vel.plot(frac, v, lw=0.9, ms=3, markevery=max(1, len(frac) // 6), label=r.run_id, **styles[r.run_id])
    vel.axhline(0, color="black", lw=0.5)
    vel.set(xlabel="fraction of training", ylabel="entropy velocity (nats per eval point)", xlim=(0, 1))
    vel.set_title("change of the mean entropy since the previous eval point (below 0 = contracting)", fontsize=7)
    bars = ax.flat[5]
    if onsets:
        ys = np.arange(len(onsets))
        bars.barh(ys, [f for _, f in onsets], color=[styles[r.run_id]["color"] for r, _ in onsets])
        bars.set_yticks(ys, [r.run_id for r, _ in onsets], fontsize=6)
        bars.invert_yaxis()
    bars.set(xlabel="fraction of training at collapse onset", xlim=(0, 1))
    missing = [r.run_id for r in runs if r not in {o for o, _ in onsets}]
    bars.set_title(f"collapse onset ({table.ONSET_PCT:g}% below initial) as a fraction of training"
                   + (f"\nno onset: {', '.join(missing)}" if missing else ""), fontsize=7)
    handles, labels = ax[0, 0].get_legend_handles_labels()
    fig.legend(handles, [f"{lab} ({ctx.kind(r)})" for lab, r in zip(labels, runs)], loc="outside right upper",
               fontsize=6, ncols=1 if len(runs) <= 26 else 2, title="run (colour: family)", title_fontsize=7)
    fig.suptitle("Training dynamics of every run", fontsize=9)
    return save(fig, out)


def entropy_velocity(r: table.Run) -> tuple[np.ndarray, np.ndarray]:
    """(fraction of training, change of the layer-mean entropy since the previous eval point).

    The fraction is the one `table.collapse_onset` reports: a point's index over the number
    of eval points, so the onset panel and the velocity share one axis.
    """
    _, y = curve(r, "entropy")
    if len(y) < 2:
        return np.zeros(0), np.zeros(0)
    return np.arange(1, len(y)) / len(y), np.diff(y)


def fig14(src: "Ctx | str | Path", out: Path) -> Path | str:
    """Fig. 14: each run's late-training statistic under stats.json's convergence criterion.

    The same criterion as the report's text and stats.json `convergence` (default: the original
    `verify_convergence`, the SD of the last max(3, n//4) per-epoch accuracies ≤ 0.5 pp), drawn
    from that entry's per-run verdicts, so figure and text cannot disagree. An entropy panel is
    drawn only when the criterion has an entropy tolerance.
    """
    ctx = as_ctx(src)
    c = (ctx.stats.get("tests") or {}).get("convergence") or {}
    if not c or c.get("skipped"):
        return f"no convergence entry in stats.json ({c.get('reason', 'no finished runs')})"
    crit = c["criterion"]
    rows = [v for v in c.get("runs", []) if not v.get("skipped")]
    if not rows:
        return "no run has enough eval points for the convergence criterion"
    by_id = {r.run_id: r for r in ctx.matrix.done}
    panels = [(f"acc_{crit['rule']}_pp", crit["acc_tol_pp"], f"val accuracy, {crit['rule']} over the tail (pp)")]
    if crit.get("ent_tol_pct") is not None:
        panels.append((f"entropy_{crit['rule']}_pct", crit["ent_tol_pct"], f"entropy, {crit['rule']} (% of initial)"))
    fig, ax = figure(4.5 * len(panels), 1.2 + 0.18 * len(rows), 1, len(panels), sharey=True)
    ys = np.arange(len(rows))
    for a, (key, tol, lab) in zip(ax.flat, panels):
        a.barh(ys, [abs(v.get(key, np.nan)) for v in rows],
               color=[KIND_COLORS.get(ctx.kind(by_id[v["run_id"]]), "black") if v["run_id"] in by_id else "black"
                      for v in rows])
        a.axvline(tol, color="black", ls="--", lw=0.6)
        a.set_xlabel(lab)
    ax[0, 0].set_yticks(ys, [v["run_id"] for v in rows], fontsize=6)
    ax[0, 0].invert_yaxis()
    kinds = {ctx.kind(by_id[v["run_id"]]) for v in rows if v["run_id"] in by_id}
    fig.legend(handles=[Patch(facecolor=c, label=k) for k, c in KIND_COLORS.items() if k in kinds],
               loc="outside lower center", ncols=min(len(kinds), 4) or 1, fontsize=6)
    fig.suptitle(f"Convergence: {c['n_converged']} of {c['n_runs']} runs — {crit['text']}", fontsize=7, wrap=True)
    return save(fig, out)


def wise(src: "Ctx | str | Path", out: Path) -> Path | str:
    """WiSE-FT interpolation θ = (1−α)·θ₀ + α·θ (final.json "wise"): zero-shot vs task acc, entropy."""
    ctx = as_ctx(src)
    runs = [r for r in ctx.matrix.done if (r.final or {}).get("wise")]
    if not runs:
        return "no run has a WiSE-FT curve (final.json \"wise\" empty)"
    fig, ax = figure(9.0, 3.4, 1, 2)
    for i, r in enumerate(runs[:8]):
        w = sorted(r.final["wise"], key=lambda p: p["alpha"])
        al = [p["alpha"] for p in w]
        zs = [np.nan if p.get("zeroshot_acc") is None else 100 * p["zeroshot_acc"] for p in w]
        ta = [np.nan if p.get("task_acc") is None else 100 * p["task_acc"] for p in w]
        st = style_for(i)
        ax[0, 0].plot(ta, zs, marker=".", ms=4, label=r.run_id, **st)
        # The path's ends instead of an α label at every point (those overprinted one another):
        # hollow circle = α 0 (pretrained weights), star = α 1 (the fine-tuned run).
        ax[0, 0].plot(ta[:1], zs[:1], "o", ms=7, mfc="white", mec=st["color"], zorder=3)
        ax[0, 0].plot(ta[-1:], zs[-1:], "*", ms=9, color=st["color"], mec="black", mew=0.3, zorder=3)
        ax[0, 1].plot(al, [(p.get("mean") or {}).get("entropy", np.nan) for p in w], marker="o", ms=3, **st)
    ax[0, 0].set(xlabel="task accuracy (%)", ylabel="zero-shot top-1 (%)",
                 title="Path from ○ α = 0 (pretrained) to ★ α = 1")
    fig.legend(*ax[0, 0].get_legend_handles_labels(), loc="outside right upper", fontsize=6, title="run")
    ax[0, 1].set(xlabel="α (0 = pretrained, 1 = fine-tuned)", ylabel="mean entropy (nats)", title="Entropy along the path")
    return save(fig, out)


def _patch_map(rows: np.ndarray) -> np.ndarray | None:
    """(H, T) [CLS] rows → (g, g) head-mean attention over patches, or None if not square."""
    p = rows[:, 1:] / rows[:, 1:].sum(-1, keepdims=True)
    g = int(round(np.sqrt(p.shape[-1])))
    return p.mean(0).reshape(g, g) if g * g == p.shape[-1] else None


def overlays(src: "Ctx | str | Path", out: Path, *, max_rows: int = 4) -> Path | str:
    """[CLS] attention of the first, middle and last layer over eval images, pretrained vs fine-tuned.

    Row: one eval image of one run (the image in column 0); then per layer the [CLS]→patch
    attention (head mean) of the pretrained and of the fine-tuned model as a patch grid on one
    shared colour scale, drawn opaque beside the image rather than blended over it.
    """
    ctx = as_ctx(src)
    pref = [r for ds in ctx.roles["datasets"] for r in ctx.roles["reference"][ds][:1] + ctx.roles["lora"][ds][:1]]
    runs = [r for r in pref + ctx.matrix.done if (r.dir / "overlays.npz").exists()]
    runs = list(dict.fromkeys(runs))[:2]
    if not runs:
        return "no run has overlays.npz"
    data, damaged = [], []
    for r in runs:
        try:  # verified (checksum); it cannot be remade without training again, so a damaged one is left out, named
            z = load_arrays_checked(r.dir / "overlays.npz", required=("images", "initial", "final"),
                                    fix="delete it to draw this figure from the other runs")
        except DamagedFile as exc:
            warnings.warn(str(exc))
            damaged.append(str(exc))
            continue
        data.append((r, z["images"], z["initial"], z["final"]))
    if not data:
        return damaged[0]
    per_run = max(1, max_rows // len(data))  # e.g. full FT and LoRA, two images each
    rows = [(r, k) for r, im, _, _ in data for k in range(min(per_run, len(im)))]
    L = data[0][2].shape[0]
    layers = sorted({0, L // 2, L - 1})
    panels = [(li, w) for li in layers for w in (0, 1)]
    # Every map first, so that all panels share one colour scale (0 to the largest value
    # drawn) and one colour bar: a panel's colour means the same attention in every panel.
    maps = {}
    for i, (r, k) in enumerate(rows):
        _, _, a0, a1 = next(d for d in data if d[0] is r)
        for j, (li, w) in enumerate(panels):
            maps[i, j] = _patch_map((a0 if w == 0 else a1)[li, k])
    vmax = max((float(m.max()) for m in maps.values() if m is not None), default=1.0)
    fig, ax = figure(1.3 * (1 + 2 * len(layers)) + 0.8, 1.4 * len(rows) + 0.4, len(rows), 1 + 2 * len(layers))
    shown = None
    for i, (r, k) in enumerate(rows):
        _, im, _, _ = next(d for d in data if d[0] is r)
        img = np.transpose(im[k], (1, 2, 0)) if im[k].shape[0] in (1, 3) else im[k]  # FORMATS: (3, S, S)
        img = img[..., 0] if img.shape[-1] == 1 else img
        S = img.shape[0]
        ax[i, 0].imshow(img)
        ax[i, 0].set_ylabel(f"{r.run_id}\nimage {k}", fontsize=6)
        for j, (li, which) in enumerate(panels):
            a = ax[i, 1 + j]
            att = maps[(i, j)]
            # The map alone, opaque, one cell per patch: blended over the image, the image's own
            # colours drowned the attention. The image is column 0 of the same row, same extent.
            if att is not None:
                shown = a.imshow(att, cmap="inferno", vmin=0.0, vmax=vmax,
                                 extent=[-0.5, S - 0.5, S - 0.5, -0.5], interpolation="nearest")
            if i == 0:
                a.set_title(f"L{li + 1} {'pretrained' if which == 0 else 'fine-tuned'}", fontsize=6)
    if shown is not None:
        n = shown.get_array().size  # patches: uniform attention is 1/n, the no-focus level
        cb = fig.colorbar(shown, ax=ax[:, 1:].ravel().tolist(), shrink=0.8,
                          label=f"[CLS]→patch attention, one scale for all panels\n(white line: uniform 1/{n})")
        cb.ax.axhline(1.0 / n, color="white", lw=1.5)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
        a.grid(False)
        a.spines[:].set_visible(False)
    return save(fig, out)
