"""Damaged files: each is named, none gives a traceback, and a damaged result is trained again.

Fast cases use test_runner's fake training (it writes what `train.run` writes); one test
trains the tiny preset for real to show a damaged run recovers to identical numbers.
"""

from __future__ import annotations

import errno
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_runner import fake_baseline, fake_train

from attncollapse import _io
from attncollapse.analysis.table import Run
from attncollapse.cli import main
from attncollapse.config import matrix_from_dict
from attncollapse.study import execute_task, plan, run_matrix, status

# A kill mid-write (truncated), an emptied file, `{}`, binary junk, a valid object that
# is not a result: each must read as "not done".
DAMAGES = {
    "truncated": lambda text: text[: len(text) // 2],
    "empty": lambda text: "",
    "empty_object": lambda text: "{}",
    "binary": lambda text: "\0\x01\x02garbage",
    "not_a_result": lambda text: json.dumps({"run_id": "E2"}),
}


def _matrix(**extra):
    data = {"name": "t", "defaults": {"model": "tiny", "dataset": "synthetic",
                                      "zeroshot": {"datasets": ["synthetic"]}},
            "runs": {"E2": {}, "E4": {"method": "lora", "lora": {"rank": 4}}}}
    return matrix_from_dict({**data, **extra})


def _quiet(_msg: str) -> None:
    pass


def _damage(path: Path, how: str) -> None:
    path.write_text(DAMAGES[how](path.read_text()), encoding="latin-1")


def _calls(out: Path) -> list[str]:
    return [line.split()[0] for line in (out / "calls.txt").read_text().splitlines()]


@pytest.mark.parametrize("how", list(DAMAGES))
def test_damaged_final_json_is_shown_then_trained_again(tmp_path, how):
    out = tmp_path / "m"
    run_matrix(_matrix(), out, train_fn=fake_train, analyze=False, log=_quiet)
    good = _io.read_json(out / "E2" / "final.json")
    _damage(out / "E2" / "final.json", how)
    st = {t["id"]: t for t in status(out)["tasks"]}
    assert st["E2"]["state"] == "damaged" and st["E4"]["state"] == "done"
    assert "final.json" in st["E2"]["note"] and st["E2"]["best_acc"] is None
    s = run_matrix(_matrix(), out, train_fn=fake_train, analyze=False, log=_quiet)
    by_id = {o["id"]: o for o in s["outcomes"]}
    assert by_id["E2"]["status"] == "done" and "damaged" in by_id["E2"]["note"]
    assert by_id["E4"]["status"] == "skipped"
    assert _calls(out) == ["E2", "E4", "E2"]  # trained again, only it
    assert _io.read_json(out / "E2" / "final.json") == good
    assert (out / "E2" / "final.json.damaged").is_file()  # kept for a look
    assert {t["state"] for t in status(out)["tasks"]} == {"done"}


def test_damaged_baseline_json_is_measured_again(tmp_path):
    out = tmp_path / "m"
    run_matrix(_matrix(baseline=["synthetic"]), out, train_fn=fake_train, baseline_fn=fake_baseline,
               analyze=False, log=_quiet)
    _damage(out / "baseline" / "synthetic.json", "truncated")
    assert status(out)["tasks"][0]["state"] == "damaged"
    s = run_matrix(_matrix(baseline=["synthetic"]), out, train_fn=fake_train, baseline_fn=fake_baseline,
                   analyze=False, log=_quiet)
    assert [o["status"] for o in s["outcomes"]] == ["done", "skipped", "skipped"]
    assert _io.read_json(out / "baseline" / "synthetic.json")["dataset"] == "synthetic"


def test_damaged_matrix_yaml_is_named_by_status_and_report(tmp_path, capsys):
    out = tmp_path / "m"
    run_matrix(_matrix(), out, train_fn=fake_train, analyze=False, log=_quiet)
    for junk in (b"name: [unclosed\n", b"\xff\xfe\x00binary", b"- just\n- a list\n", b"name: t\nruns: 3\n"):
        (out / "matrix.yaml").write_bytes(junk)
        for cmd in ("status", "report"):
            assert main([cmd, str(out)]) == 2, (cmd, junk)
            err = capsys.readouterr().err
            assert f"{out / 'matrix.yaml'}:" in err and "Traceback" not in err, err
            assert len(err.strip().splitlines()) == 1, err


def test_damaged_run_config_yaml(tmp_path, capsys):
    out = tmp_path / "m"
    run_matrix(_matrix(), out, train_fn=fake_train, analyze=False, log=_quiet)
    (out / "E2" / "config.yaml").write_text("optim: {lr: [unclosed\n")
    # status and results.csv do not need it (the planned config describes the run) ...
    assert main(["status", str(out)]) == 0
    assert "E2" in capsys.readouterr().out
    # ... zeroshot does, and names it.
    assert main(["zeroshot", str(out / "E2")]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'E2' / 'config.yaml'}: not valid YAML at line" in err and "Traceback" not in err
    (out / "E2" / "config.yaml").write_text("optim: {lr: -1}\n")  # YAML, but not a valid config
    assert main(["zeroshot", str(out / "E2")]) == 2
    assert "not a valid run config (optim.lr:" in capsys.readouterr().err


def test_zeroshot_on_a_truncated_final_json_names_it(tmp_path, capsys):
    out = tmp_path / "m"
    run_matrix(_matrix(), out, train_fn=fake_train, analyze=False, log=_quiet)
    _damage(out / "E2" / "final.json", "truncated")
    assert main(["zeroshot", str(out / "E2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out / 'E2' / 'final.json'}: not valid JSON") and "Traceback" not in err


def test_report_without_a_finished_run_fails(tmp_path, capsys):
    out = tmp_path / "m"
    run_matrix(_matrix(), out, train_fn=fake_train, analyze=False, log=_quiet)
    for rid in ("E2", "E4"):
        _damage(out / rid / "final.json", "empty_object")
    assert main(["report", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "no finished run" in printed and ": ok" not in printed.replace("results: ok", "")
    assert not (out / "report.md").exists()


def test_truncated_history_json_is_named(tmp_path):
    d = tmp_path / "E2"
    d.mkdir()
    (d / "history.json").write_text('{"run_id": "E2", "points": [{"step": 0, "lay')
    with pytest.raises(_io.DamagedFile, match=r"E2/history.json: not valid JSON .* truncated"):
        Run("E2", "E2", d, {}).history()


def test_disk_full_is_named(tmp_path):
    def full_disk(cfg, run_dir):
        try:  # what torch.save says on a full disk, with the OSError underneath
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 72128 vs 72080") from exc

    task = plan(_matrix(), tmp_path)[0]
    outcome = execute_task(task, train_fn=full_disk)
    assert outcome["status"] == "failed" and outcome["note"].startswith(f"disk full: {task.path}")
    assert "disk full" in (task.path / "error.txt").read_text()
    assert _io.disk_full_message(RuntimeError("unexpected pos 1 vs 2"), tmp_path) is None


def test_orphan_checkpoint_temp_dirs_are_removed_and_a_damaged_run_recovers_identically(tmp_path):
    """Real training (tiny preset): a kill mid-checkpoint leaves `.step-*`; a truncated
    final.json makes the run train again (from its last checkpoint) to the same numbers."""
    m = matrix_from_dict({
        "name": "real", "defaults": {
            "model": "tiny", "dataset": "synthetic", "device": "cpu", "zeroshot": {"enabled": False},
            "optim": {"lr": 1e-3, "epochs": 1, "batch_size": 32, "precision": "fp32"},
            "data": {"synthetic_train": 64, "synthetic_test": 48, "eval_subset_size": 20},
            "eval": {"points_per_epoch": 2, "batch_size": 10}},
        "runs": {"E2": {}}})
    out = tmp_path / "m"
    assert run_matrix(m, out, analyze=False, log=_quiet)["ok"]
    first = _io.read_json(out / "E2" / "final.json")
    orphan = out / "E2" / "checkpoints" / ".step-000000001.kill"
    orphan.mkdir()
    (orphan / "state.pt").write_bytes(b"\0" * 1000)
    _damage(out / "E2" / "final.json", "truncated")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = run_matrix(m, out, analyze=False, log=_quiet)
    assert s["ok"] and s["outcomes"][0]["status"] == "done"
    assert not orphan.exists() and any(str(orphan) in str(w.message) for w in caught)
    again = _io.read_json(out / "E2" / "final.json")
    for key in ("best_acc", "final_acc", "best_step", "delta_pct", "initial_mean", "final_mean", "steps"):
        assert again[key] == first[key], key


def test_one_changed_image_anywhere_in_the_cache_is_caught(tmp_path):
    """The old check hashed 64 evenly spaced images; an image between them went unseen."""
    from attncollapse.data import RawSplit
    from attncollapse.data.cache import cached_images
    from attncollapse.data.sources import ArrayReader

    n, size = 200, 8
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    raw = RawSplit(np.arange(n) % 5, "fp-1", ArrayReader(pixels))
    kw = dict(root=tmp_path, source="t", split="test", size=size, workers=1)
    first = np.array(cached_images(raw, **kw))
    old_sample = set(np.unique(np.linspace(0, n - 1, 64).round().astype(int)).tolist())
    victim = next(i for i in range(n) if i not in old_sample)
    entry = next((tmp_path / "images").iterdir())
    arr = np.load(entry / "images.npy", mmap_mode="r+")
    arr[victim] = 255 - arr[victim]  # one inverted image
    arr.flush()
    del arr
    with pytest.warns(UserWarning, match="corrupt .*checksum mismatch"):
        rebuilt = np.array(cached_images(raw, **kw))
    np.testing.assert_array_equal(rebuilt, first)
    manifest = _io.read_json(entry / "manifest.json")
    assert manifest["images_hash"].split(":")[0] in ("xxh3_128", "sha256")


def test_full_disk_while_writing_names_the_file(tmp_path, capsys, monkeypatch):
    """`run` itself hitting ENOSPC (writing matrix.yaml): one line naming the file."""
    def no_space(path, obj, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(_io, "write_yaml", no_space)  # the module every stage writes through
    m = tmp_path / "m.yaml"
    m.write_text("name: t\ndefaults: {model: tiny, dataset: synthetic, zeroshot: {enabled: false}}\nruns: {E2: {}}\n")
    assert main(["run", str(m), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: disk full: {tmp_path / 'o' / 'matrix.yaml'} (free space there, or write elsewhere with --out)\n"


def test_checksums_are_what_formats_md_says(tmp_path):
    """Recomputed from the raw bytes with hashlib and the safetensors layout (8-byte header
    length, JSON header, data), independently of the code that writes and verifies them."""
    import hashlib
    import struct

    import torch

    _io.write_json(tmp_path / "f.json", {"a": 1.5, "b": [1, None]}, checksum=True)
    raw = (tmp_path / "f.json").read_text()
    obj = json.loads(raw)
    rest = {k: v for k, v in obj.items() if k != "checksum"}
    assert list(obj)[0] == "checksum"
    assert obj["checksum"] == "sha256:" + hashlib.sha256(json.dumps(rest, indent=2).encode()).hexdigest()

    _io.write_yaml(tmp_path / "c.yaml", {"optim": {"lr": 1e-5}}, checksum=True)
    head, body = (tmp_path / "c.yaml").read_text().split("\n", 1)
    assert head == "# checksum: sha256:" + hashlib.sha256(body.encode()).hexdigest()

    t = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([7], dtype=torch.int64)}
    _io.save_tensors(tmp_path / "best.safetensors", t, {"step": 12}, checksum=True)
    data = (tmp_path / "best.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    meta = json.loads(json.loads(data[8:8 + n])["__metadata__"]["attncollapse"])
    h = hashlib.sha256()
    for name in sorted(t):  # "<name>|<dtype>|<shape>\n" then the bytes, in name order
        h.update(f"{name}|{t[name].dtype}|{list(t[name].shape)}\n".encode() + t[name].numpy().tobytes())
    assert meta == {"step": "12", "sha256": "sha256:" + h.hexdigest()}
    # and one flipped bit in the data is caught
    flipped = bytearray(data)
    flipped[-1] ^= 0x01
    (tmp_path / "best.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(_io.DamagedFile, match="best.safetensors: checksum mismatch"):
        _io.load_tensors_checked(tmp_path / "best.safetensors")
