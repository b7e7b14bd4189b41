"""`maps`: where [CLS] looks, drawn over the images, for one model or two side by side.

Each map is a layer's [CLS]→patch row (prefix tokens dropped, renormalised) laid out on
the patch grid, averaged over heads or for chosen heads. All panels of a figure share one
colour scale (0 to the largest value drawn) with one colour bar; with a second model
(`vs`), its panel stands right of the first model's for the same layer and head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import _io
from .._device import resolve_device
from ..measure import patch_rows
from .images import InputError, load_images
from .load import Loaded, load_any
from .per_image import stream
from .plots import maps_figure, write_png


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
        out: directory for maps.png and maps.npz; None = write nothing.

    Returns:
        {"maps": (N, C, g, g) array, "columns": [C labels], "names": [N image names],
        "layers", "heads", "models", "vmax", "files"}.

    Raises:
        InputError: a layer or head out of range, or `vs` with another patch grid.
    """
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

    def reduce(rows):
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
        fig = maps_figure(pictures[:k], maps[:k], row_labels=list(imgs.names)[:k], col_labels=columns)
        out = Path(out)
        files = {"figure": write_png(fig, out / "maps.png"), "arrays": out / "maps.npz"}
        with _io.atomic_path(files["arrays"]) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, maps=maps, pictures=pictures, columns=np.asarray(columns),
                                names=np.asarray(imgs.names), layers=np.asarray(layers))
        result["files"] = {k: str(v) for k, v in files.items()}
    return result


def _heads(m: Loaded) -> int:
    from ..measure.probe import attention_modules

    mod = attention_modules(m.tower)[0]
    return int(getattr(mod, "num_heads", None) or mod.config.num_attention_heads)
