"""IMAGES arguments of `measure`, `compare` and `maps`: whatever images a user has, as uint8 batches.

One string names the images: a flat folder of image files, a class-folder tree (one
sub-folder per class, as `imagefolder:` reads it), a list file (one path per line,
relative paths taken from the list file's folder), or a dataset source of the data
stage's registry (`synthetic`, `digits`, `hf:<dir or id>`, `eurosat`, ...; all its
splits). `--limit N` takes a seeded sample of N (the seed and the names are recorded).

Images are read lazily, batch by batch, with the data stage's own decoding
(`open_image`: EXIF orientation) and geometry (`preprocess`: the study's resize and
centre crop), so a folder of 100,000 images is never held in memory at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import DataConfig
from ..data import DataError, preprocess, resolve
from ..data.base import IMAGE_EXTENSIONS, open_image


class InputError(ValueError):
    """A MODEL or IMAGES argument the lab commands cannot use; the message names it and the fix."""


_SUFFIXES = ", ".join(sorted(IMAGE_EXTENSIONS))


@dataclass
class Images:
    """The images an IMAGES argument names (after `--limit`).

    Attributes:
        spec: the argument as given.
        kind: "folder", "class-folders", "list" or "source".
        names: one name per selected image (path relative to the folder, the path as listed,
            or "<split>/<index>" of a source).
        total: images the argument names before `--limit`.
        limit, seed: the sample asked for (None = all images).
        classes: class-folder names, or the source's classes; [] for a flat folder or a list.
    """

    spec: str
    kind: str
    names: list[str]
    total: int
    limit: int | None = None
    seed: int = 0
    classes: list[str] = field(default_factory=list)
    _paths: list[str] = field(default_factory=list, repr=False)
    _source: tuple[str, list[tuple[str, int]]] | None = field(default=None, repr=False)
    _resolved: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    def record(self) -> dict:
        """What measure.json / compare.json record about the images."""
        sampled = self.limit is not None and self.limit < self.total
        return {"spec": self.spec, "kind": self.kind, "count": len(self), "total": self.total,
                "sample": ({"limit": self.limit, "seed": self.seed, "how": "numpy default_rng(seed).choice, "
                            "without replacement, kept in the argument's order"} if sampled else None),
                "classes": len(self.classes), "names": list(self.names)}

    def read(self, start: int, end: int, size: int, geometry: str = "original", alpha: str = "drop") -> np.ndarray:
        """Images [start, end) of the selection, (n, 3, size, size) uint8."""
        if self._source is None:
            out = [preprocess(_open(p, self.spec), size, geometry, alpha) for p in self._paths[start:end]]
            return np.stack(out)
        src = self._source_at(size)
        out = []
        for split, i in self._source[1][start:end]:
            raw = src.splits[split]
            if raw.ready is not None:  # synthetic: made at `size` already
                out.append(np.asarray(raw.ready[i]))
            else:
                img = next(iter(raw.reader.images(i, i + 1)))
                out.append(preprocess(img, size, geometry, alpha))
        return np.stack(out)

    def _source_at(self, size: int):
        # A source resolved at each model's size (synthetic images are drawn at it).
        if size not in self._resolved:
            self._resolved[size] = resolve(self._source[0], DataConfig(), image_size=size)
        return self._resolved[size]


def _open(path: str, spec: str) -> Image.Image:
    try:
        return open_image(path, path)
    except DataError as e:
        raise InputError(f"{e} — remove it from {spec} or replace it with a readable image") from None


def _sample(total: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices kept: all, or a seeded sample of `limit` in ascending order."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    if limit is None or limit >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, limit, replace=False))


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _check_headers(paths: list[str], spec: str) -> None:
    """Fail before any model work when a file is not an image at all (header only: cheap)."""
    for p in paths:
        try:
            with Image.open(p):
                pass
        except Exception as e:  # PIL raises many types; all mean "not an image"
            raise InputError(f"unreadable image {p}: {type(e).__name__} — remove it from {spec} "
                             "or replace it with a readable image") from None


def load_images(spec: str, *, limit: int | None = None, seed: int = 0) -> Images:
    """Resolve an IMAGES argument (folder, class-folder tree, list file or dataset source).

    Args:
        spec: the argument.
        limit: keep a seeded sample of this many images; None = all.
        seed: the sample's seed.

    Raises:
        InputError: an empty folder or list, a listed file that does not exist, a file that
            is not an image (named, with the fix).
        DataError: an unknown or unloadable dataset source.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted((p for p in path.rglob("*") if _is_image(p)), key=lambda p: p.relative_to(path).parts)
        files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(path).parts)]
        dangling = [p for p in path.rglob("*") if p.is_symlink() and not p.exists()
                    and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
        if dangling:  # never dropped silently from the count
            raise InputError(f"{dangling[0]}: a symlink to nothing ({os.readlink(dangling[0])})"
                             + (f", and {len(dangling) - 1} more" if len(dangling) > 1 else "")
                             + f"; point it at the image or remove it from {spec}")
        if not files:
            raise InputError(f"{spec}: no image files ({_SUFFIXES}) in this folder or its sub-folders; "
                             "give a folder of images, a list file or a dataset source (synthetic, digits, hf:<dir>)")
        nested = [p for p in files if len(p.relative_to(path).parts) > 1]
        classes = sorted({p.relative_to(path).parts[0] for p in nested})
        kind = "class-folders" if nested and len(nested) == len(files) else "folder"
        keep = _sample(len(files), limit, seed)
        chosen = [files[i] for i in keep]
        _check_headers([str(p) for p in chosen], spec)
        return Images(spec, kind, [p.relative_to(path).as_posix() for p in chosen], len(files), limit, seed,
                      classes, _paths=[str(p) for p in chosen])
    if path.is_file():
        return _list_file(path, spec, limit, seed)
    if spec.startswith((".", "/", "~")) or (path.suffix.lower() in IMAGE_EXTENSIONS | {".txt"}):
        raise InputError(f"{spec}: no such folder or list file; give a folder of images, a list file "
                         "(one path per line) or a dataset source (synthetic, digits, hf:<dir>)")
    return _source(spec, limit, seed)


def _list_file(path: Path, spec: str, limit: int | None, seed: int) -> Images:
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise InputError(f"{spec}: a single image; put it in a folder (or a list file) and give that")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{spec}: not a readable text list of image paths ({type(e).__name__}); "
                         "give one path per line") from None
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if p.is_dir():
            raise InputError(f"{spec} line {n}: {line} is a folder, not an image file; list its images one per "
                             "line, or give the folder itself as IMAGES")
        if p.is_symlink() and not p.exists():
            raise InputError(f"{spec} line {n}: {line} is a symlink to nothing ({os.readlink(p)}); fix or delete the line")
        if not p.is_file():
            raise InputError(f"{spec} line {n}: {line} does not exist (relative paths are read from "
                             f"{path.parent}); fix or delete the line")
        entries.append((line, str(p)))
    if not entries:
        raise InputError(f"{spec}: the list names no image; write one image path per line")
    keep = _sample(len(entries), limit, seed)
    chosen = [entries[i] for i in keep]
    _check_headers([p for _, p in chosen], spec)
    return Images(spec, "list", [name for name, _ in chosen], len(entries), limit, seed,
                  _paths=[p for _, p in chosen])


def _source(spec: str, limit: int | None, seed: int) -> Images:
    """A dataset source of the data registry: all its splits, train first."""
    src = resolve(spec, DataConfig(), image_size=32)  # labels and sizes only; pixels come per model size
    items = [(split, i) for split in ("train", "test") if split in src.splits for i in range(len(src.splits[split]))]
    if not items:
        raise InputError(f"{spec}: the dataset has no images")
    keep = _sample(len(items), limit, seed)
    chosen = [items[i] for i in keep]
    images = Images(spec, "source", [f"{s}/{i}" for s, i in chosen], len(items), limit, seed,
                    list(src.class_names), _source=(spec, chosen))
    images._resolved[32] = src
    return images
