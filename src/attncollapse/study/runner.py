"""Running a matrix: plan, execute every task not done yet, collect results.csv, analyse.

`run_matrix` turns a validated `MatrixConfig` into tasks (tasks.py: the E1 baselines, then
every run and seed), hands them to an executor (executors.py: local, per-GPU workers, Ray,
Slurm), then writes results.csv (collect.py) and runs the analysis stages. A run directory
with `final.json` is done and skipped; one without it is resumed by training itself.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Callable

from .. import _io
from ..analysis import figures, report, stats
from ..analysis import forgetting
from ..analysis.figures import controlled as controlled_figures
from ..analysis.report import controlled as controlled_report
from ..analysis.statistics import controlled as controlled_stats
from ..config import MatrixConfig, load_matrix
from .collect import write_results
from .executors import dispatch
from .forgetting import interpolate_matrix
from .execute import busy_outcome
from .locks import inspect_lock
from .preflight import check_hub as check_hub_access
from .preflight import hub_needs
from .tasks import COMPANIONS, Task, TrainFn, matrix_of, plan, run_state


def run_matrix(matrix: MatrixConfig | str | Path, out_dir: str | Path | None = None, *,
               only: str | list[str] | None = None, executor: str = "local",
               gpus: int | str | list[int] | None = None, runs_per_gpu: int = 1,
               train_fn: TrainFn | None = None, baseline_fn: Callable[[Task], Any] | None = None,
               executor_options: dict | None = None, analyze: bool = True, check_hub: bool = True,
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
        train_fn: `f(cfg, run_dir)` training one run (default `train.run`).
        baseline_fn: `f(task)` measuring one E1 baseline (default `train.baseline`).
        executor_options: executor settings (Ray: `init` kwargs; Slurm: submitit parameters).
        analyze: write results.csv and run stats, figures and the report afterwards.
        check_hub: before any task, check every hub model and dataset the unfinished
            tasks need is cached or reachable (preflight.py).
        log: where progress lines and the summary table go.

    Returns:
        {"out_dir", "name", "outcomes": [per task], "counts": {status: n}, "wall_s",
         "analysis": {stage: "ok" | "skipped: ..." | "failed: ..."}, "ok": bool}.

    Raises:
        ConfigError: an invalid matrix or an `only` that matches nothing (before any work).
        HubUnavailable: the hub is unreachable and something needed is not cached
            (before any work; the message names it and the offline routes).
    """
    if not isinstance(matrix, MatrixConfig):
        matrix = load_matrix(matrix)
    t0 = time.time()
    out = Path(out_dir) if out_dir is not None else Path("runs") / matrix.name
    tasks = plan(matrix, out, only)
    if check_hub:
        todo = [t for t in tasks if run_state(t) != "done"]
        check_hub_access(hub_needs([(t.id, t.config) for t in todo if t.kind == "run"],
                                   [(t.id, t.config) for t in todo if t.kind == "baseline"]), log=log)
    out.mkdir(parents=True, exist_ok=True)
    _io.write_yaml(out / "matrix.yaml", matrix.model_dump(mode="json"), checksum=True)  # verified by matrix_of
    _io.write_json(out / "env.json", _io.environment(), checksum=True)
    n_base = sum(t.kind == "baseline" for t in tasks)
    log(f"{matrix.name}: {len(tasks) - n_base} runs + {n_base} baselines -> {out} (executor {executor})")
    kw = dict(train_fn=train_fn, baseline_fn=baseline_fn, gpus=gpus, runs_per_gpu=runs_per_gpu,
              options=executor_options or {}, log=log)
    outcomes = _settle_busy(tasks, dispatch(executor, tasks, **kw), executor, kw, log)
    if matrix.design == "forgetting" and train_fn is None:  # its sweeps read the finished runs
        sweeps = interpolate_matrix(matrix, out, log=log)
        if sweeps:
            log(f"interpolation: {sum(v != 'kept' and not v.startswith('failed') for v in sweeps.values())} "
                f"sweeps written, {sum(v == 'kept' for v in sweeps.values())} kept, "
                f"{sum(v.startswith('failed') for v in sweeps.values())} failed -> {out / 'interpolation'}")
    analysis = run_analysis(out, matrix=matrix, log=log) if analyze else {}
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o["status"]] = counts.get(o["status"], 0) + 1
    held = [{"id": o["id"], "owner": o.get("owner", "?"), "heartbeat_age_s": o.get("heartbeat_age_s")}
            for o in outcomes if o["status"] == "busy"]
    failed = (any(o["status"] in ("failed", "changed") for o in outcomes)
              or any(str(v).startswith("failed") for v in analysis.values()))
    summary = {"out_dir": str(out), "name": matrix.name, "outcomes": outcomes, "counts": counts,
               "wall_s": round(time.time() - t0, 1), "analysis": analysis, "held": held,
               "failed": failed, "ok": not failed and not held}
    log(format_summary(summary))
    return summary


def _settle_busy(tasks: list[Task], outcomes: list[dict], executor: str, kw: dict, log) -> list[dict]:
    """Look again at the tasks another runner held when we reached them: one it has finished
    since is "skipped", one whose owner died since is run now (same executor); the rest stay
    "busy" and make the command fail (`held` in the summary, exit 3 in the CLI)."""
    by_id = {t.id: t for t in tasks}
    again = []
    for i, o in enumerate(outcomes):
        if o["status"] != "busy":
            continue
        task = by_id[o["id"]]
        if task.done_problem() is None:
            outcomes[i] = {**o, "status": "skipped", "note": "trained by another runner meanwhile"}
        elif (lock := inspect_lock(task.lock_file)) is None or lock.stale is not None:
            again.append(i)
        else:
            outcomes[i] = busy_outcome(task, lambda status, note="", o=o: {**o, "status": status, "note": note})
    if again:
        log(f"{len(again)} task(s) released by another runner meanwhile: running them now")
        redo = dispatch(executor, [by_id[outcomes[i]["id"]] for i in again], **kw)
        for i, o in zip(again, redo):
            outcomes[i] = o
    return outcomes


def held_line(summary: dict) -> str | None:
    """One line naming the runs another runner still held when `run_matrix` ended, or None."""
    held = summary.get("held") or []
    if not held:
        return None
    items = ", ".join(f"{h['id']} ({h['owner']}" + (f", heartbeat {h['heartbeat_age_s']:.0f} s ago)"
                                                  if h.get("heartbeat_age_s") is not None else ")") for h in held)
    return (f"{len(held)} run(s) held by another runner, not trained here: {items}; "
            f"run again once they finish (`attncollapse status {summary['out_dir']}`)")


def format_summary(summary: dict) -> str:
    """The summary of `run_matrix` as an aligned table plus totals."""
    rows = [(o["id"], o["status"], f"{o['wall_s']:.1f}", o.get("note", "")) for o in summary["outcomes"]]
    text = _table(["task", "status", "wall s", "note"], rows)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary["counts"].items()))
    lines = [text, f"{counts or 'nothing to do'}; {summary['wall_s']:.1f} s; {summary['out_dir']}"]
    for stage, state in summary.get("analysis", {}).items():
        if state != "ok":
            lines.append(f"analysis {stage}: {state}")
    if held_line(summary):
        lines.append(held_line(summary))
    return "\n".join(lines)


def _table(header: list[str], rows: list[tuple]) -> str:
    cols = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in cols[1:]])

ANALYSIS_STAGES: dict[str, Callable[[Path], Any]] = {
    "stats": stats.analyze, "figures": figures.render_all, "report": report.write}
"""The analysis after results.csv, in order: each reads only the files the earlier ones wrote."""

CONTROLLED_STAGES: dict[str, Callable[[Path], Any]] = {
    "stats": controlled_stats.analyze, "figures": controlled_figures.render_all, "report": controlled_report.write}
"""The analysis stages of a `design: controlled` matrix (`design:` in matrix.yaml)."""

FORGETTING_STAGES: dict[str, Callable[[Path], Any]] = {"report": forgetting.analyze}
"""A `design: forgetting` matrix: one stage reads every run's record.json (and interpolation/)
and writes stats.json, run_level.csv, figures/ and report.md/html (docs/FORGETTING.md)."""


def design_stages(design: str) -> dict[str, Callable[[Path], Any]]:
    """The analysis stages of a matrix's design, looked up at call time (tests narrow them)."""
    return {"study": ANALYSIS_STAGES, "controlled": CONTROLLED_STAGES, "forgetting": FORGETTING_STAGES}[design]


def run_analysis(out_dir: str | Path, *, matrix: MatrixConfig | None = None,
                 log: Callable[[str], None] = print) -> dict[str, str]:
    """results.csv, then `stats.analyze`, `figures.render_all`, `report.write` on `out_dir`
    (a `design: controlled` matrix: the controlled study's stats, figures and report).

    A stage that raises is reported (message and traceback through `log`; a damaged file
    in one line naming it) and the next stage still runs. With no finished run there is
    nothing to analyse: the stages are "failed: no finished run ...".

    Returns:
        {"results": ..., "stats": ..., "figures": ..., "report": ...}: "ok" or "failed: <error>".
    """
    out = Path(out_dir)
    state: dict[str, str] = {}
    try:
        write_results(out, matrix)
        state["results"] = "ok"
    except Exception as exc:
        state["results"] = _stage_failure("results", exc, out, log)
        return state
    matrix = matrix_of(out, matrix)
    stages = design_stages(matrix.design)
    done = [t for t in plan(matrix, out) if t.kind == "run" and run_state(t) == "done"]
    if not done:
        why = f"failed: no finished run in {out} (run `attncollapse run` first; `attncollapse status {out}`)"
        return {**state, **{stage: why for stage in stages}}
    for stage, fn in stages.items():
        try:
            fn(out)
            state[stage] = "ok"
        except Exception as exc:
            state[stage] = _stage_failure(stage, exc, out, log)
    return state


def _stage_failure(stage: str, exc: Exception, out: Path, log: Callable[[str], None]) -> str:
    """Log why an analysis stage failed (a traceback only for what is not a damaged file
    or a full disk) and return its "failed: ..." state."""
    short = _io.disk_full_message(exc, out) or (str(exc) if isinstance(exc, _io.DamagedFile) else None)
    if short is None:
        log(f"analysis step {stage} failed (the runs are intact; rerun "
            f"`attncollapse report {out}`):\n{traceback.format_exc()}")
        short = f"{type(exc).__name__}: {exc}"
    return f"failed: {short}".splitlines()[0]


def status(out_dir: str | Path) -> dict:
    """Where a matrix directory stands: per task state, accuracy, Δentropy, wall time.

    A running task's `detail` is "host:pid, heartbeat N s ago"; a stale lock's says why it
    is stale (the next `run` takes it over).

    Returns:
        {"out_dir", "name", "tasks": [{"id", "kind", "state", "detail", "best_acc",
         "entropy_delta_pct", "wall_time_s", "note"}], "counts": {state: n}}.
    """
    out = Path(out_dir)
    matrix = matrix_of(out)
    tasks, counts = [], {}
    for task in plan(matrix, out):
        state = run_state(task)
        final = task.read_done() if state == "done" else {}
        note = detail = ""
        if state == "done" and task.kind == "baseline":  # E1 has no accuracy: its file and entropy
            note = (f"{task.done_file.parent.name}/{task.done_file.name}: mean entropy "
                    f"{(final.get('mean') or {}).get('entropy', float('nan')):.3f} over {final.get('images')} images")
            final = {}
        elif state == "damaged":
            problem = task.done_problem() or ""
            note = (problem if problem.split(":")[0] in COMPANIONS else f"{task.done_file.name}: {problem}")[:160]
        elif state in ("running", "stale-lock"):
            lock = inspect_lock(task.lock_file)
            if lock is None:  # released since run_state looked
                state = run_state(task)
            else:
                age = lock.heartbeat_age_s
                detail = lock.stale or (f"{lock.who}, heartbeat {age:.0f} s ago" if age is not None else lock.who)
                state = "running" if lock.stale is None else "stale-lock"
                note = f"since {lock.owner.get('time')}" if lock.owner else ""
        elif state == "failed":
            lines = task.error_file.read_text().strip().splitlines()
            note = lines[-1][:120] if lines else ""
        tasks.append({"id": task.id, "kind": task.kind, "state": state, "detail": detail,
                      "best_acc": final.get("best_acc"),
                      "entropy_delta_pct": (final.get("delta_pct") or {}).get("entropy"),
                      "wall_time_s": final.get("wall_time_s"), "note": note})
        counts[state] = counts.get(state, 0) + 1
    return {"out_dir": str(out), "name": matrix.name, "tasks": tasks, "counts": counts}


def format_status(st: dict) -> str:
    """`status()` as an aligned table."""
    def num(v, f):
        return "" if v is None else format(v, f)
    rows = [(t["id"], f"{t['state']} ({t['detail']})" if t.get("detail") else t["state"],
             num(t["best_acc"], ".4f"), num(t["entropy_delta_pct"], "+.2f"),
             num(t["wall_time_s"], ".1f" if (t["wall_time_s"] or 0) < 100 else ".0f"), t["note"])
            for t in st["tasks"]]
    counts = ", ".join(f"{n} {s}" for s, n in sorted(st["counts"].items()))
    return (f"{st['name']} ({st['out_dir']})\n"
            + _table(["task", "state", "best_acc", "Δentropy %", "wall s", "note"], rows) + f"\n{counts}")
