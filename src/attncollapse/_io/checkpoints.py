"""Checkpoint directories.

A checkpoint is a directory `step-<N>` of files plus `manifest.json` (sha256 of each file)
written last. It is assembled under a temporary name and renamed into place, so a crash
leaves either the whole checkpoint or none; the manifest catches files damaged after the fact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .atomic import follow_umask, read_json, write_json
from .checksum import sha256_file


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}"


@contextmanager
def checkpoint_dir(root: str | os.PathLike, step: int) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success it becomes `root/step-<N>`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{checkpoint_name(step)}.", dir=root))
    final = root / checkpoint_name(step)
    try:
        yield tmp
        manifest = {"step": step, "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}}
        write_json(tmp / "manifest.json", manifest)
        follow_umask(tmp, directory=True)  # mkdtemp made it 0700
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def verify_checkpoint(path: str | os.PathLike) -> str | None:
    """None if the checkpoint directory is complete and intact, else what is wrong."""
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        return "no manifest (incomplete)"
    try:
        manifest = read_json(mf)
    except (OSError, ValueError) as exc:
        return f"unreadable manifest: {exc}"
    for name, digest in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file():
            return f"missing {name}"
        if sha256_file(f) != digest:
            return f"checksum mismatch in {name}"
    return None


def clean_orphans(root: str | os.PathLike) -> list[Path]:
    """Delete the temporary `.step-*` directories a kill during a checkpoint write left.

    Call it only while holding the run's lock (no other writer can be filling one).
    Returns the directories removed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    orphans = [p for p in root.glob(".step-*") if p.is_dir()]
    orphans += [p for p in root.glob(".*.tmp") if p.is_file()]  # atomic_path leftovers
    for p in orphans:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return orphans


def checkpoints(root: str | os.PathLike) -> list[Path]:
    """Checkpoint directories under `root`, newest (highest step) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)


def prune_checkpoints(root: str | os.PathLike, keep: int) -> None:
    for old in checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
