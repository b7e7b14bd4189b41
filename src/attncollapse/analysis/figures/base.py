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
from ..statistics import stats  # noqa: E402

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision
# deficiencies. Diverging maps use ColorBrewer PuOr (also colour-blind safe), sequential viridis.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
KIND_COLORS = {"Full FT": "#D55E00", "LoRA": "#0072B2", "LR sweep": "#E69F00", "Regularized": "#009E73",
               "Weight decay": "#CC79A7", "Freezing": "#56B4E9", "Other": "#000000"}
LINESTYLES = ["-", "--", ":", "-."]
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
    ax.bar(xs, [v[0] for v in vals], yerr=[v[1] for v in vals], color=colors, edgecolor="black", linewidth=0.5,
           capsize=2)
    labels = [rs[0].config_id if ids_only else short(rs[0]) for rs in groups.values()]
    ax.set_xticks(xs, labels, rotation=60 if ids_only else 45, ha="right")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel(ylabel)


def curve(r: table.Run, metric: str | None, *, relative: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(epoch, value) along history.json; metric None = val_acc, "train_loss" = loss.

    relative: Δ% against the step-0 point (the run's own "initial").
    """
    h = r.history() or {"points": []}
    xs, ys = [], []
    for p in h["points"]:
        y = p.get(metric or "val_acc") if metric in (None, "train_loss") else (p.get("mean") or {}).get(metric)
        if y is not None:
            xs.append(p.get("epoch", 0.0))
            ys.append(y)
    ys = np.asarray(ys, float)
    if relative and len(ys):
        ys = 100.0 * (ys - ys[0]) / ys[0]
    return np.asarray(xs, float), ys


def style_for(i: int) -> dict[str, Any]:
    """Colour + line style of the i-th series (colours first, then dashes)."""
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "linestyle": LINESTYLES[(i // len(OKABE_ITO)) % len(LINESTYLES)]}


def p_text(e: dict) -> str:
    """"p=0.019 (Holm 0.038)" for a stats entry, or its skip reason."""
    if not e or e.get("skipped"):
        return f"test skipped: {e.get('reason', 'missing') if e else 'missing'}"
    return f"p={e['p']:.3g} (Holm {e['p_holm']:.3g})"  # NaN prints as "nan": no variance to test


def metric_panels(axes: Any, groups: dict[str, list[table.Run]], *, labels: list[str] | None = None) -> None:
    """One panel per metric, each on its own y scale: a bar per config (seed mean ± SD of Δ%).

    A shared Δ% axis lets a metric with a near-zero base (head diversity, +5,000% on the
    demo) flatten the primary one (entropy, a few %); the panel title gives the configs'
    initial value, so a large Δ% over a small base is read as such.

    Args:
        axes: 4 matplotlib axes, one per `table.METRICS`.
        groups: config id → its runs (seeds), in bar order.
        labels: a tick label per config (default: the config ids).
    """
    xs = np.arange(len(groups))
    for a, mt in zip(axes, table.METRICS):
        vals = [seed_mean(rs, lambda r: r.delta(mt)) for rs in groups.values()]
        a.bar(xs, [v[0] for v in vals], yerr=[v[1] for v in vals], color=[OKABE_ITO[i % 8] for i in range(len(xs))],
              edgecolor="black", linewidth=0.5, capsize=2)
        a.axhline(0, color="black", lw=0.6)
        a.set_xticks(xs, labels or list(groups), rotation=30, ha="right", fontsize=7)
        ini = [seed_mean(rs, lambda r: r.get(f"{mt}_initial"))[0] for rs in groups.values()]
        ini = [v for v in ini if np.isfinite(v)]
        span = "" if not ini else f"initial {min(ini):.3g}" + (f"–{max(ini):.3g}" if max(ini) > min(ini) else "")
        a.set(title=f"{METRIC_LABELS[mt].split(' (')[0]} ({span})" if span else METRIC_LABELS[mt].split(" (")[0],
              ylabel="Δ% (final vs initial)")
