"""Which design a matrix directory holds, and a controlled design's factorial read from its runs.

A matrix is `study` (the reports' 21 configurations, read by role: `roles.select`) or
`controlled` (matrix.yaml `design: controlled`: a factorial dataset × method × lr with seeds
as replicates, docs/CONTROLLED.md). `factorial` reads the factors from each finished run's
own results.csv cells — never from run ids — and `value` is the one place a per-run measure
is read, so statistics, figures and report agree on what "retention" or "CKA" is.

The structure measures beyond the four attention metrics (attention rollout, patch-to-patch
entropy, CKA to the pretrained tower, map drift) are optional columns of results.csv;
`measured` says which a study has, and every consumer states plainly when one is absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .roles import headline_zeroshot, pretrained_zeroshot
from .table import Matrix, Run

DESIGNS = ("study", "controlled", "forgetting")

# Per-run measures: key → (label, unit). `retention_pct` is derived (zero-shot / E1's
# zero-shot × 100); the others are results.csv columns. Accuracies are stored as fractions.
MEASURES: dict[str, tuple[str, str]] = {
    "best_acc": ("best accuracy", "%"),
    "zeroshot_acc": ("zero-shot accuracy", "%"),
    "retention_pct": ("zero-shot retention", "% of pretrained"),
    "entropy_delta_pct": ("Δentropy", "%"),
    "erf_delta_pct": ("ΔERF@0.95", "%"),
    "gini_delta_pct": ("ΔGini", "%"),
    "head_diversity_delta_pct": ("Δhead diversity", "%"),
    "rollout_entropy_delta_pct": ("Δrollout entropy", "%"),
    "rollout_erf_delta_pct": ("Δrollout ERF", "%"),
    "rollout_gini_delta_pct": ("Δrollout Gini", "%"),
    "patch_entropy_delta_pct": ("Δpatch-to-patch entropy", "%"),
    "cka_final": ("mean CKA to pretrained", ""),
    "map_drift_final": ("attention-map drift", ""),
}
FRACTIONS = {"best_acc", "zeroshot_acc"}
"""Stored as fractions in results.csv, reported as percentages."""

OPTIONAL = {
    "rollout": ("rollout_entropy_delta_pct", "rollout_erf_delta_pct", "rollout_gini_delta_pct"),
    "patch_entropy": ("patch_entropy_delta_pct",),
    "cka": ("cka_final",),
    "map_drift": ("map_drift_final",),
}
"""The optional structure measures, by family, and the results.csv columns that carry them."""

ABSENT = {
    "rollout": "attention rollout not measured in this study (results.csv has no rollout_* values)",
    "patch_entropy": "patch-to-patch entropy not measured in this study (results.csv has no patch_entropy_* values)",
    "cka": "CKA not measured in this study (results.csv has no cka_final values)",
    "map_drift": "attention-map drift not measured in this study (results.csv has no map_drift_final values)",
}


def design_of(m: Matrix) -> str:
    """The design matrix.yaml names (`design:`), "study" when it names none."""
    d = str((m.spec or {}).get("design") or "study")
    return d if d in DESIGNS else "study"


def lr_label(lr: float) -> str:
    """A learning rate as tables print it: 1e-06, 5e-05, 0.003."""
    return f"{lr:.0e}" if lr < 1e-3 else f"{lr:g}"


@dataclass
class Factorial:
    """A controlled design's finished runs by cell.

    Attributes:
        datasets, methods, lrs, seeds: the factor levels among finished runs, in order
            (datasets and methods as first seen, lrs and seeds ascending).
        cells: (dataset, method, lr) → its finished runs, seeds ascending.
        missing: run ids in results.csv that are not finished (failed, incomplete, not run).
        zeroshot: the headline zero-shot dataset (None when no run measured one).
        pretrained: model → E1's zero-shot accuracy on it (retention's denominator).
    """

    datasets: list[str]
    methods: list[str]
    lrs: list[float]
    seeds: list[int]
    cells: dict[tuple[str, str, float], list[Run]]
    missing: list[str]
    zeroshot: str | None
    pretrained: dict[str, float] = field(default_factory=dict)

    def runs(self, dataset: str | None = None) -> list[Run]:
        """The finished runs (of one dataset), cell by cell."""
        return [r for (ds, _m, _l), rs in self.cells.items() if dataset in (None, ds) for r in rs]

    def cell(self, dataset: str, method: str, lr: float) -> list[Run]:
        return self.cells.get((dataset, method, lr), [])

    def empty_cells(self, dataset: str) -> list[tuple[str, float]]:
        """(method, lr) of the full grid with no finished run on `dataset`."""
        return [(me, lr) for me in self.methods for lr in self.lrs if not self.cell(dataset, me, lr)]


def _lr_key(lr: Any) -> float:
    return float(f"{float(lr):.12g}")  # one float per printed lr, whatever the CSV round trip did


def factorial(m: Matrix) -> Factorial:
    """The controlled design's factorial, from the finished runs' own cells (results.csv)."""
    done = [r for r in m.done if r.get("dataset") is not None and r.get("method") is not None
            and r.get("lr") is not None]
    datasets = list(dict.fromkeys(str(r.get("dataset")) for r in done))
    methods = list(dict.fromkeys(str(r.get("method")) for r in done))
    order = {"full": 0, "lora": 1}
    methods.sort(key=lambda x: order.get(x, 2))
    lrs = sorted({_lr_key(r.get("lr")) for r in done})
    seeds = sorted({int(r.get("seed")) for r in done if r.get("seed") is not None})
    cells: dict[tuple[str, str, float], list[Run]] = {}
    for ds in datasets:
        for me in methods:
            for lr in lrs:
                rs = [r for r in done if r.get("dataset") == ds and r.get("method") == me
                      and _lr_key(r.get("lr")) == lr]
                if rs:
                    cells[(ds, me, lr)] = sorted(rs, key=lambda r: r.get("seed") or 0)
    missing = [r.run_id for r in m.runs if r.final is None]
    zs = headline_zeroshot(done)
    pretrained = {}
    for model in dict.fromkeys(str(r.get("model")) for r in done):
        acc = pretrained_zeroshot(m.baseline, zs, model) if zs else None
        if acc is not None:
            pretrained[model] = float(acc)
    return Factorial(datasets, methods, lrs, seeds, cells, missing, zs, pretrained)


def value(run: Run, key: str, f: Factorial | None = None) -> float | None:
    """A run's measure `key` (MEASURES) as a plain float, None when it has none.

    Accuracies come back in percent; `retention_pct` needs `f` (E1's zero-shot).
    """
    if key == "retention_pct":
        zs = run.get("zeroshot_acc")
        base = (f.pretrained if f else {}).get(str(run.get("model")))
        if zs is None or not base:
            return None
        return 100.0 * float(zs) / base
    v = run.get(key)
    if v is None or isinstance(v, str):
        return None
    v = float(v)
    if not math.isfinite(v):
        return None
    return 100.0 * v if key in FRACTIONS else v


def measured(f: Factorial) -> dict[str, bool]:
    """Which optional measure families (OPTIONAL) any finished run carries."""
    runs = f.runs()
    return {fam: any(value(r, c) is not None for r in runs for c in cols) for fam, cols in OPTIONAL.items()}


def layer_values(run: Run, key: str) -> np.ndarray | None:
    """Per-layer values (L,): `entropy` Δ% (final.json) or `cka` (results.csv `cka_layers`)."""
    if key == "cka":
        text = run.get("cka_layers")
        if not text:
            return None
        try:
            return np.asarray([float(x) for x in str(text).split()], float)
        except ValueError:
            return None
    return run.layer_delta(key)


def crossing(f: Factorial, dataset: str) -> dict[str, Any]:
    """How method and learning rate are crossed among `dataset`'s finished runs.

    The report's design prose is derived from this, never assumed: a matrix that trained
    each method at its own lr is confounded, and says so.

    Returns:
        methods, lrs: the levels with a finished run on `dataset`; shared: the lrs at
        which every one of those methods ran; only: method → the lrs only it ran at;
        seeds: the sorted distinct counts of finished seeds per non-empty cell;
        crossed: more than one method, and every lr shared.
    """
    cells = {(me, lr): len(f.cell(dataset, me, lr)) for me in f.methods for lr in f.lrs if f.cell(dataset, me, lr)}
    methods = [me for me in f.methods if any(k[0] == me for k in cells)]
    lrs = sorted({lr for _, lr in cells})
    shared = [lr for lr in lrs if all((me, lr) in cells for me in methods)]
    return {"methods": methods, "lrs": lrs, "shared": shared,
            "only": {me: [lr for lr in lrs if (me, lr) in cells and lr not in shared] for me in methods},
            "seeds": sorted(set(cells.values())), "crossed": len(methods) > 1 and shared == lrs}
