"""`.npz` files that carry a digest of their own arrays (a member named `checksum`)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from .atomic import write_bytes
from .verified import DamagedFile

ARRAYS_CHECKSUM = "checksum"
"""The member of a self-verifying .npz holding `sha256:<hex>` of the other arrays."""


def arrays_digest(arrays: dict) -> str:
    """`sha256:<hex>` over every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}\n".encode())
        h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


def save_arrays(path: str | os.PathLike, arrays: dict, *, checksum: bool = True) -> None:
    """Atomically write `arrays` (name → numpy array) as a compressed .npz, with a
    `checksum` member (`arrays_digest`) that `load_arrays_checked` verifies."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    extra = {ARRAYS_CHECKSUM: np.asarray(arrays_digest(arrays))} if checksum else {}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays, **extra)
    write_bytes(path, buf.getvalue())  # through open_output: ENOSPC is an OSError


def load_arrays_checked(path: str | os.PathLike, *, required: tuple[str, ...] = (), fix: str = "") -> dict:
    """The arrays of an .npz (name → array), verified against its `checksum` member when
    it has one (files written before checksums existed have none and are read as before).

    Raises:
        DamagedFile: missing, truncated or garbage (not a readable zip), missing a
            `required` array, or whose arrays no longer match the checksum.
    """
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    if not path.is_file():
        raise DamagedFile(path, f"missing{tail}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib.error, EOFError, ValueError, OSError
        why = "empty" if path.stat().st_size == 0 else f"unreadable ({type(exc).__name__}: {str(exc)[:60]})"
        raise DamagedFile(path, f"{why} — truncated or damaged{tail}") from None
    recorded = arrays.pop(ARRAYS_CHECKSUM, None)
    if recorded is not None and str(recorded) != arrays_digest(arrays):
        raise DamagedFile(path, f"checksum mismatch — changed after it was written{tail}")
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DamagedFile(path, f"missing the array(s) {', '.join(missing)} — incomplete or damaged{tail}")
    return arrays
