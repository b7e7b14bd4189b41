"""The data stage's plain types and the few helpers every part of it shares.

`RawSplit`/`Source` describe images before preprocessing (sources.py), `ImageSet`/`Splits`
after (splits.py); `DataError` is every data problem found before training.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps


class DataError(ValueError):
    """A data problem found before training: bad source, path, column, image or size."""


# CLIP's image normalisation (openai/clip-vit-base-patch32 preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)

CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass
class RawSplit:
    """One split before preprocessing.

    Attributes:
        labels: (N,) int64 class indices.
        fingerprint: changes whenever the split's content changes (cache staleness check).
        reader: picklable object with `images(start, end) -> Iterator[PIL.Image.Image]`.
        ready: (N, 3, S, S) uint8 pixels already at the model size (not cached), or None.
    """

    labels: np.ndarray
    fingerprint: str
    reader: Any = None
    ready: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Source:
    """A resolved source string.

    Attributes:
        name: canonical id used in cache keys and records ("hf:tanganke/eurosat",
            "imagefolder:/abs/path", ...).
        class_names: human-readable class names (zero-shot prompts).
        splits: "train" and "test" `RawSplit`s.
    """

    name: str
    class_names: list[str]
    splits: dict[str, RawSplit]


@dataclass
class ImageSet:
    """Preprocessed images of one split.

    Attributes:
        images: (N, 3, S, S) uint8 array (possibly a read-only memory map).
        labels: (N,) int64 class indices.
        class_names: human-readable name of each class (`humanize`d; zero-shot prompts
            and text-initialised heads).
        name: "<source>/<split>" for messages and records.
        raw_class_names: the names as the source gives them (`aquarium_fish`, HF's `cra`),
            or None when they equal `class_names`; see `with_class_names`.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    name: str = "images"
    raw_class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, idx: np.ndarray, name: str | None = None) -> "ImageSet":
        """Images `idx` in the order given (the eval subset keeps its draw order)."""
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet(np.ascontiguousarray(self.images[idx]), self.labels[idx].copy(),
                        list(self.class_names), name or self.name, _copy(self.raw_class_names))

    def with_class_names(self, style: str) -> "ImageSet":
        """This set with `class_names` in `style`: "humanized" (`aquarium fish`; Flowers-102's
        flower names, `readable_names`) or "raw" (`aquarium_fish`, Flowers-102's '10', as the
        original study's prompts used them).

        Pixels and labels are shared, not copied.
        """
        if style not in ("raw", "humanized"):
            raise ValueError(f"class names style must be 'raw' or 'humanized', got {style!r}")
        raw = self.raw_class_names
        if raw is None:
            return self
        names = list(raw) if style == "raw" else readable_names(raw)
        return ImageSet(self.images, self.labels, names, self.name, list(raw))


def _copy(names: list[str] | None) -> list[str] | None:
    return None if names is None else list(names)


@dataclass
class Splits:
    """What one run trains and evaluates on.

    Attributes:
        train: the training images.
        val: the split used to select the best checkpoint (the test split under the
            original protocol "hub").
        test: the reported test split.
        eval_idx: indices into `test` of the fixed metric eval subset.
        protocol: the split protocol's name, recorded with every result.
    """

    train: ImageSet
    val: ImageSet
    test: ImageSet
    eval_idx: np.ndarray
    protocol: str = "hub"
    info: dict = field(default_factory=dict)
    probe: ImageSet | None = None
    """The unlabelled probe images of split "carve" (None under the other protocols)."""

    @property
    def eval_set(self) -> ImageSet:
        return self.test.subset(self.eval_idx, name=self.test.name + "[eval]")


def humanize(name: str) -> str:
    """A class name fit for "a photo of a {name}": underscores become spaces."""
    return " ".join(str(name).replace("_", " ").split())


# The 102 Oxford Flowers names in the dataset's official label order 1..102 (VGG's
# imagelabels.mat; the list CLIP's prompt-engineering notebook uses). nelorth/oxford-flowers
# names class k by the folder "k", so its readable names are FLOWERS102_NAMES[k - 1].
FLOWERS102_NAMES = (
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold",
    "tiger lily", "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon",
    "colt's foot", "king protea", "spear thistle", "yellow iris", "globe-flower", "purple coneflower",
    "peruvian lily", "balloon flower", "giant white arum lily", "fire lily", "pincushion flower",
    "fritillary", "red ginger", "grape hyacinth", "corn poppy", "prince of wales feathers",
    "stemless gentian", "artichoke", "sweet william", "carnation", "garden phlox", "love in the mist",
    "mexican aster", "alpine sea holly", "ruby-lipped cattleya", "cape flower", "great masterwort",
    "siam tulip", "lenten rose", "barbeton daisy", "daffodil", "sword lily", "poinsettia",
    "bolero deep blue", "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion",
    "petunia", "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura",
    "geranium", "orange dahlia", "pink-yellow dahlia", "cautleya spicata", "japanese anemone",
    "black-eyed susan", "silverbush", "californian poppy", "osteospermum", "spring crocus",
    "bearded iris", "windflower", "tree poppy", "gazania", "azalea", "water lily", "rose",
    "thorn apple", "morning glory", "passion flower", "lotus", "toad lily", "anthurium", "frangipani",
    "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia", "cyclamen",
    "watercress", "canna lily", "hippeastrum", "bee balm", "ball moss", "foxglove", "bougainvillea",
    "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower", "trumpet creeper",
    "blackberry lily",
)


def readable_names(names: list[str]) -> list[str]:
    """Class names fit for prompts: `humanize`d, or, for Flowers-102's folder-number labels,
    the flower names.

    nelorth/oxford-flowers (the original study's Flowers-102) is recognised by its exact
    ClassLabel names ('1', '10', '100', ... in string order), so a copy saved with
    `save_to_disk` (`hf:<dir>`) reads as the hub id does.
    """
    numbers = sorted(str(k) for k in range(1, len(FLOWERS102_NAMES) + 1))
    if [str(n) for n in names] == numbers:
        return [FLOWERS102_NAMES[int(n) - 1] for n in names]
    return [humanize(n) for n in names]


def open_image(src: str | os.PathLike | io.BytesIO, name: str) -> Image.Image:
    """Open and fully decode one image, upright, naming the file if it cannot be read.

    An EXIF orientation tag is applied (`PIL.ImageOps.exif_transpose`), exactly when
    `datasets.Image.decode_example` applies it (the tag is present), so an `hf:` source
    decoded here gives the pixels the original study's `datasets` loader gave it.
    Grey images of more than 8 bits are scaled to 8 bits (`to_8bit`), not clipped.
    """
    try:
        img = Image.open(src)
        img.load()
        if img.getexif().get(ExifTags.Base.Orientation) is not None:
            img = ImageOps.exif_transpose(img)
    except Exception as e:  # PIL raises many types; all mean "this file is bad"
        msg = " ".join(str(e).split())
        raise DataError(f"unreadable image {name}: {type(e).__name__}: {msg}") from None
    return to_8bit(img, name)


# Grey modes PIL decodes at more than 8 bits; `convert("RGB")` clips them at 255 instead
# of scaling (a 16-bit PNG comes out almost all white, a [0, 1] float image black).
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_SIXTEEN_BIT_CONTAINERS = ("PNG", "PPM")  # 16-bit grey PGM decodes as mode "I"


def to_8bit(img: Image.Image, name: str) -> Image.Image:
    """An 8-bit ("L") image of a 16-bit or float grey image; any other image unchanged.

    16-bit pixels v become round(255·v / 65535) (so v = 257·u gives back the 8-bit u);
    float pixels must lie in [0, 1] and become round(255·v). Anything else is refused.

    Raises:
        DataError: 32-bit integer pixels, or float pixels outside [0, 1] (naming the file).
    """
    mode = img.mode
    if mode not in _SIXTEEN_BIT + ("I", "I;16S", "F"):
        return img
    a = np.asarray(img, dtype=np.float64)
    if mode == "F":
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise DataError(f"unreadable image {name}: float pixels from {a.min():g} to {a.max():g}, not in "
                            "[0, 1]; save it as an 8- or 16-bit image, or scale its values to [0, 1]")
        return Image.fromarray(np.round(a * 255).astype(np.uint8))
    sixteen = mode in _SIXTEEN_BIT or (mode == "I" and img.format in _SIXTEEN_BIT_CONTAINERS)
    if not sixteen or a.min() < 0 or a.max() > 65535:
        raise DataError(f"unreadable image {name}: {mode} pixels ({'signed' if a.min() < 0 else '32-bit'} "
                        "integers) have no known white level; save it as an 8- or 16-bit image")
    return Image.fromarray(np.round(a * (255 / 65535)).astype(np.uint8))


def stratified_split(labels: np.ndarray, test_frac: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/test indices (scikit-learn `train_test_split`).

    Args:
        labels: (N,) class indices.
        test_frac: fraction (float) or count (int) of the test part.
        seed: `random_state`.

    Returns:
        (train_idx, test_idx), each sorted int64.
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    try:
        tr, te = train_test_split(idx, test_size=test_frac, stratify=labels, random_state=seed)
    except ValueError as e:
        raise DataError(f"cannot split {len(labels)} images stratified ({test_frac}): {e}") from None
    return np.sort(tr).astype(np.int64), np.sort(te).astype(np.int64)


def cache_root(cfg: Any = None) -> Path:
    """DataConfig.cache_dir, else $ATTNCOLLAPSE_CACHE, else ~/.cache/attncollapse."""
    d = getattr(cfg, "cache_dir", None) or os.environ.get("ATTNCOLLAPSE_CACHE") or "~/.cache/attncollapse"
    return Path(d).expanduser()
