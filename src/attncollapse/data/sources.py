"""Where images come from: the `SOURCES` registry and one reader per kind of source.

A source string picks a function from `SOURCES` by its prefix (`hf:<id>`,
`imagefolder:<path>`, `torchvision:<Name>`, `digits`, `synthetic`) or is a named shortcut
from `HF_SHORTCUTS`. Every source returns a `Source` with a "train" and a "test"
`RawSplit`: labels and class names known up front (cheap), pixels read lazily by a
picklable reader so the cache (cache.py) can decode them in parallel worker processes.
Sources without their own test split get a fixed stratified 80/20 split
(`SOURCE_SPLIT_SEED`), so their "test" split is as stable as a hub dataset's.
"""

from __future__ import annotations

import hashlib
import inspect
import io
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from .. import _io
from .base import IMAGE_EXTENSIONS, DataError, RawSplit, Source, cache_root, open_image, stratified_split
from .synthetic import synthetic


# The original study's hub datasets (docs/STUDY.md "The original code, and which commit", read from its
# public code). Pinning the exact ids and columns keeps `dataset: eurosat` meaning the same
# data the reports trained on; anything else is reachable as `hf:<id>`.
HF_SHORTCUTS: dict[str, dict[str, str | None]] = {
    "eurosat": {"id": "tanganke/eurosat", "image": None, "label": None},
    "pets": {"id": "timm/oxford-iiit-pet", "image": "image", "label": "label"},
    "cifar100": {"id": "uoft-cs/cifar100", "image": "img", "label": "fine_label"},
    # Flowers-102 as the original's `load_flowers102` loaded it (its second zero-shot
    # benchmark): train 7,169 / test 1,020, zero-shot on test. Its ClassLabel names are
    # the image folders' numbers in string order ('1', '10', '100', '101', '102', '11', ...),
    # which the original put into its prompts ("a photo of a 10"; reports: ~0.2%).
    "flowers102": {"id": "nelorth/oxford-flowers", "image": "image", "label": "label"},
}

SOURCE_SPLIT_SEED = 42
"""Seed of the stratified split of sources that ship without a test split."""
SOURCE_TEST_FRAC = 0.2
"""Test fraction of that split (the reports' 80/20)."""

_TEST_SPLIT_NAMES = ("test", "validation", "valid", "val")
_DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else repr(p).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- readers (picklable)

class FileReader:
    """Images from a list of files."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def images(self, start: int, end: int) -> Iterator[Image.Image]:
        for p in self.paths[start:end]:
            yield open_image(p, p)


class ArrayReader:
    """Images from an in-memory (N, H, W) or (N, H, W, 3) uint8 array."""

    def __init__(self, arrays: np.ndarray):
        self.arrays = arrays

    def images(self, start: int, end: int) -> Iterator[Image.Image]:
        for a in self.arrays[start:end]:
            yield Image.fromarray(a)


class HFReader:
    """Images from a `datasets.Dataset` column, decoded here (not by `datasets`) so an
    unreadable row can be named by its file path or row number."""

    def __init__(self, ds: Any, column: str, name: str):
        from datasets import Image as HFImage

        self.ds = ds.select_columns([column]).cast_column(column, HFImage(decode=False))
        self.column, self.name = column, name

    def images(self, start: int, end: int) -> Iterator[Image.Image]:
        for i, cell in enumerate(self.ds[start:end][self.column], start):
            where = cell.get("path") or f"{self.name} row {i}"
            src = io.BytesIO(cell["bytes"]) if cell.get("bytes") is not None else cell.get("path")
            if src is None:
                raise DataError(f"unreadable image {where}: no bytes and no path")
            yield open_image(src, where)


class TorchvisionReader:
    """Images from a torchvision dataset built without transforms (items are (PIL, label))."""

    def __init__(self, ds: Any, name: str):
        self.ds, self.name = ds, name

    def images(self, start: int, end: int) -> Iterator[Image.Image]:
        for i in range(start, end):
            img = self.ds[i][0]
            yield img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))


# ---------------------------------------------------------------- sources

def _subset_pair(labels: np.ndarray, make: Callable[[np.ndarray], RawSplit]) -> dict[str, RawSplit]:
    tr, te = stratified_split(labels, SOURCE_TEST_FRAC, SOURCE_SPLIT_SEED)
    return {"train": make(tr), "test": make(te)}


def _hf(arg: str, cfg: Any, image_size: int, *, image_column: str | None = None,
        label_column: str | None = None) -> Source:
    import datasets as hfd

    if not arg:
        raise DataError("hf: needs a dataset id or directory, e.g. hf:tanganke/eurosat")
    full = arg
    arg, image_column, label_column = _column_options(arg, image_column, label_column)
    opts = full[len(arg):]  # "#label=..." is part of the name: another column is another cache entry
    ds, name = _hf_open(arg, opts)
    parts = {"all": ds} if isinstance(ds, hfd.Dataset) else dict(ds)
    train = parts.get("train", parts.get("all"))
    if train is None:
        raise DataError(f"{name} has no 'train' split; splits: {', '.join(parts)}")
    test = next((parts[k] for k in _TEST_SPLIT_NAMES if k in parts), None)
    # The source's own columns (a shortcut's pinned ones, or `#label=` in the source
    # string) win over data.*_column, which a zero-shot set must not inherit from training.
    img_col, lab_col = _hf_columns(train.features, name, arg, image_column or cfg.image_column,
                                   label_column or cfg.label_column)
    feat = train.features[lab_col]
    if isinstance(feat, hfd.ClassLabel):
        class_names = list(feat.names)  # raw: `ImageSet` humanizes them (splits.py)
    else:
        class_names = [f"class {i}" for i in range(int(_hf_labels(train, lab_col, name).max()) + 1)]

    def make(d: Any, split: str) -> RawSplit:
        lab = _hf_labels(d, lab_col, name)
        return RawSplit(lab, _sha(name, img_col, lab_col, len(d), str(d.features), lab),
                        HFReader(d, img_col, f"{name}:{split}"))

    if test is None:
        tr, te = stratified_split(_hf_labels(train, lab_col, name), SOURCE_TEST_FRAC, SOURCE_SPLIT_SEED)
        splits = {"train": make(train.select(tr), "train"), "test": make(train.select(te), "test")}
    else:
        splits = {"train": make(train, "train"), "test": make(test, "test")}
    for k, d in parts.items():  # other splits by their own names (EuroSAT's corruptions)
        if k not in ("all", "train") and k not in splits and d is not test:
            splits[k] = make(d, k)
    return Source(name, class_names, splits)


def _hf_open(arg: str, opts: str) -> tuple[Any, str]:
    """Load a hub id or a local directory (saved with `save_to_disk` or loadable by
    `load_dataset`); returns (Dataset or DatasetDict, the source's cache name)."""
    import datasets as hfd

    path = Path(arg).expanduser()
    local = arg.startswith((".", "/", "~")) or path.exists()
    try:
        if local:
            if not path.is_dir():
                raise DataError(f"hf: dataset directory {path} does not exist")
            saved = (path / "dataset_dict.json").exists() or (path / "state.json").exists()
            ds = hfd.load_from_disk(str(path)) if saved else hfd.load_dataset(str(path))
            return ds, f"hf:{path.resolve()}{opts}"
        ds = hfd.load_dataset(arg)  # downloads on first use (HF cache afterwards)
        return ds, f"hf:{arg}{opts}"
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"could not load hf dataset {arg!r}: {type(e).__name__}: {e}") from None


def _hf_columns(feats: Any, name: str, arg: str, img_col: str | None,
                lab_col: str | None) -> tuple[str, str]:
    """The image and label columns: the named ones (checked), else a known layout, else the
    only `Image` / `ClassLabel` column (a `label`/`labels` ClassLabel wins a tie)."""
    import datasets as hfd

    cols = ", ".join(feats)
    if lab_col is None and img_col is None:
        img_col, lab_col = _known_layout(feats)
    if img_col is None:
        found = [c for c, f in feats.items() if isinstance(f, hfd.Image)]
        if len(found) != 1:
            raise DataError(f"{name}: found {len(found)} image columns ({', '.join(found) or 'none'}); "
                            f"set data.image_column to one of: {cols}")
        img_col = found[0]
    elif img_col not in feats:
        raise DataError(f"{name}: image column {img_col!r} does not exist; available columns: {cols}")
    if lab_col is None:
        found = [c for c, f in feats.items() if isinstance(f, hfd.ClassLabel)]
        preferred = [c for c in ("label", "labels") if c in found]
        if len(found) == 1 or preferred:
            lab_col = (preferred or found)[0]
        else:
            raise DataError(f"{name}: found {len(found)} ClassLabel columns ({', '.join(found) or 'none'}); "
                            f"name one in the source, e.g. hf:{arg}#label={(found or ['label'])[0]}, "
                            f"or set data.label_column (training set only); columns: {cols}")
    elif lab_col not in feats:
        raise DataError(f"{name}: label column {lab_col!r} does not exist; available columns: {cols}")
    return img_col, lab_col


def _hf_labels(d: Any, lab_col: str, name: str) -> np.ndarray:
    """A split's labels, shape (N,) int64; unlabeled rows (-1) are an error."""
    table = d.select_columns([lab_col]).with_format("arrow")[:]  # fast: no per-row Python
    lab = np.asarray(table[lab_col].to_numpy(), dtype=np.int64)
    if (lab < 0).any():
        raise DataError(f"{name}: label column {lab_col!r} has unlabeled rows (-1)")
    return lab


def _column_options(arg: str, image: str | None, label: str | None) -> tuple[str, str | None, str | None]:
    """Split `<id or dir>#label=<col>,image=<col>` into (id or dir, image column, label column)."""
    arg, sep, opts = arg.partition("#")
    for item in opts.split(",") if sep else []:
        key, eq, value = item.partition("=")
        if key.strip() not in ("label", "image") or not eq or not value.strip():
            raise DataError(f"hf:{arg}#{opts}: expected #label=<column>,image=<column>")
        if key.strip() == "label":
            label = value.strip()
        else:
            image = value.strip()
    return arg, image, label


def _known_layout(feats: Any) -> tuple[str | None, str | None]:
    """The pinned (image, label) columns of a shortcut whose layout `feats` has (a local copy
    of CIFAR-100 saved with `save_to_disk` has img, fine_label, coarse_label), else (None, None)."""
    for spec in HF_SHORTCUTS.values():
        if spec["image"] in feats and spec["label"] in feats and spec["label"] not in ("label", "labels"):
            return spec["image"], spec["label"]
    return None, None


def _imagefolder(arg: str, cfg: Any, image_size: int) -> Source:
    if not arg:
        raise DataError("imagefolder: needs a path, e.g. imagefolder:/data/flowers")
    root = Path(arg).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"imagefolder: {root} does not exist or is not a directory")
    train_dir = root / "train"
    test_dir = next((root / k for k in _TEST_SPLIT_NAMES if (root / k).is_dir()), None)
    dirs = {"train": train_dir, "test": test_dir} if train_dir.is_dir() else {"all": root}
    dirs = {k: v for k, v in dirs.items() if v is not None}

    def subdirs(d: Path) -> list[str]:
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))

    classes = sorted(set().union(*(subdirs(d) for d in dirs.values())))
    if not classes:
        raise DataError(f"imagefolder: no class sub-folders in {root}")
    listed: dict[str, tuple[list[str], np.ndarray, str]] = {}
    for split, d in dirs.items():
        paths, labels, lines = [], [], []
        for c, cls in enumerate(classes):
            cdir = d / cls
            if not cdir.is_dir():
                continue
            files = sorted(p for p in cdir.rglob("*")
                           if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                           and not p.name.startswith("."))
            if not files:
                raise DataError(f"imagefolder: empty class folder {cdir} (no image files)")
            for p in files:
                st = p.stat()
                paths.append(str(p))
                labels.append(c)
                lines.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
        lab = np.asarray(labels, dtype=np.int64)
        listed[split] = (paths, lab, _sha(lines, lab))

    def make(paths: list[str], lab: np.ndarray, fp: str) -> RawSplit:
        return RawSplit(lab, fp, FileReader(paths))

    if "all" in listed or "test" not in listed:
        paths, lab, fp = listed.get("all", listed.get("train"))
        splits = _subset_pair(lab, lambda idx: make([paths[i] for i in idx], lab[idx], _sha(fp, idx)))
    else:
        splits = {k: make(*listed[k]) for k in ("train", "test")}
    return Source(f"imagefolder:{root}", list(classes), splits)


def _torchvision(arg: str, cfg: Any, image_size: int) -> Source:
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise DataError(f"torchvision:{arg} needs torchvision, which is not installed "
                        "(pip install torchvision)") from None
    cls = getattr(tvd, arg, None)
    if not inspect.isclass(cls):
        raise DataError(f"torchvision.datasets has no dataset {arg!r}")
    root = Path(cfg.data_root).expanduser() if getattr(cfg, "data_root", None) else None
    if root is None:
        root = cache_root(cfg) / "torchvision"
    params = inspect.signature(cls).parameters
    kw: dict[str, Any] = {"download": True} if "download" in params else {}
    splits: dict[str, RawSplit] = {}
    class_names: list[str] = []
    for split in ("train", "test"):
        if "train" in params:
            kw["train"] = split == "train"
        elif "split" in params:
            kw["split"] = split
        else:
            raise DataError(f"torchvision.datasets.{arg} takes neither train= nor split=")
        try:
            ds = cls(str(root), **kw)
        except Exception as e:
            raise DataError(f"could not load torchvision:{arg} ({split}) from {root}: {e}") from None
        targets = getattr(ds, "targets", None)
        if targets is None:
            targets = [ds[i][1] for i in range(len(ds))]  # slow path: decodes every image
        lab = np.asarray(targets, dtype=np.int64)
        class_names = [str(c) for c in getattr(ds, "classes", range(int(lab.max()) + 1))]
        splits[split] = RawSplit(lab, _sha(arg, split, len(ds), lab), TorchvisionReader(ds, arg))
    return Source(f"torchvision:{arg}", class_names, splits)


def _digits(arg: str, cfg: Any, image_size: int) -> Source:
    from sklearn.datasets import load_digits

    d = load_digits()  # bundled with scikit-learn: 1,797 8×8 images, values 0..16
    pixels = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    labels = d.target.astype(np.int64)
    splits = _subset_pair(labels, lambda idx: RawSplit(labels[idx], _sha("digits", idx, labels[idx]),
                                                       ArrayReader(pixels[idx])))
    return Source("digits", list(_DIGIT_NAMES), splits)


# Synthetic sets at least this large are kept on disk (memory-mapped, shared by every
# process of a packed study); generating 21,600 images at 224 px takes ~50 s of CPU.
SYNTHETIC_DISK_MIN = 4096


def _synthetic_split(cfg: Any, n: int, image_size: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic split; from `<cache>/synthetic/<n>-<classes>-<S>-<seed>-<split>/` when
    it is large, verified there against its manifest.json (every image and label hashed),
    else made again with a warning: a changed pixel never reaches a run."""
    import warnings

    from .cache import images_hash

    args = (n, cfg.synthetic_classes, image_size, cfg.split_seed, split)
    if n < SYNTHETIC_DISK_MIN:
        made = synthetic(n, cfg.synthetic_classes, image_size, seed=cfg.split_seed, split=split)
        return made.images, made.labels
    d = cache_root(cfg) / "synthetic" / "-".join(map(str, args))
    if d.exists():
        problem = _synthetic_problem(d, n, image_size)
        if problem is None:
            return np.load(d / "images.npy", mmap_mode="r"), np.load(d / "labels.npy")
        warnings.warn(f"synthetic set {d} is {problem}; making it again", stacklevel=2)
    made = synthetic(n, cfg.synthetic_classes, image_size, seed=cfg.split_seed, split=split)
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").unlink(missing_ok=True)  # the arrays change now: no manifest vouches for them
    for name, arr in (("labels.npy", made.labels), ("images.npy", made.images)):
        with _io.atomic_path(d / name) as tmp, _io.open_output(tmp) as fh:
            np.save(fh, arr)
    _io.write_json(d / "manifest.json", {"shape": list(made.images.shape), "images_hash": images_hash(made.images),
                                         "labels_hash": images_hash(made.labels)})  # last
    return made.images, made.labels


def _synthetic_problem(d: Path, n: int, image_size: int) -> str | None:
    """Why the on-disk synthetic set `d` cannot be used, or None when it verifies."""
    from .cache import images_hash

    try:
        m = _io.read_json_checked(d / "manifest.json", ("shape", "images_hash", "labels_hash"))
        images = np.load(d / "images.npy", mmap_mode="r")
        labels = np.load(d / "labels.npy")
    except Exception as exc:  # noqa: BLE001 - missing, truncated, not .npy (OSError, ValueError, EOFError, ...)
        return f"incomplete or damaged ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]})"
    if images.shape != (n, 3, image_size, image_size) or labels.shape != (n,) or m["shape"] != list(images.shape):
        return f"damaged (images {list(images.shape)}, labels {list(labels.shape)})"
    algo = str(m["images_hash"]).split(":", 1)[0]
    if images_hash(images, algo) != m["images_hash"] or images_hash(labels, algo) != m["labels_hash"]:
        return "damaged (checksum mismatch: changed after it was written)"
    return None


def _synthetic(arg: str, cfg: Any, image_size: int) -> Source:
    sets = {s: _synthetic_split(cfg, n, image_size, s)
            for s, n in (("train", cfg.synthetic_train), ("test", cfg.synthetic_test))}
    splits = {s: RawSplit(labels, "synthetic", ready=images) for s, (images, labels) in sets.items()}
    return Source("synthetic", [f"class {c}" for c in range(cfg.synthetic_classes)], splits)


SOURCES: dict[str, Callable[..., Source]] = {
    "hf": _hf,
    "imagefolder": _imagefolder,
    "torchvision": _torchvision,
    "digits": _digits,
    "synthetic": _synthetic,
}


def known_sources() -> list[str]:
    return sorted(HF_SHORTCUTS) + ["digits", "synthetic", "hf:<id or dir>",
                                   "imagefolder:<path>", "torchvision:<Name>"]


def resolve(source: str, cfg: Any, *, image_size: int) -> Source:
    """The `Source` a config string names.

    Args:
        source: a `HF_SHORTCUTS` name or "<kind>:<argument>" with kind in `SOURCES`.
        cfg: a `config.DataConfig`.
        image_size: the model's input resolution S (synthetic images are made at S).
    """
    if source in HF_SHORTCUTS:
        s = HF_SHORTCUTS[source]
        return _hf(s["id"], cfg, image_size, image_column=s["image"], label_column=s["label"])
    kind, sep, arg = source.partition(":")
    fn = SOURCES.get(kind)
    if fn is None or (kind in ("digits", "synthetic") and sep):
        raise DataError(f"unknown data source {source!r}; known: {', '.join(known_sources())}")
    return fn(arg, cfg, image_size)
