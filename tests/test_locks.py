"""Locks that cannot lie: every kind of lock a runner can meet, through the real CLI.

A garbage, empty or reused-pid lock, or another host's lock without a heartbeat for longer
than the timeout, is taken over (one line says why) and the run is trained; another host's
fresh lock is respected, `status` names its owner and `run` exits 3 naming it. Three runner
processes on one matrix train each run exactly once (attempts.json counts the starts).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import multiprocessing
import sys
import textwrap
import time
from pathlib import Path

import pytest

from attncollapse import _io
from attncollapse.cli import main
from attncollapse.config import load_matrix
from attncollapse.study import acquire_lock, inspect_lock, read_lock, release_lock
from attncollapse.study.locks import heartbeat, machine, process_start

# Demo-like (tiny model, synthetic data, the demo's kinds of run), one epoch: ~1 s a run.
SMALL = """\
name: locks
defaults:
  model: tiny
  cpu_threads: 1
  dataset: synthetic
  device: cpu
  optim: {lr: 1.0e-2, batch_size: 32, epochs: 1, precision: fp32}
  data: {synthetic_train: 64, synthetic_test: 48, eval_subset_size: 20}
  eval: {points_per_epoch: 2, batch_size: 10}
  zeroshot: {enabled: false}
runs:
  E2: {}
  E4: {method: lora, lora: {rank: 4, alpha: 8}, optim: {lr: 3.0e-2}}
  A3:
    sweep: {freeze_layers: [1, 2]}
"""


def _matrix(tmp_path: Path) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(textwrap.dedent(SMALL))
    return p


def _record(**kw) -> dict:
    """A lock record as locks.acquire_lock writes it, for this process unless overridden."""
    return {**machine(), "pid": os.getpid(), "started": process_start(os.getpid()), "time": "2026-01-01T00:00:00+00:00",
            "heartbeat_s": 60.0, "task": "E2", "attempt": None, **kw}


OTHER = {"host": "node-7.cluster", "pid": 4242, "boot": "b0", "pidns": None, "started": "99"}

# What a runner may find in E2/lock.json, and what `status` and `run` must say about it.
STALE = {
    "garbage": (b"\x00\x17{not json", "not a lock record"),
    "empty": (b"", "empty file"),
    "not_a_record": (json.dumps({"pid": "12", "host": ""}).encode(), "not a lock record"),
    # Our own pid, as if the kernel had given it to us after the owner died: another start time.
    "reused_pid": (json.dumps(_record(started="1")).encode(), f"pid {os.getpid()} now belongs to another process"),
    # A dead owner on another machine: no heartbeat for 700 s > the 600 s default.
    "other_host_expired": (json.dumps(_record(**OTHER)).encode(), "no heartbeat from node-7.cluster:4242 for 7"),
}


@pytest.mark.parametrize("kind", list(STALE))
def test_a_stale_lock_is_named_by_status_then_taken_over_and_trained(tmp_path, capsys, kind):
    content, why = STALE[kind]
    out = tmp_path / "out"
    lock = out / "E2" / "lock.json"
    lock.parent.mkdir(parents=True)
    # What `run` writes first; `status` reads it.
    _io.write_yaml(out / "matrix.yaml", load_matrix(_matrix(tmp_path)).model_dump(mode="json"))
    lock.write_bytes(content)
    if kind == "other_host_expired":
        os.utime(lock, (time.time() - 700, time.time() - 700))
    capsys.readouterr()

    assert main(["status", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("E2 "))
    assert "stale-lock (" in line and why in line, line

    assert main(["run", str(_matrix(tmp_path)), "--out", str(out), "--only", "E2", "--no-analysis"]) == 0
    printed = capsys.readouterr().out
    notice = [x for x in printed.splitlines() if "took over a stale lock" in x]
    assert notice and why in notice[0], printed
    assert _io.read_json(out / "E2" / "final.json")["status"] == "done"
    assert not lock.exists()  # released after training
    starts = _io.read_json(out / "E2" / "attempts.json")
    assert len(starts) == 1 and why in starts[0]["took_over"] and starts[0]["pid"] == os.getpid()
    assert starts[0]["resumed_from"] is None  # trained from the start: there was no checkpoint


def test_another_hosts_fresh_lock_is_respected_and_the_run_exits_3_naming_it(tmp_path, capsys):
    out = tmp_path / "out"
    lock = out / "E2" / "lock.json"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps(_record(**OTHER)))
    os.utime(lock, (time.time() - 30, time.time() - 30))  # its owner's heartbeat, 30 s ago
    code = main(["run", str(_matrix(tmp_path)), "--out", str(out), "--only", "E2,E4", "--no-analysis"])
    captured = capsys.readouterr()
    assert code == 3
    err = [x for x in captured.err.splitlines() if x.startswith("error:")]
    assert len(err) == 1 and re.search(r"E2 \(node-7\.cluster:4242, heartbeat 3\d s ago\)", err[0]), captured.err
    assert "E4" not in err[0]  # E4 was trained: only the held run is named
    assert not (out / "E2" / "final.json").exists() and (out / "E4" / "final.json").exists()
    assert json.loads(lock.read_text())["pid"] == 4242  # untouched

    assert main(["status", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("E2 "))
    assert re.search(r"running \(node-7\.cluster:4242, heartbeat 3\d s ago\)", line), line
    # A shorter timeout (ATTNCOLLAPSE_LOCK_TIMEOUT_S) lets the next run take it over.
    os.environ["ATTNCOLLAPSE_LOCK_TIMEOUT_S"] = "20"
    try:
        assert inspect_lock(lock).stale is None  # never below 3 of the owner's 60 s heartbeat periods
        lock.write_text(json.dumps(_record(**OTHER, heartbeat_s=5.0)))
        os.utime(lock, (time.time() - 30, time.time() - 30))
        assert "(timeout 20 s" in inspect_lock(lock).stale
    finally:
        del os.environ["ATTNCOLLAPSE_LOCK_TIMEOUT_S"]


def test_lock_records_and_takeover_rules(tmp_path):
    lock = tmp_path / "lock.json"
    assert acquire_lock(lock, "E2", attempt="a1")
    rec = read_lock(lock)
    assert (rec["pid"], rec["host"], rec["attempt"]) == (os.getpid(), socket.gethostname(), "a1")
    # The start token is field 22 of /proc/<pid>/stat, counted by hand here.
    if Path("/proc/self/stat").exists():
        stat = Path(f"/proc/{os.getpid()}/stat").read_text()
        assert rec["started"] == stat[stat.rindex(")") + 2:].split(" ")[19]
        assert rec["boot"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert inspect_lock(lock).stale is None and not acquire_lock(lock, "E2")  # ours, alive
    release_lock(lock)
    assert not lock.exists()

    # Another host's fresh lock: kept, unless the executor says its attempt died.
    lock.write_text(json.dumps(_record(**OTHER, attempt="dead1")))
    assert not acquire_lock(lock, "E2", takeover="other")
    notes = []
    assert acquire_lock(lock, "E2", takeover="dead1", notice=notes.append)
    assert read_lock(lock)["pid"] == os.getpid() and "its attempt dead1 died" in notes[0]
    release_lock(lock)

    # A live process on this machine (our parent): held, whatever its heartbeat says.
    lock.write_text(json.dumps(_record(pid=os.getppid(), started=process_start(os.getppid()))))
    os.utime(lock, (time.time() - 10_000, time.time() - 10_000))
    assert inspect_lock(lock).stale is None and not acquire_lock(lock, "E2")
    release_lock(lock)  # not ours: stays
    assert lock.exists()
    # Same host name, another boot: another machine (or a reboot) — the heartbeat decides.
    lock.write_text(json.dumps(_record(pid=os.getppid(), boot="another-boot")))
    assert inspect_lock(lock).stale is None
    os.utime(lock, (time.time() - 700, time.time() - 700))
    assert "no heartbeat" in inspect_lock(lock).stale


def test_heartbeat_refreshes_the_lock_while_the_owner_works(tmp_path):
    lock = tmp_path / "lock.json"
    assert acquire_lock(lock, "E2")
    old = time.time() - 500
    os.utime(lock, (old, old))
    with heartbeat(lock, every_s=0.05):
        time.sleep(0.4)
        assert lock.stat().st_mtime > old + 400
    release_lock(lock)


def _run_in_child(matrix: Path, out: Path, log: Path) -> None:
    """A runner process: `attncollapse run` with its output in `log`, its exit code as its own."""
    fh = open(log, "w")
    os.dup2(fh.fileno(), 1)
    os.dup2(fh.fileno(), 2)
    sys.stdout = sys.stderr = fh
    code = main(["run", str(matrix), "--out", str(out), "--no-analysis"])
    fh.flush()
    os._exit(code)


def _runners(matrix: Path, out: Path, n: int) -> list[tuple[int, int, str]]:
    """(pid, exit code, output) of `n` runner processes started together. Forked, so each
    starts with torch already imported (a fresh interpreter takes ~5-10 s to import it)."""
    ctx = multiprocessing.get_context("fork")
    logs = [out.parent / f"runner{k}.log" for k in range(n)]
    procs = [ctx.Process(target=_run_in_child, args=(matrix, out, log)) for log in logs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    return [(p.pid, p.exitcode, log.read_text()) for p, log in zip(procs, logs)]


def test_three_concurrent_runner_processes_train_each_run_exactly_once(tmp_path):
    out = tmp_path / "out"
    matrix = _matrix(tmp_path)
    results = _runners(matrix, out, 3)
    pids = {pid for pid, _, _ in results}
    for rid in ["E2", "E4", "A3-freeze1", "A3-freeze2"]:
        starts = _io.read_json(out / rid / "attempts.json")
        assert len(starts) == 1 and starts[0]["pid"] in pids, (rid, starts)  # one start, by one runner
        assert _io.read_json(out / rid / "final.json")["status"] == "done"
        assert not (out / rid / "lock.json").exists()
    codes = [code for _, code, _ in results]
    assert set(codes) <= {0, 3} and 0 in codes, results  # the last to finish finds all done
    for _, code, text in results:
        if code == 3:  # it ended while another runner still trained: named, with that runner's pid
            held = [x for x in text.splitlines() if "held by another runner" in x and x.startswith("error:")]
            assert len(held) == 1 and any(f":{pid}" in held[0] for pid in pids), text
    # A fourth runner afterwards trains nothing and exits 0.
    (_, code, text), = _runners(matrix, out, 1)
    assert code == 0 and "4 skipped" in text, text


# --- a runner killed (SIGKILL) at the stages the training tests do not reach -----------------

def _killed_child(target, *args) -> int:
    """Run `target(*args)` in a forked process that SIGKILLs itself where the test says; its exit code."""
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(timeout=300)
    return p.exitcode


def _run_killed_in_zeroshot(matrix: Path, out: Path) -> None:
    import attncollapse.train.loop as loop

    def die(*a, **k):  # the end-of-run zero-shot: every checkpoint is on disk, final.json is not
        os.kill(os.getpid(), signal.SIGKILL)

    loop.evaluate_for_run = die
    sys.stdout = sys.stderr = open(os.devnull, "w")
    main(["run", str(matrix), "--out", str(out), "--only", "E2", "--no-analysis"])
    os._exit(0)


def test_a_runner_killed_during_zero_shot_leaves_a_stale_lock_and_the_rerun_finishes_identically(tmp_path, capsys):
    matrix = tmp_path / "zs.yaml"
    matrix.write_text(textwrap.dedent(SMALL).replace(
        "zeroshot: {enabled: false}", "zeroshot: {datasets: [digits], templates: single, max_images: 24}"))
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(["run", str(matrix), "--out", str(ref), "--only", "E2", "--no-analysis"]) == 0
    assert _killed_child(_run_killed_in_zeroshot, matrix, out) == -signal.SIGKILL
    assert not (out / "E2" / "final.json").exists() and (out / "E2" / "lock.json").exists()
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    assert "stale-lock (its process" in capsys.readouterr().out

    assert main(["run", str(matrix), "--out", str(out), "--only", "E2", "--no-analysis"]) == 0
    starts = _io.read_json(out / "E2" / "attempts.json")
    total = _io.read_json(ref / "E2" / "final.json")["steps"]
    assert len(starts) == 2 and starts[1]["resumed_from"] == f"step-{total:09d}"  # no step trained again
    assert "is gone" in starts[1]["took_over"]
    skip = {"wall_time_s", "images_per_s", "images_per_s_steady", "timings", "checksum"}
    got, want = (_io.read_json(d / "E2" / "final.json") for d in (out, ref))
    assert {k: v for k, v in got.items() if k not in skip} == {k: v for k, v in want.items() if k not in skip}
    assert got["zeroshot"]["digits"]["acc"] is not None
    assert _io.read_json(out / "E2" / "history.json") == _io.read_json(ref / "E2" / "history.json")


def _run_killed_in_report(matrix: Path, out: Path) -> None:
    import attncollapse.analysis.report.assemble as report

    def die_half_way(path, text):  # report.md is written; report.html is half-written, then a kill
        if Path(path).name == "report.html":
            with _io.atomic_path(path) as tmp:
                tmp.write_text(text[: len(text) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        _io.write_text(path, text)

    report.write_text = die_half_way
    sys.stdout = sys.stderr = open(os.devnull, "w")
    main(["run", str(matrix), "--out", str(out), "--only", "E2,E4"])
    os._exit(0)


def test_a_runner_killed_while_writing_the_report_leaves_no_half_report_and_report_redoes_it(tmp_path, capsys):
    matrix, out = _matrix(tmp_path), tmp_path / "out"
    assert _killed_child(_run_killed_in_report, matrix, out) == -signal.SIGKILL
    assert (out / "report.md").is_file() and not (out / "report.html").exists()  # never half a file
    assert all((out / r / "final.json").is_file() for r in ("E2", "E4"))  # the runs are kept
    capsys.readouterr()
    assert main(["run", str(matrix), "--out", str(out), "--only", "E2,E4", "--no-analysis"]) == 0
    assert "2 skipped" in capsys.readouterr().out  # nothing trained again
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert html.rstrip().endswith("</html>")
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").read_text() == html  # the redone report is the whole one
