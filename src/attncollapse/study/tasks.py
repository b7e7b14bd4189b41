"""A matrix as units of work: the E1 baselines, then every run and seed, and their state on disk."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import _io
from ..config import (ConfigError, MatrixConfig, PlannedRun, RunConfig, match_only, matrix_from_dict,
                      only_error, only_patterns)
from .locks import inspect_lock

LOCK_NAME = "lock.json"

BASELINE_ID = "E1"

# What a finished run's final.json / a baseline's JSON must hold to count as done: a file
# truncated by a kill, or `{}`, lacks them and the task is trained again.
FINAL_KEYS = _io.FINAL_JSON_KEYS
BASELINE_KEYS = ("dataset", "layers", "mean")

TrainFn = Callable[[RunConfig, Path], Any]


@dataclass
class Task:
    """One unit of work: an E1 baseline on one dataset, or one run (one seed).

    Attributes:
        kind: "baseline" or "run".
        id: run directory name, or "E1:<dataset>" ("E1:<model>:<dataset>" in a matrix of
            several models).
        path: the run directory, or the baseline JSON file.
        config: the RunConfig (for a baseline: whose data/eval/zero-shot settings it uses).
        group: the reports' family (E2, A1, ...; E1 for baselines).
    """

    kind: str
    id: str
    path: Path
    config: RunConfig
    group: str = ""

    @property
    def done_file(self) -> Path:
        return self.path / "final.json" if self.kind == "run" else self.path

    @property
    def required_keys(self) -> tuple[str, ...]:
        return FINAL_KEYS if self.kind == "run" else BASELINE_KEYS

    def read_done(self) -> dict:
        """The validated content of `done_file`; DamagedFile when unreadable or incomplete."""
        return _io.read_json_checked(self.done_file, self.required_keys,
                                     fix="`attncollapse run` trains it again (the damaged file is kept "
                                         "as *.damaged)")

    def done_problem(self) -> str | None:
        """None when `done_file` is a valid result; else why not ("missing" when absent).

        A run whose final.json carries a checksum (written by this version's `train.run`)
        is done only if the files read back from it verify too: history.json and
        config.yaml ("history.json: <why>"); `run` then finishes it again from its
        checkpoint, which rewrites them (docs/FORMATS.md "Verified files").
        """
        if not self.done_file.exists():
            return "missing"
        try:
            self.read_done()
        except _io.DamagedFile as exc:
            return exc.why
        if self.kind == "run" and _io.json_has_checksum(self.done_file):
            return companion_problem(self.path)
        return None

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_NAME if self.kind == "run" else self.path.with_suffix(".lock.json")

    @property
    def error_file(self) -> Path:
        return self.path / "error.txt" if self.kind == "run" else self.path.with_suffix(".error.txt")


COMPANIONS = ("history.json", "config.yaml")
"""The files of a finished run that later stages read back (besides final.json)."""


def companion_problem(run_dir: Path) -> str | None:
    """"<file>: <why>" for the first of `COMPANIONS` that is missing or fails its check, else None."""
    for name in COMPANIONS:
        path = run_dir / name
        if not path.is_file():
            return f"{name}: missing"
        # Written by the same version as a final.json with a checksum: each has one too. The
        # config is not validated against today's schema here (an older schema is not damage).
        try:
            if name == "history.json":
                _io.read_json_checked(path, ("points",))
                if not _io.json_has_checksum(path):
                    return f"{name}: no checksum — replaced or damaged"
            else:
                _io.read_yaml_checked(path, require_checksum=True)
        except _io.DamagedFile as exc:
            return f"{name}: {exc.why.split('; ')[0]}"
    return None


def baseline_name(source: str) -> str:
    """File stem of a baseline: the dataset source, made path-safe (`hf:a/b` → `hf_a_b`)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in source)


def baseline_tasks(matrix: MatrixConfig, out: Path) -> list[Task]:
    """E1 per dataset of `matrix.baseline`: `E1:<dataset>` → baseline/<dataset>.json; a matrix
    training several models measures each: `E1:<model>:<dataset>` → baseline/<model>_<dataset>.json."""
    models = matrix.models()
    if len(models) <= 1:
        return [Task("baseline", f"{BASELINE_ID}:{ds}", out / "baseline" / f"{baseline_name(ds)}.json",
                     matrix.baseline_config(ds), BASELINE_ID) for ds in matrix.baseline]
    return [Task("baseline", f"{BASELINE_ID}:{m}:{ds}",
                 out / "baseline" / f"{baseline_name(m)}_{baseline_name(ds)}.json",
                 matrix.baseline_config(ds, m), BASELINE_ID) for m in models for ds in matrix.baseline]


def plan(matrix: MatrixConfig, out_dir: str | Path, only: str | list[str] | None = None) -> list[Task]:
    """The tasks of a matrix (baselines first), restricted by `only`.

    Args:
        only: comma-separated run ids, entries (`A1`), groups or globs (`R*`); `E1` or
            `baseline` selects the baselines.
    """
    out = Path(out_dir)
    pats = only_patterns(only)
    base_pats = [p for p in pats if fnmatch.fnmatchcase(BASELINE_ID, p) or p == "baseline"]
    runs: list[PlannedRun] = matrix.expand()
    keep, unmatched = match_only(runs, pats)
    unmatched = [p for p in unmatched if p not in base_pats]
    if unmatched:
        raise only_error(unmatched, [BASELINE_ID] + [r.id for r in runs])
    tasks = []
    if not pats or base_pats:
        tasks += baseline_tasks(matrix, out)
    if pats:
        runs = keep
    tasks.extend(Task("run", r.id, out / r.id, r.config, r.group) for r in runs)
    return tasks


def matrix_of(out: Path, matrix: MatrixConfig | None = None) -> MatrixConfig:
    """`matrix` itself, or the MatrixConfig recorded in `<out>/matrix.yaml`."""
    if matrix is not None:
        return matrix
    path = out / "matrix.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{out}: no matrix.yaml (not a matrix directory written by `attncollapse run`)")
    fix = "rerun `attncollapse run <your matrix.yaml> --out DIR` to rewrite it"
    data = _io.read_yaml_checked(path, fix=fix)
    try:
        return matrix_from_dict(data, source=str(path))
    except ConfigError as exc:
        raise _io.DamagedFile(path, f"not a valid matrix ({exc.errors[0]}); {fix}") from None


def run_state(task: Task) -> str:
    """done / damaged / failed / running / stale-lock / partial / pending, from the files alone.

    "running": a live owner holds the lock (locks.inspect_lock); "stale-lock": the lock is
    left by a dead owner, or is not a lock record, and the next `run` takes it over.

    "damaged": the result file exists but cannot be read as one (truncated, `{}`); the
    next `run` trains the task again.
    """
    if task.done_file.exists():
        return "done" if task.done_problem() is None else "damaged"
    lock = inspect_lock(task.lock_file)
    if lock is not None:
        return "stale-lock" if lock.stale is not None else "running"
    if task.error_file.exists():
        return "failed"
    if task.kind == "run" and (task.path / "checkpoints").is_dir() and any((task.path / "checkpoints").iterdir()):
        return "partial"
    return "pending"
