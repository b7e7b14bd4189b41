"""Plumbing shared by every stage: atomic writes and environment records.

Every file the tool writes goes through here, so a crash never leaves a half-written
result behind (write to a temporary file in the same directory, fsync, `os.replace`; the
same habit as open_clip and timm checkpoints).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    Args:
        path: the final destination. Its parent directory is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays, paths and non-finite floats for JSON."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/inf; None reads back as "missing"
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as block-style YAML."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(_jsonable(obj), sort_keys=False))


def read_yaml(path: str | os.PathLike) -> Any:
    return yaml.safe_load(Path(path).read_text())


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def git_commit(start: str | os.PathLike | None = None) -> str | None:
    """The git commit of the checkout holding `start` (default: this package), or None."""
    where = Path(start) if start else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=where, capture_output=True, text=True, timeout=5,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def environment() -> dict[str, Any]:
    """Versions, device and git commit: what `env.json` records beside every result."""
    import importlib.metadata as md

    import torch

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    gpu = None
    if torch.cuda.is_available():
        gpu = {
            "name": torch.cuda.get_device_name(0),
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
        }
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "peft": version("peft"),
        "datasets": version("datasets"),
        "numpy": version("numpy"),
        "attncollapse": version("attncollapse"),
        "git_commit": git_commit(),
        "gpu": gpu,
        "cpu_count": os.cpu_count(),
    }


# --- checkpoint directories -------------------------------------------------------------
# A checkpoint is a directory `step-<N>` of files plus `manifest.json` (sha256 of each
# file) written last. It is assembled under a temporary name and renamed into place, so a
# crash leaves either the whole checkpoint or none; the manifest catches files damaged
# after the fact.

def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


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
        manifest = {"step": step, "files": {p.name: _sha256(p) for p in sorted(tmp.iterdir())}}
        write_json(tmp / "manifest.json", manifest)
        if final.exists():
            import shutil

            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            import shutil

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
        if _sha256(f) != digest:
            return f"checksum mismatch in {name}"
    return None


def checkpoints(root: str | os.PathLike) -> list[Path]:
    """Checkpoint directories under `root`, newest (highest step) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)


def prune_checkpoints(root: str | os.PathLike, keep: int) -> None:
    import shutil

    for old in checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def save_tensors(path: str | os.PathLike, tensors: dict) -> None:
    """Atomically write a dict of tensors as safetensors (detached, contiguous, on CPU)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
