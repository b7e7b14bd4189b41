"""What a run spends outside its training steps, and what the engine's levers save.

Three per-run costs of a 20-epoch EuroSAT-shaped run (20 checkpoints, 100 eval points),
each measured against its baseline in the same invocation:

* checkpoint: seconds the training loop is stopped per checkpoint of a full fine-tune
  (weights + AdamW moments, sha256 manifest), writing in the loop (`synchronous`) vs the
  engine's background writer (state copied at the step, files written by a thread; the
  previous write is finished before the next checkpoint, as an epoch of training lies
  between two).
* eval point: one eval point's [CLS] rows of the 200-image eval subset, forward passes of
  32 images (the reports' batches) vs `eval.forward_batch_size` 256 (same rows; the
  metrics still group by 32).
* compile (`--compile MODE`): per `optim.compile_scope` (whole model vs one layer), in a
  fresh process with an empty inductor cache, the first steps of a run of a kind the
  process has not compiled, vs the next run of the same kind in the same process (the
  executors run same-kind runs back to back).

    python benchmarks/bench_overheads.py                        # GPU: vit-b-32-random
    python benchmarks/bench_overheads.py --compile reduce-overhead
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import device_name, print_table, sync  # noqa: E402

from attncollapse import train  # noqa: E402
from attncollapse.train.loop import WARMUP_STEPS  # noqa: E402
from attncollapse.train.checkpoints import CheckpointWriter, trainable  # noqa: E402
from attncollapse.config import RunConfig  # noqa: E402
from attncollapse.data import Feeder, synthetic  # noqa: E402
from attncollapse.measure import eval_rows  # noqa: E402
from attncollapse.models import image_size  # noqa: E402

PER_RUN = {"checkpoint": 20, "eval point": 100}  # a 20-epoch run: 1 checkpoint/epoch, 5 eval points/epoch


def _cfg(model: str, run_id: str = "bench", **optim) -> RunConfig:
    return RunConfig.model_validate({"id": run_id, "model": model, "dataset": "synthetic",
                                     "optim": {"batch_size": 64, "precision": "fp16", **optim},
                                     "zeroshot": {"enabled": False},
                                     "data": {"synthetic_train": 2048, "synthetic_test": 256}})


def bench_checkpoint(model: str, device: torch.device, repeats: int, workdir: Path) -> list[dict]:
    cfg = _cfg(model)
    _, clf = train.build(cfg, 10, device)
    params = list(trainable(clf).values())
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    for p in params:  # moments exist after the first step
        p.grad = torch.zeros_like(p)
    opt.step()
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    size_gb = sum(p.numel() * p.element_size() * 3 for p in params) / 1e9
    rows = []
    for mode in ("synchronous", "background"):
        writer = CheckpointWriter(workdir / mode, cfg, synchronous=mode == "synchronous")
        blocked, step = [], 0
        t_all = time.perf_counter()
        for _ in range(repeats):
            step += 1
            with torch.no_grad():  # the next step changes the weights while the write goes on
                params[0].add_(1e-3)
            writer.wait()  # an epoch of training (seconds) lies between two checkpoints
            t = time.perf_counter()
            writer.save_checkpoint(clf, opt, scaler, {"step": step}, {})
            blocked.append(time.perf_counter() - t)
        writer.wait()
        writer.close()
        rows.append({"cost": "checkpoint", "how": mode, "s each (loop stopped)": statistics.median(blocked),
                     "s until on disk, all": time.perf_counter() - t_all, "repeats": repeats,
                     "GB each": size_gb})
    return rows


def bench_eval(model: str, device: torch.device, repeats: int) -> list[dict]:
    from attncollapse.models import load_clip

    size = image_size(model)
    feed = Feeder(synthetic(200, 10, size, seed=1, split="test"), device)
    vision = load_clip(model).vision_model.to(device)
    precision = "fp16" if device.type == "cuda" else "fp32"
    rows, ref = [], None
    for batch in (32, 256):
        eval_rows(vision, feed, batch_size=batch, precision=precision)  # warm-up
        times = []
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            out = eval_rows(vision, feed, batch_size=batch, precision=precision)
            sync(device)
            times.append(time.perf_counter() - t)
        ref = out if ref is None else ref
        rows.append({"cost": "eval point", "how": f"forward batch {batch}", "s each (loop stopped)":
                     statistics.median(times), "repeats": repeats,
                     "max |Δ rows| vs batch 32": (out - ref).abs().max().item()})
    return rows


def bench_compile(model: str, device: torch.device, mode: str, workdir: Path, epochs: float,
                  batch: int) -> list[dict]:
    """Per compile scope, in a fresh process with an empty inductor cache: the first run
    of a kind, then a second run of the same kind in the same process. Compile time ≈
    warm-up (the first WARMUP_STEPS steps) minus those steps at the steady rate."""
    import json
    import os
    import subprocess

    rows = []
    for scope in ("model", "layers"):
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(workdir / f"inductor-{scope}")}
        cmd = [sys.executable, __file__, "--compile-child", json.dumps(
            {"model": model, "device": str(device), "mode": mode, "scope": scope, "epochs": epochs,
             "batch": batch, "workdir": str(workdir)})]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        rows += json.loads(out.strip().splitlines()[-1])
    return rows


def _compile_child(spec: dict) -> None:
    import json

    torch.compile(lambda t: t * 2)(torch.ones(2, device=spec["device"]))  # compiler start-up, not the scope's
    rows = []
    for name, lr in (("new kind", 1e-5), ("same kind, next run", 5e-6)):
        cfg = _cfg(spec["model"], f"c{spec['scope']}{lr}", compile=spec["mode"], compile_scope=spec["scope"], lr=lr,
                   epochs=spec["epochs"], batch_size=spec["batch"])
        final = train.run(cfg, Path(spec["workdir"]) / cfg.id)
        warm, steady = final["timings"]["warmup_s"], final["images_per_s_steady"]
        rows.append({"cost": "compile", "how": f"scope {spec['scope']}: {name}", "s each (loop stopped)": warm,
                     "compile ≈ s": warm - WARMUP_STEPS * spec["batch"] / steady if steady else None,
                     "repeats": 1,
                     "steady img/s": steady})
    print(json.dumps(rows))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit-b-32-random")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                    help="also time compilation (new kind vs same kind in one process)")
    ap.add_argument("--compile-epochs", type=float, default=0.5)
    ap.add_argument("--compile-batch", type=int, default=64, help="batch of the compile runs (CPU: 8)")
    ap.add_argument("--compile-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.compile_child:
        import json

        return _compile_child(json.loads(args.compile_child))
    device = torch.device(args.device)
    print(f"bench_overheads on {device_name(device)}; torch {torch.__version__}; {args.model}")
    workdir = Path(tempfile.mkdtemp(prefix="bench_overheads_"))
    try:
        rows = bench_checkpoint(args.model, device, args.repeats, workdir)
        rows += bench_eval(args.model, device, args.repeats)
        if args.compile:
            rows += bench_compile(args.model, device, args.compile, workdir, args.compile_epochs,
                                  args.compile_batch)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for r in rows:
        if r["cost"] in PER_RUN:
            r["s per 20-epoch run"] = r["s each (loop stopped)"] * PER_RUN[r["cost"]]
    print_table(rows, ["cost", "how", "s each (loop stopped)", "s per 20-epoch run", "s until on disk, all",
                       "GB each", "max |Δ rows| vs batch 32", "compile ≈ s", "steady img/s", "repeats"])
    for cost in PER_RUN:
        base, lever = [r for r in rows if r["cost"] == cost]
        print(f"{cost}: loop stopped {base['s each (loop stopped)'] / lever['s each (loop stopped)']:.1f}x "
              f"less ({lever['how']} vs {base['how']})")


if __name__ == "__main__":
    main()
