"""The runner: skipping, resuming, failures, locks, concurrent runners and the executors.

Training is a fast fake (module level, so worker processes can import it) that writes a
plausible config.yaml and final.json; the real train.run is driven by tests/test_cli.py.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attncollapse import _io
from attncollapse.config import ConfigError, matrix_from_dict
from attncollapse.analysis.table import RESULTS_COLUMNS, RESULTS_TAIL
from attncollapse.study import write_results
from attncollapse.study import acquire_lock, execute_task, plan, read_lock, release_lock, run_matrix, status

MEANS = {"entropy": 2.0, "erf": 0.8, "gini": 0.3, "head_diversity": 0.1}


def fake_train(cfg, run_dir):
    """Writes what train.run writes (enough of it) and logs the call in ../calls.txt."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / "calls.txt", "a") as fh:
        fh.write(f"{run_dir.name} {os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES', '')}\n")
    if "FAIL" in cfg.id:
        raise RuntimeError(f"{cfg.id} was told to fail")
    time.sleep(float(os.environ.get("FAKE_TRAIN_SLEEP", "0")))
    _io.write_yaml(run_dir / "config.yaml", cfg.model_dump(mode="json"))
    final = {"run_id": cfg.id, "seed": cfg.seed, "status": "done", "method": cfg.method,
             "best_acc": 0.9, "final_acc": 0.85, "initial_mean": MEANS,
             "final_mean": {k: v * (1 + cfg.optim.lr) for k, v in MEANS.items()},
             "delta_pct": {k: 100 * cfg.optim.lr for k in MEANS},
             "zeroshot": {d: {"acc": 0.1, "top5": 0.5} for d in cfg.zeroshot.datasets},
             "zeroshot_acc": 0.1, "zeroshot_acc_base_only": 0.2 if cfg.method == "lora" else None,
             "wall_time_s": 1.5, "images_per_s": 100.0}
    _io.write_json(run_dir / "final.json", final)
    return final


def fake_baseline(task):
    return {"model": task.config.model, "dataset": task.id.split(":")[1], "layers": {}, "mean": MEANS}


def _matrix(**extra):
    data = {"name": "t", "defaults": {"model": "tiny", "dataset": "synthetic",
                                      "zeroshot": {"datasets": ["synthetic", "digits"]}},
            "runs": {"E2": {}, "E4": {"method": "lora", "lora": {"rank": 4}},
                     "A1": {"sweep": {"optim.lr": [1e-4, 1e-3]}}}}
    data.update(extra)
    return matrix_from_dict(data)


def _calls(out: Path) -> list[str]:
    p = out / "calls.txt"
    return [line.split()[0] for line in p.read_text().splitlines()] if p.exists() else []


def _quiet(_msg: str) -> None:
    pass


def test_runs_then_skips_everything(tmp_path):
    out = tmp_path / "m"
    s = run_matrix(_matrix(baseline=["synthetic"]), out, train_fn=fake_train, baseline_fn=fake_baseline,
                   analyze=False, log=_quiet)
    assert s["ok"] and s["counts"] == {"done": 5}
    assert sorted(_calls(out)) == ["A1-lr0.001", "A1-lr1e-04", "E2", "E4"]
    assert (out / "matrix.yaml").is_file() and "python" in _io.read_json(out / "env.json")
    assert _io.read_json(out / "baseline" / "synthetic.json")["dataset"] == "synthetic"
    s2 = run_matrix(_matrix(baseline=["synthetic"]), out, train_fn=fake_train, baseline_fn=fake_baseline,
                    analyze=False, log=_quiet)
    assert s2["counts"] == {"skipped": 5} and len(_calls(out)) == 4  # trained nothing
    assert not list(out.rglob("lock.json")) and not list(out.rglob("*.lock.json"))


def test_failed_run_does_not_stop_the_others(tmp_path):
    out = tmp_path / "m"
    m = _matrix(runs={"E2": {}, "E3-FAIL": {}, "E4": {"method": "lora"}})
    lines = []
    s = run_matrix(m, out, train_fn=fake_train, analyze=False, log=lines.append)
    assert not s["ok"] and s["counts"] == {"done": 2, "failed": 1}
    err = (out / "E3-FAIL" / "error.txt").read_text()
    assert "Traceback" in err and "was told to fail" in err
    assert "failed" in lines[-1] or any("E3-FAIL" in line and "failed" in line for line in lines)
    st = {t["id"]: t["state"] for t in status(out)["tasks"]}
    assert st == {"E2": "done", "E3-FAIL": "failed", "E4": "done"}
    # A rerun retries only the failed run.
    s2 = run_matrix(m, out, train_fn=fake_train, analyze=False, log=_quiet)
    assert s2["counts"] == {"skipped": 2, "failed": 1}
    assert _calls(out).count("E3-FAIL") == 2 and _calls(out).count("E2") == 1


def test_changed_config_of_a_finished_run_is_reported(tmp_path):
    out = tmp_path / "m"
    run_matrix(_matrix(), out, train_fn=fake_train, only="E2", analyze=False, log=_quiet)
    m2 = matrix_from_dict({**_matrix().model_dump(), "defaults": {"model": "tiny", "dataset": "synthetic",
                                                                 "optim": {"lr": 0.5}}})
    s = run_matrix(m2, out, train_fn=fake_train, only="E2", analyze=False, log=_quiet)
    assert s["outcomes"][0]["status"] == "changed" and "optim.lr" in s["outcomes"][0]["note"]
    assert not s["ok"]


def test_a3_run_recorded_before_freeze_embeddings_counts_as_changed(tmp_path):
    # Before `freeze_embeddings` existed, freeze_layers: k froze the embeddings too: such a
    # finished run is not what the config now means, so it is reported, not kept silently.
    m = matrix_from_dict({"name": "m", "defaults": {"model": "tiny", "dataset": "synthetic",
                                                    "zeroshot": {"datasets": ["digits"]}},
                          "runs": {"A3": {"freeze_layers": 2}, "E2": {}}})
    out = tmp_path / "m"
    run_matrix(m, out, train_fn=fake_train, analyze=False, log=_quiet)
    for rid in ("A3", "E2"):
        cfg = _io.read_yaml(out / rid / "config.yaml")
        del cfg["freeze_embeddings"]  # as written by the older version
        _io.write_yaml(out / rid / "config.yaml", cfg)
    s = run_matrix(m, out, train_fn=fake_train, analyze=False, log=_quiet)
    got = {o["id"]: o for o in s["outcomes"]}
    assert got["A3"]["status"] == "changed" and "freeze_embeddings" in got["A3"]["note"]
    assert got["E2"]["status"] == "skipped"  # no layer frozen: the same run either way


def test_only_selects_by_id_entry_glob_and_rejects_unknown(tmp_path):
    m = _matrix(baseline=["synthetic"])
    ids = lambda only: [t.id for t in plan(m, tmp_path, only)]  # noqa: E731
    assert ids("A1") == ["A1-lr1e-04", "A1-lr0.001"]
    assert ids("E*") == ["E1:synthetic", "E2", "E4"]
    assert ids("A1-lr0.001,E1") == ["E1:synthetic", "A1-lr0.001"]
    with pytest.raises(ConfigError, match="Z9"):
        plan(m, tmp_path, "E2,Z9")


def test_only_is_one_matcher_for_plan_and_selected(tmp_path):
    # `attncollapse run --only` (plan) and MatrixConfig.selected must pick the same runs.
    m = _matrix(baseline=["synthetic"])
    for only in ("A1", "E*", "A1-lr0.001,E2", "*", "A1,E1"):
        runs = [t.id for t in plan(m, tmp_path, only) if t.kind == "run"]
        picked = [r.id for r in m.selected([p for p in only.split(",") if p != "E1"])]
        assert runs == picked, only
    assert [r.id for r in m.selected("A1-*")] == ["A1-lr1e-04", "A1-lr0.001"]
    with pytest.raises(ConfigError, match=r"--only Z9: matches no run \(runs: E2, E4, A1-lr1e-04, A1-lr0.001\)"):
        m.selected("E2,Z9")
    with pytest.raises(ConfigError, match=r"--only Z9: matches no run \(runs: E1, E2,"):
        plan(m, tmp_path, "Z9")


# Concurrent runners (three processes, real training): tests/test_locks.py.


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_locks_stale_taken_over_live_respected(tmp_path):
    lock = tmp_path / "run" / "lock.json"
    lock.parent.mkdir()
    # A lock of a dead process on this host is stale: taken over.
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "time": "then"}))
    assert acquire_lock(lock, "x")
    assert read_lock(lock)["pid"] == os.getpid()
    assert not acquire_lock(lock, "x")  # held (by us, alive)
    release_lock(lock)
    assert not lock.exists()
    # A lock from another host cannot be checked: respected.
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": "now"}))
    assert not acquire_lock(lock, "x")
    release_lock(lock)  # not ours: stays
    assert lock.exists()


def test_stale_lock_run_is_taken_over_by_the_runner(tmp_path):
    out = tmp_path / "m"
    m = _matrix()
    (out / "E2").mkdir(parents=True)
    (out / "E2" / "lock.json").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    (out / "E4").mkdir(parents=True)
    (out / "E4" / "lock.json").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    assert {t["id"]: t["state"] for t in status(run_matrix(m, out, train_fn=fake_train, only="E2,E4",
                                                           analyze=False, log=_quiet)["out_dir"])["tasks"]
            if t["id"] in ("E2", "E4")} == {"E2": "done", "E4": "running"}
    assert _calls(out) == ["E2"]


def test_results_csv_has_the_formats_columns(tmp_path):
    out = tmp_path / "m"
    m = _matrix(runs={"E2": {}, "E4": {"method": "lora", "lora": {"rank": 4}}, "E3-FAIL": {},
                      "R1": {"regularizer": {"kind": "apr"}, "sweep": {"regularizer.lam": {"label": "apr",
                                                                                            "values": [0.1]}}}})
    run_matrix(m, out, train_fn=fake_train, analyze=False, log=_quiet)

    rows = list(csv.reader(write_results(out).open()))
    assert rows[0] == RESULTS_COLUMNS + ["zeroshot_synthetic", "zeroshot_digits"] + RESULTS_TAIL
    assert rows[0][:5] == ["run_id", "group", "seed", "method", "dataset"]
    assert rows[0][-3:] == ["status", "wall_time_s", "images_per_s"]
    by_id = {r[0]: dict(zip(rows[0], r)) for r in rows[1:]}
    assert list(by_id) == ["E2", "E4", "E3-FAIL", "R1-apr0.1"]
    e2, e4, r1 = by_id["E2"], by_id["E4"], by_id["R1-apr0.1"]
    assert (e2["group"], e2["method"], e2["lora_rank"], e2["regularizer"], e2["reg_lambda"]) == \
           ("E2", "full", "", "none", "")
    assert (e4["lora_rank"], e4["lora_targets"], e4["zeroshot_acc_base_only"]) == ("4", "qv", "0.2")
    assert (r1["group"], r1["regularizer"], r1["reg_lambda"]) == ("R1", "apr", "0.1")
    assert float(e2["entropy_initial"]) == 2.0 and e2["status"] == "done" and e2["zeroshot_digits"] == "0.1"
    assert by_id["E3-FAIL"]["status"] == "failed" and by_id["E3-FAIL"]["best_acc"] == ""


def test_local_gpu_workers_split_the_runs(tmp_path):
    out = tmp_path / "m"
    s = run_matrix(_matrix(), out, gpus=2, train_fn=fake_train, analyze=False, log=_quiet)
    assert s["ok"] and s["counts"] == {"done": 4}
    calls = (out / "calls.txt").read_text().splitlines()
    assert sorted(c.split()[0] for c in calls) == ["A1-lr0.001", "A1-lr1e-04", "E2", "E4"]
    assert {c.split()[2] for c in calls} <= {"0", "1"}  # each worker pinned to its GPU


def test_ray_executor_runs_a_two_run_matrix(tmp_path):
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out = tmp_path / "m"
    s = run_matrix(_matrix(), out, only="E2,E4", executor="ray", train_fn=fake_train, analyze=False,
                   executor_options={"init": {"num_cpus": 2, "include_dashboard": False,
                                              "log_to_driver": False}}, log=_quiet)
    assert s["ok"] and s["counts"] == {"done": 2}, s
    assert sorted(_calls(out)) == ["E2", "E4"]
    assert not ray.is_initialized()


def test_submitit_local_executor_runs_a_task(tmp_path):
    submitit = pytest.importorskip("submitit")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out = tmp_path / "m"
    s = run_matrix(_matrix(), out, only="E2", executor="slurm", train_fn=fake_train, analyze=False,
                   executor_options={"cluster": "local", "timeout_min": 5}, log=_quiet)
    assert s["ok"] and s["counts"] == {"done": 1}, s
    assert (out / "E2" / "final.json").exists() and (out / "slurm").is_dir()
    assert submitit.__version__


def test_execute_task_reports_busy(tmp_path):
    m = _matrix()
    task = [t for t in plan(m, tmp_path) if t.id == "E2"][0]
    assert acquire_lock(task.lock_file)
    try:
        o = execute_task(task, fake_train)
    finally:
        release_lock(task.lock_file)
    assert o["status"] == "busy" and str(os.getpid()) in o["note"]
    assert execute_task(task, fake_train)["status"] == "done"


def test_runs_sharing_a_compiled_step_run_back_to_back(tmp_path):
    # E2 and the A1 sweep share one compiled graph, E4 (LoRA) another: the sequential
    # executor must not put E4 between them.
    out = tmp_path / "m"
    run_matrix(_matrix(), out, train_fn=fake_train, analyze=False, log=_quiet)
    assert _calls(out) == ["E2", "A1-lr1e-04", "A1-lr0.001", "E4"]


def test_affinity_orders_group_kinds_and_start_workers_apart():
    from attncollapse.config import compile_key
    from attncollapse.config import load_matrix
    from attncollapse.study.executors import affinity_orders

    tasks = plan(load_matrix("paper-shapes"), "/nonexistent")
    key = lambda t: ("baseline",) if t.kind == "baseline" else compile_key(t.config)  # noqa: E731
    n_keys = len({key(t) for t in tasks})
    assert 10 <= n_keys < len(tasks)  # several kinds, some shared (A1, R1, R2, R3 sweeps)
    orders = affinity_orders(tasks, 3)
    for order in orders:
        assert sorted(t.id for t in order) == sorted(t.id for t in tasks)  # every task, once
        keys = [key(t) for t in order]
        runs_of_keys = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
        assert len(runs_of_keys) == n_keys  # each kind in one contiguous block
    assert len({key(order[0]) for order in orders}) == 3  # the workers start on different kinds
    assert [t.id for t in affinity_orders(tasks, 1)[0]][:3] == ["E1:synthetic", "E2", "A1-lr1e-06"]


def test_plain_progress_prints_a_line_every_few_seconds_not_per_step():
    import io

    out = io.StringIO()
    now = [0.0]
    bar = _io.PlainProgress(total=1000, initial=200, desc="E2", every=10.0, stream=out, clock=lambda: now[0])
    for _ in range(800):  # 800 steps of 0.125 s: 100 s → a line every 10 s, not 800 redraws
        now[0] += 0.125
        bar.update(1)
    bar.close()  # nothing new since the last line: no repeat
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0] == "E2: step 280/1000 (28%) 8.00 step/s"
    assert lines[-1] == "E2: step 1000/1000 (100%) 8.00 step/s"
    bar.set_postfix(loss="0.123")
    bar.close()
    assert out.getvalue().splitlines()[-1] == "E2: step 1000/1000 (100%) 8.00 step/s loss 0.123"


def test_progress_is_tqdm_only_on_a_terminal(monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(_io.progress(10, 0, "x"), _io.PlainProgress)
