"""`measure` and `compare`: per-layer metrics of any model on any images, with provenance.

measure: the four metrics of every image and layer (entropy, ERF and Gini averaged over
heads; head diversity of the image's own heads), then mean and SD over images per layer.
compare: the same images through two models (each at its own input size and
normalisation), the same table for both with Δ and Δ%, and the per-image map drift: the
Jensen-Shannon divergence between the two head-averaged [CLS]→patch maps, per layer.

Nothing is written until every image has been measured; each file is written atomically,
the JSON last.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np

from .. import _io
from .._device import resolve_device
from ..measure import METRICS, delta_pct
from .images import InputError, load_images
from .load import load_any
from .per_image import ERF_Q, head_mean_maps, js_divergence, mean_sd, per_image_metrics, stream
from .plots import metrics_figure, write_png

SPREAD = "sample SD over images (ddof 1)"
_VERSIONS = ("attncollapse", "torch", "transformers", "peft", "git_commit")


def _settings(preprocess: str, alpha: str, batch_size: int) -> dict:
    return {"geometry": preprocess, "alpha": alpha, "forward_batch_size": batch_size, "erf_q": ERF_Q,
            "diversity": "per_image", "spread": SPREAD, "entropy_unit": "nats"}


def _layers(values: np.ndarray) -> dict:
    """(L, N, 4) per-image values → {metric: {"mean": [L], "sd": [L]}}."""
    mean, sd = mean_sd(values)
    return {m: {"mean": mean[:, k].tolist(), "sd": sd[:, k].tolist()} for k, m in enumerate(METRICS)}


def measure_model(model: str, images: str, *, out: str | Path | None = None, limit: int | None = None,
                  seed: int = 0, batch_size: int = 64, device: str = "auto", preprocess: str = "original",
                  alpha: str = "drop") -> dict:
    """Per-layer attention metrics of one model over a set of images (`attncollapse measure`).

    Args:
        model: a MODEL argument (`lab.load_any`: preset, directory, adapter, run, checkpoint, hub id).
        images: an IMAGES argument (`lab.load_images`: folder, class folders, list file, source).
        out: directory for measure.csv, measure.json and measure.png; None = write nothing.
        limit: measure a seeded sample of this many images (`seed`); None = all.
        batch_size: images per forward pass.
        device: "auto", "cpu", "cuda", ...
        preprocess, alpha: the data stage's geometry ("original" | "clip") and alpha ("drop" | "white").

    Returns:
        {"model": {...}, "images": {...}, "settings": {...}, "layers": {metric: {"mean": [L],
        "sd": [L]}}, "mean": {metric: mean over layers}, "seconds", "env", "files"}.
    """
    t0 = time.perf_counter()
    dev = str(resolve_device(device))
    imgs = load_images(images, limit=limit, seed=seed)
    m = load_any(model, device=dev)
    parts: list[np.ndarray] = []
    stream([m], imgs, lambda rows: parts.append(per_image_metrics(rows[0]).cpu().numpy()), batch_size=batch_size,
           geometry=preprocess, alpha=alpha, device=dev, desc=f"measure {model}")
    values = np.concatenate(parts, axis=1)  # (L, N, 4)
    layers = _layers(values)
    result = {"command": "measure", "model": m.record(), "images": imgs.record(),
              "settings": {**_settings(preprocess, alpha, batch_size), "mean": list(m.mean), "std": list(m.std)},
              "layers": layers, "mean": {k: float(np.mean(v["mean"])) for k, v in layers.items()},
              "seconds": time.perf_counter() - t0, "env": _io.environment()}
    if out is not None:
        result["files"] = _write(Path(out), "measure", result, _measure_rows(result),
                                 metrics_figure([(model, layers)], title=f"{model} on {images} ({len(imgs)} images)"))
    return result


def compare_models(a: str, b: str, images: str, *, out: str | Path | None = None, limit: int | None = None,
                   seed: int = 0, batch_size: int = 64, device: str = "auto", preprocess: str = "original",
                   alpha: str = "drop") -> dict:
    """Two models on the same images: per-layer metrics, Δ, Δ% and map drift (`attncollapse compare`).

    Args:
        a, b: MODEL arguments; Δ = B − A, Δ% = 100·(B − A)/A.
        images, out, limit, seed, batch_size, device, preprocess, alpha: as `measure_model`
            (files compare.csv, compare.json, compare.png).

    Returns:
        {"a": {...}, "b": {...}, "images", "settings", "layers": {metric: {"a", "a_sd", "b",
        "b_sd", "delta", "delta_pct"}: [L] each}, "map_js": {"mean": [L], "sd": [L]} (nats),
        "mean", "seconds", "env", "files"}.

    Raises:
        InputError: A and B have different patch grids or depths.
    """
    t0 = time.perf_counter()
    dev = str(resolve_device(device))
    imgs = load_images(images, limit=limit, seed=seed)
    ma, mb = load_any(a, device=dev), load_any(b, device=dev)
    if ma.grid != mb.grid:
        raise InputError(f"{a} has a {ma.grid[0]}×{ma.grid[1]} patch grid and {b} a {mb.grid[0]}×{mb.grid[1]} one: "
                         "their [CLS]→patch maps cannot be compared; give two models with the same patch grid")
    if ma.layers != mb.layers:
        raise InputError(f"{a} has {ma.layers} layers and {b} {mb.layers}: per-layer values cannot be paired; "
                         "give two models of the same depth")
    va, vb, js = [], [], []

    def reduce(rows):
        va.append(per_image_metrics(rows[0]).cpu().numpy())
        vb.append(per_image_metrics(rows[1]).cpu().numpy())
        js.append(js_divergence(head_mean_maps(rows[0]), head_mean_maps(rows[1])).cpu().numpy())

    stream([ma, mb], imgs, reduce, batch_size=batch_size, geometry=preprocess, alpha=alpha, device=dev,
           desc=f"compare {a} {b}")
    la, lb = _layers(np.concatenate(va, 1)), _layers(np.concatenate(vb, 1))
    js_mean, js_sd = mean_sd(np.concatenate(js, 1)[..., None])
    layers = {}
    for k in METRICS:
        xa, xb = np.asarray(la[k]["mean"]), np.asarray(lb[k]["mean"])
        layers[k] = {"a": xa.tolist(), "a_sd": la[k]["sd"], "b": xb.tolist(), "b_sd": lb[k]["sd"],
                     "delta": (xb - xa).tolist(), "delta_pct": [delta_pct(p, q) for p, q in zip(xa, xb)]}
    drift = {"mean": js_mean[:, 0].tolist(), "sd": js_sd[:, 0].tolist(), "unit": "nats",
             "what": "Jensen-Shannon divergence between A's and B's head-averaged [CLS]→patch maps, per image"}
    mean = {k: {"a": float(np.mean(v["a"])), "b": float(np.mean(v["b"]))} for k, v in layers.items()}
    for v in mean.values():
        v["delta_pct"] = delta_pct(v["a"], v["b"])
    result = {"command": "compare", "a": ma.record(), "b": mb.record(), "images": imgs.record(),
              "settings": {**_settings(preprocess, alpha, batch_size), "a_mean": list(ma.mean), "a_std": list(ma.std),
                           "b_mean": list(mb.mean), "b_std": list(mb.std)},
              "layers": layers, "map_js": drift, "mean": mean, "seconds": time.perf_counter() - t0,
              "env": _io.environment()}
    if out is not None:
        fig = metrics_figure([(f"A: {a}", la), (f"B: {b}", lb)], drift=drift,
                             title=f"A = {a}, B = {b} on {images} ({len(imgs)} images)")
        result["files"] = _write(Path(out), "compare", result, _compare_rows(result), fig)
    return result


def _provenance(result: dict) -> dict:
    env, s, im = result["env"], result["settings"], result["images"]
    models = {"model": result["model"]["spec"]} if "model" in result else {
        "model_a": result["a"]["spec"], "model_b": result["b"]["spec"]}
    size = result["model"]["image_size"] if "model" in result else result["a"]["image_size"]
    return {**models, "images": im["spec"], "n_images": im["count"], "image_size": size,
            "preprocess": f"{s['geometry']}-{s['alpha']}", **{k: env.get(k) for k in _VERSIONS}}


def _measure_rows(result: dict) -> list[dict]:
    n = len(result["layers"]["entropy"]["mean"])
    prov = _provenance(result)
    return [{"layer": i + 1, **{f"{m}_{s}": result["layers"][m][s][i] for m in METRICS for s in ("mean", "sd")},
             **prov} for i in range(n)]


def _compare_rows(result: dict) -> list[dict]:
    n = len(result["map_js"]["mean"])
    prov, L = _provenance(result), result["layers"]
    rows = []
    for i in range(n):
        row = {"layer": i + 1}
        for m in METRICS:
            row.update({f"{m}_a": L[m]["a"][i], f"{m}_b": L[m]["b"][i], f"{m}_delta": L[m]["delta"][i],
                        f"{m}_delta_pct": L[m]["delta_pct"][i]})
        rows.append({**row, "map_js_mean": result["map_js"]["mean"][i], "map_js_sd": result["map_js"]["sd"][i],
                     **prov})
    return rows


def _write(out: Path, stem: str, result: dict, rows: list[dict], fig) -> dict:
    """<stem>.png, <stem>.csv, then <stem>.json (last: its presence means the set is complete)."""
    files = {"figure": out / f"{stem}.png", "csv": out / f"{stem}.csv", "json": out / f"{stem}.json"}
    write_png(fig, files["figure"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _io.write_text(files["csv"], buf.getvalue())
    _io.write_json(files["json"], {**result, "files": {k: v.name for k, v in files.items()}})
    return {k: str(v) for k, v in files.items()}


def format_measure(result: dict) -> str:
    """measure's table as terminal text: one line per layer, mean ± SD of each metric."""
    head = f"{'layer':>5}  " + "  ".join(f"{m:>19}" for m in METRICS)
    lines = [head, "-" * len(head)]
    n = len(result["layers"]["entropy"]["mean"])
    for i in range(n):
        cells = [f"{result['layers'][m]['mean'][i]:>9.4f} ± {result['layers'][m]['sd'][i]:<7.4f}" for m in METRICS]
        lines.append((f"{i + 1:>5}  " + "  ".join(cells)).rstrip())
    means = "  ".join(f"{result['mean'][m]:>9.4f}{'':10}" for m in METRICS)
    lines += ["-" * len(head), f"{'mean':>5}  {means}".rstrip()]
    return "\n".join(lines)


def format_compare(result: dict) -> str:
    """compare's table as terminal text: A, B and Δ% per metric, and the map drift, per layer."""
    head = f"{'layer':>5}  " + "  ".join(f"{m + ' A → B (Δ%)':>32}" for m in METRICS) + f"  {'map JS (nats)':>18}"
    lines = [head, "-" * len(head)]
    L, js = result["layers"], result["map_js"]
    for i in range(len(js["mean"])):
        cells = [f"{L[m]['a'][i]:>9.4f} → {L[m]['b'][i]:<9.4f} ({L[m]['delta_pct'][i]:+7.2f}%)" for m in METRICS]
        lines.append(f"{i + 1:>5}  " + "  ".join(f"{c:>32}" for c in cells)
                     + f"  {js['mean'][i]:>8.4f} ± {js['sd'][i]:.4f}")
    return "\n".join(lines)
