"""Executing one task: skip it if done, lock it, train or measure it, record a failure.

Every executor (executors.py) calls `execute_task`, so skipping finished runs, per-run
locks and error.txt behave the same everywhere.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .. import _io
from ..config import RunConfig, config_change, fingerprint_fields, read_recorded_config
from ..train import baseline, run, run_forgetting
from .locks import acquire_lock, heartbeat, inspect_lock, machine, release_lock
from .tasks import COMPANIONS, Task, TrainFn


def _default_train(cfg: RunConfig, run_dir: Path) -> Any:
    if cfg.forgetting is not None:  # a design: forgetting run (docs/FORGETTING_RUNS.md)
        return run_forgetting(cfg, run_dir)
    return run(cfg, run_dir)


def _default_baseline(task: Task) -> dict:
    cfg = task.config
    return baseline(cfg.model, cfg.dataset, data_cfg=cfg.data, eval_cfg=cfg.eval,
                    out_dir=task.path.parent, zeroshot_cfg=cfg.zeroshot, device=cfg.device,
                    out_name=task.path.name, precision=cfg.eval.precision)  # as every run's eval points


def _config_changed(task: Task) -> str | None:
    """Why a finished run's config.yaml differs from the planned config, or None."""
    recorded = task.path / "config.yaml"
    if task.kind != "run" or not recorded.is_file():
        return None
    try:
        old = read_recorded_config(recorded)  # an A3 run recorded before freeze_embeddings: true
    except Exception:  # an older schema: cannot compare, trust final.json
        return None
    change = config_change(fingerprint_fields(old), task.config, limit=6)
    if change is None:
        return None
    return f"finished with a different config ({change}); delete {task.path} to rerun it or use another --out"


def execute_task(task: Task, train_fn: TrainFn | None = None,
                 baseline_fn: Callable[[Task], Any] | None = None, *, attempt: str | None = None,
                 takeover: str | None = None) -> dict:
    """Run one task unless it is done or held by another runner; never raises for a
    failing run (the traceback goes to error.txt).

    Args:
        attempt: an id for this attempt, recorded in the lock and in attempts.json.
        takeover: the id of an earlier attempt of this task that the executor knows died
            (Ray: its node died); its lock is taken over (locks.acquire_lock).

    Returns:
        {"id", "kind", "status", "wall_s", "note"}; status is "skipped" (done before),
        "done", "failed", "busy" (another live runner holds it: "owner" is its host:pid,
        "heartbeat_age_s" how long ago it last showed signs of life) or "changed" (done
        with a different config).
    """
    t0 = time.time()

    def outcome(status: str, note: str = "") -> dict:
        return {"id": task.id, "kind": task.kind, "status": status,
                "wall_s": round(time.time() - t0, 2), "note": note}

    if task.done_problem() is None:
        changed = _config_changed(task)
        return outcome("changed", changed) if changed else outcome("skipped")
    notices: list[str] = []
    if not acquire_lock(task.lock_file, task.id, attempt=attempt, takeover=takeover, notice=notices.append):
        return busy_outcome(task, outcome)
    try:
        with heartbeat(task.lock_file):
            return _execute_locked(task, train_fn, baseline_fn, outcome, notices, attempt)
    finally:
        release_lock(task.lock_file)


def busy_outcome(task: Task, outcome: Callable[..., dict]) -> dict:
    """The "busy" outcome of a task whose lock another live runner holds, naming the owner."""
    state = inspect_lock(task.lock_file)
    if state is None:  # released between our look and now
        return {**outcome("busy", "held by another runner a moment ago"), "owner": "?", "heartbeat_age_s": None}
    age = state.heartbeat_age_s
    beat = f", heartbeat {age:.0f} s ago" if age is not None else ""
    return {**outcome("busy", f"held by {state.who}{beat} since {state.owner.get('time')}"),
            "owner": state.who, "heartbeat_age_s": None if age is None else round(age, 1)}


def _record_attempt(task: Task, attempt: str | None, notices: list[str]) -> None:
    """Append this start to <run>/attempts.json: where and when a run was (re)started and
    from which checkpoint, so a run that was trained twice, or restarted from zero, shows."""
    if task.kind != "run":
        return
    path = task.path / "attempts.json"
    try:
        past = _io.read_json(path) if path.is_file() else []
    except (OSError, ValueError):
        past = []  # a damaged log must not stop training; the new one replaces it
    newest = _io.checkpoints(task.path / "checkpoints")
    past = past if isinstance(past, list) else []
    past.append({"attempt": attempt, **machine(), "pid": os.getpid(),
                 "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "resumed_from": newest[0].name if newest else None,
                 "took_over": notices[-1] if notices else None})
    task.path.mkdir(parents=True, exist_ok=True)
    _io.write_json(path, past)


def _execute_locked(task: Task, train_fn, baseline_fn, outcome: Callable[..., dict], notices: list[str],
                    attempt: str | None) -> dict:
    """execute_task's work once the lock is ours."""
    problem = task.done_problem()
    if problem is None:  # finished while we were looking
        return outcome("skipped")
    note = "; ".join(notices)
    if problem != "missing":  # keep the damaged file for a look; train the task again
        os.replace(task.done_file, task.done_file.with_name(task.done_file.name + ".damaged"))
        if problem.split(":")[0] in COMPANIONS:  # final.json is sound; a file beside it is not
            name, why = problem.split(": ", 1)
            said = f"{task.path / name} was damaged ({why.split(' — ')[0]}); finished again from its checkpoint"
        else:
            said = f"{task.done_file} was damaged ({problem.split(' — ')[0]}); trained again"
        note = "; ".join(filter(None, [note, said]))
    task.error_file.unlink(missing_ok=True)
    try:
        _record_attempt(task, attempt, notices)
        if task.kind == "run":
            (train_fn or _default_train)(task.config, task.path)
        else:
            result = (baseline_fn or _default_baseline)(task)
            if not task.done_file.exists() and isinstance(result, dict):
                _io.write_json(task.done_file, result, checksum=True)  # read back verified
        if not task.done_file.exists():
            raise RuntimeError(f"returned without writing {task.done_file.name}")
    except Exception as exc:  # keep going past a failed run; KeyboardInterrupt stops
        full = _io.disk_full_message(exc, task.path)
        try:
            _io.write_text(task.error_file, f"{task.id} failed on {socket.gethostname()} pid {os.getpid()} "
                           f"at {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n\n"
                           + (f"{full}\n\n" if full else "") + traceback.format_exc())
        except OSError:  # a full disk may refuse error.txt too; the outcome still says why
            pass
        if full is None and isinstance(exc, _io.DamagedFile):  # one line naming the file and the fix
            return {**outcome("failed", str(exc).splitlines()[0]), "damaged_file": str(exc.path)}
        return outcome("failed", full or f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
    return outcome("done", note)
