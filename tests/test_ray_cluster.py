"""The Ray executor carries a study across several machines: shown on this one with a local
Ray cluster of three nodes (`ray.cluster_utils.Cluster`, one CPU each).

On a slice of the demo matrix: every run is trained once, to exactly the numbers of the
local executor (final.json and every eval point of history.json), and a node killed while
it trains a run costs only that run, which is submitted again, takes over the dead
attempt's lock and resumes from its checkpoint on another node (attempts.json shows the
second start resuming, not restarting). `--ray-address` joins the cluster from the CLI.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from attncollapse import _io, train
from attncollapse.cli import main
from attncollapse.config import load_matrix
from attncollapse.study import run_matrix

ray = pytest.importorskip("ray")

# Which matrix and runs: the demo's kinds of run (full FT, LoRA, frozen layers, APR); four
# runs on three one-CPU nodes. Another matrix (e.g. a controlled demo) is one more row.
MATRICES = [("demo", "E2,E4,A3-freeze2,R1-apr0.1")]

# Keys of final.json that measure this process's time, not the run.
TIMING_KEYS = {"wall_time_s", "images_per_s", "images_per_s_steady", "timings", "peak_gpu_memory_gib", "checksum"}


@pytest.fixture
def ray_cluster(monkeypatch):
    """A head and two worker nodes, one CPU each, small object stores, no dashboard."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_DISABLE_USAGE_STATS", "1")  # before the node processes start
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    node = {"num_cpus": 1, "object_store_memory": 100 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def train_or_be_killed(cfg, run_dir):
    """train.run, logging each start; the first run to start fresh on a worker node (not
    the head, which cannot be removed) stops once its first checkpoint is on disk and
    waits there for the test to remove its node."""
    run_dir = Path(run_dir)
    ctl = run_dir.parent / "ray-test"
    node = ray.get_runtime_context().get_node_id()
    fresh = not _io.checkpoints(run_dir / "checkpoints")
    with open(ctl / "starts.txt", "a") as fh:
        fh.write(f"{cfg.id} {node} {os.getpid()} {'fresh' if fresh else 'resume'}\n")
    hook = None
    if fresh and node != (ctl / "head").read_text():
        try:
            fd = os.open(ctl / "victim", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            fd = None
        if fd is not None:
            os.write(fd, f"{cfg.id} {node}".encode())
            os.close(fd)

            def hook(step):
                if step > 0 and _io.checkpoints(run_dir / "checkpoints"):
                    (ctl / "paused").write_text(str(step))
                    time.sleep(120)  # its node is removed meanwhile
    return train.run(cfg, run_dir, before_step=hook)


def _kill_the_victims_node(cluster, ctl: Path, killed: list) -> None:
    deadline = time.time() + 240
    while not (ctl / "paused").exists():
        if time.time() > deadline:
            return
        time.sleep(0.1)
    run_id, node_id = (ctl / "victim").read_text().split()
    node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    cluster.remove_node(node, allow_graceful=False)
    killed.append((run_id, node_id))


def _final(path: Path) -> dict:
    return {k: v for k, v in _io.read_json(path).items() if k not in TIMING_KEYS}


@pytest.mark.slow
@pytest.mark.parametrize("matrix_name,only", MATRICES)
def test_ray_cluster_trains_each_run_once_and_survives_a_dead_node(tmp_path, ray_cluster, matrix_name, only):
    matrix = load_matrix(matrix_name)
    runs = [r.id for r in matrix.selected(only.split(","))]
    ref = tmp_path / "local"
    assert run_matrix(matrix, ref, only=only, analyze=False, log=lambda _: None)["ok"]

    out = tmp_path / "ray"
    ctl = out / "ray-test"
    ctl.mkdir(parents=True)
    (ctl / "head").write_text(ray_cluster.head_node.node_id)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    killed: list = []
    killer = threading.Thread(target=_kill_the_victims_node, args=(ray_cluster, ctl, killed), daemon=True)
    killer.start()
    lines: list[str] = []
    s = run_matrix(matrix, out, only=only, executor="ray", train_fn=train_or_be_killed, analyze=False,
                   executor_options={"address": ray_cluster.address, "init": {"log_to_driver": False}},
                   log=lines.append)
    killer.join(timeout=5)
    assert s["ok"] and s["counts"] == {"done": len(runs)}, "\n".join(lines)
    assert len(killed) == 1, "no run paused on a worker node"
    victim, dead_node = killed[0]
    assert any(f"{victim}: attempt" in x and "NodeDiedError" in x for x in lines), lines
    assert not ray.is_initialized()  # run_matrix joined the cluster and left it

    # Each run started once; the victim twice: fresh on the dead node, resumed on another.
    starts: dict[str, list] = {}
    for line in (ctl / "starts.txt").read_text().splitlines():
        rid, node, pid, how = line.split()
        starts.setdefault(rid, []).append((node, int(pid), how))
    assert sorted(starts) == sorted(runs)
    for rid in runs:
        attempts = _io.read_json(out / rid / "attempts.json")
        if rid != victim:
            assert [h for _, _, h in starts[rid]] == ["fresh"] and len(attempts) == 1, (rid, starts[rid])
            continue
        assert [h for _, _, h in starts[rid]] == ["fresh", "resume"], starts[rid]
        assert starts[rid][0][0] == dead_node and starts[rid][1][0] != dead_node
        assert len(attempts) == 2 and attempts[0]["resumed_from"] is None
        assert attempts[1]["resumed_from"].startswith("step-") and int(attempts[1]["resumed_from"][5:]) > 0
        assert attempts[1]["took_over"] and attempts[1]["attempt"] != attempts[0]["attempt"]

    # The numbers: identical to the local executor's, at every eval point.
    for rid in runs:
        assert _final(out / rid / "final.json") == _final(ref / rid / "final.json"), rid
        assert _io.read_json(out / rid / "history.json") == _io.read_json(ref / rid / "history.json"), rid

    # The CLI joins the same cluster with --ray-address: a run whose final.json is gone is
    # finished there (from its last checkpoint), by a Ray worker, to the same numbers.
    rid = next(r for r in runs if r != victim)
    (out / rid / "final.json").unlink()
    assert main(["run", matrix_name, "--out", str(out), "--only", rid, "--executor", "ray",
                 "--ray-address", ray_cluster.address, "--no-analysis"]) == 0
    again = _io.read_json(out / rid / "attempts.json")
    assert len(again) == 2 and again[1]["pid"] != os.getpid() and again[1]["resumed_from"]
    assert _final(out / rid / "final.json") == _final(ref / rid / "final.json")
