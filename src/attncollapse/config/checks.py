"""Checks a schema cannot make: local paths (model and dataset directories, cache_dir),
and warnings for settings that are legal but almost surely typos.

`validate.py` calls the path checks while validating (they are errors, reported with every
other problem); `prepare` is the one code path `attncollapse validate` and `run` share:
the same file reading, the same errors, the same warnings.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from ..data import HF_SHORTCUTS
from ..data import known_sources as listed_sources
from ..data.base import IMAGE_EXTENSIONS
from ..models import PRESETS, image_size, num_layers

# Weight files a local Hugging Face model directory may hold (transformers' names).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")

# A hub id: owner/name of letters, digits, '-', '_', '.' (huggingface_hub's rule, simplified).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Training images of the named sources under their hub split (order of magnitude is all
# the warnings need); other sources are not counted without reading them.
KNOWN_TRAIN_IMAGES = {"eurosat": 21_600, "pets": 3_680, "cifar100": 50_000, "digits": 1_437}

# Throughput behind "a day of GPU time": ViT-B/32 full fine-tuning at 224 px, fp16, on
# one A100-class GPU, is ~2,000 images/s (the reports' setting); a smaller model is faster,
# so this errs toward warning late, never early.
IMAGES_PER_GPU_DAY = 2_000 * 86_400

# Vision-tower depth of hub ids named like OpenAI's CLIP releases.
_HUB_DEPTH = {"base": 12, "large": 24, "huge": 32}


def looks_local(spec: str) -> bool:
    """A model or dataset spec meant as a path (absolute, ./, ../, ~, or existing)."""
    return spec.startswith(("/", ".", "~")) or Path(spec).expanduser().exists()


def hub_model_id(spec: str) -> str | None:
    """The hub repo a model spec downloads from, or None (a preset or a local directory)."""
    return None if spec in PRESETS or looks_local(spec) else spec


def hub_dataset_id(source: str) -> str | None:
    """The hub dataset repo a source downloads from (`eurosat` → tanganke/eurosat,
    `hf:owner/name`), or None (local directory, imagefolder, synthetic, digits, torchvision)."""
    if source in HF_SHORTCUTS:
        return HF_SHORTCUTS[source]["id"]
    kind, _, arg = source.partition(":")
    arg = arg.partition("#")[0]
    return arg if kind == "hf" and arg and not looks_local(arg) else None


def model_dir_problem(spec: str) -> str | None:
    """Why a local model spec cannot load (missing, a file, no config.json, no weights), or None."""
    p = Path(spec).expanduser()
    if not p.exists():
        return f"model directory {p} does not exist"
    if p.is_file():
        if p.suffix in (".pt", ".bin", ".safetensors"):
            return (f"{p} is a checkpoint file, not a model directory; convert it with "
                    f"`attncollapse convert {p} <dir>` and give <dir> as model")
        return f"{p} is a file, not a model directory"
    if not (p / "config.json").is_file():
        return f"model directory {p} has no config.json (not a Hugging Face model directory)"
    if not any((p / w).is_file() for w in WEIGHT_FILES) and not any(p.glob("*.safetensors")):
        return f"model directory {p} has no weights ({', '.join(WEIGHT_FILES[::2])})"
    return None


def hub_id_problem(spec: str) -> str | None:
    """Why `spec` (neither a preset nor a local path) is not a hub id, or None."""
    if _HUB_ID.match(spec):
        return None
    return (f"{spec!r} is neither an existing directory nor a hub id (owner/name); a local "
            "model must be a directory holding config.json and weights")


def source_path_problem(source: str) -> str | None:
    """Why a path-based dataset source cannot be read (missing folder, no images), or None."""
    kind, _, arg = source.partition(":")
    if kind == "imagefolder" and arg:
        return _imagefolder_problem(Path(arg).expanduser())
    if kind == "hf" and arg and looks_local(arg.partition("#")[0]):
        p = Path(arg.partition("#")[0]).expanduser()
        if not p.is_dir():
            return (f"hf: dataset directory {p} does not exist (save one with "
                    "`datasets.load_dataset(...).save_to_disk(dir)`)")
    return None


def _imagefolder_problem(root: Path) -> str | None:
    if not root.is_dir():
        return f"imagefolder: {root} does not exist or is not a directory"
    base = root / "train" if (root / "train").is_dir() else root
    classes = [d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if not classes:
        return f"imagefolder: no class sub-folders in {base} (expected {base}/<class>/<image>)"
    for d in classes:  # one image anywhere is enough here; the loader checks every folder
        if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in d.rglob("*")):
            return None
    return f"imagefolder: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {base}"


def dir_setting_problem(value: Any) -> str | None:
    """Why a directory setting (cache_dir, data_root) cannot be a directory: it, or a
    folder above it, is a file. None when it is or can be created."""
    if not isinstance(value, str):
        return None
    p = Path(value).expanduser()
    for q in (p, *p.parents):
        if q.is_symlink() and not q.exists():  # exists() is False for a loop and a dangling link
            try:
                q.resolve(strict=True)
            except RuntimeError:
                return f"{q} is a symlink loop; point it at a real directory or remove it"
            except OSError:
                return f"{q} is a symlink to nothing ({os.readlink(q)}); point it at a real directory or remove it"
        if q.exists():
            return None if q.is_dir() else f"{q} is a file, so {p} cannot be a directory"
    return None


def device_problem(device: str) -> str | None:
    """Why this machine cannot run on `device` ("cuda" without a GPU, "cuda:3" with two), or None."""
    import torch  # only here: the device checks are the one part of validation that needs it

    if device.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            return (f"{device}: this machine has no CUDA GPU (torch {torch.__version__}); use auto (CUDA when "
                    "present, else CPU) or cpu, or validate on the machine that will run it")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= n:
            return f"{device}: this machine has {n} CUDA GPU{'s' * (n != 1)} (cuda:0..cuda:{n - 1})"
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        return "mps: this machine has no Apple GPU; use auto or cpu"
    return None


def _read_config(spec: str, read) -> int | None:
    """`read(spec)` for a preset or a local model directory (its config, no weights); None for
    anything else, or an unreadable config.json."""
    p = Path(spec).expanduser()
    if (p / "config.json").is_file() or ("/" not in spec and not p.exists() and spec in PRESETS):
        try:
            return read(str(p) if p.exists() else spec)
        except Exception:  # noqa: BLE001 - an unreadable config.json: the value is unknown
            return None
    return None


def model_image_size(spec: str) -> int | None:
    """Input resolution of a preset or a local model directory, without loading weights (224 for
    hub ids named like OpenAI's CLIP releases); None when unknown without the hub."""
    size = _read_config(spec, image_size)
    if size is None and re.search(r"clip-vit-(base|large|huge)-patch\d+", spec.lower()):
        return 224
    return size


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (Linux MemAvailable; else physical), or None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def synthetic_problems(model: str | None, classes: int | None, train: int | None,
                       test: int | None) -> list[tuple[str, str]]:
    """(field, message) for a `synthetic` source this machine cannot make or learn from."""
    errs = []
    for key, n in (("data.synthetic_train", train), ("data.synthetic_test", test)):
        if classes and n and n < classes:
            errs.append((key, f"{n} images for {classes} classes (data.synthetic_classes): every class needs "
                              f"at least one; raise {key} to ≥ {classes} or lower data.synthetic_classes"))
    size = model_image_size(model) if model else None
    free = available_memory()
    if size and train and test and free:
        need = (train + test) * 3 * size * size  # uint8 (N, 3, S, S), made in memory before it is cached
        if need > free:
            errs.append(("data.synthetic_train",
                         f"{train:,} + {test:,} synthetic images at {size} px need {need / 2**30:.3g} GiB of memory; "
                         f"this machine has {free / 2**30:.3g} GiB available: lower data.synthetic_train / "
                         "data.synthetic_test"))
    return errs


def model_depth(spec: str) -> int | None:
    """Encoder layers of a model spec, where knowable without loading weights.

    Presets (models.PRESETS), local directories with a config.json, and hub ids named
    like OpenAI's releases (`*clip-vit-base-patch32*` → 12); None when unknown.
    """
    depth = _read_config(spec, num_layers)
    if depth is None and (m := re.search(r"clip-vit-(base|large|huge)-patch\d+", spec.lower())):
        return _HUB_DEPTH[m.group(1)]
    return depth


def model_problem(spec: str) -> str | None:
    """Why `spec` is not a preset, a loadable local model directory or a hub id, or None."""
    if looks_local(spec):
        return model_dir_problem(spec)
    if "/" in spec:
        return hub_id_problem(spec)  # reachability: the runner's preflight, before any task
    if spec not in PRESETS:
        return (f"unknown model {spec!r}: not a preset ({', '.join(PRESETS)}), "
                "not an existing directory and not a hub id (owner/name)")
    return None


def source_forms() -> tuple[list[str], tuple[str, ...]]:
    """(named sources, "kind:" prefixes) a dataset may be: from `sources.known_sources()`."""
    entries = listed_sources()
    return ([e for e in entries if ":" not in e],
            tuple(e.split(":")[0] + ":" for e in entries if ":" in e))


def source_problem(source: str) -> str | None:
    """Why `source` is not a dataset source (or names a missing local folder), or None."""
    names, prefixes = source_forms()
    if source in names or (source.startswith(prefixes) and source.split(":", 1)[1]):
        return source_path_problem(source)
    return (f"unknown dataset source {source!r}; valid: {', '.join(names)}, "
            f"or {', '.join(p + '<...>' for p in prefixes)}")


def train_images(cfg: Any) -> int | None:
    """Training images of a RunConfig, where knowable without reading the data."""
    n = cfg.data.synthetic_train if cfg.dataset == "synthetic" else KNOWN_TRAIN_IMAGES.get(cfg.dataset)
    cap = cfg.data.max_train_images
    return cap if n is None else (n if cap is None else min(n, cap))


def run_warnings(cfg: Any) -> list[str]:
    """Legal settings of one RunConfig that are almost surely typos, each a sentence."""
    out = []
    n = train_images(cfg)
    bs, epochs, ppe = cfg.optim.batch_size, cfg.optim.epochs, cfg.eval.points_per_epoch
    images = math.ceil(max(n or 1, 1) / bs) * bs * epochs  # at least one image per epoch
    if images > IMAGES_PER_GPU_DAY:
        out.append(f"optim.epochs {epochs:g} × {n or '≥1'} images is {images:.2g} training images: "
                   f"≈{images / IMAGES_PER_GPU_DAY:.2g} GPU-days at ~2,000 images/s")
    if cfg.data.max_train_images == 1 or n == 1:
        out.append("a single training image (data.max_train_images: 1?)")
    if n is not None and bs > n:
        out.append(f"optim.batch_size {bs} > the {n} training images (every step sees them all)")
    cores = os.cpu_count() or 1
    if cfg.cpu_threads is not None and cfg.cpu_threads > cores:
        out.append(f"cpu_threads {cfg.cpu_threads} > this machine's {cores} cores: the threads wait on each "
                   "other (measured up to 20× slower); set cpu_threads ≤ the cores or leave it unset")
    if n is not None and ppe > math.ceil(n / bs):
        out.append(f"eval.points_per_epoch {ppe} > the {math.ceil(n / bs)} steps per epoch "
                   "(one eval point per step at most)")
    return out


def collect_warnings(configs: list[tuple[str, Any]]) -> list[str]:
    """`run_warnings` of each (run id, RunConfig), the same sentence for many runs said once."""
    seen: dict[str, list[str]] = {}
    for rid, cfg in configs:
        for w in run_warnings(cfg):
            seen.setdefault(w, []).append(rid)
    return [f"{', '.join(ids[:4])}{' …' if len(ids) > 4 else ''}: {w}" for w, ids in seen.items()]


def design_warnings(planned: list[Any]) -> list[str]:
    """A controlled matrix whose method × lr grid is not crossed on some dataset, each a sentence.

    The design exists to tell the method's effect from the learning rate's; a matrix that
    trains each method at its own lr (or leaves cells out) is legal but cannot, so
    `validate` and `run` say so before any work.

    Args:
        planned: the matrix's PlannedRuns (`MatrixConfig.expand()`).
    """
    by_ds: dict[str, dict[tuple[str, float], set]] = {}
    for p in planned:
        c = p.config
        by_ds.setdefault(c.dataset, {}).setdefault((c.method, float(c.optim.lr)), set()).add(c.seed)
    out = []
    for ds, cells in by_ds.items():
        methods = list(dict.fromkeys(me for me, _ in cells))
        lrs = sorted({lr for _, lr in cells})
        shared = [lr for lr in lrs if all((me, lr) in cells for me in methods)]
        only = "; ".join(f"{me} only at lr {', '.join(f'{lr:g}' for lr in lrs if (me, lr) in cells and lr not in shared)}"
                         for me in methods if any((me, lr) in cells and lr not in shared for lr in lrs))
        if len(methods) < 2:
            out.append(f"design: controlled, dataset {ds}: only method {methods[0]} — no method effect can be estimated")
        elif not shared:
            out.append(f"design: controlled, dataset {ds}: method and learning rate are confounded ({only}), so a "
                       "difference between methods cannot be told from one of learning rates; put every method on "
                       "one lr grid (sweep: {method: [full, lora], optim.lr: [...]})")
        elif shared != lrs:
            out.append(f"design: controlled, dataset {ds}: the method × lr grid is incomplete ({only}); the two-way "
                       "ANOVA needs every cell and methods are compared only at lr "
                       + ", ".join(f"{lr:g}" for lr in shared))
        counts = {len(s) for s in cells.values()}
        if len(counts) > 1:
            out.append(f"design: controlled, dataset {ds}: cells have {min(counts)} to {max(counts)} seeds; "
                       "unequal replicates weaken the ANOVA")
    return out
