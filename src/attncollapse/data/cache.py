"""Image preprocessing and the on-disk uint8 image cache.

Each image is decoded (EXIF orientation applied), made RGB, resized and centre-cropped
once, and stored as uint8 in a `.npy` file read back with `mmap_mode="r"`. Two
geometries (`data.preprocess`): "original" = the original study's torchvision
`Resize(S)` + `CenterCrop(S)` on PIL images (bilinear); "clip" = transformers'
`CLIPImageProcessorPil` (bicubic). Two alpha treatments (`data.alpha`): "drop" = PIL
`convert("RGB")` (original), "white" = composited on white (transformers). Rescaling
and mean/std normalisation stay on the device (`data.feed.Feeder`), so the cache is 4×
smaller than float pixels and independent of them.

Layout: `<root>/images/<source>-<split>-<S>px-v<VERSION>-<hash>/{images.npy, manifest.json}`,
the hash covering the preprocessing variant. The manifest is written last and
atomically; a missing, partial, stale or corrupt entry is rebuilt with a warning, never used.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import sys
import warnings
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import _io
from .base import DataError, RawSplit

PREPROCESS_VERSION = 3
"""Bump when `preprocess` changes: every cache entry of an older version becomes stale.
v2: EXIF orientation applied; the variant (geometry, alpha) joined the cache key.
v3: 16-bit and float grey images scaled to 8 bits, not clipped (`base.to_8bit`)."""

_INPROCESS_BELOW = 512  # smaller splits are built without worker processes (start-up costs more)

GEOMETRIES = ("original", "clip")
ALPHAS = ("drop", "white")


def variant(geometry: str = "original", alpha: str = "drop") -> str:
    """The cache-key name of a preprocessing choice, e.g. "original-drop"."""
    if geometry not in GEOMETRIES or alpha not in ALPHAS:
        raise DataError(f"unknown preprocessing {geometry!r}/{alpha!r}; data.preprocess is one of "
                        f"{', '.join(GEOMETRIES)}, data.alpha one of {', '.join(ALPHAS)}")
    return f"{geometry}-{alpha}"


def to_rgb(img: Image.Image, alpha: str = "drop") -> Image.Image:
    """RGB pixels of any PIL image.

    Args:
        img: any mode (L, P, CMYK, RGBA, LA, ...).
        alpha: "drop" = PIL `convert("RGB")`, what the original's `HFImageDataset` did
            (transparent pixels keep whatever colour they store); "white" = transparency
            composited onto white (transformers `convert_to_rgb`).
    """
    if alpha == "white" and ("A" in img.getbands() or img.info.get("transparency") is not None):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def preprocess(img: Image.Image, size: int, geometry: str = "original", alpha: str = "drop") -> np.ndarray:
    """Geometric preprocessing of one image: shorter side to S, centre crop S×S.

    Both geometries size the long side as `int(S * long / short)` (torchvision
    `_compute_resized_output_size`, transformers `get_resize_output_image_size`: truncated).
    "original" resizes with PIL bilinear — torchvision's `F.resize` hands a PIL image to
    `PIL.Image.resize(size, BILINEAR)`, which antialiases when downscaling — and crops at
    `int(round((h - S) / 2.0))` (torchvision `transforms/functional.py` `center_crop`;
    Python rounds halves to even: an excess of 3 px starts the crop at 2, of 5 at 2).
    "clip" resizes bicubic and crops at `(h - S) // 2` (transformers `center_crop`).

    Args:
        img: any PIL image.
        size: S, the model's input resolution.
        geometry: "original" or "clip".
        alpha: "drop" or "white" (`to_rgb`).

    Returns:
        (3, S, S) uint8.
    """
    variant(geometry, alpha)  # validates both
    img = to_rgb(img, alpha)
    w, h = img.size
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if geometry == "original":
        if (new_w, new_h) != (w, h):  # torchvision returns the image untouched at the target size
            img = img.resize((new_w, new_h), Image.BILINEAR)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    else:
        img = img.resize((new_w, new_h), Image.BICUBIC)
        top, left = (new_h - size) // 2, (new_w - size) // 2
    arr = np.asarray(img)[top:top + size, left:left + size]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def entry_dir(root: Path, source: str, split: str, size: int, how: str = "original-drop") -> Path:
    """The cache directory of one (source, split, image size, preprocessing variant and version)."""
    key = f"{source}|{split}|{size}|{PREPROCESS_VERSION}|{how}"
    slug = re.sub(r"[^A-Za-z0-9]+", "_", source.split(":", 1)[-1]).strip("_")[-40:] or "source"
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return root / "images" / f"{slug}-{split}-{size}px-v{PREPROCESS_VERSION}-{digest}"


def _labels_sha(labels: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()


def _hasher(algo: str):
    """A new hash object of `algo`, or None when that algorithm is not available here."""
    if algo == "xxh3_128":
        try:
            import xxhash
        except ImportError:
            return None
        return xxhash.xxh3_128()
    return hashlib.new(algo) if algo in hashlib.algorithms_available else None


def _hash_algo() -> str:
    """xxh3_128 where the optional `xxhash` is installed (~20 GB/s), else sha256 (~1 GB/s)."""
    return "xxh3_128" if _hasher("xxh3_128") is not None else "sha256"


def images_hash(images: np.ndarray, algo: str | None = None) -> str | None:
    """`<algo>:<hex>` over every byte of `images` (N, 3, S, S) uint8, or None when `algo`
    is not available here.

    All of it, not a sample: one changed image anywhere changes the digest. Read in
    64 MiB chunks of the memory map, so memory stays flat (measured on 10k×3×224×224,
    1.5 GB, page cache warm: xxh3_128 0.08 s, sha256 1.4 s, blake2b 1.7 s).
    """
    algo = algo or _hash_algo()
    h = _hasher(algo)
    if h is None:
        return None
    flat = np.ascontiguousarray(images).reshape(-1)  # a view of a C-ordered memory map: no copy
    chunk = 1 << 26
    for start in range(0, flat.size, chunk):
        h.update(memoryview(flat[start:start + chunk]))
    return f"{algo}:{h.hexdigest()}"


def _manifest(raw: RawSplit, images: np.ndarray, source: str, split: str, size: int, how: str) -> dict:
    return {
        "version": PREPROCESS_VERSION, "preprocess": how, "source": source, "split": split, "image_size": size,
        "count": len(raw), "shape": list(images.shape), "dtype": "uint8",
        "source_fingerprint": raw.fingerprint, "labels_sha256": _labels_sha(raw.labels),
        "images_hash": images_hash(images),
    }


def check_entry(d: Path, raw: RawSplit, size: int, how: str = "original-drop") -> str | None:
    """Why the cache entry `d` cannot be used for `raw` preprocessed as `how`, or None when it is good."""
    mpath, ipath = d / "manifest.json", d / "images.npy"
    if not mpath.exists():
        return "partial (no manifest.json)"
    try:
        m = _io.read_json(mpath)
        images = np.load(ipath, mmap_mode="r")
    except Exception as e:
        return f"corrupt ({type(e).__name__}: {e})"
    shape = [len(raw), 3, size, size]
    if m.get("version") != PREPROCESS_VERSION:
        return f"stale (preprocessing version {m.get('version')} != {PREPROCESS_VERSION})"
    if m.get("preprocess") != how:
        return f"stale (preprocessed {m.get('preprocess')}, expected {how})"
    if m.get("source_fingerprint") != raw.fingerprint or m.get("labels_sha256") != _labels_sha(raw.labels):
        return "stale (the source's files or labels changed)"
    if m.get("count") != len(raw) or m.get("shape") != shape:
        return f"stale (cached {m.get('shape')}, expected {shape})"
    if list(images.shape) != shape or images.dtype != np.uint8:
        return f"corrupt (images.npy is {images.dtype}{list(images.shape)}, expected uint8{shape})"
    recorded = m.get("images_hash")
    if not isinstance(recorded, str) or ":" not in recorded:
        return "stale (no whole-image checksum: written by an older version)"
    actual = images_hash(images, recorded.split(":", 1)[0])
    if actual is None:
        return f"stale (hashed with {recorded.split(':', 1)[0]}, which is not installed here)"
    if actual != recorded:
        return "corrupt (image checksum mismatch: images.npy changed after it was written)"
    return None


def cached_images(raw: RawSplit, *, root: Path, source: str, split: str, size: int,
                  workers: int | None = None, how: str = "original-drop") -> np.ndarray:
    """The preprocessed images of `raw`, from the cache, building it first when needed.

    Args:
        raw: the split to preprocess.
        root: cache root (see `cache_root`).
        source, split: the canonical source id and split name (the cache key).
        size: S.
        workers: decoding processes; None = CPU count.
        how: the preprocessing variant, `variant(geometry, alpha)` (part of the cache key).

    Returns:
        (N, 3, S, S) uint8 read-only memory map.
    """
    d = entry_dir(root, source, split, size, how)
    if d.exists():
        reason = check_entry(d, raw, size, how)
        if reason is None:
            return np.load(d / "images.npy", mmap_mode="r")
        warnings.warn(f"image cache {d} is {reason}; rebuilding it", stacklevel=3)
    _build(d, raw, source, split, size, workers or os.cpu_count() or 1, how)
    return np.load(d / "images.npy", mmap_mode="r")


# ---------------------------------------------------------------- building

_WORKER: dict[str, Any] = {}


def _init_worker(reader: Any, path: str, size: int, how: str) -> None:
    geometry, alpha = how.split("-")
    _WORKER.update(reader=reader, out=np.load(path, mmap_mode="r+"), size=size, geometry=geometry, alpha=alpha)


def _fill(start: int, end: int) -> int:
    """Preprocess images [start, end) into the shared memory map (in a worker)."""
    out, size = _WORKER["out"], _WORKER["size"]
    for i, img in enumerate(_WORKER["reader"].images(start, end), start):
        out[i] = preprocess(img, size, _WORKER["geometry"], _WORKER["alpha"])
    # no flush here: msync would force a synchronous write-back of every worker's dirty
    # pages on each chunk; the shared mapping is coherent, the parent fsyncs once at the end
    return end - start


def _mp_context():
    # fork where it exists (Linux), as torch's DataLoader does: workers start in milliseconds
    # and a caller's unguarded script is not re-imported (spawn would re-run its top level).
    # Workers only run PIL and numpy, never CUDA, so forking a CUDA-initialised parent is safe.
    return get_context("fork" if sys.platform == "linux" else "spawn")


def preallocate(path: Path) -> None:
    """Reserve the disk blocks of `path` (already sized) before it is written through a memory map.

    A memory-mapped write to a sparse file on a full disk is a SIGBUS that kills the
    process with no message (and leaves its build directory); reserved blocks turn that
    into an OSError(ENOSPC) here, naming the file. Where the filesystem cannot reserve
    (EOPNOTSUPP/EINVAL, e.g. some network filesystems) the file stays sparse.
    """
    import errno

    if not hasattr(os, "posix_fallocate"):  # macOS, Windows
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from None
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


_HOST = re.sub(r"[^A-Za-z0-9_.]+", "_", socket.gethostname()) or "host"


def clean_build_orphans(images_dir: Path) -> list[Path]:
    """Remove `.<entry>.build-<host>-<pid>` directories of this host whose process is gone
    (a kill mid-build); returns them. A live pid's directory is another builder's, and
    another host's (a shared cache) cannot be judged from here: both are left alone."""
    out = []
    for p in Path(images_dir).glob(".*.build-*"):
        m = re.fullmatch(r"\..+\.build-(?:(?P<host>.+)-)?(?P<pid>\d+)", p.name)
        if not (m and p.is_dir()) or (m["host"] is not None and m["host"] != _HOST):
            continue
        pid = int(m["pid"])
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            out.append(p)
    return out


def _build(d: Path, raw: RawSplit, source: str, split: str, size: int, workers: int, how: str) -> None:
    from tqdm.auto import tqdm

    n = len(raw)
    if n == 0:
        raise DataError(f"{source} split {split!r} has no images")
    tmp = d.parent / f".{d.name}.build-{_HOST}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for orphan in clean_build_orphans(d.parent):
        warnings.warn(f"removed {orphan}: a cache build interrupted by an earlier kill", stacklevel=3)
    try:
        ipath = tmp / "images.npy"
        np.lib.format.open_memmap(ipath, mode="w+", dtype=np.uint8, shape=(n, 3, size, size)).flush()
        preallocate(ipath)
        chunk = int(np.clip(n // (workers * 4), 32, 1024))
        bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
        bar = tqdm(total=n, desc=f"caching {source} {split} @{size}px", unit="img", disable=None)
        if workers <= 1 or n < _INPROCESS_BELOW:
            _init_worker(raw.reader, str(ipath), size, how)
            try:
                for s, e in bounds:
                    bar.update(_fill(s, e))
            finally:
                _WORKER.clear()
        else:
            with ProcessPoolExecutor(min(workers, len(bounds)), mp_context=_mp_context(),
                                     initializer=_init_worker,
                                     initargs=(raw.reader, str(ipath), size, how)) as pool:
                futures = {pool.submit(_fill, s, e) for s, e in bounds}
                try:
                    while futures:
                        done, futures = wait(futures, return_when=FIRST_EXCEPTION)
                        for f in done:
                            bar.update(f.result())  # re-raises a worker's DataError
                except BaseException:
                    pool.shutdown(cancel_futures=True)  # stop at the first bad image
                    raise
        bar.close()
        with open(ipath, "rb+") as fh:
            os.fsync(fh.fileno())  # the pixels are on disk before the manifest says so
        images = np.load(ipath, mmap_mode="r")
        _io.write_json(tmp / "manifest.json", _manifest(raw, images, source, split, size, how))  # last
        del images
        shutil.rmtree(d, ignore_errors=True)
        try:
            os.replace(tmp, d)
        except OSError:
            if check_entry(d, raw, size, how) is not None:  # another process built it meanwhile?
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
