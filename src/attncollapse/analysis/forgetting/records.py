"""Per-run forgetting records (the authors' study2 JSON, or ours) read into run-level rows.

A row is a plain dict with the columns of the authors' `run_level.csv` (docs/FORGETTING.md
"Record schema"): the config, the selected-checkpoint signals, their absolute values,
`log10_lr`, the epoch-1 copies (`epoch1_*`, history[0]), transfer accuracy/retention in %,
the corruption summary, plus `backbone` ("primary" | "secondary") and, kept out of the CSV,
`history`, `delta_entropy_per_layer_pct` and `random_init` (our runner's provenance says the
model was a randomly initialised preset).

A file that cannot be read as a record (another schema, truncated JSON, a missing key) gives
one line naming the file and what is wrong; the lines are collected and returned with the
rows, never raised and never dropped silently.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from ... import _io

SCHEMA = "attncollapse-forgetting/1"
"""The `schema` our runner writes; the authors' records carry none."""
PRIMARY_HINT = "patch32"
"""Authors' records lack `config.backbone`: a model name containing this is the primary backbone."""

CSV_COLUMNS = (
    "run_id", "dataset", "method", "model_name", "lr", "seed", "epochs", "steps", "trainable_params",
    "selected_epoch", "val_acc", "test_acc", "diverged", "delta_entropy_pct", "delta_erf95_pct",
    "delta_gini_pct", "delta_entropy_last_layer_pct", "cka_mean", "cka_last", "embedding_drift",
    "weight_drift_rel", "train_loss_final", "epoch1_delta_entropy_pct", "epoch1_weight_drift_rel",
    "epoch1_embedding_drift", "epoch1_cka_mean", "epoch1_transfer_retention", "baseline_entropy",
    "abs_delta_entropy_pct", "abs_delta_erf95_pct", "abs_delta_gini_pct", "abs_delta_entropy_last_layer_pct",
    "log10_lr", "epoch1_log10_lr", "epoch1_transfer_retention_pct", "epoch1_epoch1_transfer_retention_pct",
    "epoch1_abs_delta_entropy_pct", "epoch1_abs_delta_erf95_pct", "epoch1_abs_delta_gini_pct",
    "epoch1_train_loss_final", "epoch1_delta_entropy_last_layer_pct", "epoch1_abs_delta_entropy_last_layer_pct",
    "cifar100_acc", "cifar100_retention", "cifar100_pretrained", "cifar10_acc", "cifar10_retention",
    "cifar10_pretrained", "corruption_mean_acc", "corruption_gap", "backbone")
"""The authors' 50 run_level.csv columns in their order, then `backbone`."""


class RecordError(ValueError):
    """A record that cannot be read; str() is the one line reported."""


def _get(record: dict, dotted: str) -> Any:
    node: Any = record
    for part in dotted.split("."):
        if isinstance(node, list):
            if not node:
                raise RecordError(f"{dotted} is empty")
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise RecordError(f"missing key {dotted}")
    return node


def _num(record: dict, dotted: str) -> float:
    value = _get(record, dotted)
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"{dotted} is {value!r}, not a number")
    return float(value)


def backbone_of(config: dict) -> str:
    """`config.backbone` when the record has it, else "primary" iff the model name says patch32."""
    if config.get("backbone") in ("primary", "secondary"):
        return config["backbone"]
    return "primary" if PRIMARY_HINT in str(config.get("model_name", "")) else "secondary"


def run_row(record: dict) -> dict:
    """One record as a run-level row (the columns of CSV_COLUMNS plus history and per-layer ΔH).

    Raises:
        RecordError: a missing key or a non-number where a number belongs (message names it).
    """
    if "schema" in record and record["schema"] != SCHEMA:
        raise RecordError(f"schema {record['schema']!r} is not {SCHEMA!r} (not a forgetting run record)")
    config, history = _get(record, "config"), _get(record, "history")
    if not isinstance(history, list) or not history:
        raise RecordError("history is empty (no finished epoch)")
    first = history[0]
    per_layer = list(_get(record, "final.delta_entropy_per_layer_pct"))
    cka_layers = list(_get(record, "final.cka_per_layer"))
    row: dict[str, Any] = {
        "run_id": str(_get(record, "run_id")), "dataset": str(_get(config, "dataset")),
        "method": str(_get(config, "method")), "model_name": str(config.get("model_name", "")),
        "lr": _num(config, "lr"), "seed": int(_num(config, "seed")), "epochs": int(_num(config, "epochs")),
        "steps": int(_num(config, "total_steps")), "trainable_params": int(_num(record, "parameters.trainable")),
        "selected_epoch": int(_num(record, "selected_epoch")), "val_acc": _num(record, "best_val_acc"),
        "test_acc": _num(record, "test_acc"), "diverged": bool(_get(record, "diverged")),
    }
    for key in ("delta_entropy_pct", "delta_erf95_pct", "delta_gini_pct", "cka_mean", "embedding_drift",
                "weight_drift_rel"):
        row[key] = _num(record, f"final.{key}")
    row["delta_entropy_last_layer_pct"] = float(per_layer[-1]) if per_layer else math.nan
    row["cka_last"] = float(cka_layers[-1]) if cka_layers else math.nan
    row["train_loss_final"] = _num(history[-1], "train_loss")  # epoch-last loss, as the authors
    for key in ("delta_entropy_pct", "weight_drift_rel", "embedding_drift", "cka_mean"):
        row[f"epoch1_{key}"] = _num(first, key)
    track = first.get("transfer_track_retention")
    row["epoch1_transfer_retention"] = math.nan if track is None else float(track)
    row["baseline_entropy"] = _num(record, "baseline.attention.entropy_mean")
    for key in ("delta_entropy_pct", "delta_erf95_pct", "delta_gini_pct", "delta_entropy_last_layer_pct"):
        row[f"abs_{key}"] = abs(row[key])
    row["log10_lr"] = math.log10(row["lr"]) if row["lr"] > 0 else math.nan
    row["epoch1_log10_lr"] = row["log10_lr"]  # aliased: the same value at both stages
    row["epoch1_transfer_retention_pct"] = 100 * row["epoch1_transfer_retention"]
    row["epoch1_epoch1_transfer_retention_pct"] = row["epoch1_transfer_retention_pct"]
    row["epoch1_abs_delta_entropy_pct"] = abs(row["epoch1_delta_entropy_pct"])
    row["epoch1_abs_delta_erf95_pct"] = abs(_num(first, "delta_erf95_pct"))
    row["epoch1_abs_delta_gini_pct"] = abs(_num(first, "delta_gini_pct"))
    row["epoch1_train_loss_final"] = _num(first, "train_loss")
    base = float(_get(record, "baseline.attention.entropy_per_layer.-1"))
    now = float(_get(first, "entropy_per_layer.-1"))
    row["epoch1_delta_entropy_last_layer_pct"] = 100 * (now - base) / base
    row["epoch1_abs_delta_entropy_last_layer_pct"] = abs(row["epoch1_delta_entropy_last_layer_pct"])
    transfer = _get(record, "transfer")
    for name in ("cifar100", "cifar10"):
        spec = transfer.get(name) if isinstance(transfer, dict) else None
        for key, col in (("accuracy", "acc"), ("retention", "retention"), ("pretrained", "pretrained")):
            row[f"{name}_{col}"] = 100 * _num(spec, key) if spec else math.nan
    if not transfer.get("cifar100"):
        raise RecordError("missing key transfer.cifar100 (the primary transfer axis)")
    corruption = record.get("corruption_acc") or {}
    if corruption:
        row["corruption_mean_acc"] = sum(map(float, corruption.values())) / len(corruption)
        row["corruption_gap"] = row["test_acc"] - row["corruption_mean_acc"]
    else:
        row["corruption_mean_acc"] = row["corruption_gap"] = math.nan
    row["backbone"] = backbone_of(config)
    row["random_init"] = bool((record.get("provenance") or {}).get("model_random_init"))
    row["delta_entropy_per_layer_pct"] = [float(v) for v in per_layer]
    row["history"] = history
    return row


def read_json_file(path: Path) -> dict:
    """A JSON object from `path` (a `checksum` our runner writes is verified and dropped), or
    RecordError naming what is wrong (unreadable, truncated, not an object, changed)."""
    try:
        return _io.read_json_checked(path, fix="rerun the run or remove the file")
    except _io.DamagedFile as exc:
        raise RecordError(exc.why) from None


def read_runs(paths: list[Path]) -> tuple[list[dict], list[str]]:
    """Rows of the readable records in path order (the authors' order: sorted file names), and
    one line per file left out ("<file>: <what is wrong>"). Tagged runs (config.tag set, the
    authors' diagnostics) are left out with a line saying so, as their analysis drops them."""
    rows, problems = [], []
    for path in paths:
        try:
            record = read_json_file(path)
            if (record.get("config") or {}).get("tag"):
                problems.append(f"{path}: left out: tagged run (tag {record['config']['tag']!r}), as the authors do")
                continue
            rows.append(run_row(record))
        except (RecordError, TypeError, ValueError, IndexError, AttributeError) as exc:
            problems.append(f"{path}: {exc}")
    return rows, problems


def read_interpolations(paths: list[Path]) -> tuple[list[dict], list[str]]:
    """Interpolation sweep records (the authors' intervention schema), checked for their keys."""
    out, problems = [], []
    for path in paths:
        try:
            record = read_json_file(path)
            if "schema" in record and record["schema"] != SCHEMA:
                raise RecordError(f"schema {record['schema']!r} is not {SCHEMA!r}")
            sweep = _get(record, "sweep")
            for i, point in enumerate(sweep):
                for key in ("alpha", "test_acc", "transfer_retention"):
                    _num(point, key) if isinstance(point, dict) else _get({}, f"sweep.{i}.{key}")
            _get(record, "config.method")
            out.append(record)
        except (RecordError, TypeError, ValueError, IndexError, AttributeError) as exc:
            problems.append(f"{path}: {exc}")
    return out, problems


def write_csv(rows: list[dict], path: Path) -> None:
    """run_level.csv: one line per row, the CSV_COLUMNS (NaN as an empty cell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow(["" if isinstance(row.get(c), float) and math.isnan(row[c]) else row.get(c, "")
                             for c in CSV_COLUMNS])
