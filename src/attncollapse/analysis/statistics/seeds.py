"""Seeds as a unit: every configuration's runs (one per seed) summarised by mean, SD and a 95% CI.

A matrix with `seeds: [42, 43]` trains `E2-s42`, `E2-s43`, ...; `table.load` names their
configuration `E2`. `aggregate` turns the runs of each configuration into one summary per
results.csv value column (accuracy, each metric's initial / final / Δ%, every zero-shot
number): mean, sample SD (ddof 1), and the two-sided 95% Student-t interval of the mean,
mean ± t₀.₉₇₅,ₙ₋₁ · SD/√n (scipy.stats.t), which needs n ≥ 2. `write_aggregate_csv` writes
the same as `results_by_config.csv` (docs/FORMATS.md), one row per configuration.
No torch (the analysis reads only files: tests/test_layout.py).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as _sp

from ..._io import write_text
from ..roles import by_config, describe
from ..table import RESULTS_COLUMNS, Matrix, Run, load

CONFIDENCE = 0.95
"""Coverage of the t-interval of each seed mean."""

CONFIG_FIELDS = ("group", "method", "dataset", "model", "lr", "weight_decay", "epochs", "batch_size",
                 "lora_rank", "lora_targets", "freeze_layers", "regularizer", "reg_lambda")
"""results.csv columns that describe a configuration (the same for all its seeds): copied from the first seed."""

_FIRST_VALUE = RESULTS_COLUMNS.index("best_acc")
VALUE_COLUMNS = (*RESULTS_COLUMNS[_FIRST_VALUE:], "wall_time_s", "images_per_s")
"""results.csv columns summarised over seeds (then every `zeroshot_<dataset>` a run has)."""

STATS_KEYS = ("mean", "sd", "ci_low", "ci_high", "n")
"""The summary of one column; `results_by_config.csv` names its cells `<column>_<key>`."""

RESULTS_BY_CONFIG = "results_by_config.csv"


def summarize(values: list[Any], *, confidence: float = CONFIDENCE) -> dict[str, float | int | None]:
    """Mean, SD (ddof 1) and t-interval of one column over a configuration's seeds.

    Args:
        values: one value per seed; None and non-finite values are left out (a run that has
            no such number, e.g. base-only zero-shot of a full-FT run).
        confidence: coverage of the interval.

    Returns:
        {"mean", "sd", "ci_low", "ci_high", "n"}: n counts the finite values; mean is None
        when n = 0, sd and the interval are None when n < 2 (one seed has no spread).
    """
    v = np.asarray([float(x) for x in values if x is not None and math.isfinite(float(x))], float)
    n = len(v)
    if n == 0:
        return {"mean": None, "sd": None, "ci_low": None, "ci_high": None, "n": 0}
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "sd": None, "ci_low": None, "ci_high": None, "n": 1}
    sd = float(v.std(ddof=1))
    if sd == 0.0:  # identical seeds: scipy rejects scale 0, and the interval is the point
        lo = hi = mean
    else:
        lo, hi = _sp.t.interval(confidence, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return {"mean": mean, "sd": sd, "ci_low": float(lo), "ci_high": float(hi), "n": n}


def value_columns(runs: list[Run]) -> list[str]:
    """VALUE_COLUMNS, then every `zeroshot_<dataset>` column the runs' rows have, in first-seen order."""
    extra: list[str] = []
    for r in runs:
        extra += [k for k in r.row if k.startswith("zeroshot_") and k not in VALUE_COLUMNS and k not in extra]
    return [*VALUE_COLUMNS, *extra]


def aggregate(runs: list[Run]) -> dict[str, dict]:
    """Group runs by configuration (seeds) and summarise every value column.

    Args:
        runs: finished runs (`Matrix.done`), any order; a configuration's seeds keep theirs.

    Returns:
        {config_id: {"config_id", "label" (`roles.describe`), "n_seeds", "seeds", "run_ids",
        the CONFIG_FIELDS of the first seed, and for each value column (`value_columns`)
        {"mean", "sd", "ci_low", "ci_high", "n"} (see `summarize`)}}, in first-seen order.
    """
    cols = value_columns(runs)
    out: dict[str, dict] = {}
    for cid, rs in by_config(runs).items():
        entry: dict[str, Any] = {"config_id": cid, "label": describe(rs[0]), "n_seeds": len(rs),
                                 "seeds": [r.get("seed") for r in rs], "run_ids": [r.run_id for r in rs],
                                 **{k: rs[0].get(k) for k in CONFIG_FIELDS}}
        for c in cols:
            entry[c] = summarize([r.get(c) for r in rs])
        out[cid] = entry
    return out


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        return " ".join(str(x) for x in v)
    return repr(v) if isinstance(v, float) else str(v)


def write_aggregate_csv(matrix_dir: str | Path, m: Matrix | None = None) -> Path:
    """Write `<matrix_dir>/results_by_config.csv`: one row per configuration (finished runs).

    Columns: config_id, label, n_seeds, seeds and run_ids (space-separated), the
    CONFIG_FIELDS, then `<column>_mean, _sd, _ci_low, _ci_high, _n` for every value column
    (docs/FORMATS.md). Written atomically, also when no run has finished (header only).

    Args:
        matrix_dir: a matrix directory.
        m: the matrix as `table.load` read it (read again when None).
    """
    m = m if m is not None else load(matrix_dir)
    agg = aggregate(m.done)
    cols = value_columns(m.done)
    header = ["config_id", "label", "n_seeds", "seeds", "run_ids", *CONFIG_FIELDS,
              *[f"{c}_{k}" for c in cols for k in STATS_KEYS]]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for e in agg.values():
        cells = [e[k] for k in ("config_id", "label", "n_seeds", "seeds", "run_ids", *CONFIG_FIELDS)]
        writer.writerow([_cell(v) for v in cells + [e[c][k] for c in cols for k in STATS_KEYS]])
    path = Path(matrix_dir) / RESULTS_BY_CONFIG
    write_text(path, buf.getvalue())
    return path
