"""The damage matrix (issue 23): every file a run or the analysis reads back × truncated /
empty / garbage / deleted / bit-flipped, in a finished and an unfinished run.

Each case ends one of two ways, never a third:
- recovered: the rerun (`attncollapse run`, or `report`) exits 0 and the numbers equal an
  undamaged reference (final.json's numbers, history.json's points, the best weights);
- stopped: exit 2 and one line naming the file; the fix that line gives is then followed
  and the numbers must equal the reference.
A rerun that exits 0 with any other number is the failure this file exists to catch.

One reference matrix is trained per session (tiny preset, 64 images, 4 steps: seconds);
each case copies its directory (`shutil.copytree`) instead of training again. test_damaged.py
covers the single-file cases with fake training (status notes, `zeroshot` on a damaged file).
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from attncollapse import _io
from attncollapse.cli import main
from attncollapse.data import sources
from attncollapse.study import runner
from attncollapse.train import run as train_run

DAMAGES = ("truncated", "empty", "garbage", "deleted", "bitflip")
TIMING_KEYS = {"wall_time_s", "images_per_s", "images_per_s_steady", "timings", "peak_gpu_memory_gib"}
OUTCOMES: Counter = Counter()  # (kind of outcome) -> cases; printed at the end of the session

MATRIX = """\
name: dm
defaults:
  model: tiny
  dataset: synthetic
  device: cpu
  zeroshot: {datasets: [synthetic], wise_alphas: [], feature_transfer: never}
  optim: {lr: 0.003, epochs: 2, batch_size: 32, precision: fp32}
  data: {synthetic_train: 64, synthetic_test: 48, eval_subset_size: 20}
  eval: {points_per_epoch: 2, val_per_epoch: 2, batch_size: 10}
runs:
  E2: {}
"""
STOP_AT = 3  # the unfinished run is killed before step 3 of 4: checkpoint step 2 is its newest


def damage(path: Path, how: str) -> None:
    """Damage `path` (a file) as `how`; "bitflip" changes one digit of a text file (still
    valid JSON/YAML: only a checksum can tell) or XORs 4 KB of a binary file's data."""
    data = path.read_bytes()
    if how == "deleted":
        path.unlink()
        return
    if how == "truncated":
        new = data[: len(data) // 2]
    elif how == "empty":
        new = b""
    elif how == "garbage":
        new = np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes()
    else:
        buf = bytearray(data)
        if path.suffix in (".json", ".yaml", ".csv"):
            i = next(i for i in range(len(buf) // 2, len(buf)) if chr(buf[i]) in "123456789")
            buf[i] ^= 0x01  # '3' <-> '2', '5' <-> '4', ...: the file stays parseable
        else:
            lo = max(len(buf) - 4096 - 8, len(buf) // 2)  # the tail: tensor / pixel data, not the header
            for i in range(lo, len(buf)):
                buf[i] ^= 0xFF
        new = bytes(buf)
    path.write_bytes(new)


def numbers(run_dir: Path) -> dict:
    """What must not change: final.json's numbers, history.json's points, the best weights."""
    final = {k: v for k, v in _io.read_json_checked(run_dir / "final.json").items() if k not in TIMING_KEYS}
    points = _io.read_json_checked(run_dir / "history.json")["points"]
    best = load_file(run_dir / "checkpoints" / "best.safetensors")
    return {"final": final, "points": points, "best": {k: v.numpy().tobytes() for k, v in best.items()}}


class Ref:
    """The session's reference: a finished and an unfinished copy of one matrix, and their numbers."""

    def __init__(self, root: Path):
        self.root = root
        self.matrix = root / "matrix.yaml"
        self.matrix.write_text(MATRIX)
        self.finished = root / "finished"
        self.unfinished = root / "unfinished"
        self.cache = root / "cache"


@pytest.fixture(scope="session")
def ref(tmp_path_factory):
    root = tmp_path_factory.mktemp("damage_matrix")
    r = Ref(root)
    # patched only while building: each test patches its own copy (`copy`), and the next
    # test module must see the real threshold and cache
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setattr(sources, "SYNTHETIC_DISK_MIN", 32)  # the on-disk synthetic set, at test size
        mp.setenv("ATTNCOLLAPSE_CACHE", str(r.cache))
        warnings.simplefilter("ignore")
        assert main(["run", str(r.matrix), "--out", str(r.finished), "--no-analysis"]) == 0
        with pytest.MonkeyPatch.context() as stats_only:
            stats_only.setattr(runner, "ANALYSIS_STAGES", {"stats": runner.ANALYSIS_STAGES["stats"]})
            assert main(["report", str(r.finished)]) == 0  # results.csv and stats.json
        # The unfinished run: the same matrix, killed before step STOP_AT.
        from attncollapse.study import run_matrix

        def killed(cfg, run_dir):
            def stop(step):
                if step == STOP_AT:
                    raise KeyboardInterrupt  # a kill: nothing after this step is written
            return train_run(cfg, run_dir, before_step=stop)

        with pytest.raises(KeyboardInterrupt):
            run_matrix(r.matrix, r.unfinished, train_fn=killed, analyze=False, log=lambda m: None)
    (r.unfinished / "E2" / "lock.json").unlink(missing_ok=True)  # the kill's lock (locks.py judges stale ones)
    assert not (r.unfinished / "E2" / "final.json").exists()
    r.numbers = numbers(r.finished / "E2")
    r.results_csv = (r.finished / "results.csv").read_bytes()
    r.stats = _io.read_json(r.finished / "stats.json")
    yield r
    print("\ndamage matrix outcomes:", dict(OUTCOMES))


def copy(ref: Ref, which: str, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of the reference matrix directory `which` and of the data cache."""
    out = tmp_path / which
    shutil.copytree(getattr(ref, which), out)
    cache = tmp_path / "cache"
    shutil.copytree(ref.cache, cache)
    monkeypatch.setattr(sources, "SYNTHETIC_DISK_MIN", 32)
    monkeypatch.setenv("ATTNCOLLAPSE_CACHE", str(cache))
    return out


def rerun(ref: Ref, out: Path, capsys) -> tuple[int, str]:
    """`attncollapse run` again: (exit status, stderr + warnings + the summary table's notes)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(["run", str(ref.matrix), "--out", str(out), "--no-analysis"])
    cap = capsys.readouterr()
    return rc, cap.err + "".join(f"warning: {w.message}\n" for w in caught) + cap.out


def settle(ref: Ref, out: Path, rc: int, err: str, named: Path, capsys) -> str:
    """Assert the case ended as recovered-identical or stopped-with-a-working-fix; return which."""
    if rc == 0:
        assert numbers(out / "E2") == ref.numbers, "a rerun exited 0 with changed numbers"
        return "recovered identical"
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(named) in lines[0] and "Traceback" not in err, err
    fix = re.search(r"delete the run directory (\S+) and rerun", lines[0])
    assert fix, lines[0]
    shutil.rmtree(fix.group(1))  # follow the fix ...
    rc, err = rerun(ref, out, capsys)
    assert rc == 0, err
    assert numbers(out / "E2") == ref.numbers  # ... and it works
    return "stopped, fix works"


# --- run files: the rerun repairs them, or stops naming the file and the fix ----------------

RUN_FILES = {  # name -> the file damaged, relative to the run directory ("<newest>": newest checkpoint)
    "final.json": "final.json",
    "history.json": "history.json",
    "config.yaml": "config.yaml",
    "best.safetensors": "checkpoints/best.safetensors",
    # ... and the checkpoint of the best step gone too (pruned): nothing holds those weights
    "best.safetensors, no checkpoint of its step": "checkpoints/best.safetensors",
    "latest checkpoint": "<newest>/model.safetensors",
}


def _target(run_dir: Path, rel: str) -> Path:
    if rel.startswith("<newest>"):
        newest = _io.checkpoints(run_dir / "checkpoints")[0]
        return newest / rel.split("/", 1)[1]
    return run_dir / rel


# (run state, file) pairs that exist: an unfinished run has no final.json to damage.
RUN_CASES = [(which, name) for which in ("finished", "unfinished") for name in RUN_FILES
             if not (which == "unfinished" and name == "final.json")]


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("which, name", RUN_CASES, ids=[f"{w}-{n}" for w, n in RUN_CASES])
def test_damaged_run_file(ref, which, name, how, tmp_path, monkeypatch, capsys):
    out = copy(ref, which, tmp_path, monkeypatch)
    run_dir = out / "E2"
    target = _target(run_dir, RUN_FILES[name])
    if how == "deleted" and name == "latest checkpoint":
        shutil.rmtree(target.parent)
    else:
        damage(target, how)
    if name.startswith("best.safetensors,"):
        best_step = _io.read_json_checked(ref.finished / "E2" / "final.json")["best_step"]
        shutil.rmtree(run_dir / "checkpoints" / _io.checkpoint_name(best_step), ignore_errors=True)
    if which == "finished" and name.startswith(("best.safetensors", "latest checkpoint")):
        # final.json is sound, so nothing reads these on a rerun; the case is the run
        # finished again after final.json was lost: then they are read back.
        (run_dir / "final.json").unlink()
    rc, err = rerun(ref, out, capsys)
    kind = settle(ref, out, rc, err, target if name != "latest checkpoint" else run_dir, capsys)
    if name in ("final.json", "history.json", "config.yaml"):
        assert kind == "recovered identical"  # always recomputable from the checkpoint
    said = name not in ("latest checkpoint", "final.json") or how != "deleted"  # deleted final.json = not done
    if which == "finished" and kind == "recovered identical" and name != "latest checkpoint" and said:
        # a repair is never silent: the summary's note or a warning names the file
        assert str(run_dir / RUN_FILES[name]) in err, err
    OUTCOMES[kind] += 1
    if which == "finished" and name == "best.safetensors":
        assert kind == "recovered identical"  # restored from the checkpoint of the best step
    if which == "finished" and name.startswith("best.safetensors,"):
        final = ref.numbers["final"]
        # the best step's weights are gone: retrain, never substitute (unless the best step is
        # the last, whose checkpoint's loss makes the rerun train those steps again anyway)
        assert kind == ("stopped, fix works" if final["best_step"] < final["steps"] else "recovered identical")


def test_a_finished_runs_damaged_companion_is_named_by_status_and_refinished(ref, tmp_path, monkeypatch, capsys):
    """Before the rerun, status calls the run damaged naming the file and why; the rerun's
    summary says it was finished again, and the numbers stand."""
    out = copy(ref, "finished", tmp_path, monkeypatch)
    damage(out / "E2" / "config.yaml", "bitflip")
    assert main(["status", str(out)]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("E2 "))
    assert "damaged" in row and "config.yaml: checksum mismatch" in row, row
    rc, text = rerun(ref, out, capsys)
    assert rc == 0 and f"{out / 'E2' / 'config.yaml'} was damaged (checksum mismatch); finished again" in text, text
    assert numbers(out / "E2") == ref.numbers
    assert (out / "E2" / "config.yaml").read_bytes() == (ref.finished / "E2" / "config.yaml").read_bytes()


# --- data: the on-disk synthetic set and the image cache -----------------------------------

def _synthetic_dir(cache: Path, split: str) -> Path:
    return next((cache / "synthetic").glob(f"*-{split}"))


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_synthetic_set_is_made_again(ref, how, tmp_path, monkeypatch, capsys):
    """The unfinished run reads its data again when it resumes: a damaged on-disk set is
    made again (deterministic) with a warning, and the run ends with the reference numbers."""
    out = copy(ref, "unfinished", tmp_path, monkeypatch)
    d = _synthetic_dir(tmp_path / "cache", "train")
    damage(d / "images.npy", how)
    rc, err = rerun(ref, out, capsys)
    assert rc == 0, err
    assert f"synthetic set {d} is" in err and "making it again" in err, err
    assert numbers(out / "E2") == ref.numbers
    OUTCOMES["recovered identical"] += 1


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_image_cache_entry_is_rebuilt(how, tmp_path):
    from attncollapse.data import RawSplit
    from attncollapse.data.cache import cached_images
    from attncollapse.data.sources import ArrayReader

    n, size = 40, 8
    pixels = np.random.default_rng(1).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    raw = RawSplit(np.arange(n) % 4, "fp-dm", ArrayReader(pixels))
    kw = dict(root=tmp_path, source="t", split="test", size=size, workers=1)
    first = np.array(cached_images(raw, **kw))
    entry = next((tmp_path / "images").iterdir())
    damage(entry / "images.npy", how)
    with pytest.warns(UserWarning, match=f"image cache {re.escape(str(entry))} is"):
        again = np.array(cached_images(raw, **kw))
    np.testing.assert_array_equal(again, first)
    OUTCOMES["recovered identical"] += 1


# --- matrix files: results.csv is rewritten; matrix.yaml is named with its fix --------------

@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_results_csv_is_rewritten(ref, how, tmp_path, monkeypatch, capsys):
    """`report` (and `run`) rewrite results.csv from the run files before any stage reads it.
    Only the stats stage here (it reads results.csv; figures and report take seconds more)."""
    out = copy(ref, "finished", tmp_path, monkeypatch)
    damage(out / "results.csv", how)
    monkeypatch.setattr(runner, "ANALYSIS_STAGES", {"stats": runner.ANALYSIS_STAGES["stats"]})
    assert main(["report", str(out)]) == 0, capsys.readouterr()
    assert (out / "results.csv").read_bytes() == ref.results_csv
    assert _io.read_json(out / "stats.json") == ref.stats
    OUTCOMES["recovered identical"] += 1


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_matrix_yaml_is_named_and_the_fix_works(ref, how, tmp_path, monkeypatch, capsys):
    out = copy(ref, "finished", tmp_path, monkeypatch)
    damage(out / "matrix.yaml", how)
    assert main(["status", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(out / "matrix.yaml") in err or f"{out}: no matrix.yaml" in err, err
    assert "attncollapse run" in err, err  # the fix: the matrix run again into the same --out
    rc, err = rerun(ref, out, capsys)  # following it: nothing trains again, the numbers stand
    assert rc == 0, err
    assert main(["status", str(out)]) == 0
    assert numbers(out / "E2") == ref.numbers
    OUTCOMES["stopped, fix works"] += 1


# --- a full disk: one line naming the disk, from every writer; nothing half-written --------

class _FullDisk(io.FileIO):
    """A file on a full disk: write() fails as the kernel's write(2) does (ENOSPC)."""

    def write(self, b):
        raise OSError(errno.ENOSPC, "No space left on device")


def _full_disk_for(monkeypatch, pattern: str) -> None:
    """Every file whose final name matches `pattern` (written via `_io.open_output`, the seam
    all writers share, torch.save included) is on a full disk."""
    real = _io.open_output

    def open_output(path):
        p = Path(path)
        name = p.name if not p.name.endswith(".tmp") else p.name[1:].rsplit(".", 2)[0]
        return _FullDisk(path, "wb") if re.fullmatch(pattern, name) else real(path)

    monkeypatch.setattr(_io, "open_output", open_output)


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".step-")
            or ".build-" in p.name]


@pytest.mark.parametrize("victim, where", [
    ("state.pt", "checkpoints"),            # torch.save in the checkpoint thread ("unexpected pos" before)
    ("model.safetensors", "checkpoints"),   # the checkpoint's weights, same thread
    ("best.safetensors", "checkpoints"),    # the best weights, same thread
    ("history.json", ""),                   # the training thread's writes
    ("final.json", ""),
])
def test_full_disk_during_a_run_is_one_line_and_the_rerun_is_identical(ref, victim, where, tmp_path, monkeypatch,
                                                                        capsys):
    out = copy(ref, "unfinished", tmp_path, monkeypatch)
    run_dir = out / "E2"
    for p in _io.checkpoints(run_dir / "checkpoints"):  # train from the start: every writer writes
        shutil.rmtree(p)
    with pytest.MonkeyPatch.context() as full:
        _full_disk_for(full, re.escape(victim))
        rc, text = rerun(ref, out, capsys)
    assert rc == 1
    row = next(ln for ln in text.splitlines() if ln.startswith("E2 "))
    disk = run_dir / where if where else run_dir
    assert f"disk full: {disk} (free space there, or write elsewhere with --out)" in row, row
    assert "enforce fail" not in text and "unexpected pos" not in text
    assert _leftovers(out) == []  # nothing half-written
    rc, text = rerun(ref, out, capsys)  # space freed
    assert rc == 0, text
    assert numbers(run_dir) == ref.numbers


def test_full_disk_while_building_the_image_cache_is_an_error_not_sigbus(tmp_path, monkeypatch):
    """The cache's memory-mapped images.npy is preallocated (posix_fallocate): a full disk is
    an OSError naming the file there, not a SIGBUS at the first page written."""
    from attncollapse.data import RawSplit
    from attncollapse.data.cache import cached_images
    from attncollapse.data.sources import ArrayReader

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    raw = RawSplit(np.arange(8) % 2, "fp-full", ArrayReader(np.zeros((8, 4, 4, 3), np.uint8)))
    with pytest.raises(OSError) as info:
        cached_images(raw, root=tmp_path, source="t", split="test", size=4, workers=1)
    msg = _io.disk_full_message(info.value, tmp_path)
    assert msg is not None and msg.startswith(f"disk full: {tmp_path / 'images'}/.") and "images.npy" in msg
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("stage, victim", [("figures", r".*\.png"), ("report", r"report\.(md|html)")])
def test_full_disk_in_the_analysis_stops_the_stage_in_one_line(ref, stage, victim, tmp_path, monkeypatch, capsys):
    out = copy(ref, "finished", tmp_path, monkeypatch)
    monkeypatch.setattr(runner, "ANALYSIS_STAGES", {stage: runner.ANALYSIS_STAGES[stage]})
    _full_disk_for(monkeypatch, victim)
    assert main(["report", str(out)]) == 1
    cap = capsys.readouterr()
    line = next(ln for ln in cap.out.splitlines() if ln.strip().startswith(f"{stage}:"))
    assert line.strip() == f"{stage}: failed: disk full: {out} (free space there, or write elsewhere with --out)"
    assert "Traceback" not in cap.out + cap.err
    assert not list(out.rglob("*.png")) and not (out / "report.md").exists() and _leftovers(out) == []


# --- orphans a kill leaves: removed by the next run that holds the lock --------------------

def test_a_rerun_removes_orphan_tmp_files_and_dead_builders_cache_dirs(ref, tmp_path, monkeypatch, capsys):
    import subprocess
    import sys

    from attncollapse.data import RawSplit
    from attncollapse.data.cache import cached_images
    from attncollapse.data.sources import ArrayReader

    out = copy(ref, "unfinished", tmp_path, monkeypatch)
    orphan = out / "E2" / ".history.json.k1ll3d.tmp"  # a kill during history.json's atomic write
    orphan.write_text('{"run_id": "E2", "poi')
    rc, text = rerun(ref, out, capsys)
    assert rc == 0 and not orphan.exists() and f"removed {orphan}" in text
    assert numbers(out / "E2") == ref.numbers

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that has exited
    (tmp_path / "c" / "images").mkdir(parents=True)
    gone = tmp_path / "c" / "images" / f".x-test-4px-v2-0.build-{dead}"
    alive = tmp_path / "c" / "images" / f".y-test-4px-v2-0.build-{os.getppid()}"  # a live builder's
    for d in (gone, alive):
        d.mkdir()
        (d / "images.npy").write_bytes(b"\0" * 64)
    raw = RawSplit(np.arange(8) % 2, "fp-orphan", ArrayReader(np.zeros((8, 4, 4, 3), np.uint8)))
    with pytest.warns(UserWarning, match=f"removed {re.escape(str(gone))}"):
        cached_images(raw, root=tmp_path / "c", source="t", split="test", size=4, workers=1)
    assert not gone.exists() and alive.exists()


# --- `attncollapse zeroshot` reads best.safetensors of a finished run ----------------------

@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("its_checkpoint", ["kept", "pruned"])
def test_zeroshot_on_a_damaged_best_never_uses_other_weights(ref, how, its_checkpoint, tmp_path, monkeypatch,
                                                            capsys):
    """Restored from the checkpoint of the best step (a warning names the file) and the same
    zero-shot numbers; with that checkpoint pruned: exit 2, one line, and its fix works."""
    out = copy(ref, "finished", tmp_path, monkeypatch)
    run_dir = out / "E2"
    best = run_dir / "checkpoints" / "best.safetensors"
    damage(best, how)
    if its_checkpoint == "pruned":
        best_step = ref.numbers["final"]["best_step"]
        shutil.rmtree(run_dir / "checkpoints" / _io.checkpoint_name(best_step))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(["zeroshot", str(run_dir)])
    err = capsys.readouterr().err
    if its_checkpoint == "kept":
        assert rc == 0, err
        assert any(str(best) in str(w.message) and "restored from checkpoint" in str(w.message) for w in caught)
        assert numbers(run_dir) == ref.numbers
        OUTCOMES["recovered identical"] += 1
        return
    assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith(f"error: {best}: "), err
    fix = re.search(r"delete the run directory (\S+) and rerun", err)
    shutil.rmtree(fix.group(1))
    rc, text = rerun(ref, out, capsys)
    assert rc == 0, text
    assert main(["zeroshot", str(run_dir)]) == 0
    assert numbers(run_dir) == ref.numbers
    OUTCOMES["stopped, fix works"] += 1
