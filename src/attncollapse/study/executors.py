"""Where a matrix's tasks run: this process, one worker process per GPU, Ray, or Slurm.

Every executor calls the same `execute.execute_task` for each task, so skipping finished
runs, per-run locks and error.txt behave the same everywhere. Ray and submitit are
optional extras, imported only when asked for.
"""

from __future__ import annotations

import os
import queue as queue_mod
import uuid
from pathlib import Path
from typing import Any, Callable

from ..config import compile_key
from .execute import execute_task
from .tasks import Task

Log = Callable[[str], None]

_PRIORITY = {"done": 4, "failed": 4, "changed": 4, "skipped": 2, "busy": 1}


def dispatch(executor: str, tasks: list[Task], *, train_fn=None, baseline_fn=None, gpus=None,
             runs_per_gpu: int = 1, options: dict | None = None, log: Log = print) -> list[dict]:
    """Run `tasks` on `executor` ("local", "ray", "slurm"); one outcome per task, in order."""
    options = dict(options or {})
    if runs_per_gpu < 1:
        raise ValueError(f"runs_per_gpu must be >= 1, got {runs_per_gpu}")
    # Finished tasks need no worker: settle them here (cheap, and the same answer).
    # A damaged result file is not finished: it goes to the workers to be trained again.
    settled = {t.id: execute_task(t) for t in tasks if t.done_problem() is None}
    pending = [t for t in tasks if t.id not in settled]
    if settled:
        log(f"{len(settled)} already done, {len(pending)} to run")
    if not pending:
        outcomes = settled
    elif executor == "local" and not _gpu_ids(gpus):
        outcomes = {**settled, **_sequential(pending, train_fn, baseline_fn, log)}
    elif executor == "local":
        outcomes = {**settled, **_gpu_workers(pending, train_fn, baseline_fn, _gpu_ids(gpus), runs_per_gpu, log)}
    elif executor == "ray":
        outcomes = {**settled, **_ray(pending, train_fn, baseline_fn, gpus, runs_per_gpu, options, log)}
    elif executor == "slurm":
        outcomes = {**settled, **_slurm(pending, train_fn, baseline_fn, gpus, options, log)}
    else:
        raise ValueError(f"unknown executor {executor!r}; valid: local, ray, slurm")
    return [outcomes[t.id] for t in tasks]


def _report(o: dict, log: Log, prefix: str = "") -> None:
    note = f"  {o['note']}" if o.get("note") else ""
    log(f"{prefix}{o['id']}: {o['status']} ({o['wall_s']:.1f} s){note}")


def _key(task: Task) -> tuple:
    return ("baseline",) if task.kind == "baseline" else compile_key(task.config)


def affinity_orders(tasks: list[Task], workers: int) -> list[list[Task]]:
    """The order each of `workers` processes visits the tasks in.

    Tasks are grouped by `config.compile_key` (groups in first-appearance order, tasks in
    matrix order within one), so a process runs the runs that share a compiled step back
    to back; worker k starts at the k-th of `workers` evenly spaced groups and wraps
    around, so workers begin on different kinds and compile each kind about once. Every
    worker still visits every task: one claimed by another is skipped (its lock).
    """
    groups: dict[tuple, list[Task]] = {}
    for t in tasks:
        groups.setdefault(_key(t), []).append(t)
    ordered = list(groups.values())
    out = []
    for k in range(workers):
        start = (k * len(ordered)) // workers
        out.append([t for g in ordered[start:] + ordered[:start] for t in g])
    return out


def _sequential(tasks: list[Task], train_fn, baseline_fn, log: Log) -> dict[str, dict]:
    out = {}
    tasks = affinity_orders(tasks, 1)[0]
    for i, t in enumerate(tasks, 1):
        log(f"[{i}/{len(tasks)}] {t.id} ...")
        out[t.id] = execute_task(t, train_fn, baseline_fn)
        _report(out[t.id], log, f"[{i}/{len(tasks)}] ")
    return out


# --- one worker process per GPU -------------------------------------------------------------

def _gpu_ids(gpus: int | str | list | None) -> list[str]:
    """GPU ids to use: a count picks the first N of CUDA_VISIBLE_DEVICES (or 0..N-1)."""
    if gpus is None or gpus == 0 or gpus == "":
        return []
    if isinstance(gpus, int) or (isinstance(gpus, str) and gpus.isdigit() and "," not in gpus):
        n = int(gpus)
        visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
        if visible and n > len(visible):
            raise ValueError(f"--gpus {n}: only {len(visible)} visible (CUDA_VISIBLE_DEVICES={','.join(visible)})")
        return visible[:n] if visible else [str(i) for i in range(n)]
    items = gpus.split(",") if isinstance(gpus, str) else gpus
    return [str(g).strip() for g in items if str(g).strip()]


def _worker(tasks: list[Task], gpu: str, train_fn, baseline_fn, results) -> None:
    """A spawned worker: pins one GPU, then claims and runs tasks until none is left."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before anything initialises CUDA
    for t in tasks:
        o = execute_task(t, train_fn, baseline_fn)
        o["worker"] = f"gpu{gpu}/pid{os.getpid()}"
        results.put(o)


def _merge(old: dict | None, new: dict) -> dict:
    """Several workers see each task; keep the one that did something."""
    if old is None or _PRIORITY.get(new["status"], 0) > _PRIORITY.get(old["status"], 0):
        return new
    return old


def _gpu_workers(tasks, train_fn, baseline_fn, gpu_ids: list[str], per_gpu: int, log: Log) -> dict[str, dict]:
    import multiprocessing as mp

    # spawn, not fork: CUDA cannot be used in a forked child. Spawned children get this
    # process's sys.path, so a train_fn importable here is importable there.
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    slots = [(g, k) for k in range(per_gpu) for g in gpu_ids]  # spread the first kinds over GPUs
    orders = affinity_orders(tasks, len(slots))
    procs = [ctx.Process(target=_worker, args=(order, g, train_fn, baseline_fn, results),
                         name=f"attncollapse-gpu{g}-{k}") for (g, k), order in zip(slots, orders)]
    log(f"{len(procs)} workers on GPUs {','.join(gpu_ids)} ({per_gpu} per GPU)")
    for p in procs:
        p.start()
    merged: dict[str, dict] = {}
    seen: dict[str, int] = {}
    while True:
        try:
            o = results.get(timeout=0.5)
        except queue_mod.Empty:
            if not any(p.is_alive() for p in procs):
                break
            continue
        seen[o["id"]] = seen.get(o["id"], 0) + 1
        if o["status"] in ("done", "failed", "changed"):
            _report(o, log, f"[{o['worker']}] ")
        merged[o["id"]] = _merge(merged.get(o["id"]), o)
    for p in procs:
        p.join()
    for t in tasks:
        if t.id not in merged:
            merged[t.id] = {"id": t.id, "kind": t.kind, "status": "failed", "wall_s": 0.0,
                            "note": "worker process died (exit codes: "
                                    f"{', '.join(str(p.exitcode) for p in procs)})"}
    return merged


# --- Ray ------------------------------------------------------------------------------------

def _ray_execute(task: Task, train_fn, baseline_fn, attempt: str, takeover: str | None) -> dict:
    return execute_task(task, train_fn, baseline_fn, attempt=attempt, takeover=takeover)


def _ray(tasks, train_fn, baseline_fn, gpus, per_gpu: int, options: dict, log: Log) -> dict[str, dict]:
    """Ray core tasks, `num_gpus` per run (1/runs_per_gpu, fractional allowed).

    Connects to `options["address"]` (`--ray-address`) or RAY_ADDRESS when set, else starts
    a local Ray (`options["init"]` are extra `ray.init` kwargs, e.g. num_cpus) and stops it
    afterwards. A task whose worker or node dies is submitted again (`options["retries"]`,
    default 3) naming the dead attempt, so the new attempt takes over its lock at once
    (instead of waiting for the heartbeat timeout) and resumes from its last checkpoint;
    the other runs are not touched.
    """
    try:
        import ray
    except ImportError:
        raise RuntimeError("the ray executor needs Ray: pip install 'attncollapse[ray]'") from None
    started = False
    if not ray.is_initialized():
        init = dict(options.get("init", {}))
        address = options.get("address") or os.environ.get("RAY_ADDRESS")
        if address:
            init["address"] = address
        elif gpus is not None and str(gpus).isdigit():
            init.setdefault("num_gpus", int(gpus))  # a local Ray with N GPUs
        init.setdefault("log_to_driver", True)
        ray.init(**init)
        started = True
    try:
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        num_gpus = options.get("num_gpus", (1.0 / per_gpu) if cluster_gpus else 0)
        retries = int(options.get("retries", 3))
        # Retries are ours, not Ray's (max_retries=0): a retry must name the attempt that died.
        remote = ray.remote(num_gpus=num_gpus, num_cpus=options.get("num_cpus", 1), max_retries=0)(_ray_execute)
        log(f"ray: {len(tasks)} tasks, {num_gpus} GPU each, cluster {ray.cluster_resources()}")

        def submit(t: Task, takeover: str | None = None):
            attempt = uuid.uuid4().hex[:12]
            return remote.remote(t, train_fn, baseline_fn, attempt, takeover), attempt

        refs = {}
        for t in tasks:
            ref, attempt = submit(t)
            refs[ref] = (t, attempt, 0)
        out: dict[str, dict] = {}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            t, attempt, tries = refs.pop(ready[0])
            try:
                out[t.id] = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:  # raised inside execute_task: a bug, not a lost node
                out[t.id] = _ray_failed(t, exc)
            except ray.exceptions.RayError as exc:  # the worker or its node died mid-task
                if tries < retries:
                    log(f"[ray] {t.id}: attempt {attempt} lost ({type(exc).__name__}); "
                        f"submitting it again ({tries + 2}/{retries + 1}), resuming from its checkpoint")
                    ref, new = submit(t, takeover=attempt)
                    refs[ref] = (t, new, tries + 1)
                    continue
                out[t.id] = _ray_failed(t, exc)
            _report(out[t.id], log, "[ray] ")
        return out
    finally:
        if started:
            ray.shutdown()


def _ray_failed(t: Task, exc: Exception) -> dict:
    return {"id": t.id, "kind": t.kind, "status": "failed", "wall_s": 0.0,
            "note": f"ray: {type(exc).__name__}: {exc}".splitlines()[0][:200]}


# --- Slurm (submitit) ----------------------------------------------------------------------

def _slurm(tasks, train_fn, baseline_fn, gpus, options: dict, log: Log) -> dict[str, dict]:
    """A submitit job array, one task per array element; waits for the results.

    options: `folder` (default <matrix dir>/slurm/%j), `cluster` (None = Slurm when
    available, "local" / "debug" for testing), `wait` (default True) and any submitit
    parameter (timeout_min, slurm_partition, gpus_per_node, slurm_array_parallelism, ...).
    """
    try:
        import submitit
    except ImportError:
        raise RuntimeError("the slurm executor needs submitit: pip install 'attncollapse[slurm]'") from None
    options = dict(options)
    root = tasks[0].path.parent if tasks[0].kind == "run" else tasks[0].path.parent.parent
    folder = options.pop("folder", str(Path(root) / "slurm" / "%j"))
    cluster = options.pop("cluster", None)
    wait = options.pop("wait", True)
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict[str, Any] = {"timeout_min": 24 * 60, "name": "attncollapse",
                              "gpus_per_node": int(gpus) if gpus not in (None, "") else
                              (0 if ex.cluster in ("local", "debug") else 1)}
    params.update(options)
    ex.update_parameters(**params)
    n = len(tasks)
    jobs = ex.map_array(execute_task, tasks, [train_fn] * n, [baseline_fn] * n)
    log(f"submitit ({ex.cluster}): {n} tasks as job array {jobs[0].job_id.split('_')[0] if jobs else '-'}"
        f"; logs in {folder}")
    out: dict[str, dict] = {}
    if not wait:
        for t, j in zip(tasks, jobs):
            out[t.id] = {"id": t.id, "kind": t.kind, "status": "submitted", "wall_s": 0.0,
                         "note": f"job {j.job_id}"}
        return out
    for t, j in zip(tasks, jobs):
        try:
            out[t.id] = j.result()
        except Exception as exc:  # the job died (timeout, preemption, node failure)
            out[t.id] = {"id": t.id, "kind": t.kind, "status": "failed", "wall_s": 0.0,
                         "note": f"job {j.job_id}: {type(exc).__name__}: {exc}".splitlines()[0][:200]}
        _report(out[t.id], log, f"[{j.job_id}] ")
    return out
