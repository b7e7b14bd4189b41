"""`maps`: where [CLS] looks, drawn over the images, for one model or two side by side.

Each map is a layer's [CLS]→patch row (prefix tokens dropped, renormalised) laid out on
the patch grid, averaged over heads or for chosen heads. All panels of a figure share one
colour scale (0 to the largest value drawn) with one colour bar; with a second model
(`vs`), its panel stands right of the first model's for the same layer and head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import time

from .. import _io
from .._device import resolve_device
from ..measure import patch_rows
from .explore import PAGE_IMAGES, keep_page_maps, layer_curves, page_maps
from .images import InputError, load_images
from .load import Loaded, load_any
from .page import bundle_of, write_page
from .measuring import layer_stats
from .per_image import per_image_metrics, stream
from .plots import maps_figure, short_name, write_png


FIGURE_ROWS = 16
"""Images drawn in maps.png at most (maps.npz holds every one): constrained layout grows
faster than linearly with the rows (measured: 20 rows 4.6 s, 40 rows 26 s, 80 rows 76 s;
360 rows took 493 s), and a PNG hundreds of rows tall is not read anyway."""


def default_layers(n_layers: int) -> list[int]:
    """First, middle and last layer, 1-based."""
    return sorted({1, n_layers // 2 + 1, n_layers})


def _check(models: list[Loaded], layers: list[int], heads: list[int] | None, n_heads: list[int]) -> None:
    for m, h in zip(models, n_heads):
        bad = [x for x in layers if not 1 <= x <= m.layers]
        if bad:
            raise InputError(f"--layers {bad[0]}: {m.spec} has layers 1 to {m.layers}")
        bad = [x for x in heads or [] if not 1 <= x <= h]
        if bad:
            raise InputError(f"--heads {bad[0]}: {m.spec} has heads 1 to {h}")


def attention_maps(model: str, images: str, *, vs: str | None = None, layers: list[int] | None = None,
                   heads: list[int] | None = None, limit: int | None = 4, seed: int = 0,
                   out: str | Path | None = None, batch_size: int = 64, device: str = "auto",
                   preprocess: str = "original", alpha: str = "drop") -> dict:
    """[CLS]→patch maps of one model (or two: `vs`) over images (`attncollapse maps`).

    Args:
        model: a MODEL argument; vs: a second one, drawn beside it on the same scale.
        images: an IMAGES argument; limit: a seeded sample of this many (default 4; None = all).
        layers: 1-based layers (default first, middle, last).
        heads: 1-based heads, one panel each; None = the mean over heads.
        out: directory for maps.png, maps.npz, maps.html (the explorer page: every layer and
            head of the first PAGE_IMAGES images) and maps.json (provenance); None = write nothing.

    Returns:
        {"maps": (N, C, g, g) array, "columns": [C labels], "names": [N image names],
        "layers", "heads", "models", "vmax", "files"}.

    Raises:
        InputError: a layer or head out of range, or `vs` with another patch grid.
    """
    t0 = time.perf_counter()
    dev = str(resolve_device(device))
    imgs = load_images(images, limit=limit, seed=seed)
    models = [load_any(s, device=dev) for s in [model] + ([vs] if vs else [])]
    if len(models) == 2 and models[0].grid != models[1].grid:
        a, b = models
        raise InputError(f"{a.spec} has a {a.grid[0]}×{a.grid[1]} patch grid and {b.spec} a {b.grid[0]}×{b.grid[1]} "
                         "one: their maps cannot stand on one grid; give two models with the same patch grid")
    layers = list(layers) if layers else default_layers(min(m.layers for m in models))
    n_heads = [_heads(m) for m in models]
    _check(models, layers, heads, n_heads)
    chunks: list[np.ndarray] = []
    shown: list = []
    values: list[list[np.ndarray]] = [[] for _ in models]

    def reduce(rows):
        keep_page_maps(shown, rows, PAGE_IMAGES)
        for v, r in zip(values, rows):
            v.append(per_image_metrics(r).cpu().numpy())
        per_model = []
        for r in rows:
            a = patch_rows(r[[x - 1 for x in layers]]).double()  # (l, B, H, P)
            a = a.mean(2, keepdim=True) if heads is None else a[:, :, [h - 1 for h in heads]]
            per_model.append(a.permute(1, 0, 2, 3).cpu().numpy())  # (B, l, h, P)
        # columns: layer, then head, then model (A and B side by side)
        chunks.append(np.stack(per_model, 3).reshape(len(per_model[0]), -1, per_model[0].shape[-1]))

    stream(models, imgs, reduce, batch_size=batch_size, geometry=preprocess, alpha=alpha, device=dev,
           desc=f"maps {model}")
    g = models[0].grid
    maps = np.concatenate(chunks).reshape(len(imgs), -1, *g)
    tags = ["A", "B"] if vs else [""]
    columns = [f"L{layer} {'mean' if heads is None else f'h{h}'}{' ' + t if t else ''}".strip()
               for layer in layers for h in (heads or [None]) for t in tags]
    result = {"maps": maps, "columns": columns, "names": list(imgs.names), "layers": layers,
              "heads": heads or "mean", "models": [m.record() for m in models], "images": imgs.record(),
              "vmax": float(maps.max())}
    if out is not None:
        pictures = imgs.read(0, len(imgs), models[0].image_size, preprocess, alpha)
        k = min(len(imgs), FIGURE_ROWS)
        result["figure_rows"] = k
        names = [short_name(m.spec) for m in models]
        title = (f"A = {names[0]}, B = {names[1]}" if vs else names[0]) + f" on {short_name(images)}"
        fig = maps_figure(pictures[:k], maps[:k], row_labels=list(imgs.names)[:k], col_labels=columns, title=title)
        out = Path(out)
        files = {"figure": write_png(fig, out / "maps.png"), "arrays": out / "maps.npz", "page": out / "maps.html",
                 "json": out / "maps.json"}
        with _io.atomic_path(files["arrays"]) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, maps=maps, pictures=pictures, columns=np.asarray(columns),
                                names=np.asarray(imgs.names), layers=np.asarray(layers))
        per_layer = [layer_stats(np.concatenate(v, 1)) for v in values]
        labels = [f"A: {n}" for n in names[:1]] + [f"B: {n}" for n in names[1:]] if vs else names
        _maps_page(files["page"], title, labels, page_maps(shown), pictures, imgs.names, per_layer)
        _io.write_json(files["json"], {
            "command": "maps", "models": result["models"], "images": result["images"],
            "settings": {"geometry": preprocess, "alpha": alpha, "forward_batch_size": batch_size,
                         "scale": "one colour scale for every panel: 0 to vmax"},
            "layers": layers, "heads": result["heads"], "columns": columns, "vmax": result["vmax"],
            "curves": {lab: lay for lab, lay in zip(labels, per_layer)}, "seconds": time.perf_counter() - t0,
            "env": _io.environment(), "files": {k: v.name for k, v in files.items()}})
        result["files"] = {k: str(v) for k, v in files.items()}
    return result


def _maps_page(path: Path, title: str, labels: list[str], maps: np.ndarray, pictures: np.ndarray,
               names: list[str], per_layer: list[dict]) -> Path:
    """maps.html: every layer and head of the first images, per model, beside the per-layer metrics."""
    n = maps.shape[2]
    two = len(labels) == 2
    prov = [f"{len(names)} images, maps of the first {n}; curves: mean over all {len(names)} images",
            "frame = a model" + ("; left: A, right: the chosen model" if two else "")]
    curves = layer_curves(list(zip(labels, per_layer)), maps.shape[-1],
                          title="metrics per layer (orange line: the chosen layer)")
    return write_page(path, bundle_of(title=f"maps: {title}", provenance=prov, frames=labels, frame_name="model",
                                      maps=maps, pictures=pictures[:n], names=names[:n], curves=curves,
                                      ref_label=labels[0] if two else None))


def _heads(m: Loaded) -> int:
    from ..measure.probe import attention_modules

    mod = attention_modules(m.tower)[0]
    return int(getattr(mod, "num_heads", None) or mod.config.num_attention_heads)
