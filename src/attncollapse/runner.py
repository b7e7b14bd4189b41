"""Running a matrix: plan, lock, train or skip, collect, analyse.

`run_matrix` turns a validated `MatrixConfig` into tasks (the E1 baselines, then every run
and seed), hands them to an executor (executors.py: local, per-GPU workers, Ray, Slurm)
and then writes `results.csv` (results.py) and calls the analysis stages. A run directory
with `final.json` is done and skipped; one without it is resumed by the train function itself.
A lock file per run directory (created with `O_EXCL`) makes sure two runners, or two
workers of one runner, never train the same run; a lock left by a dead process on this
host is taken over.
"""

from __future__ import annotations

import fnmatch
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from . import _io
from .config import RunConfig, fingerprint
from .matrix import ConfigError, MatrixConfig, PlannedRun, load_matrix, matrix_from_dict
from .results import write_results

LOCK_NAME = "lock.json"
BASELINE_ID = "E1"

TrainFn = Callable[[RunConfig, Path], Any]


# --- tasks ------------------------------------------------------------------------------

@dataclass
class Task:
    """One unit of work: an E1 baseline on one dataset, or one run (one seed).

    Attributes:
        kind: "baseline" or "run".
        id: run directory name, or "E1:<dataset>".
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
    def lock_file(self) -> Path:
        return self.path / LOCK_NAME if self.kind == "run" else self.path.with_suffix(".lock.json")

    @property
    def error_file(self) -> Path:
        return self.path / "error.txt" if self.kind == "run" else self.path.with_suffix(".error.txt")


def baseline_name(source: str) -> str:
    """File stem of a baseline: the dataset source, made path-safe (`hf:a/b` → `hf_a_b`)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in source)


def plan(matrix: MatrixConfig, out_dir: str | Path, only: str | list[str] | None = None) -> list[Task]:
    """The tasks of a matrix (baselines first), restricted by `only`.

    Args:
        only: comma-separated run ids, entries (`A1`), groups or globs (`R*`); `E1` or
            `baseline` selects the baselines.
    """
    out = Path(out_dir)
    pats = [p.strip() for p in (only.split(",") if isinstance(only, str) else only or []) if p.strip()]
    base_pats = [p for p in pats if fnmatch.fnmatchcase(BASELINE_ID, p) or p == "baseline"]
    runs: list[PlannedRun] = matrix.expand()
    names = {n for r in runs for n in (r.id, r.entry, r.group, r.config.id)}
    run_pats = [p for p in pats if any(fnmatch.fnmatchcase(n, p) for n in names)]
    unmatched = [p for p in pats if p not in run_pats and p not in base_pats]
    if unmatched:
        raise ConfigError([f"--only {p}: matches no run (runs: {BASELINE_ID}, "
                           f"{', '.join(r.id for r in runs)})" for p in unmatched])
    tasks = []
    if not pats or base_pats:
        for ds in matrix.baseline:
            tasks.append(Task("baseline", f"{BASELINE_ID}:{ds}", out / "baseline" / f"{baseline_name(ds)}.json",
                              matrix.baseline_config(ds), BASELINE_ID))
    if pats:
        runs = matrix.selected(run_pats) if run_pats else []
    tasks.extend(Task("run", r.id, out / r.id, r.config, r.group) for r in runs)
    return tasks


# --- locks ------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(path: Path) -> dict | None:
    """The owner record of a lock file, {} if unreadable, None if there is no lock."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def lock_is_stale(owner: dict | None, path: Path) -> bool:
    """A lock is stale when its process is gone: same host and no such pid. A lock from
    another host is never stale (we cannot see its processes); an unreadable one is stale
    after a minute (a writer that died between creating and filling it)."""
    if owner is None:
        return False
    if not owner:
        try:
            return time.time() - path.stat().st_mtime > 60
        except FileNotFoundError:
            return False
    return owner.get("host") == socket.gethostname() and not _pid_alive(int(owner.get("pid", -1)))


def _create_lock(path: Path, what: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "task": what}
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(record))
        fh.flush()
        os.fsync(fh.fileno())
    return True


def acquire_lock(path: str | Path, what: str = "") -> bool:
    """Create lock file `path` (O_EXCL), taking over a stale one. True if we now hold it.

    A takeover is itself guarded by an O_EXCL `<lock>.takeover` file, so two runners that
    both find the same stale lock cannot both replace it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _create_lock(path, what):
        return True
    owner = read_lock(path)
    if not lock_is_stale(owner, path):
        return False
    guard = path.with_name(path.name + ".takeover")
    if not _create_lock(guard, what):
        if lock_is_stale(read_lock(guard), guard):
            guard.unlink(missing_ok=True)  # a takeover that died half-way; retry next time
        return False
    try:
        if read_lock(path) != owner:  # changed under us: someone else got there first
            return False
        path.unlink(missing_ok=True)
        return _create_lock(path, what)
    finally:
        guard.unlink(missing_ok=True)


def release_lock(path: str | Path) -> None:
    """Remove lock `path` if this process holds it."""
    path = Path(path)
    owner = read_lock(path)
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


# --- executing one task -----------------------------------------------------------------

def _default_train(cfg: RunConfig, run_dir: Path) -> Any:
    from .train import run

    return run(cfg, run_dir)


def _default_baseline(task: Task) -> dict:
    from .evaluate import baseline

    cfg = task.config
    return baseline(cfg.model, task.id.split(":", 1)[1], data_cfg=cfg.data, eval_cfg=cfg.eval,
                    out_dir=task.path.parent, zeroshot_cfg=cfg.zeroshot, device=cfg.device,
                    out_name=task.path.name)


def _config_changed(task: Task) -> str | None:
    """Why a finished run's config.yaml differs from the planned config, or None."""
    recorded = task.path / "config.yaml"
    if task.kind != "run" or not recorded.is_file():
        return None
    try:
        old = RunConfig.model_validate(_io.read_yaml(recorded))
    except Exception:  # an older schema: cannot compare, trust final.json
        return None
    if fingerprint(old) == fingerprint(task.config):
        return None
    from .config import diff_fields, fingerprint_fields

    keys = diff_fields(fingerprint_fields(old), fingerprint_fields(task.config))
    return (f"finished with a different config ({', '.join(keys[:6])}); delete {task.path} "
            "to rerun it or use another --out")


def execute_task(task: Task, train_fn: TrainFn | None = None,
                 baseline_fn: Callable[[Task], Any] | None = None) -> dict:
    """Run one task unless it is done or held by another runner; never raises for a
    failing run (the traceback goes to error.txt).

    Returns:
        {"id", "kind", "status", "wall_s", "note"}; status is "skipped" (done before),
        "done", "failed", "busy" (another live runner holds it) or "changed" (done with a
        different config).
    """
    t0 = time.time()

    def outcome(status: str, note: str = "") -> dict:
        return {"id": task.id, "kind": task.kind, "status": status,
                "wall_s": round(time.time() - t0, 2), "note": note}

    if task.done_file.exists():
        changed = _config_changed(task)
        return outcome("changed", changed) if changed else outcome("skipped")
    if not acquire_lock(task.lock_file, task.id):
        owner = read_lock(task.lock_file) or {}
        return outcome("busy", f"held by pid {owner.get('pid')} on {owner.get('host')} since {owner.get('time')}")
    try:
        if task.done_file.exists():  # finished while we were looking
            return outcome("skipped")
        task.error_file.unlink(missing_ok=True)
        try:
            if task.kind == "run":
                (train_fn or _default_train)(task.config, task.path)
            else:
                result = (baseline_fn or _default_baseline)(task)
                if not task.done_file.exists() and isinstance(result, dict):
                    _io.write_json(task.done_file, result)
            if not task.done_file.exists():
                raise RuntimeError(f"returned without writing {task.done_file.name}")
        except Exception as exc:  # keep going past a failed run; KeyboardInterrupt stops
            _io.write_text(task.error_file, f"{task.id} failed on {socket.gethostname()} pid {os.getpid()} "
                           f"at {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n\n"
                           + traceback.format_exc())
            return outcome("failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
        return outcome("done")
    finally:
        release_lock(task.lock_file)


# --- the matrix ---------------------------------------------------------------------------

def run_matrix(matrix: MatrixConfig | str | Path, out_dir: str | Path | None = None, *,
               only: str | list[str] | None = None, executor: str = "local",
               gpus: int | str | list[int] | None = None, runs_per_gpu: int = 1,
               train_fn: TrainFn | None = None, baseline_fn: Callable[[Task], Any] | None = None,
               executor_options: dict | None = None, analyze: bool = True,
               log: Callable[[str], None] = print) -> dict:
    """Run every task of a matrix that is not done yet, then collect and analyse.

    Args:
        matrix: a validated MatrixConfig, or a path / packaged name for `load_matrix`.
        out_dir: the matrix directory (default runs/<matrix.name>).
        only: restrict to some runs (see `plan`).
        executor: "local" (in this process; with `gpus`, one worker process per GPU),
            "ray" or "slurm" (executors.py).
        gpus: GPUs to use: a count, or ids ("0,2" / [0, 2]); None = the executor's default.
        runs_per_gpu: runs sharing one GPU (local workers per GPU; Ray: 1/K GPU per run).
        train_fn: `f(cfg, run_dir)` training one run (default `attncollapse.train.run`).
        baseline_fn: `f(task)` measuring one E1 baseline (default `evaluate.baseline`).
        executor_options: executor settings (Ray: `init` kwargs; Slurm: submitit parameters).
        analyze: write results.csv and run stats, figures and the report afterwards.
        log: where progress lines and the summary table go.

    Returns:
        {"out_dir", "name", "outcomes": [per task], "counts": {status: n}, "wall_s",
         "analysis": {stage: "ok" | "skipped: ..." | "failed: ..."}, "ok": bool}.

    Raises:
        ConfigError: an invalid matrix or an `only` that matches nothing (before any work).
    """
    from .executors import dispatch

    if not isinstance(matrix, MatrixConfig):
        matrix = load_matrix(matrix)
    t0 = time.time()
    out = Path(out_dir) if out_dir is not None else Path("runs") / matrix.name
    tasks = plan(matrix, out, only)
    out.mkdir(parents=True, exist_ok=True)
    _io.write_yaml(out / "matrix.yaml", matrix.model_dump(mode="json"))
    _io.write_json(out / "env.json", _io.environment())
    n_base = sum(t.kind == "baseline" for t in tasks)
    log(f"{matrix.name}: {len(tasks) - n_base} runs + {n_base} baselines -> {out} (executor {executor})")
    outcomes = dispatch(executor, tasks, train_fn=train_fn, baseline_fn=baseline_fn, gpus=gpus,
                        runs_per_gpu=runs_per_gpu, options=executor_options or {}, log=log)
    analysis = run_analysis(out, matrix=matrix, log=log) if analyze else {}
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o["status"]] = counts.get(o["status"], 0) + 1
    summary = {"out_dir": str(out), "name": matrix.name, "outcomes": outcomes, "counts": counts,
               "wall_s": round(time.time() - t0, 1), "analysis": analysis,
               "ok": not any(o["status"] in ("failed", "changed") for o in outcomes)
               and not any(str(v).startswith("failed") for v in analysis.values())}
    log(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    """The summary of `run_matrix` as an aligned table plus totals."""
    rows = [(o["id"], o["status"], f"{o['wall_s']:.1f}", o.get("note", "")) for o in summary["outcomes"]]
    text = _table(["task", "status", "wall s", "note"], rows)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary["counts"].items()))
    lines = [text, f"{counts or 'nothing to do'}; {summary['wall_s']:.1f} s; {summary['out_dir']}"]
    for stage, state in summary.get("analysis", {}).items():
        if state != "ok":
            lines.append(f"analysis {stage}: {state}")
    return "\n".join(lines)


def _table(header: list[str], rows: list[tuple]) -> str:
    cols = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in cols[1:]])


# --- run state and analysis -------------------------------------------------------------

def _matrix_of(out: Path, matrix: MatrixConfig | None) -> MatrixConfig:
    if matrix is not None:
        return matrix
    path = out / "matrix.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{out}: no matrix.yaml (not a matrix directory written by `attncollapse run`)")
    return matrix_from_dict(_io.read_yaml(path), source=str(path))


def run_state(task: Task) -> str:
    """done / failed / running / stale-lock / partial / pending, from the files alone."""
    if task.done_file.exists():
        return "done"
    owner = read_lock(task.lock_file)
    if owner is not None:
        return "stale-lock" if lock_is_stale(owner, task.lock_file) else "running"
    if task.error_file.exists():
        return "failed"
    if task.kind == "run" and (task.path / "checkpoints").is_dir() and any((task.path / "checkpoints").iterdir()):
        return "partial"
    return "pending"


ANALYSIS_STAGES = (("stats", "analyze"), ("figures", "render_all"), ("report", "write"))


def run_analysis(out_dir: str | Path, *, matrix: MatrixConfig | None = None,
                 log: Callable[[str], None] = print) -> dict[str, str]:
    """results.csv, then `stats.analyze`, `figures.render_all`, `report.write` on `out_dir`.

    A stage whose module is not installed is skipped; a stage that raises is reported
    (message and traceback through `log`) and the next stage still runs.

    Returns:
        {"results": ..., "stats": ..., "figures": ..., "report": ...}: "ok", "skipped: ..."
        or "failed: <error>".
    """
    import importlib

    out = Path(out_dir)
    state: dict[str, str] = {}
    try:
        write_results(out, matrix)
        state["results"] = "ok"
    except Exception as exc:
        log(f"writing results.csv failed:\n{traceback.format_exc()}")
        state["results"] = f"failed: {type(exc).__name__}: {exc}"
        return state
    for module, fn in ANALYSIS_STAGES:
        try:
            mod = importlib.import_module(f"attncollapse.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"attncollapse.{module}":
                raise
            state[module] = f"skipped: attncollapse.{module} is not available"
            continue
        try:
            getattr(mod, fn)(out)
            state[module] = "ok"
        except Exception as exc:
            log(f"analysis step {module}.{fn} failed (the runs are intact; rerun "
                f"`attncollapse report {out}`):\n{traceback.format_exc()}")
            state[module] = f"failed: {type(exc).__name__}: {exc}".splitlines()[0]
    return state


def status(out_dir: str | Path) -> dict:
    """Where a matrix directory stands: per task state, accuracy, Δentropy, wall time.

    Returns:
        {"out_dir", "name", "tasks": [{"id", "kind", "state", "best_acc",
         "entropy_delta_pct", "wall_time_s", "note"}], "counts": {state: n}}.
    """
    out = Path(out_dir)
    matrix = _matrix_of(out, None)
    tasks, counts = [], {}
    for task in plan(matrix, out):
        state = run_state(task)
        counts[state] = counts.get(state, 0) + 1
        final = _io.read_json(task.done_file) if state == "done" and task.kind == "run" else {}
        note = ""
        if state in ("running", "stale-lock"):
            owner = read_lock(task.lock_file) or {}
            note = f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('time')}"
        elif state == "failed":
            lines = task.error_file.read_text().strip().splitlines()
            note = lines[-1][:120] if lines else ""
        tasks.append({"id": task.id, "kind": task.kind, "state": state,
                      "best_acc": final.get("best_acc"),
                      "entropy_delta_pct": (final.get("delta_pct") or {}).get("entropy"),
                      "wall_time_s": final.get("wall_time_s"), "note": note})
    return {"out_dir": str(out), "name": matrix.name, "tasks": tasks, "counts": counts}


def format_status(st: dict) -> str:
    """`status()` as an aligned table."""
    def num(v, f):
        return "" if v is None else format(v, f)
    rows = [(t["id"], t["state"], num(t["best_acc"], ".4f"), num(t["entropy_delta_pct"], "+.2f"),
             num(t["wall_time_s"], ".0f"), t["note"]) for t in st["tasks"]]
    counts = ", ".join(f"{n} {s}" for s, n in sorted(st["counts"].items()))
    return (f"{st['name']} ({st['out_dir']})\n"
            + _table(["task", "state", "best_acc", "Δentropy %", "wall s", "note"], rows) + f"\n{counts}")


__all__ = ["ConfigError", "Task", "acquire_lock", "execute_task", "format_status", "format_summary",
           "plan", "release_lock", "run_analysis", "run_matrix", "status"]
