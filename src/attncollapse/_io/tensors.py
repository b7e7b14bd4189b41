"""safetensors files that carry a digest of their own tensors in the header."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic import write_bytes
from .verified import DamagedFile

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
