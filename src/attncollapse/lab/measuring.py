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

import time
from pathlib import Path

import numpy as np

from .. import _io
from .._device import resolve_device
from ..analysis.instability import UNSTABLE_MARK, unstable, unstable_rule
from ..measure import METRICS, delta_pct
from .explore import PAGE_IMAGES, keep_page_maps, layer_curves, page_maps
from .page import bundle_of, write_page
from .breakdown import compare_image_rows, head_rows, measure_image_rows, write_csv
from .images import InputError, load_images
from .load import load_any
from .paired import TEST_NOTE, paired_tables
from .per_image import ERF_Q, head_mean_maps, js_divergence, mean_sd, per_head_metrics, per_image_metrics, stream
from .plots import metrics_figure, short_name, write_png

SPREAD = "sample SD over images (ddof 1)"
_VERSIONS = ("attncollapse", "torch", "transformers", "peft", "git_commit")


def _settings(preprocess: str, alpha: str, batch_size: int) -> dict:
    return {"geometry": preprocess, "alpha": alpha, "forward_batch_size": batch_size, "erf_q": ERF_Q,
            "diversity": "per_image", "spread": SPREAD, "entropy_unit": "nats"}


def layer_stats(values: np.ndarray) -> dict:
    """(L, N, 4) per-image values → {metric: {"mean": [L], "sd": [L]}}."""
    mean, sd = mean_sd(values)
    return {m: {"mean": mean[:, k].tolist(), "sd": sd[:, k].tolist()} for k, m in enumerate(METRICS)}


def measure_model(model: str, images: str, *, out: str | Path | None = None, limit: int | None = None,
                  seed: int = 0, batch_size: int = 64, device: str = "auto", preprocess: str = "original",
                  alpha: str = "drop", per_head: bool = False) -> dict:
    """Per-layer attention metrics of one model over a set of images (`attncollapse measure`).

    Args:
        model: a MODEL argument (`lab.load_any`: preset, directory, adapter, run, checkpoint, hub id).
        images: an IMAGES argument (`lab.load_images`: folder, class folders, list file, source).
        out: directory for measure.csv, measure.json and measure.png; None = write nothing.
        limit: measure a seeded sample of this many images (`seed`); None = all.
        batch_size: images per forward pass.
        device: "auto", "cpu", "cuda", ...
        preprocess, alpha: the data stage's geometry ("original" | "clip") and alpha ("drop" | "white").
        per_head: also write measure_heads.csv (entropy, ERF, Gini of every image, layer and head).

    Returns:
        {"model": {...}, "images": {...}, "settings": {...}, "layers": {metric: {"mean": [L],
        "sd": [L]}}, "mean": {metric: mean over layers}, "seconds", "env", "files"}.
    """
    t0 = time.perf_counter()
    dev = str(resolve_device(device))
    imgs = load_images(images, limit=limit, seed=seed)
    m = load_any(model, device=dev)
    parts: list[np.ndarray] = []
    heads: list[np.ndarray] = []

    def reduce(rows):
        parts.append(per_image_metrics(rows[0]).cpu().numpy())
        if per_head:
            heads.append(per_head_metrics(rows[0]).cpu().numpy())

    stream([m], imgs, reduce, batch_size=batch_size, geometry=preprocess, alpha=alpha, device=dev,
           desc=f"measure {model}")
    values = np.concatenate(parts, axis=1)  # (L, N, 4)
    layers = layer_stats(values)
    result = {"command": "measure", "model": m.record(), "images": imgs.record(),
              "settings": {**_settings(preprocess, alpha, batch_size), "mean": list(m.mean), "std": list(m.std)},
              "layers": layers, "mean": {k: float(np.mean(v["mean"])) for k, v in layers.items()},
              "seconds": time.perf_counter() - t0, "env": _io.environment()}
    if out is not None:
        extra = {"images_csv": write_csv(Path(out) / "measure_images.csv", measure_image_rows(imgs.names, values))}
        if per_head:
            extra["heads_csv"] = write_csv(Path(out) / "measure_heads.csv",
                                           head_rows(imgs.names, [np.concatenate(heads, 1)], [""]))
        result["files"] = _write(Path(out), "measure", result, _measure_rows(result),
                                 metrics_figure([(short_name(model), layers)], n_patches=m.grid[0] * m.grid[1],
                                                title=f"{short_name(model)} on {short_name(images)} "
                                                      f"({len(imgs)} images)"),
                                 extra)
    return result


def compare_models(a: str, b: str, images: str, *, out: str | Path | None = None, limit: int | None = None,
                   seed: int = 0, batch_size: int = 64, device: str = "auto", preprocess: str = "original",
                   alpha: str = "drop", per_head: bool = False) -> dict:
    """Two models on the same images: per-layer metrics, Δ, Δ% and map drift (`attncollapse compare`).

    Args:
        a, b: MODEL arguments; Δ = B − A, Δ% = 100·(B − A)/A.
        images, out, limit, seed, batch_size, device, preprocess, alpha: as `measure_model`
            (files compare.csv, compare.json, compare.png, compare_images.csv).
        per_head: also write compare_heads.csv (A, B and Δ of entropy, ERF, Gini per image, layer, head).

    Returns:
        {"a": {...}, "b": {...}, "images", "settings", "layers": {metric: {"a", "a_sd", "b",
        "b_sd", "delta", "delta_pct", "delta_pct_unstable"}: [L] each}, "map_js": {"mean": [L],
        "sd": [L]} (nats), "mean", "paired" (`paired.paired_tables`: Δ, 95% CI, paired t and
        Wilcoxon p per layer and overall), "seconds", "env", "files"}.

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
    va, vb, js, ha, hb, shown = [], [], [], [], [], []

    def reduce(rows):
        keep_page_maps(shown, rows, PAGE_IMAGES)
        va.append(per_image_metrics(rows[0]).cpu().numpy())
        vb.append(per_image_metrics(rows[1]).cpu().numpy())
        js.append(js_divergence(head_mean_maps(rows[0]), head_mean_maps(rows[1])).cpu().numpy())
        if per_head:
            ha.append(per_head_metrics(rows[0]).cpu().numpy())
            hb.append(per_head_metrics(rows[1]).cpu().numpy())

    stream([ma, mb], imgs, reduce, batch_size=batch_size, geometry=preprocess, alpha=alpha, device=dev,
           desc=f"compare {a} {b}")
    va, vb, js = np.concatenate(va, 1), np.concatenate(vb, 1), np.concatenate(js, 1)  # (L, N, 4), (L, N)
    la, lb = layer_stats(va), layer_stats(vb)
    js_mean, js_sd = mean_sd(js[..., None])
    layers = {}
    for k in METRICS:
        xa, xb = np.asarray(la[k]["mean"]), np.asarray(lb[k]["mean"])
        layers[k] = {"a": xa.tolist(), "a_sd": la[k]["sd"], "b": xb.tolist(), "b_sd": lb[k]["sd"],
                     "delta": (xb - xa).tolist(), "delta_pct": [delta_pct(p, q) for p, q in zip(xa, xb)],
                     "delta_pct_unstable": [unstable(k, float(p)) for p in xa]}
    drift = {"mean": js_mean[:, 0].tolist(), "sd": js_sd[:, 0].tolist(), "unit": "nats",
             "what": "Jensen-Shannon divergence between A's and B's head-averaged [CLS]→patch maps, per image"}
    mean = {k: {"a": float(np.mean(v["a"])), "b": float(np.mean(v["b"]))} for k, v in layers.items()}
    for k, v in mean.items():
        v["delta_pct"] = delta_pct(v["a"], v["b"])
        v["delta_pct_unstable"] = unstable(k, v["a"])
    result = {"command": "compare", "a": ma.record(), "b": mb.record(), "images": imgs.record(),
              "settings": {**_settings(preprocess, alpha, batch_size), "a_mean": list(ma.mean), "a_std": list(ma.std),
                           "b_mean": list(mb.mean), "b_std": list(mb.std)},
              "layers": layers, "map_js": drift, "mean": mean,
              "paired": {"what": TEST_NOTE, "unstable_rule": unstable_rule(), **paired_tables(va, vb, METRICS)},
              "seconds": time.perf_counter() - t0,
              "env": _io.environment()}
    if out is not None:
        sa, sb = short_name(a), short_name(b)
        fig = metrics_figure([(f"A: {sa}", la), (f"B: {sb}", lb)], drift=drift, n_patches=ma.grid[0] * ma.grid[1],
                             title=f"A = {sa}, B = {sb} on {short_name(images)} ({len(imgs)} images; "
                                   "Δ = B − A)")
        extra = {"images_csv": write_csv(Path(out) / "compare_images.csv",
                                         compare_image_rows(imgs.names, va, vb, js))}
        if per_head:
            extra["heads_csv"] = write_csv(Path(out) / "compare_heads.csv",
                                           head_rows(imgs.names, [np.concatenate(ha, 1), np.concatenate(hb, 1)],
                                                     ["a", "b"]))
        extra["page"] = _compare_page(Path(out) / "compare.html", result, imgs, page_maps(shown), la, lb,
                                      preprocess, alpha)
        result["files"] = _write(Path(out), "compare", result, _compare_rows(result), fig, extra)
    return result


def _compare_page(path: Path, result: dict, imgs, maps: np.ndarray, la: dict, lb: dict, preprocess: str,
                  alpha: str) -> Path:
    """compare.html: A's and B's maps of the first images beside the per-layer metrics."""
    a, b = short_name(result["a"]["spec"]), short_name(result["b"]["spec"])
    n = maps.shape[2]
    pictures = imgs.read(0, n, result["a"]["image_size"], preprocess, alpha)
    prov = [f"A = {a}, B = {b}; {result['images']['count']} images of {short_name(result['images']['spec'])}, "
            f"maps of the first {n}; curves: mean over all images",
            f"attncollapse {result['env'].get('attncollapse')}, git {result['env'].get('git_commit')}"]
    curves = layer_curves([(f"A: {a}", la), (f"B: {b}", lb)], maps.shape[-1], title="metrics per layer "
                          "(orange line: the chosen layer)", drift=result["map_js"]["mean"])
    return write_page(path, bundle_of(title=f"compare: A = {a}, B = {b}", provenance=prov,
                                      frames=[f"A: {a}", f"B: {b}"], frame_name="model", maps=maps,
                                      pictures=pictures, names=imgs.names[:n], curves=curves, ref_label=f"A: {a}"))


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
    prov, L, P = _provenance(result), result["layers"], result["paired"]
    rows = []
    for i in list(range(n)) + ["all"]:
        row = {"layer": i + 1 if i != "all" else "all"}
        for m in METRICS:
            t = P[m]["layers"][i] if i != "all" else P[m]["overall"]
            a = L[m]["a"][i] if i != "all" else result["mean"][m]["a"]
            b = L[m]["b"][i] if i != "all" else result["mean"][m]["b"]
            row.update({f"{m}_a": a, f"{m}_b": b, f"{m}_delta": t["delta"], f"{m}_delta_ci_low": t["ci"][0],
                        f"{m}_delta_ci_high": t["ci"][1], f"{m}_p_t": t["p_t"], f"{m}_p_wilcoxon": t["p_wilcoxon"],
                        f"{m}_delta_pct": t["delta_pct"], f"{m}_delta_pct_unstable": t["delta_pct_unstable"]})
        js = result["map_js"]
        rows.append({**row, "map_js_mean": js["mean"][i] if i != "all" else float(np.mean(js["mean"])),
                     "map_js_sd": js["sd"][i] if i != "all" else None, **prov})
    return rows


def _write(out: Path, stem: str, result: dict, rows: list[dict], fig, extra: dict | None = None) -> dict:
    """<stem>.png, <stem>.csv, then <stem>.json (last: its presence means the set is complete);
    `extra` names files already written (the per-image tables)."""
    files = {"figure": out / f"{stem}.png", "csv": out / f"{stem}.csv", **(extra or {}), "json": out / f"{stem}.json"}
    write_png(fig, files["figure"])
    write_csv(files["csv"], rows)
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


def _pct(value: float | None, flagged: bool) -> str:
    if value is None or value != value:
        return "(    n/a )"
    mark = UNSTABLE_MARK if flagged else " "
    text = f"{value:+.2f}%" if abs(value) < 1e4 else f"{value:+.1e}%"
    return f"({text:>8}{mark})"


def _num(x: float | None, fmt: str = "+.4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _p(x: float | None) -> str:
    return "n/a" if x is None else ("<1e-4" if x < 1e-4 else f"{x:.4f}")


def format_compare(result: dict) -> str:
    """compare's tables as terminal text.

    First A → B (Δ%) per metric and the map drift per layer, an unstable Δ% marked †;
    then per metric Δ = B − A with its 95% CI and the paired t and Wilcoxon p (Holm over
    layers), per layer and overall.
    """
    head = f"{'layer':>5}  " + "  ".join(f"{m + ' A → B (Δ%)':>33}" for m in METRICS) + f"  {'map JS (nats)':>18}"
    lines = [head, "-" * len(head)]
    L, js, P = result["layers"], result["map_js"], result["paired"]
    for i in range(len(js["mean"])):
        cells = [f"{L[m]['a'][i]:>9.4f} → {L[m]['b'][i]:<9.4f} {_pct(L[m]['delta_pct'][i], L[m]['delta_pct_unstable'][i])}"
                 for m in METRICS]
        lines.append(f"{i + 1:>5}  " + "  ".join(f"{c:>33}" for c in cells)
                     + f"  {js['mean'][i]:>8.4f} ± {js['sd'][i]:.4f}")
    M = result["mean"]
    cells = [f"{M[m]['a']:>9.4f} → {M[m]['b']:<9.4f} {_pct(M[m]['delta_pct'], M[m]['delta_pct_unstable'])}"
             for m in METRICS]
    lines += ["-" * len(head), f"{'mean':>5}  " + "  ".join(f"{c:>33}" for c in cells)]
    if any(L[m]["delta_pct_unstable"][i] for m in METRICS for i in range(len(js["mean"]))) or any(
            M[m]["delta_pct_unstable"] for m in METRICS):
        lines.append(unstable_rule())
    n = P[METRICS[0]]["overall"]["n"]
    lines += ["", f"Δ = B − A, paired over the same {n} images: mean [95% CI]  p (paired t, Holm)  "
                  "p (Wilcoxon, Holm); head diversity per image (its own heads), so it pairs too"]
    head = f"{'layer':>5}  {'metric':<15} {'Δ':>10} {'95% CI':>23}  {'p t':>7}  {'p Wilcoxon':>10}"
    lines += [head, "-" * len(head)]
    for m in METRICS:
        rows = [(str(i + 1), t, t["p_t_holm"], t["p_wilcoxon_holm"]) for i, t in enumerate(P[m]["layers"])]
        o = P[m]["overall"]
        for label, t, pt, pw in rows + [("all", o, o["p_t"], o["p_wilcoxon"])]:
            ci = f"[{_num(t['ci'][0])}, {_num(t['ci'][1])}]"
            lines.append(f"{label:>5}  {m:<15} {_num(t['delta']):>10} {ci:>23}  {_p(pt):>7}  {_p(pw):>10}")
    return "\n".join(lines)
