"""Atomic writes: every file the tool writes goes through here.

A crash never leaves a half-written result behind: write to a temporary file in the same
directory, fsync, `os.replace` (the same habit as open_clip and timm checkpoints).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from .checksum import CHECKSUM_KEY, YAML_CHECKSUM_PREFIX, json_text, sha256_text


def umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc), since
    setting it to read it back would race with other threads creating files."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def follow_umask(path: str | os.PathLike, *, directory: bool = False) -> None:
    """Give `path` the mode a plain `open`/`mkdir` would have: `tempfile` creates files
    0600 and directories 0700, so results written through it could not be opened by
    colleagues on a shared server whose umask allows it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


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
        follow_umask(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays, paths and non-finite floats for JSON."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/inf; None reads back as "missing"
    return obj


def open_output(path: str | os.PathLike):
    """`open(path, "wb")`: every file body this tool writes goes through here (torch.save
    included), so a full disk raises the OSError(ENOSPC) of the write itself (torch given a
    path reports it only as "enforce fail ... unexpected pos") and tests can inject one."""
    return open(path, "wb")


def _opener():
    # the package's `open_output` at call time: a test that replaces `_io.open_output`
    # (the seam every writer shares) reaches the writes made here too
    return getattr(sys.modules.get(__package__), "open_output", open_output)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write `data`."""
    with atomic_path(path) as tmp, _opener()(tmp) as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, checksum: bool = False) -> None:
    """Atomically write `obj` as indented JSON.

    Args:
        checksum: put `"checksum": "sha256:<hex>"` first, the digest of the JSON text of
            the rest (as this function writes it); `read_json_checked` verifies it, so a
            flipped digit anywhere is caught instead of read as a number.
    """
    obj = jsonable(obj)
    if checksum:
        obj = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
        obj = {CHECKSUM_KEY: sha256_text(json_text(obj)), **obj}
    write_bytes(path, (json_text(obj) + "\n").encode("utf-8"))


def write_yaml(path: str | os.PathLike, obj: Any, *, checksum: bool = False) -> None:
    """Atomically write `obj` as block-style YAML; `checksum`: first line
    `# checksum: sha256:<hex>` of the rest (a comment: any YAML reader ignores it)."""
    text = yaml.safe_dump(jsonable(obj), sort_keys=False)
    if checksum:
        text = f"{YAML_CHECKSUM_PREFIX}{sha256_text(text)}\n{text}"
    write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    """JSON from `path`, unchecked (`verified.read_json_checked` checks)."""
    return json.loads(Path(path).read_text())


def read_yaml(path: str | os.PathLike) -> Any:
    """YAML from `path`, unchecked (`verified.read_yaml_checked` checks)."""
    return yaml.safe_load(Path(path).read_text())


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
