"""The whole study in minutes: a slice of the paper matrix through the real runner, the
reports' method beside it, and the projected wall time of the full 21-run matrix.

Ours: `configs/paper-shapes.yaml` (ViT-B/32 shapes, random weights, synthetic data of the
real sizes), by default every run at `--epochs 1` (1/20 of EuroSAT's, 1/30 of Pets'
epochs), through `study.run_matrix` with the local executor on one GPU (`--runs-per-gpu K`
worker processes share it), so data set-up, compilation, eval points, checkpoints,
zero-shot and results.csv are all on the clock (analysis off). `--only` narrows it to a
slice (e.g. `SLICE`, one run of every kind). Reports' style: the same model trained the way the reports did it (eager
attention + `output_attentions=True` every step, JPEGs through PIL and
`CLIPImageProcessor` in a DataLoader, fp16 AMP with a GradScaler, batch 64, one run at a
time), timed in the same invocation.

    python benchmarks/bench_study.py                                   # one H100, ~8 min
    python benchmarks/bench_study.py --runs-per-gpu 2 --precision bf16
    python benchmarks/bench_study.py --model tiny --scale small --num-workers 2   # CPU smoke run

Target (issue "The whole study in minutes"): full matrix projected at <= 20 min on one
H100 (>= 7,000 img/s sustained, evals and zero-shot included), >= 15x the reports' method.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import PilSet, device_name, print_table  # noqa: E402

from attncollapse import _io, study  # noqa: E402
from attncollapse.config import RunConfig  # noqa: E402
from attncollapse.config import load_matrix, read_config_yaml, resolve_config_path  # noqa: E402

SLICE = "E1,E2,E3,E5,A2,A3-freeze6,R1-apr0.1,R2-ent0.1"
"""One run of every kind: full (EuroSAT- and Pets-shaped), LoRA qv, LoRA qkvo, freeze,
APR, entropy floor, plus the E1 baseline (`--only slice`)."""

# --scale small: synthetic sizes for a CPU smoke run (eval subset of 200 still fits).
SMALL_SIZES = {10: (512, 256), 37: (384, 256)}
REPORTS_KINDS = ("full", "lora", "freeze6", "apr", "entropy_floor")
H100_SXM_BF16_DENSE_TFLOPS = 989.0


# --- FLOPs -------------------------------------------------------------------------------

def forward_flops(vcfg) -> float:
    """Forward FLOPs of one image through a CLIP vision tower (2 per multiply-add).

    Patch embedding + per layer (QKV and output projections, two MLP matmuls, QKᵀ and AV);
    layer norms, softmax, projection and head are left out (< 0.1% at ViT-B/32).
    ViT-B/32 at 224 px: 8.83 GFLOP.
    """
    p, s, d, m, layers = vcfg.patch_size, vcfg.image_size, vcfg.hidden_size, vcfg.intermediate_size, \
        vcfg.num_hidden_layers
    patches = (s // p) ** 2
    t = patches + 1
    embed = patches * 3 * p * p * d
    layer = t * (4 * d * d + 2 * d * m) + 2 * t * t * d
    return 2.0 * (embed + layers * layer)


def step_flops_multiplier(cfg: RunConfig, n_layers: int) -> float:
    """Training FLOPs per image as a multiple of one forward F (the approximation used).

    full / entropy floor: 3F (forward, input gradients, weight gradients).
    LoRA: 2F (forward + input gradients through every layer; no weight gradients of the
    frozen base, adapter FLOPs neglected). Freeze k: F + 2F·(L−k)/L (no backward at all
    below the first trainable layer). APR: + F for the reference forward (frozen copy,
    or the adapter-disabled forward for LoRA). Eval points, validation and zero-shot
    forwards are not counted (MFU slightly understated).
    """
    if cfg.method == "lora":
        mult = 2.0
    elif cfg.freeze_layers:
        mult = 1.0 + 2.0 * (n_layers - cfg.freeze_layers) / n_layers
    else:
        mult = 3.0
    if cfg.regularizer.kind == "apr":
        mult += 1.0
    return mult


def kind_of(cfg: RunConfig) -> str:
    """The throughput class of a run: what its training step computes."""
    lora = cfg.method == "lora"
    if cfg.regularizer.kind == "apr":
        return "apr+lora" if lora else "apr"
    if cfg.regularizer.kind == "entropy_floor":
        return "entropy_floor+lora" if lora else "entropy_floor"
    if lora:
        return "lora" if cfg.lora.targets == "qv" else "lora-qkvo"
    if cfg.freeze_layers:
        return f"freeze{cfg.freeze_layers}"
    return "full"


def _measured_kind(kind: str, measured: dict) -> str:
    """The measured kind standing in for `kind` (itself, a sibling, else full)."""
    if kind in measured:
        return kind
    family = kind.rstrip("0123456789").split("-")[0].split("+")[0]
    same = sorted(k for k in measured if k.startswith(family))
    if kind.startswith("freeze") and same:  # nearest freeze depth
        want = int(kind[len("freeze"):])
        return min(same, key=lambda k: abs(int(k[len("freeze"):] or 0) - want))
    if same:
        return same[0]
    if "full" in measured:
        return "full"
    raise SystemExit(f"cannot project kind {kind!r}: the slice measured only {sorted(measured)}; "
                     "include a full fine-tuning run (e.g. E2) in --only")


# --- GPU utilisation ---------------------------------------------------------------------

class GpuSampler(threading.Thread):
    """`nvidia-smi` utilisation and memory every `interval` s, in the background."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval, self.samples, self.error = interval, [], None
        self._stop_evt = threading.Event()
        self.exe = shutil.which("nvidia-smi")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        self.gpu = visible if visible.isdigit() else "0"

    def run(self) -> None:
        if self.exe is None:
            self.error = "nvidia-smi not found"
            return
        cmd = [self.exe, f"--id={self.gpu}", "--query-gpu=utilization.gpu,memory.used",
               "--format=csv,noheader,nounits"]
        while not self._stop_evt.is_set():
            try:
                line = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip()
                util, mem = (float(v) for v in line.splitlines()[0].split(","))
                self.samples.append((time.time(), util, mem))
            except Exception as exc:  # noqa: BLE001 - a sampler never stops the benchmark
                self.error = f"{type(exc).__name__}: {exc}"
                return
            self._stop_evt.wait(self.interval)

    def stop(self) -> dict:
        self._stop_evt.set()
        if self.is_alive():
            self.join(timeout=10)
        if not self.samples:
            return {"available": False, "reason": self.error or "no samples"}
        utils = [u for _, u, _ in self.samples]
        return {"available": True, "samples": len(utils), "util_mean_pct": sum(utils) / len(utils),
                "util_busy_frac": sum(u > 0 for u in utils) / len(utils),
                "mem_peak_mib": max(m for _, _, m in self.samples)}


# --- ours: the slice through the real runner ---------------------------------------------

def _raw_runs(config: str) -> dict:
    data, _ = read_config_yaml(resolve_config_path(config))
    return data.get("runs") or {}


def slice_overrides(args) -> list[str]:
    """`--set` strings for the slice: epochs (also where a run sets its own), precision,
    compile, model and, with --scale small, small synthetic sizes."""
    sets = [f"optim.epochs={args.epochs}"]
    for entry, delta in _raw_runs(args.config).items():
        delta = delta or {}
        if "epochs" in (delta.get("optim") or {}):
            sets.append(f"runs.{entry}.optim.epochs={args.epochs}")
        if args.scale == "small":
            d = delta.get("data") or {}
            if "synthetic_train" in d or "synthetic_test" in d:
                tr, te = SMALL_SIZES.get(d.get("synthetic_classes", 10), SMALL_SIZES[10])
                sets += [f"runs.{entry}.data.synthetic_train={tr}", f"runs.{entry}.data.synthetic_test={te}"]
    if args.scale == "small":
        tr, te = SMALL_SIZES[10]
        sets += [f"data.synthetic_train={tr}", f"data.synthetic_test={te}"]
    if args.precision:
        sets.append(f"optim.precision={args.precision}")
    if args.compile:
        sets.append(f"optim.compile={args.compile}")
    if args.compile_scope:
        sets.append(f"optim.compile_scope={args.compile_scope}")
    if args.model:
        sets.append(f"model={args.model}")
        sets += shallow_overrides(args)
    if args.device:
        sets.append(f"device={args.device}")
    return sets + list(args.set)


def _freeze_depths(layers: int) -> dict[int, int]:
    """A3's freeze depths (3, 6, 9 of 12) on a shallower model: the same fractions."""
    return {k: max(1, min(layers, math.ceil(k * layers / 12))) for k in (3, 6, 9)}


def shallow_overrides(args) -> list[str]:
    """On a model with fewer than 9 layers (tiny: 3), A3 freezes 1..L layers instead."""
    layers = _n_layers(args.model)
    if layers >= 9:
        return []
    values = sorted(set(_freeze_depths(layers).values()))
    return [f"runs.A3.sweep.freeze_layers=[{', '.join(map(str, values))}]"]


def slice_only(args) -> str:
    """`--only`, with A3-freezeK renamed to the depth it becomes on a shallow model."""
    if not args.model or _n_layers(args.model) >= 9:
        return args.only
    depths = _freeze_depths(_n_layers(args.model))
    return re.sub(r"A3-freeze(\d+)", lambda m: f"A3-freeze{depths.get(int(m.group(1)), m.group(1))}", args.only)


def run_slice(args, workdir: Path) -> dict:
    overrides = slice_overrides(args)
    matrix = load_matrix(args.config, overrides)
    out = workdir / "runs"
    only = slice_only(args) or None
    tasks = study.plan(matrix, out, only)
    cache_s = prepare_data(tasks)
    if args.runs_per_gpu > 1 and "OMP_NUM_THREADS" not in os.environ:
        # K spawned workers inherit this: without it each takes every core for its CPU ops
        # and spin-waiting OpenMP threads slow all of them down (badly on a small CPU).
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.runs_per_gpu))
    sampler = GpuSampler(args.sample_interval)
    sampler.start()
    t0 = time.perf_counter()
    summary = study.run_matrix(
        matrix, out, only=only, executor="local", gpus=1, runs_per_gpu=args.runs_per_gpu,
        analyze=False)
    _write_results(out, matrix)
    wall = time.perf_counter() - t0
    gpu = sampler.stop()
    outcomes = {o["id"]: o for o in summary["outcomes"]}
    runs, failed = [], []
    for t in tasks:
        o = outcomes[t.id]
        if o["status"] != "done":
            err = t.error_file.read_text()[-3000:] if t.error_file.exists() else o.get("note", "")
            failed.append({"id": t.id, "status": o["status"], "error": err})
            continue
        row = {"id": t.id, "kind": "baseline" if t.kind == "baseline" else kind_of(t.config),
               "task_wall_s": o["wall_s"], "train_n": t.config.data.synthetic_train,
               "test_n": t.config.data.synthetic_test}
        if t.kind == "run":
            final = _io.read_json(t.done_file)
            row.update({k: final.get(k) for k in ("images_per_s", "images_per_s_steady", "wall_time_s",
                                                  "train_images", "steps", "trainable_params", "precision_used",
                                                  "timings", "peak_gpu_memory_gib")})
            warm = (final.get("timings") or {}).get("warmup_s", 0.0)
            # Outside the steady loop: start-up, data, initial eval, compile + graph capture
            # (the first steps), zero-shot, final files.
            row["fixed_s"] = o["wall_s"] - (final.get("wall_time_s") or 0.0) + warm
            row["steady_ips"] = final.get("images_per_s_steady") or final.get("images_per_s")
            row["zeroshot"] = bool(final.get("zeroshot"))
            row["flops_mult"] = step_flops_multiplier(t.config, _n_layers(t.config.model))
        else:
            row["fixed_s"] = o["wall_s"]
        runs.append(row)
    busy = sum(r["task_wall_s"] for r in runs)
    return {"wall_s": wall, "cache_build_s": cache_s, "runs": runs, "failed": failed, "gpu": gpu, "overrides": overrides,
            "packing": busy / wall if wall > 0 else None, "results_csv": (out / "results.csv").exists(),
            "matrix": matrix}


def prepare_data(tasks) -> float:
    """Build the uint8 disk cache of every data set the tasks read, before the clock starts.

    A study builds its data cache once, whatever it runs afterwards (the hub's EuroSAT: 24,300
    JPEGs in seconds with the cache's worker processes); synthetic sets are made the same
    way. Its time is reported on its own (`cache_build_s`), not projected per run.
    """
    from attncollapse.data import load_splits
    from attncollapse.models import image_size

    t = time.perf_counter()
    seen = set()
    for task in tasks:
        cfg = task.config
        key = (cfg.dataset, cfg.data.model_dump_json(), image_size(cfg.model))
        if key not in seen:
            seen.add(key)
            load_splits(cfg.dataset, cfg.data, image_size=key[2])
    return time.perf_counter() - t


def _write_results(out: Path, matrix) -> None:
    from attncollapse.study import write_results

    write_results(out, matrix)


_LAYERS: dict[str, int] = {}


def _n_layers(spec: str) -> int:
    if spec not in _LAYERS:
        _LAYERS[spec] = _vision_config(spec).num_hidden_layers
    return _LAYERS[spec]


def _vision_config(spec: str):
    from attncollapse.models import PRESETS

    if spec in PRESETS:
        return PRESETS[spec]().vision_config
    from transformers import CLIPConfig

    return CLIPConfig.from_pretrained(spec).vision_config


# --- reports' style ------------------------------------------------------------------------

def write_jpegs(root: Path, n: int, size: int, classes: int) -> list[tuple[str, int]]:
    """n synthetic JPEGs (the slice's content, made at `size` px), one folder per class."""
    from PIL import Image

    from attncollapse import data

    block = data.synthetic(n, classes, size, seed=42, split="train")
    files = []
    for i, (img, c) in enumerate(zip(block.images, block.labels)):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{i:06d}.jpg"
        Image.fromarray(img.transpose(1, 2, 0)).save(path, quality=90)
        files.append((str(path), int(c)))
    return files


def reports_run(kind: str, args, device: torch.device, files, classes: int, processor) -> dict:
    """One reports'-style run of `kind` for `--reports-steps` timed steps; img/s."""
    import copy

    from attncollapse.models import apply_lora, build_classifier, freeze_layers, load_clip
    from attncollapse.train.regularizers import apr, entropy_floor
    from attncollapse.train import lr_at

    spec = args.model or "vit-b-32-random"
    clip = load_clip(spec, attn_implementation="eager")  # the reports: eager, every map materialised
    clip.requires_grad_(False)
    clip.vision_model.requires_grad_(True)
    clip.visual_projection.requires_grad_(True)
    torch.manual_seed(42)
    clf = build_classifier(clip, classes)
    lr = 1e-5
    if kind == "lora":
        apply_lora(clf, rank=8, alpha=16, dropout=0.05, targets="qv")
        lr = 1e-4
    depth = _reports_depth(kind, clip.config.vision_config.num_hidden_layers)
    if depth:
        freeze_layers(clf, depth)
    clf.to(device).train()
    ref = None
    if kind in ("apr", "entropy_floor"):
        ref = copy.deepcopy(clf.vision).requires_grad_(False).eval()
    params = [p for p in clf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    total = args.reports_warmup + args.reports_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, total, 1.0, 0.05))
    fp16 = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    loader = torch.utils.data.DataLoader(PilSet(files, processor), batch_size=args.reports_batch, shuffle=True,
                                         num_workers=args.num_workers, pin_memory=device.type == "cuda",
                                         drop_last=True)
    floor = None

    def rows_of(out):
        return torch.stack([a[:, :, 0] for a in out.attentions]).float()  # (L, B, H, T)

    step, t0, images = 0, None, 0
    while step < total:
        for x, y in loader:
            if step == args.reports_warmup:
                _sync(device)
                t0 = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
                out = clf.vision(pixel_values=x, output_attentions=True)
                loss = nn.functional.cross_entropy(clf.head(clf.projection(out.pooler_output)), y)
                if ref is not None:
                    with torch.no_grad():
                        ref_rows = rows_of(ref(pixel_values=x, output_attentions=True))
                    if kind == "apr":
                        loss = loss + apr(rows_of(out), ref_rows, 0.1)
                    else:
                        if floor is None:  # 0.7 × the pretrained per-layer entropy
                            from attncollapse.measure.metrics import entropy, patch_rows
                            floor = 0.7 * entropy(patch_rows(ref_rows)).mean((1, 2))
                        loss = loss + entropy_floor(rows_of(out), floor, 0.1)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            sched.step()
            loss.item()  # the reports logged the loss every step
            if step >= args.reports_warmup:
                images += len(y)
            step += 1
            if step >= total:
                break
    _sync(device)
    seconds = time.perf_counter() - t0
    n_layers = clip.config.vision_config.num_hidden_layers
    cfg = RunConfig.model_validate({
        "method": "lora" if kind == "lora" else "full",
        "freeze_layers": depth,
        "regularizer": {"kind": kind, "lam": 0.1} if kind in ("apr", "entropy_floor") else {"kind": "none"}})
    del clf, clip, ref, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"kind": f"freeze{depth}" if depth else kind, "images_per_s": images / seconds, "steps": args.reports_steps, "seconds": seconds,
            "flops_mult": step_flops_multiplier(cfg, n_layers)}


def _reports_depth(kind: str, layers: int) -> int:
    """Layers a reports'-style `freezeK` run freezes (K of 12, scaled on shallow models)."""
    if not kind.startswith("freeze"):
        return 0
    k = int(kind[len("freeze"):])
    return k if layers >= 9 else _freeze_depths(layers).get(k, min(k, layers))


def run_reports(args, workdir: Path, device: torch.device, size: int) -> dict:
    try:  # the PIL backend, as the reports had it (transformers v5 prefers torchvision when installed)
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor

    processor = Processor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    t = time.perf_counter()
    files = write_jpegs(workdir / "jpegs", args.jpegs, args.jpeg_size, classes=10)
    print(f"reports' style: wrote {len(files)} JPEGs {args.jpeg_size}px in {time.perf_counter() - t:.1f}s; "
          f"{type(processor).__name__}, DataLoader workers {args.num_workers}, batch {args.reports_batch}, "
          f"{'fp16 AMP + GradScaler' if device.type == 'cuda' else 'fp32 (CPU)'}")
    sampler = GpuSampler(args.sample_interval)
    sampler.start()
    rows = []
    for kind in args.reports_kinds:
        r = reports_run(kind, args, device, files, 10, processor)
        print(f"  reports' style {kind}: {r['images_per_s']:,.0f} img/s ({r['steps']} steps, {r['seconds']:.1f}s)")
        rows.append(r)
    return {"kinds": {r["kind"]: r for r in rows}, "gpu": sampler.stop(), "jpegs": len(files)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the projection ---------------------------------------------------------------------------

def project(args, ours: dict, reports: dict | None, f_img: float) -> dict:
    """Projected wall time of the full matrix (paper-shapes sizes and epochs, no overrides).

    ours = [Σ_runs (images_r / ips_r + fixed_r) + fixed[E1]] / packing, with
    images_r = epochs_r × train split size_r; ips_r = the run's measured steady images/s
    (training loop after its first steps, incl. eval points, validation and checkpoints)
    when the slice ran it, else the mean of its kind; fixed_r = its measured cost outside
    the steady loop (start-up, data, initial eval, compile and CUDA-graph capture, zero-shot),
    else the mean for its data shape; packing = Σ slice task wall / slice wall (the
    concurrency achieved).
    """
    full = load_matrix(args.config, [f"model={args.model}", *shallow_overrides(args)] if args.model else [])
    runs = [r for r in ours["runs"] if r["kind"] != "baseline"]
    ips: dict[str, list] = {}
    for r in runs:
        ips.setdefault(r["kind"], []).append(r["steady_ips"])
    by_id = {r["id"]: r for r in runs}
    ips = {k: sum(v) / len(v) for k, v in ips.items()}
    fixed_by_shape: dict[tuple, list] = {}
    for r in runs:
        fixed_by_shape.setdefault(_shape_key(r, args), []).append(r["fixed_s"])
    fixed_all = sum(r["fixed_s"] for r in runs) / len(runs)
    base = [r["fixed_s"] for r in ours["runs"] if r["kind"] == "baseline"]
    packing = ours["packing"] or 1.0
    rows, total_s, total_images, flops = [], 0.0, 0, 0.0
    for p in full.expand():
        cfg = p.config
        n_img = int(round(cfg.optim.epochs * cfg.data.synthetic_train))
        kind = kind_of(cfg)
        used = _measured_kind(kind, ips)
        shape = (cfg.data.synthetic_train, cfg.data.synthetic_test)
        fixed = fixed_by_shape.get(shape)
        fixed = sum(fixed) / len(fixed) if fixed else fixed_all
        rate = ips[used]
        if p.id in by_id:  # measured: its own numbers
            used, rate, fixed = p.id, by_id[p.id]["steady_ips"], by_id[p.id]["fixed_s"]
        train_s = n_img / rate
        total_s += train_s + fixed
        total_images += n_img
        flops += n_img * f_img * step_flops_multiplier(cfg, _n_layers(cfg.model))
        rows.append({"id": p.id, "kind": kind, "measured_as": used, "images": n_img, "train_s": train_s,
                     "fixed_s": fixed})
    total_s += sum(base) / len(base) if base else 0.0
    ours_s = total_s / packing
    out = {"runs": rows, "total_images": total_images, "serial_s": total_s, "packing": packing,
           "ours_s": ours_s, "ours_ips": total_images / ours_s, "ours_tflops": flops / ours_s / 1e12,
           "naive_s": total_images / ours["aggregate_ips"] if ours["aggregate_ips"] else None,
           "formula": "[sum_r (epochs_r*train_r / ips_r + fixed_r) + fixed[E1]] / packing"}
    if reports and "full" in reports["kinds"]:
        rips = reports["kinds"]["full"]["images_per_s"]
        out["reports_s"] = total_images / rips
        out["reports_formula"] = "total_images / reports' full-FT img/s (one run at a time, no evals counted)"
        rk = reports["kinds"]
        # the same sum with each run at its own kind's reports'-style img/s (nearest measured kind)
        out["reports_by_kind_s"] = sum(r["images"] / rk[_measured_kind(r["kind"], rk)]["images_per_s"]
                                       for r in rows)
        out["speedup"] = out["reports_s"] / ours_s
    return out


def _shape_key(r: dict, args) -> tuple:
    """The paper-size shape a slice run stands for (its small sizes map back by class count)."""
    if args.scale != "small":
        return (r["train_n"], r["test_n"])
    small = {v: k for k, v in SMALL_SIZES.items()}
    return {10: (21600, 2700), 37: (3680, 3669)}[small.get((r["train_n"], r["test_n"]), 10)]


# --- main ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="paper-shapes", help="the matrix (packaged name or path)")
    ap.add_argument("--only", default="", help="comma-separated runner --only patterns (one flag); "
                    f"'slice' = {SLICE}; default: every run and E1")
    ap.add_argument("--epochs", type=float, default=1.0, help="epochs of every slice run")
    ap.add_argument("--runs-per-gpu", type=int, default=1, help="worker processes sharing the GPU")
    ap.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default=None,
                    help="optim.precision of the slice (default: the config's, fp16)")
    ap.add_argument("--compile", choices=["off", "default", "reduce-overhead", "max-autotune"], default=None,
                    help="optim.compile of the slice (default: the config's, off)")
    ap.add_argument("--compile-scope", choices=["model", "layers"], default=None,
                    help="optim.compile_scope of the slice (default: the config's, model)")
    ap.add_argument("--model", default=None, help="model override, e.g. tiny (default: the config's)")
    ap.add_argument("--scale", choices=["full", "small"], default="full",
                    help="small: synthetic sizes for a CPU smoke run")
    ap.add_argument("--device", default=None, help="device override of the runs (default auto)")
    ap.add_argument("--set", action="append", default=[], help="extra runner overrides key=value")
    ap.add_argument("--reports-kinds", nargs="*", default=list(REPORTS_KINDS), choices=REPORTS_KINDS,
                    help="kinds measured the reports' way (none = skip)")
    ap.add_argument("--reports-steps", type=int, default=60, help="timed steps per reports'-style kind")
    ap.add_argument("--reports-warmup", type=int, default=8, help="untimed steps first")
    ap.add_argument("--reports-batch", type=int, default=64)
    ap.add_argument("--num-workers", type=int, default=8, help="reports' DataLoader workers")
    ap.add_argument("--jpegs", type=int, default=2560, help="JPEGs the reports' loader reads (cycled)")
    ap.add_argument("--jpeg-size", type=int, default=256)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help=f"peak for MFU (default {H100_SXM_BF16_DENSE_TFLOPS:g} on CUDA: H100 SXM dense bf16)")
    ap.add_argument("--sample-interval", type=float, default=0.5, help="nvidia-smi sampling period, s")
    ap.add_argument("--workdir", default=None, help="where runs and JPEGs go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", default=None, help="JSON result (default $OUT/bench_study.json or ./bench_study.json)")
    args = ap.parse_args(argv)
    if args.only == "slice":
        args.only = SLICE
    if args.scale == "small" and args.jpegs == 2560:
        args.jpegs = 256
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    peak = args.peak_tflops or (H100_SXM_BF16_DENSE_TFLOPS if device.type == "cuda" else None)
    out_path = Path(args.out) if args.out else Path(os.environ["OUT"]) / "bench_study.json" \
        if os.environ.get("OUT") else Path("bench_study.json")
    workdir = Path(tempfile.mkdtemp(prefix="bench_study_", dir=args.workdir))
    spec = args.model or load_matrix(args.config).expand()[0].config.model
    vcfg = _vision_config(spec)
    f_img = forward_flops(vcfg)
    print(f"bench_study on {device_name(device)}; torch {torch.__version__}; {spec} "
          f"(forward {f_img / 1e9:.2f} GFLOP/img); slice {args.only}; {args.epochs:g} epoch(s); "
          f"{args.runs_per_gpu} run(s) per GPU; work dir {workdir}")
    try:
        ours = run_slice(args, workdir)
        runs = [r for r in ours["runs"] if r["kind"] != "baseline"]
        images = sum(r["train_images"] for r in runs)
        ours["train_images"] = images
        ours["aggregate_ips"] = images / ours["wall_s"]
        ours["aggregate_tflops"] = sum(r["train_images"] * r["flops_mult"] for r in runs) * f_img / ours["wall_s"] / 1e12
        reports = run_reports(args, workdir, device, vcfg.image_size) if args.reports_kinds else None
        proj = project(args, ours, reports, f_img) if runs else None
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report(args, ours, reports, proj, f_img, peak, device, spec, out_path)


def report(args, ours, reports, proj, f_img, peak, device, spec, out_path: Path) -> None:
    def mfu(tflops):
        return tflops / peak if peak and tflops is not None else None

    for f in ours["failed"]:
        print(f"\n!! {f['id']} {f['status']}:\n{f['error']}")
    print(f"\ndata cache built before the clock: {ours['cache_build_s']:.1f} s")
    print(f"\nslice runs ({ours['wall_s']:.1f} s wall, packing achieved {ours['packing']:.2f}, "
          f"results.csv {'written' if ours['results_csv'] else 'MISSING'})\n")
    print_table([{"run": r["id"], "kind": r["kind"], "img/s": r.get("images_per_s"), "steady img/s": r.get("steady_ips"),
                  "loop s": r.get("wall_time_s"), "warm-up s": (r.get("timings") or {}).get("warmup_s"),
                  "task s": r["task_wall_s"], "fixed s": r["fixed_s"], "images": r.get("train_images"),
                  "peak GiB": r.get("peak_gpu_memory_gib"), "zero-shot": r.get("zeroshot")} for r in ours["runs"]],
                ["run", "kind", "img/s", "steady img/s", "loop s", "warm-up s", "task s", "fixed s", "images",
                 "peak GiB", "zero-shot"])
    rk = reports["kinds"] if reports else {}
    kinds: dict[str, dict] = {}
    for r in ours["runs"]:
        if r["kind"] == "baseline":
            continue
        k = kinds.setdefault(r["kind"], {"kind": r["kind"], "ips": [], "mult": r["flops_mult"], "mem": []})
        k["ips"].append(r["steady_ips"])
        if r.get("peak_gpu_memory_gib") is not None:
            k["mem"].append(r["peak_gpu_memory_gib"])
    table = []
    for k in kinds.values():
        ips = sum(k["ips"]) / len(k["ips"])
        tflops = ips * f_img * k["mult"] / 1e12
        rep = rk.get(k["kind"])
        table.append({"kind": k["kind"], "img/s ours": ips, "img/s reports": rep["images_per_s"] if rep else None,
                      "ratio": ips / rep["images_per_s"] if rep else None, "GFLOP/img": f_img * k["mult"] / 1e9,
                      "TFLOP/s": tflops, "MFU": mfu(tflops), "peak GiB": max(k["mem"]) if k["mem"] else None})
    for kind, rep in rk.items():
        if kind not in kinds:
            table.append({"kind": kind, "img/s reports": rep["images_per_s"]})
    agg = {"kind": "AGGREGATE (slice wall)", "img/s ours": ours["aggregate_ips"],
           "img/s reports": rk["full"]["images_per_s"] if "full" in rk else None,
           "TFLOP/s": ours["aggregate_tflops"], "MFU": mfu(ours["aggregate_tflops"])}
    if agg["img/s reports"]:
        agg["ratio"] = agg["img/s ours"] / agg["img/s reports"]
    table.append(agg)
    print("\nper kind: ours = images_per_s_steady of final.json (training loop after the warm-up steps, incl. "
          "eval points, validation, checkpoints); reports' style = timed loop only (no evals)\n")
    cols = ["kind", "img/s ours", "img/s reports", "ratio", "GFLOP/img", "TFLOP/s", "MFU", "peak GiB"]
    print_table(table, cols)
    gpu = ours["gpu"]
    if gpu.get("available"):
        print(f"\nGPU during the slice: mean utilisation {gpu['util_mean_pct']:.0f}% "
              f"({gpu['samples']} samples), peak memory {gpu['mem_peak_mib'] / 1024:.1f} GiB")
    else:
        print(f"\nGPU sampling: {gpu.get('reason')}")
    if proj:
        print(f"\nfull matrix projection ({len(proj['runs'])} runs + E1, {proj['total_images'] / 1e6:.2f} M "
              f"training images):\n  ours = {proj['formula']}\n       = {proj['serial_s']:.0f} s / "
              f"{proj['packing']:.2f} = {proj['ours_s'] / 60:.1f} min ({proj['ours_ips']:,.0f} img/s sustained, "
              f"{proj['ours_tflops']:.1f} TFLOP/s"
              + (f", MFU {mfu(proj['ours_tflops']):.1%}" if peak else "") + ")")
        if proj.get("naive_s"):
            print(f"  (pessimistic: total images / slice aggregate img/s = {proj['naive_s'] / 60:.1f} min; "
                  f"the slice's {args.epochs:g}-epoch runs weigh fixed costs {20 / args.epochs:.0f}x more)")
        if "reports_s" in proj:
            print(f"  reports' style = {proj['reports_formula']}\n       = {proj['reports_s'] / 3600:.2f} h"
                  + (f" (by kind: {proj['reports_by_kind_s'] / 3600:.2f} h)" if "reports_by_kind_s" in proj else "")
                  + f"\n  speed-up {proj['speedup']:.1f}x (target >= 15x; ours target <= 20 min)")
    result = {
        "device": device_name(device), "torch": torch.__version__, "model": spec,
        "forward_gflop_per_image": f_img / 1e9, "peak_tflops": peak, "args": {k: v for k, v in vars(args).items()},
        "slice": {k: v for k, v in ours.items() if k != "matrix"}, "kinds": table,
        "reports": reports, "projection": proj,
    }
    _io.write_json(out_path, result)
    print(f"\nwrote {out_path}")


if __name__ == "__main__":
    main()
