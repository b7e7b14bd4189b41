"""A complete fake matrix directory (docs/FORMATS.md) for the analysis-stage tests.

`build_matrix` writes results.csv, every run's config.yaml / history.json / final.json,
baseline/<dataset>.json, env.json, matrix.yaml and a couple of overlays.npz, with the
experiment report's numbers (§3.2–§3.7, §6.1–§6.3) by default. No torch: the analysis
stage is tested on files alone (STYLE.md "Tests").
"""

from __future__ import annotations

import atexit
import csv
import json
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from attncollapse.models import PRESETS

METRICS = ("entropy", "erf", "gini", "head_diversity")

# Experiment report §6.2: pretrained per-layer table (EuroSAT eval subset).
BASELINE_12 = {
    "entropy": [3.676, 3.828, 3.852, 3.696, 3.712, 3.694, 3.578, 3.658, 3.671, 3.643, 3.609, 3.580],
    "erf": [0.813, 0.915, 0.928, 0.851, 0.873, 0.872, 0.817, 0.861, 0.876, 0.865, 0.842, 0.836],
    "gini": [0.263, 0.174, 0.149, 0.289, 0.280, 0.313, 0.396, 0.351, 0.341, 0.359, 0.391, 0.405],
    "head_diversity": [0.169, 0.022, 0.024, 0.183, 0.144, 0.062, 0.140, 0.041, 0.023, 0.030, 0.026, 0.038],
}
# Pets starts from a different eval subset (§6.1: Ent₀ 3.638, ERF₀ 0.838, Gini₀ 0.348, HDiv₀ 0.105).
PETS_SCALE = {"entropy": 3.638 / 3.683, "erf": 0.838 / 0.863, "gini": 0.348 / 0.309, "head_diversity": 0.105 / 0.075}

# id → (config fields, best_acc, (ΔH, ΔERF, ΔGini, ΔHDiv) %, zero-shot adapter-active, base-only)
# Numbers: experiment report §6.1 / §6.3. Adapter-active LoRA zero-shot is not in the reports;
# the values here are invented for the test.
PAPER_RUNS: dict[str, tuple[dict, float, tuple[float, float, float, float], float, float | None]] = {
    "E2": ({}, 0.9930, (-0.14, -1.73, -3.53, -0.73), 0.1271, None),
    "E3": ({"dataset": "pets", "epochs": 30}, 0.9079, (-1.82, -4.22, 10.53, -35.85), 0.0589, None),
    "E4": ({"method": "lora", "lora_rank": 4, "lr": 1e-4}, 0.9867, (0.98, 1.10, -9.96, 3.81), 0.571, 0.6022),
    "E5": ({"method": "lora", "lora_rank": 8, "lr": 1e-4}, 0.9896, (0.58, 0.37, -6.48, 7.11), 0.552, 0.6022),
    "E6": ({"method": "lora", "lora_rank": 16, "lr": 1e-4}, 0.9893, (0.44, 0.03, -5.43, 5.11), 0.533, 0.6022),
    "E7": ({"method": "lora", "lora_rank": 8, "lr": 1e-4, "dataset": "pets", "epochs": 30},
           0.9207, (-0.73, -2.63, 3.24, -14.97), 0.401, 0.6022),
    "A1-lr1e-06": ({"lr": 1e-6}, 0.9885, (1.45, 1.93, -16.63, -12.0), 0.45, None),
    "A1-lr5e-06": ({"lr": 5e-6}, 0.9911, (0.33, -0.49, -6.66, -4.0), 0.25, None),
    "A1-lr5e-05": ({"lr": 5e-5}, 0.9889, (-4.19, -8.49, 23.42, 50.7), 0.06, None),
    "A1-lr0.0001": ({"lr": 1e-4}, 0.9785, (-10.40, -18.02, 56.90, 144.0), 0.03, None),
    "A2": ({"method": "lora", "lora_rank": 8, "lr": 1e-4, "lora_targets": "qkvo"},
           0.9893, (0.67, 0.35, -6.8, 2.89), 0.52, 0.6022),
    "A3-freeze3": ({"freeze_layers": 3}, 0.9911, (-0.04, -1.4, -4.5, -2.7), 0.16, None),
    "A3-freeze6": ({"freeze_layers": 6}, 0.9885, (-0.02, -1.4, -3.2, -4.0), 0.21, None),
    "A3-freeze9": ({"freeze_layers": 9}, 0.9867, (0.06, -0.3, -1.0, 0.0), 0.33, None),
    "R1-apr0.01": ({"regularizer": "apr", "reg_lambda": 0.01}, 0.9926, (0.86, 1.39, -8.74, -5.3), 0.14, None),
    "R1-apr0.1": ({"regularizer": "apr", "reg_lambda": 0.1}, 0.9919, (0.56, 0.93, -5.18, -1.3), 0.17, None),
    "R1-apr1.0": ({"regularizer": "apr", "reg_lambda": 1.0}, 0.9896, (0.09, 0.12, -0.65, 0.0), 0.29, None),
    "R2-entfloor0.01": ({"regularizer": "entropy_floor", "reg_lambda": 0.01}, 0.9911, (0.58, -0.12, -6.15, -2.7), 0.13, None),
    "R2-entfloor0.1": ({"regularizer": "entropy_floor", "reg_lambda": 0.1}, 0.9907, (0.79, 0.23, -8.09, -4.0), 0.14, None),
    "R3-wd0.0": ({"weight_decay": 0.0}, 0.9919, (-0.18, -1.85, -2.91, 1.3), 0.12, None),
    "R3-wd0.1": ({"weight_decay": 0.1}, 0.9915, (-0.25, -1.97, -2.27, -1.3), 0.13, None),
}
DEFAULTS = {"method": "full", "dataset": "eurosat", "lr": 1e-5, "weight_decay": 0.01, "epochs": 20,
            "batch_size": 64, "lora_rank": None, "lora_targets": None, "freeze_layers": 0,
            "regularizer": "none", "reg_lambda": 0.0}
COLUMNS = ["run_id", "group", "seed", "method", "dataset", "model", "lr", "weight_decay", "epochs",
           "batch_size", "lora_rank", "lora_targets", "freeze_layers", "regularizer", "reg_lambda",
           "best_acc", "final_acc"] + [f"{m}_{k}" for m in METRICS for k in ("initial", "final", "delta_pct")] + [
           "zeroshot_acc", "zeroshot_acc_base_only", "zeroshot_cifar100", "status", "wall_time_s", "images_per_s"]
BASELINE_ZS = 0.6022  # experiment report §3.3


def _rng(*key: Any) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _baseline(dataset: str, n_layers: int) -> dict[str, np.ndarray]:
    out = {}
    for m, v in BASELINE_12.items():
        v = np.interp(np.linspace(0, 11, n_layers), np.arange(12), v)
        out[m] = v * (PETS_SCALE[m] if dataset == "pets" else 1.0)
    return out


def _dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def _table(d: dict[str, np.ndarray]) -> dict[str, list[float]]:
    return {m: [float(x) for x in v] for m, v in d.items()}


def build_matrix(root: str | Path, runs: Iterable[str] | None = None, *, seeds: Iterable[int] = (42,),
                 model: str = "openai/clip-vit-base-patch32", dataset_names: dict[str, str] | None = None,
                 num_layers: int = 12, overrides: dict[str, dict] | None = None,
                 failed: Iterable[str] = (), overlays: Iterable[str] = ("E2", "E5"),
                 wise: Iterable[str] = ("E2",), baseline: bool = True, points: int = 9,
                 rename: dict[str, str] | None = None) -> Path:
    """Write a fake finished matrix directory and return it.

    Args:
        root: the matrix directory to create.
        runs: PAPER_RUNS ids to include (default: all 21).
        seeds: seeds per run; more than one adds "-s<seed>" to the run ids (FORMATS.md).
        model: the model spec written everywhere (a preset such as "tiny" makes it a demo).
        dataset_names: rename datasets, e.g. {"eurosat": "synthetic", "pets": "digits"}.
        num_layers: L of every layer table.
        overrides: id → {"delta": (ΔH, ΔERF, ΔGini, ΔHDiv), "best_acc": x, "zeroshot": x,
            "layer_noise": sd} to change a run's numbers.
        failed: ids written as failed (error.txt, no final.json, status "failed").
        overlays: ids that get an overlays.npz.
        wise: ids whose final.json holds a WiSE-FT interpolation curve.
        baseline: write baseline/<dataset>.json.
        points: eval points in each history.json.
        rename: id → another run id (and group), to check that nothing relies on the reports' ids.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = dataset_names or {}
    seeds = list(seeds)
    overrides = overrides or {}
    ids = list(runs) if runs is not None else list(PAPER_RUNS)
    env = {"python": "3.11", "torch": "2.13.0", "transformers": "5.17.0", "peft": "0.21.0",
           "git_commit": "abc1234", "gpu": {"name": "NVIDIA H100", "count": 1, "cuda": "12.8"}, "cpu_count": 16}
    _dump(root / "env.json", env)
    (root / "matrix.yaml").write_text(yaml.safe_dump({
        "name": "paper", "defaults": {"model": model, "optim": {"lr": 1e-5, "weight_decay": 0.01}},
        "runs": {i: {} for i in ids}, "seeds": seeds}))
    if baseline:
        for ds in ("eurosat", "pets"):
            b = _baseline(ds, num_layers)
            _dump(root / "baseline" / f"{names.get(ds, ds)}.json", {
                "model": model, "model_random_init": model in PRESETS, "dataset": names.get(ds, ds), "images": 200, "eval_idx": list(range(200)),
                "diversity": "batch_mean", "layers": _table(b), "mean": {m: float(v.mean()) for m, v in b.items()},
                "zeroshot": {"cifar100": {"acc": BASELINE_ZS, "top5": 0.85, "templates": "single"}}})
    rows = []
    for rid in ids:
        cfg_delta, best, deltas, zs, zs_base = PAPER_RUNS[rid]
        ov = overrides.get(rid, {})
        deltas, best, zs = ov.get("delta", deltas), ov.get("best_acc", best), ov.get("zeroshot", zs)
        cfg = {**DEFAULTS, **cfg_delta}
        if cfg["method"] == "lora":
            cfg["lora_targets"] = cfg.get("lora_targets") or "qv"
        ds = names.get(cfg["dataset"], cfg["dataset"])
        for seed in seeds:
            name = (rename or {}).get(rid, rid)
            run_id = name if len(seeds) == 1 else f"{name}-s{seed}"
            rows.append(_write_run(root / run_id, run_id, rid, seed, cfg, ds, model, best, deltas, zs, zs_base,
                                   num_layers, ov.get("layer_noise"), rid in set(failed), rid in set(overlays),
                                   rid in set(wise), points, multi_seed=len(seeds) > 1))
    with open(root / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return root


def _write_run(d: Path, run_id: str, rid: str, seed: int, cfg: dict, ds: str, model: str, best: float,
               deltas: tuple, zs: float, zs_base: float | None, L: int, noise: float | None,
               failed: bool, overlay: bool, wise: bool, points: int, multi_seed: bool) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    rng = _rng(rid, seed)
    raw = cfg["dataset"]
    (d / "config.yaml").write_text(yaml.safe_dump({
        "id": run_id, "seed": seed, "model": model, "dataset": ds, "method": cfg["method"],
        "freeze_layers": cfg["freeze_layers"],
        "lora": {"rank": cfg["lora_rank"] or 8, "alpha": None, "dropout": 0.05, "targets": cfg["lora_targets"] or "qv"},
        "optim": {"lr": cfg["lr"], "weight_decay": cfg["weight_decay"], "batch_size": 64, "epochs": cfg["epochs"],
                  "warmup_frac": 0.05, "grad_clip": 1.0, "precision": "fp16"},
        "regularizer": {"kind": cfg["regularizer"], "lam": cfg["reg_lambda"], "floor_ratio": 0.7},
        "data": {"split": "hub", "eval_subset_size": 200, "eval_subset_seed": 42},
        "eval": {"points_per_epoch": 5, "batch_size": 32, "diversity": "batch_mean"},
        "zeroshot": {"datasets": ["cifar100"], "templates": "single"}}))
    _dump(d / "env.json", {"torch": "2.13.0", "gpu": {"name": "NVIDIA H100"}})
    row: dict[str, Any] = {"run_id": run_id, "group": run_id.split("-")[0], "seed": seed, "dataset": ds,
                           "model": model, **{k: cfg[k] for k in ("method", "lr", "weight_decay", "epochs",
                                                                  "batch_size", "lora_rank", "lora_targets",
                                                                  "freeze_layers", "regularizer", "reg_lambda")}}
    row = {k: ("" if v is None else v) for k, v in row.items()}
    if failed:
        (d / "error.txt").write_text("Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
        return {**row, "status": "failed"}
    init = _baseline(raw, L)
    seed_shift = rng.normal(0, 0.15) if multi_seed else 0.0
    dl, fin = {}, {}
    for m, dm in zip(METRICS, deltas):
        sd = noise if noise is not None else 0.8 * abs(dm) + 0.5
        e = rng.normal(0, sd, L)
        dl[m] = dm + seed_shift + (e - e.mean())  # per-layer Δ whose mean is the run's Δ
        fin[m] = init[m] * (1 + dl[m] / 100)
    im, fm = {m: float(v.mean()) for m, v in init.items()}, {m: float(v.mean()) for m, v in fin.items()}
    dp = {m: 100 * (fm[m] - im[m]) / im[m] for m in METRICS}
    steps_per_epoch, epochs = 100, int(cfg["epochs"])
    total = steps_per_epoch * epochs
    pts = []
    # Weight drift per block, growing like the metrics; larger for full FT at a higher lr, small
    # for LoRA (merged adapters move the weights little). Own generator: the other numbers stay.
    scale = (0.002 if cfg["method"] == "lora" else 0.02) * np.sqrt(cfg["lr"] / 1e-5)
    drift_end = scale * (1 + 0.3 * _rng(rid, seed, "drift").random(L))
    for i, frac in enumerate(np.linspace(0, 1, points)):
        w = 1 - np.exp(-4 * frac)  # fast early change, then a plateau (a converged run)
        tab = {m: init[m] + w / (1 - np.exp(-4)) * (fin[m] - init[m]) for m in METRICS}
        pts.append({"step": int(frac * total), "epoch": float(frac * epochs), "lr": cfg["lr"] * (1 - frac),
                    "train_loss": None if i == 0 else float(2.3 * np.exp(-5 * frac) + 0.05),
                    "val_acc": None if i == 0 else float(best - 0.3 * np.exp(-6 * frac) * (1 - frac)),
                    "layers": _table(tab), "mean": {m: float(v.mean()) for m, v in tab.items()},
                    "weight_drift": [float(x) for x in w / (1 - np.exp(-4)) * drift_end]})
    _dump(d / "history.json", {"run_id": run_id, "seed": seed, "num_layers": L, "eval_idx": list(range(200)),
                               "steps_per_epoch": steps_per_epoch, "total_steps": total, "points": pts})
    lora = cfg["method"] == "lora"
    zsd = {"cifar100": {"acc": zs, "top5": min(1.0, zs + 0.2), "acc_base_only": zs_base if lora else None,
                        "top5_base_only": None, "acc_frozen_projection": None, "templates": "single", "images": 10000}}
    final = {"run_id": run_id, "seed": seed, "status": "done", "method": cfg["method"], "dataset": ds, "model": model,
             "model_random_init": model in PRESETS,
             "best_acc": best, "best_step": total, "final_acc": best - 0.001, "select_split": "test",
             "test_acc_at_best": best, "initial": _table(init), "final": _table(fin), "initial_mean": im,
             "final_mean": fm, "delta_pct": dp, "delta_pct_layers": _table(dl), "steps": total,
             "train_images": total * 64, "wall_time_s": 800.0, "images_per_s": 650.0,
             "trainable_params": 300000 if lora else 88000000, "total_params": 88000000,
             "zeroshot": zsd, "zeroshot_acc": zs, "zeroshot_acc_base_only": zs_base if lora else None, "wise": []}
    if wise:
        final["wise"] = [{"alpha": a, "zeroshot_acc": BASELINE_ZS + a * (zs - BASELINE_ZS),
                          "task_acc": 0.4 + 0.59 * np.sqrt(a),
                          "mean": {m: im[m] + a * (fm[m] - im[m]) for m in METRICS},
                          "layers": _table({m: init[m] + a * (fin[m] - init[m]) for m in METRICS})}
                         for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    _dump(d / "final.json", final)
    if overlay:
        k, S, P = 3, 32, 49
        img = (rng.random((k, 3, S, S)) * 255).astype(np.uint8)
        a0 = rng.dirichlet(np.ones(P + 1), size=(L, k, 4)).astype(np.float32)
        a1 = rng.dirichlet(np.ones(P + 1) * 0.3, size=(L, k, 4)).astype(np.float32)
        np.savez(d / "overlays.npz", images=img, initial=a0, final=a1)
    row.update({"best_acc": best, "final_acc": best - 0.001, "zeroshot_acc": zs,
                "zeroshot_acc_base_only": zs_base if lora else "", "zeroshot_cifar100": zs, "status": "done",
                "wall_time_s": 800.0, "images_per_s": 650.0})
    for m in METRICS:
        row.update({f"{m}_initial": im[m], f"{m}_final": fm[m], f"{m}_delta_pct": dp[m]})
    return row


_RENDERED: dict[str, Path] = {}
# One configuration of every family on both datasets: enough for every figure and section,
# and about half the drawing time of all 21 runs.
COVERAGE_RUNS = ["E2", "E3", "E4", "E5", "E7", "A1-lr1e-06", "A1-lr5e-05", "A2", "A3-freeze6",
                 "R1-apr0.1", "R2-entfloor0.1", "R3-wd0.0"]


def rendered_matrix(key: str = "coverage", **kw: Any) -> Path:
    """A fixture matrix with stats.json and every figure rendered, built once per process.

    test_figures and test_report share it (rendering all figures takes seconds); callers
    must not modify it. Removed at interpreter exit.
    """
    if key not in _RENDERED:
        from attncollapse.analysis import figures, stats

        tmp = Path(tempfile.mkdtemp(prefix="attncollapse-analysis-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        d = build_matrix(tmp / key, **({"runs": COVERAGE_RUNS} | kw))
        stats.analyze(d)
        figures.render_all(d)
        _RENDERED[key] = d
    return _RENDERED[key]
