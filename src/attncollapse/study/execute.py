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
from ..config import RunConfig, config_change, fingerprint_fields
from ..train import baseline, run
from .locks import acquire_lock, read_lock, release_lock
from .tasks import COMPANIONS, Task, TrainFn


def _default_train(cfg: RunConfig, run_dir: Path) -> Any:
    return run(cfg, run_dir)


def _default_baseline(task: Task) -> dict:
    cfg = task.config
    return baseline(cfg.model, cfg.dataset, data_cfg=cfg.data, eval_cfg=cfg.eval,
                    out_dir=task.path.parent, zeroshot_cfg=cfg.zeroshot, device=cfg.device,
                    out_name=task.path.name)


def _config_changed(task: Task) -> str | None:
    """Why a finished run's config.yaml differs from the planned config, or None."""
    recorded = task.path / "config.yaml"
    if task.kind != "run" or not recorded.is_file():
        return None
    try:
        old = RunConfig.model_validate(_io.read_yaml_checked(recorded))
    except Exception:  # an older schema: cannot compare, trust final.json
        return None
    change = config_change(fingerprint_fields(old), task.config, limit=6)
    if change is None:
        return None
    return f"finished with a different config ({change}); delete {task.path} to rerun it or use another --out"


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

    if task.done_problem() is None:
        changed = _config_changed(task)
        return outcome("changed", changed) if changed else outcome("skipped")
    if not acquire_lock(task.lock_file, task.id):
        owner = read_lock(task.lock_file) or {}
        return outcome("busy", f"held by pid {owner.get('pid')} on {owner.get('host')} since {owner.get('time')}")
    try:
        problem = task.done_problem()
        if problem is None:  # finished while we were looking
            return outcome("skipped")
        note = ""
        if problem != "missing":  # keep the damaged file for a look; train the task again
            os.replace(task.done_file, task.done_file.with_name(task.done_file.name + ".damaged"))
            if problem.split(":")[0] in COMPANIONS:  # final.json is sound; a file beside it is not
                name, why = problem.split(": ", 1)
                note = (f"{task.path / name} was damaged ({why.split(' — ')[0]}); finished again "
                        "from its checkpoint")
            else:
                note = f"{task.done_file} was damaged ({problem.split(' — ')[0]}); trained again"
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
    finally:
        release_lock(task.lock_file)
