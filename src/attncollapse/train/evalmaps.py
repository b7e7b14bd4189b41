"""evalmaps.npz: head-level [CLS]→patch maps of a few fixed eval images at every eval point.

What `attncollapse explore RUN_DIR` draws (docs/FORMATS.md). The first `eval.map_images`
images of the eval subset are kept, with their maps at each eval point in fp16: ViT-B/32
(12 layers, 12 heads, 49 patches), 4 images: 56 KiB a point. The file is rewritten
atomically after each point and carries its own checksum (an array `checksum` over the
others), and the maps also travel in each checkpoint's train state, so a resumed run's file
equals an uninterrupted one's. Reading needs numpy only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import _io

STORE = "evalmaps.npz"
FORMAT = "attncollapse-evalmaps-1"


def point_maps(rows, k: int):
    """(L, N, H, 1 + P) eval rows (torch) → (L, k, H, P) fp16 maps of the first k images, on the CPU."""
    from ..measure import patch_rows

    return patch_rows(rows[:, :k]).half().cpu()


def write_store(path: Path, points: list, images: np.ndarray, eval_idx: np.ndarray, info: dict) -> None:
    """Write the store atomically.

    Args:
        points: [(step, (L, k, H, P) fp16 maps, torch or numpy)] in step order.
        images: (k, 3, S, S) uint8 images the maps belong to.
        eval_idx: (k,) their indices into the test split.
        info: run id, model, dataset, ... (kept as JSON).
    """
    arrays = {"steps": np.asarray([s for s, _ in points], np.int64),
              "maps": np.stack([np.asarray(m, np.float16) for _, m in points]),
              "images": np.ascontiguousarray(images, np.uint8), "eval_idx": np.asarray(eval_idx, np.int64),
              "info": np.asarray(json.dumps({"format": FORMAT, **info}, sort_keys=True))}
    with _io.atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, checksum=np.asarray(_io.arrays_digest(arrays)), **arrays)


def read_store(path: str | Path) -> dict:
    """The store: {"steps": (K,), "maps": (K, L, k, H, P) float32, "images": (k, 3, S, S) uint8,
    "eval_idx": (k,), "info": dict}.

    Raises:
        _io.DamagedFile: missing, truncated, garbage, or not matching its checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise _io.DamagedFile(path, "missing")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - BadZipFile, ValueError, OSError: unreadable
        raise _io.DamagedFile(path, f"unreadable ({type(exc).__name__}) — truncated or damaged") from None
    want = str(arrays.pop("checksum", ""))
    if not want or _io.arrays_digest(arrays) != want:
        raise _io.DamagedFile(path, "checksum mismatch or missing — changed after it was written")
    out = {k: arrays[k] for k in ("steps", "images", "eval_idx")}
    out["maps"] = arrays["maps"].astype(np.float32)
    out["info"] = json.loads(str(arrays["info"]))
    return out
