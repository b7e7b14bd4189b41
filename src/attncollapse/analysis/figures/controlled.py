"""The controlled (factorial) study's figures, drawn from stats.json and the runs' own cells.

`FIGURES` is the registry (name → function(ctx, out) returning the PNG or a skip reason);
`render_all` draws them into `<matrix_dir>/figures/` and writes `figures/figures.json` as
the study's figure index does, so the report reads either the same way.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..._io import read_json, write_json
from .. import table
from ..design import MEASURES, Factorial, factorial, lr_label, value
from ..statistics import controlled as cstats
from .base import DIVERGING, OKABE_ITO, figure, save

METHOD_COLORS = {"full": "#D55E00", "lora": "#0072B2"}
METHOD_NAMES = {"full": "Full FT", "lora": "LoRA"}


@dataclass
class CCtx:
    """A controlled matrix directory read once for all its figures."""
    matrix: table.Matrix
    f: Factorial
    stats: dict[str, Any]

    @classmethod
    def load(cls, matrix_dir: str | Path) -> "CCtx":
        m = table.load(matrix_dir)
        path = Path(matrix_dir) / "stats.json"
        st = read_json(path) if path.exists() else cstats.analyze_matrix(m)
        return cls(m, factorial(m), st)


def axis_label(key: str) -> str:
    label, unit = MEASURES[key]
    return f"{label} ({unit})" if unit else label


def method_name(me: str) -> str:
    return METHOD_NAMES.get(me, me)


def _p(e: dict | None) -> str:
    if not e or e.get("skipped") or e.get("p") is None:
        return "n/a"
    return f"{e['p']:.2g}"


def interaction(ctx: CCtx, out: Path) -> Path | str:
    """Method × lr interaction panels: each response's cell mean ± SD against lr, one line per method."""
    st, keys = ctx.stats, ctx.stats.get("responses") or []
    dss = list(st.get("datasets") or {})
    if not dss or not keys:
        return "no finished run"
    # At most 4 panels a row (one row per response was 7 wide and unreadably small in a report).
    ncol = min(4, len(keys))
    per = -(-len(keys) // ncol)  # rows per dataset
    fig, axes = figure(3.3 * ncol, 2.6 * per * len(dss), per * len(dss), ncol)
    for i, ds in enumerate(dss):
        block = st["datasets"][ds]
        for a in axes[i * per:(i + 1) * per].flat[len(keys):]:
            a.axis("off")
        for j, k in enumerate(keys):
            ax = axes[i * per + j // ncol][j % ncol]
            for me in st["factors"]["methods"]:
                rows = [c for c in block["cells"] if c["method"] == me and (c.get(k) or {}).get("mean") is not None]
                if not rows:
                    continue
                xs = [c["lr"] for c in rows]
                ax.errorbar(xs, [c[k]["mean"] for c in rows], yerr=[c[k]["sd"] or 0.0 for c in rows], marker="o",
                            ms=3, capsize=2, color=METHOD_COLORS.get(me), label=method_name(me))
            ax.set_xscale("log")
            ax.set_xticks(st["factors"]["lrs"], [lr_label(v) for v in st["factors"]["lrs"]], rotation=30)
            ax.minorticks_off()
            terms = (block["anova"].get(k) or {}).get("terms") or {}
            ax.set_title(f"{ds}: {MEASURES[k][0]}\nANOVA p: method {_p(terms.get('method'))}, lr "
                         f"{_p(terms.get('lr'))}, method×lr {_p(terms.get('method:lr'))}", fontsize=7)
            ax.set(xlabel="learning rate", ylabel=axis_label(k))
            if k.endswith("delta_pct"):
                ax.axhline(0, color="black", lw=0.5)
    axes[0][0].legend()
    return save(fig, out)


def layer_heatmaps(ctx: CCtx, out: Path) -> Path | str:
    """Per-layer entropy Δ% (seed mean) per cell: one panel per dataset × method, lr × layer."""
    st = ctx.stats
    dss, methods, lrs = list(st.get("datasets") or {}), st["factors"]["methods"], st["factors"]["lrs"]
    grids = {}
    for ds in dss:
        for me in methods:
            rows = {c["lr"]: c.get("layer_entropy_delta") for c in st["datasets"][ds]["cells"] if c["method"] == me}
            depth = max((len(v) for v in rows.values() if v), default=0)
            if depth:
                grids[(ds, me)] = np.asarray([[np.nan if x is None else x for x in (rows.get(lr) or [np.nan] * depth)]
                                              for lr in lrs], float)
    if not grids:
        return "no per-layer entropy in final.json of any run"
    lim = max(float(np.nanmax(np.abs(g))) for g in grids.values()) or 1.0
    fig, axes = figure(1.0 + 0.45 * max(g.shape[1] for g in grids.values()) * len(methods), 0.6 + 0.5 * len(lrs) * len(dss),
                       len(dss), len(methods))
    im = None
    for i, ds in enumerate(dss):
        for j, me in enumerate(methods):
            ax = axes[i][j]
            g = grids.get((ds, me))
            if g is None:
                ax.set_axis_off()
                continue
            im = ax.imshow(g, cmap=DIVERGING, vmin=-lim, vmax=lim, aspect="auto")
            ax.grid(False)
            ax.set_xticks(range(g.shape[1]), [str(x + 1) for x in range(g.shape[1])])
            ax.set_yticks(range(len(lrs)), [lr_label(v) for v in lrs])
            for (y, x), v in np.ndenumerate(g):
                if np.isfinite(v):
                    ax.text(x, y, f"{v:.1f}", ha="center", va="center", fontsize=5)
            ax.set(title=f"{ds}: {method_name(me)}", xlabel="layer", ylabel="learning rate")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="Δentropy per layer (%)")
    return save(fig, out)


def _scatter(ax, method: str, pts: list[tuple]) -> None:
    """One method's (x, y) points in its colour; points with a missing value are left out."""
    pts = [p for p in pts if None not in p]
    if pts:
        ax.scatter(*zip(*pts), s=12, color=METHOD_COLORS.get(method), label=method_name(method))


def _r_text(e: dict) -> str:
    """A correlation entry's Pearson r for a title, or "n/a" when it was not tested."""
    return "n/a" if e.get("skipped") or e.get("pearson_r") is None else f"{e['pearson_r']:.2f}"


def correlations(ctx: CCtx, out: Path) -> Path | str:
    """Per dataset, every run's Δentropy against its zero-shot and its best accuracy."""
    f, st = ctx.f, ctx.stats
    if not f.datasets:
        return "no finished run"
    pairs = [("zeroshot_acc", "entropy_vs_zeroshot"), ("best_acc", "entropy_vs_accuracy")]
    fig, axes = figure(5.2, 2.3 * len(f.datasets), len(f.datasets), 2)
    for i, ds in enumerate(f.datasets):
        for j, (ky, name) in enumerate(pairs):
            ax = axes[i][j]
            for me in f.methods:
                _scatter(ax, me, [(value(r, "entropy_delta_pct", f), value(r, ky, f))
                                  for lr in f.lrs for r in f.cell(ds, me, lr)])
            r = _r_text(st["datasets"][ds]["correlations"][name])
            ax.set(title=f"{ds}: Pearson r = {r}", xlabel=axis_label("entropy_delta_pct"), ylabel=axis_label(ky))
    axes[0][0].legend()
    return save(fig, out)


def cka(ctx: CCtx, out: Path) -> Path | str:
    """CKA to the pretrained tower against Δentropy (run level), and per-layer Pearson r."""
    e = ctx.stats.get("cka_vs_entropy") or {}
    if e.get("skipped"):
        return e.get("reason", "CKA not measured")
    f = ctx.f
    fig, axes = figure(5.2, 2.4, 1, 2)
    for me in f.methods:
        _scatter(axes[0][0], me, [(value(r, "cka_final"), value(r, "entropy_delta_pct"))
                                  for r in f.runs() if r.get("method") == me])
    r = _r_text(e.get("run_level") or {})
    axes[0][0].set(title=f"run level: r = {r}", xlabel=axis_label("cka_final"), ylabel=axis_label("entropy_delta_pct"))
    axes[0][0].legend()
    layers = e.get("per_layer")
    if isinstance(layers, list) and layers:
        axes[0][1].bar([x["layer"] for x in layers], [x["pearson_r"] or 0.0 for x in layers], color=OKABE_ITO[2])
        axes[0][1].set(title="per layer: CKA vs Δentropy", xlabel="layer", ylabel="Pearson r")
        axes[0][1].axhline(0, color="black", lw=0.5)
    else:
        axes[0][1].set_axis_off()
    return save(fig, out)


def retention(ctx: CCtx, out: Path) -> Path | str:
    """The retention model's coefficients with their 95% CIs (intercept left out)."""
    e = ctx.stats.get("retention_model") or {}
    if e.get("skipped"):
        return e.get("reason", "retention model not fitted")
    cs = [c for c in e["coefficients"] if c["term"] != "Intercept" and c["coef"] is not None]
    fig, axes = figure(4.2, 0.6 + 0.35 * len(cs))
    ax = axes[0][0]
    ys = np.arange(len(cs))
    lo = [c["coef"] - (c["ci_low"] if c["ci_low"] is not None else c["coef"]) for c in cs]
    hi = [(c["ci_high"] if c["ci_high"] is not None else c["coef"]) - c["coef"] for c in cs]
    ax.errorbar([c["coef"] for c in cs], ys, xerr=[lo, hi], fmt="o", color=OKABE_ITO[0], capsize=3)
    ax.set_yticks(ys, [c["term"] for c in cs])
    ax.axvline(0, color="black", lw=0.5)
    ax.set(xlabel="retention points (95% CI)", title=f"retention model: R² = {e['r2']:.2f}, n = {e['n']}")
    return save(fig, out)


FIGURES: dict[str, Callable[[CCtx, Path], Path | str]] = {
    "controlled_interaction": interaction,
    "controlled_layer_heatmaps": layer_heatmaps,
    "controlled_correlations": correlations,
    "controlled_cka": cka,
    "controlled_retention": retention,
}
CAPTIONS = {
    "controlled_interaction": "One panel per response and dataset: cell mean ± SD over seeds (bars) against the "
                              "learning rate (log x), one line per method (colour). Parallel lines = no "
                              "interaction; crossing or diverging lines = the method's effect depends on the "
                              "learning rate. Titles give the two-way ANOVA p of method, lr and method×lr.",
    "controlled_layer_heatmaps": "Per-layer entropy Δ% (seed mean) per cell: y = learning rate, x = layer, one panel "
                                 "per dataset and method, value printed in each cell, one colour scale for all. "
                                 "Orange = contracted, purple = broadened; compare the methods' panels row by row.",
    "controlled_correlations": "One point per run (colour = method): x = entropy Δ%, y = zero-shot accuracy (left) "
                               "or best accuracy (right), one row per dataset, Pearson r in each title. A tilted "
                               "cloud = the two move together; compare the colours' positions for the method effect.",
    "controlled_cka": "Left: each run's mean CKA to the pretrained tower (x; 1 = unchanged representations) "
                      "against its entropy Δ% (colour = method), r in the title. Right: the same correlation per "
                      "layer (bar height = Pearson r); tall bars = layers where representation change and "
                      "attention change go together.",
    "controlled_retention": "Retention model (OLS): one row per predictor, dot = coefficient in retention points, "
                            "bar = 95% CI (structural predictors per SD, log10 lr per tenfold). A CI that crosses "
                            "the vertical 0 line = no detectable effect; title: R² and n.",
}


def render_all(matrix_dir: str | Path) -> dict[str, Path | str]:
    """Draw every controlled figure into `<matrix_dir>/figures/` and write figures.json.

    Returns:
        name → PNG path, or why it was skipped / "failed: ..." (as `figures.render_all`).
    """
    out_dir = Path(matrix_dir) / "figures"
    ctx = CCtx.load(matrix_dir)
    rendered: dict[str, Path | str] = {}
    for name, fn in FIGURES.items():
        try:
            rendered[name] = fn(ctx, out_dir / f"{name}.png")
        except Exception as exc:  # one broken figure must not cost the whole report
            warnings.warn(f"figure {name} failed: {exc!r}")
            rendered[name] = f"failed: {type(exc).__name__}: {exc}"
        if not isinstance(rendered[name], Path) and (out_dir / f"{name}.png").exists():
            (out_dir / f"{name}.png").unlink()
    write_json(out_dir / "figures.json", {
        n: ({"file": f"figures/{p.name}", "caption": CAPTIONS[n]} if isinstance(p, Path)
            else {"skipped": p, "caption": CAPTIONS[n]}) for n, p in rendered.items()})
    return rendered
