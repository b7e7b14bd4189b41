"""Shared plumbing of the figures: style, the loaded-results context, small drawing helpers
(seed means and bands, bars, per-metric panels).

matplotlib's object API on the Agg canvas only (no pyplot state, no torch, no models):
figures are drawn from the result files alone (docs/FORMATS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; must precede any backend use
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ... import _io  # noqa: E402
from .. import roles, table  # noqa: E402
from ..instability import METRIC_RANGE, UNSTABLE_FRAC, UNSTABLE_MARK, unstable  # noqa: E402
from ..statistics import stats  # noqa: E402

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision
# deficiencies. Diverging maps use ColorBrewer PuOr (also colour-blind safe), sequential viridis.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
KIND_COLORS = {"Full FT": "#D55E00", "LoRA": "#0072B2", "LR sweep": "#E69F00", "Regularized": "#009E73",
               "Weight decay": "#CC79A7", "Freezing": "#56B4E9", "Other": "#000000"}
LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "P", "X", "*"]
"""Run markers; no "v": fig. 12 marks collapse onsets ▼."""
DIVERGING, SEQUENTIAL = "PuOr", "viridis"
METRIC_LABELS = {"entropy": "Entropy (nats)", "erf": "ERF@0.95", "gini": "Gini", "head_diversity": "Head diversity"}
DPI = 150  # print resolution while keeping the demo fast
RC = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
      "ytick.labelsize": 7, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
      "grid.alpha": 0.3, "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO), "savefig.facecolor": "white"}
# Text objects read rcParams when created, so the style is set for the whole process (like the
# Agg backend above) rather than per call; the analysis stage is the only plotting user.
matplotlib.rcParams.update(RC)


@dataclass
class Ctx:
    """A matrix directory read once for all figures: runs, their roles, and the stats."""
    matrix: table.Matrix
    roles: dict[str, Any]
    """`roles.select(matrix)`: which runs play which part."""
    stats: dict[str, Any]
    """stats.json (computed in memory when the file is missing)."""

    @classmethod
    def load(cls, matrix_dir: str | Path) -> "Ctx":
        matrix = table.load(matrix_dir)
        path = Path(matrix_dir) / "stats.json"
        tests = stats.read(matrix_dir) if path.exists() else stats.analyze(matrix_dir, write=False)
        return cls(matrix, roles.select(matrix), tests)

    def kind(self, r: table.Run) -> str:
        """The run's family for colouring, from its config fields."""
        if r.get("method") == "lora":
            return "LoRA"
        if r.get("freeze_layers"):
            return "Freezing"
        if (r.get("regularizer") or "none") != "none" and r.get("reg_lambda"):
            return "Regularized"
        if not roles.close(r.get("weight_decay"), self.roles["default_wd"]):
            return "Weight decay"
        if not roles.close(r.get("lr"), self.roles["default_lr"]):
            return "LR sweep"
        return "Full FT" if r.get("method") == "full" else "Other"

    def main_runs(self, dataset: str) -> list[table.Run]:
        """Reference full FT, LoRA and LR-sweep runs of one dataset (the curves' runs)."""
        out = self.roles["reference"].get(dataset, []) + self.roles["lora"].get(dataset, [])
        return out + [r for r in self.roles["lr_sweep"] if r.get("dataset") == dataset and r not in out]

    def test(self, name: str) -> dict:
        return (self.stats.get("tests") or {}).get(name) or {"skipped": True, "reason": "not in stats.json"}


def as_ctx(src: "Ctx | str | Path") -> Ctx:
    return src if isinstance(src, Ctx) else Ctx.load(src)


def figure(w: float, h: float, rows: int = 1, cols: int = 1, **kw: Any) -> tuple[Figure, Any]:
    """A constrained-layout figure of w × h inches with a rows × cols grid of axes."""
    fig = Figure(figsize=(w, h), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, **kw)


def save(fig: Figure, out: str | Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for ax in fig.axes:  # layers are whole numbers: no "1.25" ticks on a layer axis
        if ax.get_xlabel() == "layer":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_ylabel() == "layer":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    with _io.atomic_path(out) as tmp, _io.open_output(tmp) as fh:  # never a half-written PNG; ENOSPC raised
        fig.savefig(fh, dpi=DPI, format="png")
    return out


def seed_mean(runs: list[table.Run], fn) -> tuple[float, float]:
    """Mean and SD (0 for one seed) of fn(run) over a config's seeds, ignoring None."""
    v = np.asarray([x for x in (fn(r) for r in runs) if x is not None], float)
    return (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0) if len(v) else (np.nan, 0.0)


def seed_err(groups: dict[str, list[table.Run]], sds: list[float]) -> list[float] | None:
    """Error-bar lengths for a bar per config: the SD where the config has ≥ 2 seeds, NaN (no
    bar) where it has one; None (no error bars at all) when no config has two seeds, so a
    single-seed bar never draws an empty cap."""
    if all(len(rs) < 2 for rs in groups.values()):
        return None
    return [sd if len(rs) > 1 else np.nan for rs, sd in zip(groups.values(), sds)]


def unstable_any(metric: str, initials: list[Any]) -> bool:
    """Whether a Δ% of `metric` over any of these initial values is unstable (`instability.unstable`)."""
    return any(unstable(metric, float(v)) for v in initials if v is not None and np.isfinite(v))


def abs_label(metric: str) -> str:
    """Axis label of an absolute Δ plotted because the metric's Δ% is unstable."""
    th = UNSTABLE_FRAC * METRIC_RANGE[metric]
    name = METRIC_LABELS.get(metric, metric).split(" (")[0]
    return f"{name} Δ, absolute\n({UNSTABLE_MARK} Δ% unstable: initial < {th:.2g})"


def pct_label(metric: str, text: str, initials: list[Any]) -> str:
    """`text` (an axis label of a Δ%) marked † when a run's Δ% of `metric` is unstable: where a
    figure keeps the Δ% (its statistics were computed on it); `unstable_note` says what † means."""
    return f"{text} {UNSTABLE_MARK}" if metric in METRIC_RANGE and unstable_any(metric, initials) else text


def unstable_note(metrics: list[str]) -> str:
    """"" or the line that explains † for the flagged metrics (their thresholds)."""
    if not metrics:
        return ""
    th = ", ".join(f"{mt} < {UNSTABLE_FRAC * METRIC_RANGE[mt]:.2g}" for mt in metrics)
    return f"{UNSTABLE_MARK} Δ% unstable: an initial value near zero ({th}) makes the ratio multiply noise"


def abs_delta(r: table.Run, metric: str) -> float | None:
    """Run-level absolute Δ (final − initial, mean over layers) of a metric."""
    a, b = r.get(f"{metric}_initial"), r.get(f"{metric}_final")
    if a is None or b is None:
        f = r.final or {}
        a, b = (f.get("initial_mean") or {}).get(metric, a), (f.get("final_mean") or {}).get(metric, b)
    return None if a is None or b is None else float(b) - float(a)


def label_points(ax: Any, xs: list[float], ys: list[float], labels: list[str], *, fontsize: float = 6) -> list[str]:
    """Label scatter points without overprinting: each label takes the first of eight
    positions around its point whose box overlaps no label or point already placed; a point
    with no free position gets no label (the caller lists those). Returns the unlabelled ones.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = ax.figure
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    fig.draw_without_rendering()  # final layout (constrained) before measuring positions
    pts = ax.transData.transform(np.column_stack([xs, ys]))
    r = 3.0 * fig.dpi / 72  # a marker's radius in pixels
    taken = [(x - r, y - r, x + r, y + r) for x, y in pts]
    offsets = [(3, 2), (3, -8), (-3, 2), (-3, -8), (0, 6), (0, -11), (8, -3), (-8, -3)]
    missed = []
    order = np.argsort([-abs(y) for y in ys])  # extremes first: they are the ones readers look for
    for i in order:
        placed = False
        for dx, dy in offsets:
            t = ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points",
                            fontsize=fontsize, ha="left" if dx > 0 else "right" if dx < 0 else "center")
            bb = t.get_window_extent(renderer)
            box = (bb.x0, bb.y0, bb.x1, bb.y1)
            inside = ax.bbox.x0 <= box[0] and box[2] <= ax.bbox.x1 and ax.bbox.y0 <= box[1] and box[3] <= ax.bbox.y1
            if inside and not any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in taken):
                taken.append(box)
                placed = True
                break
            t.remove()
        if not placed:
            missed.append(labels[i])
    return missed


def seed_counts(runs: list[table.Run]) -> str:
    """"2" or "2–3": seeds per configuration among `runs` ("" when every config has one seed)."""
    counts = sorted({len(rs) for rs in roles.by_config(runs).values()})
    if not counts or counts[-1] < 2:
        return ""
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def seed_curve(runs: list[table.Run], metric: str | None, *,
               relative: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A config's curve over its seeds: (epoch (P,), mean (P,), SD (P,) ddof 1, n seeds).

    Seeds of one config share the schedule, so their eval points coincide; a seed whose
    points differ (a resumed run with other eval points) is interpolated onto the first's.
    SD is 0 for one seed.
    """
    cs = [c for c in (curve(r, metric, relative=relative) for r in runs) if len(c[0])]
    if not cs:
        return np.empty(0), np.empty(0), np.empty(0), 0
    x = cs[0][0]
    ys = np.stack([cy if len(cx) == len(x) and np.allclose(cx, x) else np.interp(x, cx, cy) for cx, cy in cs])
    sd = ys.std(0, ddof=1) if len(ys) > 1 else np.zeros(len(x))
    return x, ys.mean(0), sd, len(ys)


def plot_seeds(ax: Any, runs: list[table.Run], metric: str | None, *, relative: bool = False, scale: float = 1.0,
               label: str | None = None, n_in_label: bool = True, **style: Any) -> None:
    """Plot a config's mean curve over its seeds, with a ± SD band when it has k ≥ 2 seeds
    and then "(mean ± SD, n=k)" after the label (unless n_in_label is False: the caller says it)."""
    x, mean, sd, n = seed_curve(runs, metric, relative=relative)
    if not n:
        return
    lab = None if label is None else label + (f" (mean ± SD, n={n})" if n > 1 and n_in_label else "")
    (line,) = ax.plot(x, scale * mean, label=lab, **style)
    if n > 1:
        ax.fill_between(x, scale * (mean - sd), scale * (mean + sd), color=line.get_color(), alpha=0.2, lw=0)


def layer_band(ax: Any, runs: list[table.Run], metric: str = "entropy", **style: Any) -> None:
    """Per-layer Δ% of a config: the seed mean, with a ± SD band over seeds when it has several."""
    ls = [v for r in runs if (v := r.layer_delta(metric)) is not None]
    if not ls or len({len(v) for v in ls}) != 1:
        return
    arr = np.stack(ls)
    mean, xs = np.nanmean(arr, 0), np.arange(1, arr.shape[1] + 1)
    (line,) = ax.plot(xs, mean, marker="o", ms=3, **style)
    if len(ls) > 1:
        sd = np.nanstd(arr, 0, ddof=1)
        ax.fill_between(xs, mean - sd, mean + sd, color=line.get_color(), alpha=0.2, lw=0)


def short(r: table.Run) -> str:
    """A compact tick label: the config id and its description without the dataset."""
    return f"{r.config_id}\n{roles.describe(r).rsplit(' (', 1)[0]}"


def legend_kinds(ax: Any, kinds: set[str], **kw: Any) -> None:
    """A legend of the run families present (colour patches)."""
    handles = [Patch(facecolor=c, edgecolor="black", linewidth=0.4, label=k) for k, c in KIND_COLORS.items() if k in kinds]
    ax.legend(handles=handles, **kw)


def bars(ax: Any, groups: dict[str, list[table.Run]], fn, colors: list[str], *, ylabel: str,
         ids_only: bool = False) -> None:
    """One bar per config (seed mean ± SD) with its label under it."""
    xs = np.arange(len(groups))
    vals = [seed_mean(rs, fn) for rs in groups.values()]
    ax.bar(xs, [v[0] for v in vals], yerr=seed_err(groups, [v[1] for v in vals]), color=colors, edgecolor="black",
           linewidth=0.5, capsize=2)
    labels = [rs[0].config_id if ids_only else short(rs[0]) for rs in groups.values()]
    ax.set_xticks(xs, labels, rotation=60 if ids_only else 45, ha="right")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel(ylabel)


def curve(r: table.Run, metric: str | None, *, relative: bool = False,
          absolute: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(epoch, value) along history.json; metric None = val_acc, "train_loss" = loss.

    relative: Δ% against the step-0 point (the run's own "initial"); absolute: the Δ
    (value − step-0 value) instead.
    """
    h = r.history() or {"points": []}
    xs, ys = [], []
    for p in h["points"]:
        y = p.get(metric or "val_acc") if metric in (None, "train_loss") else (p.get("mean") or {}).get(metric)
        if y is not None:
            xs.append(p.get("epoch", 0.0))
            ys.append(y)
    ys = np.asarray(ys, float)
    if absolute and len(ys):
        ys = ys - ys[0]
    elif relative and len(ys):
        ys = 100.0 * (ys - ys[0]) / ys[0]
    return np.asarray(xs, float), ys


def style_for(i: int) -> dict[str, Any]:
    """Colour + line style of the i-th series (colours first, then dashes)."""
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "linestyle": LINESTYLES[(i // len(OKABE_ITO)) % len(LINESTYLES)]}


def run_styles(runs: list[table.Run], kind) -> dict[str, dict[str, Any]]:
    """A distinct style per run: the colour of its family (kind(run)), and within a family a
    line style and marker of its own, so every run of a many-run plot can be told apart.

    Returns:
        run id → {"color", "linestyle", "marker"}; no two runs share all three.
    """
    out, n = {}, {}
    for r in runs:
        k = kind(r)
        i = n[k] = n.get(k, -1) + 1
        out[r.run_id] = {"color": KIND_COLORS.get(k, "black"), "linestyle": LINESTYLES[i % len(LINESTYLES)],
                         "marker": MARKERS[(i + i // (len(LINESTYLES) * len(MARKERS))) % len(MARKERS)]}
    return out


def p_text(e: dict) -> str:
    """"p=0.019 (Holm 0.038)" for a stats entry, or its skip reason."""
    if not e or e.get("skipped"):
        return f"test skipped: {e.get('reason', 'missing') if e else 'missing'}"
    return f"p={e['p']:.3g} (Holm {e['p_holm']:.3g})"  # NaN prints as "nan": no variance to test


def metric_panels(axes: Any, groups: dict[str, list[table.Run]], *, labels: list[str] | None = None) -> None:
    """One panel per metric, each on its own y scale: a bar per config (seed mean ± SD of Δ%).

    A shared Δ% axis lets a metric with a near-zero base (head diversity, +5,000% on the
    demo) flatten the primary one (entropy, a few %); the panel title gives the configs'
    initial value, so a large Δ% over a small base is read as such. Where a config's Δ% of a
    metric is unstable (`instability.unstable`: its initial value is near zero) that panel
    shows the absolute Δ (final − initial) instead, says so on its axis and marks its title †.

    Args:
        axes: 4 matplotlib axes, one per `table.METRICS`.
        groups: config id → its runs (seeds), in bar order.
        labels: a tick label per config (default: the config ids).
    """
    xs = np.arange(len(groups))
    for a, mt in zip(axes, table.METRICS):
        ini = [seed_mean(rs, lambda r: r.get(f"{mt}_initial"))[0] for rs in groups.values()]
        ini = [v for v in ini if np.isfinite(v)]
        absolute = unstable_any(mt, [r.get(f"{mt}_initial") for rs in groups.values() for r in rs])
        vals = [seed_mean(rs, (lambda r: abs_delta(r, mt)) if absolute else (lambda r: r.delta(mt)))
                for rs in groups.values()]
        a.bar(xs, [v[0] for v in vals], yerr=seed_err(groups, [v[1] for v in vals]),
              color=[OKABE_ITO[i % 8] for i in range(len(xs))], edgecolor="black", linewidth=0.5, capsize=2)
        a.axhline(0, color="black", lw=0.6)
        a.set_xticks(xs, labels or list(groups), rotation=30, ha="right", fontsize=7)
        span = "" if not ini else f"initial {min(ini):.3g}" + (f"–{max(ini):.3g}" if max(ini) > min(ini) else "")
        name = METRIC_LABELS[mt].split(" (")[0] + (f" {UNSTABLE_MARK}" if absolute else "")
        a.set(title=f"{name}\n({span})" if span else name,
              ylabel=abs_label(mt) if absolute else "Δ% (final vs initial)")
