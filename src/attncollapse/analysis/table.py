"""The results table: one results.csv row per run and seed, built from a run's files, and read back.

`results_row` turns a run's config (as plain data) and final.json into a row; the study
stage writes results.csv with it (study/collect.py) and `load` rebuilds rows with it when
results.csv is missing, so both agree cell for cell (columns: docs/FORMATS.md). No torch
and nothing else of attncollapse here: the analysis reads only the files earlier stages wrote.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import DamagedFile, read_json_checked, read_yaml_checked, write_text

METRICS = ("entropy", "erf", "gini", "head_diversity")
STRUCTURE_DELTAS = ("rollout_entropy", "rollout_erf", "rollout_gini", "patch_entropy")
"""Structure measures with initial, final and Δ% columns (final.json `structure_summary`)."""
STRUCTURE_COLUMNS = [*[f"{m}_{k}" for m in STRUCTURE_DELTAS for k in ("initial", "final", "delta_pct")],
                     "cka_final", "map_drift_final"]

RESULTS_COLUMNS = [
    "run_id", "group", "seed", "method", "dataset", "model", "model_family", "lr", "weight_decay", "epochs",
    "batch_size", "lora_rank", "lora_targets", "freeze_layers", "regularizer", "reg_lambda",
    "best_acc", "final_acc",
    *[f"{m}_{k}" for m in METRICS for k in ("initial", "final", "delta_pct")],
    "zeroshot_acc", "zeroshot_acc_base_only", "zeroshot_acc_frozen_projection",
    "knn_acc", "linear_probe_acc", "transfer_acc", "weight_drift_final", "collapse_onset_epoch", "collapse_onset_frac",
    *STRUCTURE_COLUMNS,
]
"""results.csv columns before the per-dataset `zeroshot_<dataset>` ones (docs/FORMATS.md)."""

RESULTS_TAIL = ["transfer_protocol", "weight_drift_layers", "cka_layers", "status", "wall_time_s", "images_per_s"]
"""results.csv's last columns: text (`transfer_protocol`: zeroshot | knn; `weight_drift_layers`,
`cka_layers`: space-separated, one value per block), kept out of the value columns that
`seeds.aggregate` averages."""

_STR_COLS = {"run_id", "group", "method", "dataset", "model", "model_family", "lora_targets", "regularizer",
             "weight_drift_layers", "cka_layers", "status", "transfer_protocol"}

_INT_COLS = {"seed", "lora_rank", "freeze_layers", "batch_size"}


ONSET_PCT = 1.0
"""Collapse onset threshold: % below the initial mean entropy. The original's
`detect_collapse_onset` defaults to 0.5, but its report (§3.9) and fig. 12 use the 1% onset
(`onset_1pct`, docs/STUDY.md "The original code, and which commit")."""


def collapse_onset(history: dict | None, threshold_pct: float = ONSET_PCT) -> dict | None:
    """The reports' collapse onset: the first eval point whose layer-mean entropy is below
    (1 − threshold_pct/100) × the initial (step-0) one, or None when none is.

    Returns:
        {"step", "epoch", "index", "fraction"} of that history.json point (`index` counts points,
        0 = initial; `fraction` = index / number of points, the fraction of training the
        original reported).
    """
    pts = [p for p in (history or {}).get("points") or [] if (p.get("mean") or {}).get("entropy") is not None]
    if not pts:
        return None
    limit = float(pts[0]["mean"]["entropy"]) * (1 - threshold_pct / 100)
    return next(({"step": p.get("step"), "epoch": p.get("epoch"), "index": i, "fraction": i / len(pts)}
                 for i, p in enumerate(pts) if float(p["mean"]["entropy"]) < limit), None)


def _format_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return repr(v) if v == v else ""
    return str(v)


def _headline_zeroshot(final: dict, datasets: list[str]) -> dict:
    """final.json's zero-shot block of the headline dataset: the config's first zero-shot
    dataset that has a block (as `zeroshot_acc` is chosen, train/posthoc.py), else the first block."""
    blocks = final.get("zeroshot") or {}
    head = next((d for d in datasets if d in blocks), next(iter(blocks), None))
    block = blocks.get(head) if head is not None else None
    return block if isinstance(block, dict) else {}


def _final_cells(final: dict, zeroshot_datasets: list[str] | None = None) -> dict[str, Any]:
    """The results.csv cells read from a run's final.json (None where it has no value).

    `zeroshot_acc_frozen_projection` (fine-tuned tower + pretrained projection) has no
    top-level key in final.json: it is read from the headline dataset's zero-shot block.
    """
    row = {k: final.get(k) for k in ("best_acc", "final_acc", "zeroshot_acc", "zeroshot_acc_base_only",
                                     "knn_acc", "linear_probe_acc", "transfer_acc", "transfer_protocol",
                                     "wall_time_s", "images_per_s")}
    row["zeroshot_acc_frozen_projection"] = final.get(
        "zeroshot_acc_frozen_projection", _headline_zeroshot(final, zeroshot_datasets or []).get("acc_frozen_projection"))
    drift = final.get("weight_drift")  # per block at the last step (train/loop.py)
    row["weight_drift_layers"] = " ".join(repr(float(v)) for v in drift) if drift else None
    row["weight_drift_final"] = float(np.mean(drift)) if drift else None
    row["model_family"] = final.get("model_family")
    summary = final.get("structure_summary") or {}  # run-level structure values (train/loop.py)
    row.update({c: summary.get(c) for c in STRUCTURE_COLUMNS})
    cka = (final.get("structure_final") or {}).get("cka")
    row["cka_layers"] = " ".join(repr(float(v)) for v in cka) if cka else None
    for m in METRICS:
        row[f"{m}_initial"] = (final.get("initial_mean") or {}).get(m)
        row[f"{m}_final"] = (final.get("final_mean") or {}).get(m)
        row[f"{m}_delta_pct"] = (final.get("delta_pct") or {}).get(m)
    return row


def results_row(config: dict, final: dict | None, *, run_id: str, group: str, status: str,
                history: dict | None = None) -> dict[str, Any]:
    """One results.csv row (before the per-dataset zero-shot columns).

    Args:
        config: a run's resolved config as plain data (config.yaml).
        final: its final.json, or None while it is not done.
        history: its history.json (for `collapse_onset_epoch`; None = empty cell).
        run_id: the run directory's name (`E2`, or `E2-s43` when the matrix has several seeds).
        group: the reports' family (E2, A1, ...).
        status: "done", or the run's state on disk.
    """
    optim, lora_cfg, reg = config.get("optim") or {}, config.get("lora") or {}, config.get("regularizer") or {}
    lora = config.get("method") == "lora"
    regularized = (reg.get("kind") or "none") != "none"
    zs_datasets = list((config.get("zeroshot") or {}).get("datasets") or [])
    row = {
        "run_id": run_id, "group": group, "seed": config.get("seed"), "method": config.get("method"),
        "dataset": config.get("dataset"), "model": config.get("model"), "lr": optim.get("lr"),
        "weight_decay": optim.get("weight_decay"), "epochs": optim.get("epochs"),
        "batch_size": optim.get("batch_size"), "lora_rank": lora_cfg.get("rank") if lora else None,
        "lora_targets": lora_cfg.get("targets") if lora else None, "freeze_layers": config.get("freeze_layers"),
        "regularizer": reg.get("kind"), "reg_lambda": reg.get("lam") if regularized else None,
        **_final_cells(final or {}, zs_datasets), "status": (final.get("status", "done") if final else status),
        "collapse_onset_epoch": (collapse_onset(history) or {}).get("epoch") if final else None,
        "collapse_onset_frac": (collapse_onset(history) or {}).get("fraction") if final else None,
    }
    zeroshot = (final or {}).get("zeroshot") or {}
    for ds in zs_datasets + list(zeroshot):
        block = zeroshot.get(ds)
        row[f"zeroshot_{ds}"] = block.get("acc") if isinstance(block, dict) else None
    return row


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as results.csv (atomically): the fixed columns, then every `zeroshot_<dataset>` seen."""
    zs_names: list[str] = []
    for row in rows:
        zs_names += [k for k in row if k.startswith("zeroshot_") and k not in RESULTS_COLUMNS and k not in zs_names]
    columns = RESULTS_COLUMNS + zs_names + RESULTS_TAIL
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format_cell(row.get(c)) for c in columns])
    write_text(path, buf.getvalue())
    return Path(path)


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

    @property
    def repair_fix(self) -> str:
        """What repairs a damaged file of this finished run (`run` finishes it again from its checkpoint)."""
        return (f"rerun `attncollapse run <your matrix.yaml> --out {self.dir.parent}`: it finishes "
                f"{self.dir.name} again from its checkpoint and rewrites the file")

    def history(self) -> dict | None:
        """history.json, read on first use (figures only); verified (checksum, `points`)."""
        if self._history is None and (self.dir / "history.json").exists():
            self._history = read_json_checked(self.dir / "history.json", ("points",), fix=self.repair_fix)
        return self._history

    def config(self) -> dict:
        """config.yaml (the resolved RunConfig as plain data), verified; {} when absent."""
        p = self.dir / "config.yaml"
        return read_yaml_checked(p, fix=self.repair_fix) if p.exists() else {}

    def delta(self, metric: str = "entropy") -> float | None:
        """Run-level Δ% of a metric (mean over layers)."""
        v = self.row.get(f"{metric}_delta_pct")
        if v is None and self.final:
            v = (self.final.get("delta_pct") or {}).get(metric)
        return None if v is None else float(v)

    def zeroshot_delta(self, metric: str = "entropy") -> tuple[float | None, str]:
        """Run-level Δ% of the checkpoint zero-shot accuracy was measured on, and which it is.

        train/loop.py evaluates zero-shot on the best-accuracy checkpoint (final.json
        `best_step`), while `delta` is the last step's. This is Δ% of the layer mean at the
        history.json point of `best_step` against step 0 (final.json's Δ definition); it
        equals `delta` when the best step is the last one.

        Returns:
            (Δ%, "best") or, without a best step or its history point, (`delta`, "final").
        """
        step = (self.final or {}).get("best_step")
        pts = (self.history() or {}).get("points") or []
        if step is not None and step >= 0 and pts:
            at = next((p for p in pts if p.get("step") == step), None)
            v0 = (pts[0].get("mean") or {}).get(metric)
            v = (at.get("mean") or {}).get(metric) if at else None
            if v is not None and v0:
                return 100.0 * (float(v) - float(v0)) / float(v0), "best"
        return self.delta(metric), "final"

    def drift_at(self, step: int | None = None) -> list[float] | None:
        """Per-block weight drift ‖θ − θ₀‖/‖θ₀‖ (L,) at history point `step` (None: the last point)."""
        pts = [p for p in (self.history() or {}).get("points") or [] if p.get("weight_drift") is not None]
        if step is not None:
            pts = [p for p in pts if p.get("step") == step]
        if not pts:
            return None
        d = pts[-1]["weight_drift"]
        if not isinstance(d, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in d):
            raise DamagedFile(self.dir / "history.json",
                              f"points[].weight_drift at step {pts[-1].get('step')} must be a list of numbers, "
                              f"found {d!r:.60}; delete {self.dir / 'final.json'} and rerun `attncollapse run`")
        return [float(v) for v in d]

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
    cfg = read_yaml_checked(d / "config.yaml")
    fin = read_json_checked(d / "final.json") if (d / "final.json").exists() else None
    hist = read_json_checked(d / "history.json") if fin and (d / "history.json").exists() else None
    status = "failed" if (d / "error.txt").exists() else "incomplete"
    return results_row(cfg, fin, run_id=d.name, group=d.name.split("-")[0], status=status, history=hist)


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
            run.final = read_json_checked(run.dir / "final.json", fix=run.repair_fix)  # checksum verified
        runs.append(run)
    # every file read back verified (docs/FORMATS.md "Verified files"): an edited E1 number
    # would otherwise move every retention and Δ quietly
    remake = f"rerun `attncollapse run <your matrix.yaml> --out {d}`: it measures E1 again and rewrites the file"
    base = ({p.stem: read_json_checked(p, fix=remake) for p in sorted((d / "baseline").glob("*.json"))
             if not p.name.endswith((".lock.json", ".error.json"))} if (d / "baseline").is_dir() else {})
    for run in runs:
        if run.final is not None:
            _fill_from_files(run, base)
    rewrite = f"rerun `attncollapse run <your matrix.yaml> --out {d}` to rewrite it"
    env = read_json_checked(d / "env.json", fix=rewrite) if (d / "env.json").exists() else {}
    spec = read_yaml_checked(d / "matrix.yaml", fix=rewrite) if (d / "matrix.yaml").exists() else {}
    return Matrix(d, runs, base, env, spec, notes)


def _fill_from_files(run: Run, baseline: dict[str, dict]) -> None:
    """Cells a run's final.json lacks (runs written before they existed), from its other files:
    weight drift from history.json's last point, the model family from E1's baseline of the
    same model (baseline/<dataset>.json `family`), the collapse onset from history.json."""
    if run.row.get("weight_drift_final") is None and (drift := run.drift_at()):
        run.row["weight_drift_final"] = float(np.mean(drift))
        run.row["weight_drift_layers"] = " ".join(repr(v) for v in drift)
    if "collapse_onset_frac" not in run.row:  # a results.csv written before the 1% onset columns
        on = collapse_onset(run.history()) or {}
        run.row["collapse_onset_epoch"], run.row["collapse_onset_frac"] = on.get("epoch"), on.get("fraction")
    if run.row.get("model_family") is None:
        run.row["model_family"] = next((b["family"] for b in baseline.values()
                                        if b.get("model") == run.get("model") and b.get("family")), None)
