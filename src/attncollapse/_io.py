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


def open_output(path: str | os.PathLike):
    """`open(path, "wb")`: every file body this tool writes goes through here (torch.save
    included), so a full disk raises the OSError(ENOSPC) of the write itself (torch given a
    path reports it only as "enforce fail ... unexpected pos") and tests can inject one."""
    return open(path, "wb")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write `data`."""
    with atomic_path(path) as tmp, open_output(tmp) as fh:
        fh.write(data)


CHECKSUM_KEY = "checksum"
"""The key under which a self-verifying JSON file holds `sha256:<hex>` of the rest (docs/FORMATS.md)."""


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)


def _sha256_text(text: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def json_has_checksum(path: str | os.PathLike) -> bool:
    """Whether `path` starts as `write_json(..., checksum=True)` writes (cheap: its first bytes)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(40).startswith(b'{\n  "' + CHECKSUM_KEY.encode() + b'": "sha256:')
    except OSError:
        return False


def write_json(path: str | os.PathLike, obj: Any, *, checksum: bool = False) -> None:
    """Atomically write `obj` as indented JSON.

    Args:
        checksum: put `"checksum": "sha256:<hex>"` first, the digest of the JSON text of
            the rest (as this function writes it); `read_json_checked` verifies it, so a
            flipped digit anywhere is caught instead of read as a number.
    """
    obj = _jsonable(obj)
    if checksum:
        obj = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
        obj = {CHECKSUM_KEY: _sha256_text(_json_text(obj)), **obj}
    write_bytes(path, (_json_text(obj) + "\n").encode("utf-8"))


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
    try:
        text = read_text_checked(path)
    except DamagedFile as exc:  # the same line, with the fix
        raise DamagedFile(path, exc.why + tail) from None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        what = "empty" if not text.strip() else f"not valid JSON ({exc.msg} at line {exc.lineno})"
        raise DamagedFile(path, f"{what} — truncated or damaged{tail}") from None
    if not isinstance(obj, dict):
        raise DamagedFile(path, f"expected a JSON object, found {type(obj).__name__}{tail}")
    if CHECKSUM_KEY in obj:  # written with checksum=True: verify, then drop it
        recorded = obj.pop(CHECKSUM_KEY)
        if recorded != _sha256_text(_json_text(obj)):
            raise DamagedFile(path, f"checksum mismatch — changed after it was written{tail}")
    missing = [k for k in required_keys if k not in obj]
    if missing:
        raise DamagedFile(path, f"missing {', '.join(missing)} — incomplete or damaged{tail}")
    return obj


YAML_CHECKSUM_PREFIX = "# checksum: "
"""First line of a self-verifying YAML file: `# checksum: sha256:<hex>` of the text after it."""


def read_yaml_checked(path: str | os.PathLike, *, fix: str = "", require_checksum: bool = False) -> dict:
    """A YAML mapping from `path`; DamagedFile when it is unreadable, not YAML or not a mapping.

    A file written with `write_yaml(..., checksum=True)` is verified against its first line;
    `require_checksum` also refuses one without that line (a file this version wrote always has it).
    """
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    try:
        text = read_text_checked(path)
    except DamagedFile as exc:  # the same line, with the fix
        raise DamagedFile(path, exc.why + tail) from None
    if text.startswith(YAML_CHECKSUM_PREFIX):  # written with checksum=True
        head, _, body = text.partition("\n")
        if head[len(YAML_CHECKSUM_PREFIX):].strip() != _sha256_text(body):
            raise DamagedFile(path, f"checksum mismatch — changed after it was written{tail}")
        text = body
    elif require_checksum:
        raise DamagedFile(path, f"no checksum line — truncated, replaced or damaged{tail}")
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

    chain, seen = [], 0
    while exc is not None and seen < 8:
        chain.append(exc)
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    for e in chain:  # the OSError itself names the file (or the disk) when it can
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"disk full: {getattr(e, 'filename', None) or path} (free space there, or write elsewhere with --out)"
    if any("No space left on device" in str(e) for e in chain):
        return f"disk full: {path} (free space there, or write elsewhere with --out)"
    return None


def write_yaml(path: str | os.PathLike, obj: Any, *, checksum: bool = False) -> None:
    """Atomically write `obj` as block-style YAML; `checksum`: first line
    `# checksum: sha256:<hex>` of the rest (a comment: any YAML reader ignores it)."""
    text = yaml.safe_dump(_jsonable(obj), sort_keys=False)
    if checksum:
        text = f"{YAML_CHECKSUM_PREFIX}{_sha256_text(text)}\n{text}"
    write_bytes(path, text.encode("utf-8"))


def read_yaml(path: str | os.PathLike) -> Any:
    return yaml.safe_load(Path(path).read_text())


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


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


TENSOR_META_KEY = "attncollapse"
"""The safetensors header key under which `save_tensors` keeps its metadata (JSON)."""


def tensors_digest(tensors: dict) -> str:
    """`sha256:<hex>` over every tensor's name, dtype, shape and bytes, in name order.

    Of the tensors, not the file: it is kept in the safetensors header, so the file
    carries its own check (one file, written atomically: no second file to fall out of step).
    """
    import hashlib

    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return "sha256:" + h.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None, *,
                 checksum: bool = False) -> None:
    """Atomically write a dict of tensors as safetensors (detached, contiguous, on CPU).

    Args:
        metadata: strings for the header (`__metadata__`).
        checksum: also record `tensors_digest` as metadata "sha256" (`load_tensors_checked`).
    """
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    if checksum:
        meta["sha256"] = tensors_digest(tensors)
    # one header key holding sorted JSON: safetensors keeps metadata in a hash map, so
    # several keys would come out in a different order from one write to the next
    header = {TENSOR_META_KEY: json.dumps(meta, sort_keys=True)} if meta else None
    write_bytes(path, save(tensors, metadata=header))  # through open_output: ENOSPC is an OSError


def load_tensors_checked(path: str | os.PathLike, *, fix: str = "") -> tuple[dict, dict]:
    """(tensors, header metadata) of a safetensors file written with `checksum=True`.

    Raises:
        DamagedFile: missing, unreadable (truncated, garbage), without a checksum, or
            whose tensors no longer match it (a flipped byte).
    """
    from safetensors import safe_open

    path = Path(path)
    tail = f"; {fix}" if fix else ""
    if not path.is_file():
        raise DamagedFile(path, f"missing{tail}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(TENSOR_META_KEY, "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...: the file is unreadable
        why = "empty" if path.stat().st_size == 0 else f"unreadable ({str(exc).splitlines()[0][:80]})"
        raise DamagedFile(path, f"{why} — truncated or damaged{tail}") from None
    if "sha256" not in meta:
        raise DamagedFile(path, f"no checksum (written by an older version, or damaged){tail}")
    if tensors_digest(tensors) != meta["sha256"]:
        raise DamagedFile(path, f"checksum mismatch — changed after it was written{tail}")
    return tensors, meta
