"""The results table: results.csv written from a matrix directory, and read back.

`write_results` (the runner calls it after a matrix) writes one row per run and seed,
in matrix order, from each run's config.yaml and final.json (columns: docs/FORMATS.md).
`load` reads a matrix directory back and `select` names the runs each analysis needs
from their config fields, so stats, figures and report agree on which run is "the
full-FT reference" or "the LR sweep". No torch here (DESIGN.md: stats know nothing of
torch), so the analysis stages can import it.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._io import read_json, read_yaml, write_text

if TYPE_CHECKING:
    from .matrix import MatrixConfig

METRICS = ("entropy", "erf", "gini", "head_diversity")

RESULTS_COLUMNS = [
    "run_id", "group", "seed", "method", "dataset", "model", "lr", "weight_decay", "epochs",
    "batch_size", "lora_rank", "lora_targets", "freeze_layers", "regularizer", "reg_lambda",
    "best_acc", "final_acc",
    *[f"{m}_{k}" for m in METRICS for k in ("initial", "final", "delta_pct")],
    "zeroshot_acc", "zeroshot_acc_base_only",
]
"""results.csv columns before the per-dataset `zeroshot_<dataset>` ones (docs/FORMATS.md)."""
RESULTS_TAIL = ["status", "wall_time_s", "images_per_s"]
_STR_COLS = {"run_id", "group", "method", "dataset", "model", "lora_targets", "regularizer", "status"}
_INT_COLS = {"seed", "lora_rank", "freeze_layers", "batch_size"}


# ----------------------------------------------------------------------------- writing

def _format_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return repr(v) if v == v else ""
    return str(v)


def _final_cells(final: dict) -> dict[str, Any]:
    """The results.csv cells read from a run's final.json (None where it has no value)."""
    row = {k: final.get(k) for k in ("best_acc", "final_acc", "zeroshot_acc", "zeroshot_acc_base_only",
                                     "wall_time_s", "images_per_s")}
    for m in METRICS:
        row[f"{m}_initial"] = (final.get("initial_mean") or {}).get(m)
        row[f"{m}_final"] = (final.get("final_mean") or {}).get(m)
        row[f"{m}_delta_pct"] = (final.get("delta_pct") or {}).get(m)
    return row


def results_rows(out_dir: str | Path, matrix: MatrixConfig | None = None) -> tuple[list[str], list[dict]]:
    """(columns, rows) of results.csv: one row per run and seed, in matrix order."""
    from .config import RunConfig
    from .runner import _matrix_of, plan, run_state  # lazy: the runner imports this module

    out = Path(out_dir)
    matrix = _matrix_of(out, matrix)
    rows, zs_names = [], []
    for task in plan(matrix, out):
        if task.kind != "run":
            continue
        cfg = task.config
        if (task.path / "config.yaml").is_file():
            try:
                cfg = RunConfig.model_validate(read_yaml(task.path / "config.yaml"))
            except Exception:
                pass
        final = read_json(task.done_file) if task.done_file.is_file() else {}
        lora = cfg.method == "lora"
        reg = cfg.regularizer.kind != "none"
        row = {
            "run_id": cfg.id, "group": task.group, "seed": cfg.seed, "method": cfg.method,
            "dataset": cfg.dataset, "model": cfg.model, "lr": cfg.optim.lr,
            "weight_decay": cfg.optim.weight_decay, "epochs": cfg.optim.epochs,
            "batch_size": cfg.optim.batch_size, "lora_rank": cfg.lora.rank if lora else None,
            "lora_targets": cfg.lora.targets if lora else None, "freeze_layers": cfg.freeze_layers,
            "regularizer": cfg.regularizer.kind, "reg_lambda": cfg.regularizer.lam if reg else None,
            **_final_cells(final), "status": final.get("status", "done") if final else run_state(task),
        }
        for ds in list(cfg.zeroshot.datasets) + list((final.get("zeroshot") or {})):
            col = f"zeroshot_{ds}"
            if col not in zs_names:
                zs_names.append(col)
            block = (final.get("zeroshot") or {}).get(ds)
            row[col] = block.get("acc") if isinstance(block, dict) else None
        rows.append(row)
    return RESULTS_COLUMNS + zs_names + RESULTS_TAIL, rows


def write_results(out_dir: str | Path, matrix: MatrixConfig | None = None) -> Path:
    """Write `<out_dir>/results.csv` (columns: docs/FORMATS.md) and return its path."""
    columns, rows = results_rows(out_dir, matrix)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format_cell(row.get(c)) for c in columns])
    path = Path(out_dir) / "results.csv"
    write_text(path, buf.getvalue())
    return path


# ----------------------------------------------------------------------------- reading

@dataclass(eq=False)  # identity equality: runs are hashed and compared by object
class Run:
    """One row of results.csv with its run directory and final.json (None if not done)."""
    run_id: str
    config_id: str
    dir: Path
    row: dict[str, Any]
    final: dict | None = None
    _history: dict | None = field(default=None, repr=False)

    def get(self, key: str, default: Any = None) -> Any:
        v = self.row.get(key)
        return default if v is None else v

    def history(self) -> dict | None:
        """history.json, read on first use (figures only)."""
        if self._history is None and (self.dir / "history.json").exists():
            self._history = read_json(self.dir / "history.json")
        return self._history

    def delta(self, metric: str = "entropy") -> float | None:
        """Run-level Δ% of a metric (mean over layers)."""
        v = self.row.get(f"{metric}_delta_pct")
        if v is None and self.final:
            v = (self.final.get("delta_pct") or {}).get(metric)
        return None if v is None else float(v)

    def layer_delta(self, metric: str = "entropy") -> np.ndarray | None:
        """Per-layer Δ% (L,), from final.json `delta_pct_layers` (or its layer tables)."""
        if not self.final:
            return None
        v = (self.final.get("delta_pct_layers") or {}).get(metric)
        if v is None:
            ini, fin = (self.final.get("initial") or {}).get(metric), (self.final.get("final") or {}).get(metric)
            if ini is None or fin is None:
                return None
            ini = np.asarray(ini, float)
            return 100.0 * (np.asarray(fin, float) - ini) / ini
        return np.asarray([np.nan if x is None else x for x in v], float)


@dataclass
class Matrix:
    """Everything a finished matrix directory holds, as read from its files."""
    dir: Path
    runs: list[Run]
    baseline: dict[str, dict]
    env: dict
    spec: dict
    notes: list[str]

    @property
    def done(self) -> list[Run]:
        return [r for r in self.runs if r.final is not None]


def _parse_cell(key: str, v: str | None) -> Any:
    if v is None or v.strip() == "":
        return None
    if key in _STR_COLS:
        return v
    try:
        return int(v) if key in _INT_COLS else float(v)
    except ValueError:
        return v


def _row_from_dir(d: Path) -> dict[str, Any]:
    """Rebuild a results.csv row from config.yaml + final.json (results.csv missing)."""
    cfg, fin = read_yaml(d / "config.yaml") or {}, None
    if (d / "final.json").exists():
        fin = read_json(d / "final.json")
    o, lo, rg = cfg.get("optim", {}), cfg.get("lora", {}), cfg.get("regularizer", {})
    lora = cfg.get("method") == "lora"
    row = {"run_id": d.name, "group": d.name.split("-")[0], "seed": cfg.get("seed"),
           "method": cfg.get("method"), "dataset": cfg.get("dataset"), "model": cfg.get("model"),
           "lr": o.get("lr"), "weight_decay": o.get("weight_decay"), "epochs": o.get("epochs"),
           "batch_size": o.get("batch_size"), "lora_rank": lo.get("rank") if lora else None,
           "lora_targets": lo.get("targets") if lora else None,
           "freeze_layers": cfg.get("freeze_layers"), "regularizer": rg.get("kind"),
           "reg_lambda": rg.get("lam"),
           "status": "done" if fin else ("failed" if (d / "error.txt").exists() else "incomplete")}
    if fin:
        row.update(_final_cells(fin))
    return row


def load(matrix_dir: str | Path) -> Matrix:
    """Read results.csv, every run's final.json, baseline/*.json, env.json and matrix.yaml."""
    d = Path(matrix_dir)
    notes: list[str] = []
    if (d / "results.csv").exists():
        with open(d / "results.csv", newline="") as fh:
            rows = [{k: _parse_cell(k, v) for k, v in r.items()} for r in csv.DictReader(fh)]
    else:
        rows = [_row_from_dir(p) for p in sorted(d.iterdir()) if (p / "config.yaml").exists()]
        notes.append("results.csv missing: rows rebuilt from the run directories")
    runs = []
    for row in rows:
        rid, seed = str(row["run_id"]), row.get("seed")
        cid = re.sub(rf"-s{seed}$", "", rid) if seed is not None else rid
        run = Run(rid, cid, d / rid, row)
        if (run.dir / "final.json").exists() and row.get("status") in (None, "done"):
            run.final = read_json(run.dir / "final.json")
        runs.append(run)
    base = {p.stem: read_json(p) for p in sorted((d / "baseline").glob("*.json"))} if (d / "baseline").is_dir() else {}
    env = read_json(d / "env.json") if (d / "env.json").exists() else {}
    spec = (read_yaml(d / "matrix.yaml") or {}) if (d / "matrix.yaml").exists() else {}
    return Matrix(d, runs, base, env, spec, notes)


# ----------------------------------------------------------------------------- selection

def _close(a: Any, b: Any) -> bool:
    return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9)


def _unregularized(r: Run) -> bool:
    return (r.get("regularizer") or "none") == "none" or not r.get("reg_lambda")


def _default(runs: list[Run], key: str, spec_value: Any, groups: tuple[str, ...]) -> Any:
    """The most common value of `key` (ties: the matrix defaults, then the reports' ids)."""
    counts = Counter(float(r.get(key)) for r in runs if r.get(key) is not None)
    if not counts:
        return spec_value
    top = [v for v, c in counts.items() if c == max(counts.values())]
    for v in ([spec_value] if spec_value is not None else []) + [r.get(key) for r in runs if r.get("group") in groups]:
        if v is not None and any(_close(v, t) for t in top):
            return float(v)
    return top[0]


def describe(r: Run) -> str:
    """A short human label from the config fields, e.g. "LoRA r=8 (pets)", "APR λ=0.1"."""
    ds = r.get("dataset", "?")
    if r.get("method") == "lora":
        tg = str(r.get("lora_targets") or "qv").upper()
        return f"LoRA r={r.get('lora_rank')}" + (f" {tg}" if tg != "QV" else "") + f" ({ds})"
    if not _unregularized(r):
        kind = {"apr": "APR", "entropy_floor": "EntFloor"}.get(r.get("regularizer"), r.get("regularizer"))
        return f"{kind} λ={r.get('reg_lambda'):g} ({ds})"
    if r.get("freeze_layers"):
        return f"Freeze {r.get('freeze_layers')} ({ds})"
    return f"Full FT lr={r.get('lr', float('nan')):g} wd={r.get('weight_decay', float('nan')):g} ({ds})"


def by_config(runs: list[Run]) -> dict[str, list[Run]]:
    """Group runs (seeds) by config id, keeping their order."""
    out: dict[str, list[Run]] = {}
    for r in runs:
        out.setdefault(r.config_id, []).append(r)
    return out


def select(m: Matrix) -> dict[str, Any]:
    """Name the runs each analysis needs, from their config fields (results.csv columns).

    Returns a dict: `datasets` (most runs first), `primary`, `default_lr`, `default_wd`,
    `reference` {dataset: plain full-FT runs at the defaults (E2, E3)}, `lora` {dataset:
    LoRA QV runs (E4–E7)}, `lora_all` (incl. QKVO, A2), `lr_sweep` (A1 + E2), `wd_sweep`
    (R3 + E2), `freezing` (A3 + E2), `regularized` (R1, R2), all on the primary dataset.
    """
    done = m.done
    counts = Counter(r.get("dataset") for r in done)
    datasets = [ds for ds, _ in sorted(counts.items(), key=lambda kv: -kv[1])]
    primary = datasets[0] if datasets else None
    full = [r for r in done if r.get("method") == "full"]
    optim = (m.spec.get("defaults") or {}).get("optim") or {}
    lr0 = _default(full, "lr", optim.get("lr"), ("E2", "E3"))
    wd0 = _default(full, "weight_decay", optim.get("weight_decay"), ("E2", "E3"))
    plain = [r for r in full if not r.get("freeze_layers") and _unregularized(r)]
    at_lr = lambda r: _close(r.get("lr"), lr0)  # noqa: E731
    at_wd = lambda r: _close(r.get("weight_decay"), wd0)  # noqa: E731
    on = lambda rs, ds=primary: [r for r in rs if r.get("dataset") == ds]  # noqa: E731
    lora_all = [r for r in done if r.get("method") == "lora"]
    return {
        "datasets": datasets, "primary": primary, "default_lr": lr0, "default_wd": wd0,
        "reference": {ds: on([r for r in plain if at_lr(r) and at_wd(r)], ds) for ds in datasets},
        "lora": {ds: on([r for r in lora_all if (r.get("lora_targets") or "qv") == "qv"
                         and _unregularized(r) and not r.get("freeze_layers")], ds) for ds in datasets},
        "lora_all": on(lora_all),
        "lr_sweep": sorted(on([r for r in plain if at_wd(r)]), key=lambda r: r.get("lr")),
        "wd_sweep": sorted(on([r for r in plain if at_lr(r)]), key=lambda r: r.get("weight_decay")),
        "freezing": sorted(on([r for r in full if _unregularized(r) and at_lr(r) and at_wd(r)]),
                           key=lambda r: r.get("freeze_layers") or 0),
        "regularized": on([r for r in full if not _unregularized(r) and not r.get("freeze_layers")
                           and at_lr(r) and at_wd(r)]),
    }
