"""Collecting a matrix's runs into results.csv, in matrix order (one row per run and seed)."""

from __future__ import annotations

from pathlib import Path

from .. import _io
from ..analysis.table import results_row, write_csv
from ..config import MatrixConfig
from .tasks import matrix_of, plan, run_state


def results_rows(out_dir: str | Path, matrix: MatrixConfig | None = None) -> list[dict]:
    """The results.csv rows of a matrix directory: one per run and seed, in matrix order.

    A run's recorded config.yaml wins over the planned one (it is what actually ran); the
    row's `run_id` is the run directory's name, so several seeds give `E2-s42`, `E2-s43`.
    """
    out = Path(out_dir)
    matrix = matrix_of(out, matrix)
    rows = []
    for task in plan(matrix, out):
        if task.kind != "run":
            continue
        config = task.config.model_dump(mode="json")
        recorded = task.path / "config.yaml"
        if recorded.is_file():
            try:
                config = _io.read_yaml_checked(recorded)
            except _io.DamagedFile:  # unreadable: the planned config describes the run as well
                pass
        state = run_state(task)
        final = task.read_done() if state == "done" else None  # a damaged one counts as not done
        history = None
        if final is not None and (task.path / "history.json").is_file():
            try:  # only the collapse onset needs it; the analysis names a damaged history.json itself
                history = _io.read_json_checked(task.path / "history.json", ("points",))
            except _io.DamagedFile:
                pass
        rows.append(results_row(config, final, run_id=task.id, group=task.group, status=state, history=history))
    return rows


def write_results(out_dir: str | Path, matrix: MatrixConfig | None = None) -> Path:
    """Write `<out_dir>/results.csv` (columns: docs/FORMATS.md) and return its path."""
    return write_csv(Path(out_dir) / "results.csv", results_rows(out_dir, matrix))
