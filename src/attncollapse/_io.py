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


FINAL_JSON_KEYS = ("run_id", "status", "best_acc", "delta_pct")
"""What a finished run's final.json must hold to count as done: a file truncated by a
kill, or `{}`, lacks them (docs/FORMATS.md)."""


class DamagedFile(ValueError):
    """A file this tool wrote (or a user gave) that cannot be read back as what it should be.

    Attributes:
        path: the file.
        why: what is wrong with it, and the fix when one is known.
    """

    def __init__(self, path: str | os.PathLike, why: str):
        self.path, self.why = Path(path), why
        super().__init__(f"{path}: {why}")


def read_text_checked(path: str | os.PathLike) -> str:
    """The UTF-8 text of `path`; DamagedFile when it is unreadable or binary."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise DamagedFile(path, "is a directory, not a file") from None
    except OSError as exc:
        raise DamagedFile(path, f"cannot be read ({exc.strerror or exc})") from None
    if b"\0" in raw:
        raise DamagedFile(path, "is a binary file, not text") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DamagedFile(path, f"is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def read_json_checked(path: str | os.PathLike, required_keys: tuple[str, ...] = (), *,
                      fix: str = "") -> dict:
    """A JSON object from `path`, checked to hold `required_keys`.

    Args:
        path: the file.
        required_keys: keys the object must have (a truncated or `{}` file lacks them).
        fix: what the user should do about a damaged file (appended to the message).

    Raises:
        DamagedFile: unreadable, not JSON (e.g. truncated by a kill), not an object, or
            missing a required key.
    """
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    text = read_text_checked(path)
    try:
        obj = json.loads(text)
    except ValueError as exc:
        what = "empty" if not text.strip() else f"not valid JSON ({exc.msg} at line {exc.lineno})"
        raise DamagedFile(path, f"{what} — truncated or damaged{tail}") from None
    if not isinstance(obj, dict):
        raise DamagedFile(path, f"expected a JSON object, found {type(obj).__name__}{tail}")
    missing = [k for k in required_keys if k not in obj]
    if missing:
        raise DamagedFile(path, f"missing {', '.join(missing)} — incomplete or damaged{tail}")
    return obj


def read_yaml_checked(path: str | os.PathLike, *, fix: str = "") -> dict:
    """A YAML mapping from `path`; DamagedFile when it is unreadable, not YAML or not a mapping."""
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    text = read_text_checked(path)
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DamagedFile(path, f"not valid YAML{where}{tail}") from None
    if not isinstance(obj, dict):
        what = "empty" if obj is None else f"a {type(obj).__name__}, not a mapping"
        raise DamagedFile(path, f"{what}{tail}")
    return obj


def disk_full_message(exc: BaseException, path: str | os.PathLike) -> str | None:
    """"disk full: <path> ..." when `exc` (or what caused it) is ENOSPC/EDQUOT, else None.

    torch and safetensors report a full disk as e.g. "unexpected pos 72128 vs 72080"; the
    OSError underneath, when there is one, says why.
    """
    import errno

    seen = 0
    while exc is not None and seen < 8:
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        if full or "No space left on device" in str(exc):
            where = (getattr(exc, "filename", None) if full else None) or path
            return f"disk full: {where} (free space there, or write elsewhere with --out)"
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as block-style YAML."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(_jsonable(obj), sort_keys=False))


def read_yaml(path: str | os.PathLike) -> Any:
    return yaml.safe_load(Path(path).read_text())


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


class PlainProgress:
    """A progress bar for logs: one plain line every `every` seconds (and at the end)
    instead of tqdm's carriage-return redraws, which fill a log file with thousands of
    partial lines. Same calls as the tqdm bar it replaces: update, set_postfix, close."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", every: float = 10.0, stream=None,
                 clock=None, unit: str = "step"):
        """`clock`: seconds as a float (default `time.monotonic`; tests pass a fake one);
        `unit`: what is counted ("step", "image")."""
        import sys
        import time

        self.total, self.n, self.desc, self.every, self.unit = total, initial, desc, every, unit
        self.stream = stream or sys.stderr
        self._clock = clock or time.monotonic
        self._t0 = self._last = self._clock()
        self._n0, self._postfix = initial, ""
        self._said: tuple | None = None  # (step, postfix) of the last line printed

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._clock() - self._last >= self.every:
            self._print()

    def set_postfix(self, **kw: Any) -> None:
        self._postfix = " ".join(f"{k} {v}" for k, v in kw.items())

    def close(self) -> None:
        if (self.n != self._n0 or self._postfix) and self._said != (self.n, self._postfix):
            self._print()

    def _print(self) -> None:
        now = self._clock()
        rate = (self.n - self._n0) / max(now - self._t0, 1e-9)
        pct = 100.0 * self.n / self.total if self.total else 100.0
        print(f"{self.desc}: {self.unit} {self.n}/{self.total} ({pct:.0f}%) {rate:.2f} {self.unit}/s "
              f"{self._postfix}".rstrip(),
              file=self.stream, flush=True)
        self._last, self._said = now, (self.n, self._postfix)


def progress(total: int, initial: int = 0, desc: str = "", *, unit: str = "step", **kw: Any):
    """tqdm on a terminal; `PlainProgress` when stderr is a file or a pipe (a log)."""
    import sys

    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, **kw)
    return PlainProgress(total, initial, desc, unit=unit)


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


def clean_orphans(root: str | os.PathLike) -> list[Path]:
    """Delete the temporary `.step-*` directories a kill during a checkpoint write left.

    Call it only while holding the run's lock (no other writer can be filling one).
    Returns the directories removed.
    """
    import shutil

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
    import shutil

    for old in checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def save_tensors(path: str | os.PathLike, tensors: dict) -> None:
    """Atomically write a dict of tensors as safetensors (detached, contiguous, on CPU)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
