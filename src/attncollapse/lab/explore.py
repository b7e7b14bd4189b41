"""The explorer pages of a run (`attncollapse explore RUN_DIR`), of `compare` and of `maps`.

A run's page draws evalmaps.npz (head-level maps of a few fixed eval images at every eval
point; train/evalmaps.py) beside history.json's curves, the pretrained map (step 0) for
reference. A run without evalmaps.npz (written before it existed, or damaged) falls back to
overlays.npz: the same images before and after training only. compare.html and maps.html
draw their models' maps (every layer and head) of the first PAGE_IMAGES images beside the
per-layer metrics. The page itself: `page.py`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .. import _io
from ..analysis.figures.base import METRIC_LABELS, OKABE_ITO
from ..train.evalmaps import STORE, read_store
from .images import InputError
from .page import bundle_of, write_page
from .plots import uniform_values

PAGE_IMAGES = 8
"""Images a compare / maps page keeps (every layer and head of each: ViT-B/32 14 KiB an image)."""
METRICS = tuple(METRIC_LABELS)


def _rows_to_maps(rows: np.ndarray) -> np.ndarray:
    """(L, k, H, 1 + P) [CLS] rows → (L, k, H, P) shares over patches."""
    p = rows[..., 1:].astype(np.float64)
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def _run_maps(run: Path, steps_done: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(steps (K,), maps (K, L, k, H, P), images (k, 3, S, S), source note) of a run."""
    try:
        s = read_store(run / STORE)
        return s["steps"], s["maps"], s["images"], f"{STORE}: {len(s['steps'])} eval points"
    except _io.DamagedFile as exc:
        why = exc.why
    ov = run / "overlays.npz"
    if not ov.is_file():
        raise InputError(f"{run}: no maps to explore ({STORE}: {why}; no overlays.npz either) — run it with "
                         "eval.map_images > 0 (the default), or let it finish")
    if why != "missing":
        warnings.warn(f"{run / STORE}: {why}; showing overlays.npz (before and after training only)", stacklevel=2)
    with np.load(ov, allow_pickle=False) as z:
        maps = np.stack([_rows_to_maps(z["initial"]), _rows_to_maps(z["final"])])
        images = z["images"]
    return np.asarray([0, steps_done[-1]]), maps, images, "overlays.npz: initial and final only"


def run_bundle(run_dir: str | Path) -> dict:
    """The explorer page's data of a run directory (finished, or still running)."""
    run = Path(run_dir)
    if not (run / "history.json").is_file():
        raise InputError(f"{run_dir}: not a run directory (no history.json); give a directory "
                         "`attncollapse run` wrote, e.g. runs/demo/E2")
    hist = _io.read_json_checked(run / "history.json", ("points",), fix="rerun `attncollapse run` to repair it")
    points = hist["points"]
    steps, maps, images, source = _run_maps(run, [p["step"] for p in points])
    by_step = {p["step"]: p for p in points}
    cfg = _io.read_yaml(run / "config.yaml") if (run / "config.yaml").is_file() else {}
    K, L, k, H, P = maps.shape
    frames = []
    for s in steps:
        p = by_step.get(int(s), {})
        bits = [f"step {int(s)}"] + ([f"epoch {p['epoch']:.2f}"] if "epoch" in p else [])
        bits += [f"acc {p['val_acc']:.3f}"] if p.get("val_acc") is not None else []
        frames.append(" · ".join(bits) + (" (pretrained)" if s == 0 else ""))
    uni = uniform_values(P, (cfg.get("eval") or {}).get("erf_q", 0.95))
    x = [p["step"] for p in points]
    panels = [{"title": METRIC_LABELS[m], "uniform": uni[m], "series": [
        {"label": "chosen layer", "color": OKABE_ITO[0], "dash": False,
         "by_layer": [[p["layers"][m][i] for p in points] for i in range(L)]},
        {"label": "mean over layers", "color": "#777777", "dash": True, "y": [p["mean"][m] for p in points]}]}
        for m in METRICS]
    if any(p.get("val_acc") is not None for p in points):
        panels.append({"title": "validation accuracy", "uniform": None, "series": [
            {"label": "accuracy", "color": OKABE_ITO[2], "dash": False, "y": [p.get("val_acc") for p in points]}]})
    names = [f"eval image {i}" for i in range(k)]
    run_id = hist.get("run_id", run.name)
    title = f"{run_id}: {cfg.get('method', '?')} fine-tuning of {cfg.get('model', '?')} on {cfg.get('dataset', '?')}"
    prov = [f"run {run.name} (seed {hist.get('seed')}, {hist.get('total_steps', x[-1])} steps); maps from {source}, "
            f"{k} images of the eval subset (test-split indices {hist.get('eval_idx', [])[:k]}); curves from "
            "history.json (the metrics of the whole eval subset)",
            "frame = an eval point; left: the pretrained model (step 0), right: the chosen eval point"]
    curves = {"axis": "frame", "title": "metrics over training (orange line: the chosen eval point)",
              "xlabel": "step", "x": x, "cursor": [int(s) for s in steps], "panels": panels}
    return bundle_of(title=title, provenance=prov, frames=frames, frame_name="eval point", maps=maps,
                     pictures=images, names=names, curves=curves, ref_label="pretrained (step 0)")


def explore_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write a run's explorer page (default RUN_DIR/explore.html); returns its path."""
    return write_page(Path(out) if out else Path(run_dir) / "explore.html", run_bundle(run_dir))


def refresh_pages(matrix_dir: str | Path) -> list[Path]:
    """Write explore.html for every finished run under a matrix directory whose page is missing
    or older than its evalmaps.npz (what `attncollapse run` does at its end; ~0.1 s a run).

    A page that cannot be written only warns: the run is done, and `explore` writes it again.
    """
    written = []
    for final in sorted(Path(matrix_dir).glob("*/final.json")):
        run, page = final.parent, final.parent / "explore.html"
        store = run / STORE
        if not store.is_file() or (page.is_file() and page.stat().st_mtime >= store.stat().st_mtime):
            continue
        try:
            written.append(explore_run(run))
        except (InputError, _io.DamagedFile, OSError, ValueError, KeyError) as exc:
            warnings.warn(f"{run}: explorer page not written ({exc}); `attncollapse explore {run}` writes it",
                          stacklevel=2)
    return written


def layer_curves(models: list[tuple[str, dict]], P: int, *, title: str, drift: list[float] | None = None) -> dict:
    """Curves over layers for a compare / maps page: {metric: {"mean": [L]}} per model."""
    uni = uniform_values(P)
    L = len(models[0][1]["entropy"]["mean"])
    panels = [{"title": METRIC_LABELS[m], "uniform": uni[m], "series": [
        {"label": label, "color": OKABE_ITO[i], "dash": i > 0, "y": layers[m]["mean"]}
        for i, (label, layers) in enumerate(models)]} for m in METRICS]
    if drift is not None:
        panels.append({"title": "map drift A vs B, JS divergence (nats)", "uniform": None, "series": [
            {"label": "A vs B", "color": OKABE_ITO[2], "dash": False, "y": drift}]})
    return {"axis": "layer", "title": title, "xlabel": "layer", "x": list(range(1, L + 1)), "panels": panels}


def keep_page_maps(store: list, rows: list, n: int) -> None:
    """Add the head-level maps of a batch's first images until `n` are kept.

    Args:
        store: [[(L, b, H, P) fp16 per model]] batches kept so far (appended to).
        rows: one (L, B, H, 1 + P) tensor per model.
    """
    from ..measure import patch_rows

    have = sum(batch[0].shape[1] for batch in store)
    if have < n:
        store.append([patch_rows(r[:, :n - have]).half().cpu().numpy() for r in rows])


def page_maps(store: list) -> np.ndarray:
    """The kept batches as (models, L, n, H, P) float16."""
    return np.stack([np.concatenate([batch[m] for batch in store], 1) for m in range(len(store[0]))])
