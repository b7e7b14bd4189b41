"""Training-step throughput of every run kind, through the engine's own step function.

Each row is `step.make_step` (what `train.run` executes) on ViT-B/32 shapes with
random weights, beside the plain fused-attention step and the reports' method
(eager attention + output_attentions=True every step) measured in the same run.

    python benchmarks/bench_train.py --device cuda
    python benchmarks/bench_train.py --device cpu --model tiny --batches 8 --iters 2
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import device_name, peak_memory_gib, print_table, reset_peak, time_steps  # noqa: E402

from attncollapse import train  # noqa: E402
from attncollapse.train.step import ReferenceRows, make_step  # noqa: E402
from attncollapse.config import RunConfig  # noqa: E402
from attncollapse.measure.probe import probing  # noqa: E402

KINDS = {
    "reports (eager+attn)": {},
    "full": {},
    "full+compile": {"optim": {"compile": "default"}},
    "full+compile-ro": {"optim": {"compile": "reduce-overhead"}},
    "lora r8": {"method": "lora", "optim": {"lr": 1e-4}},
    "lora r8+compile-ro": {"method": "lora", "optim": {"lr": 1e-4, "compile": "reduce-overhead"}},
    "apr (online ref)": {"regularizer": {"kind": "apr", "lam": 0.1, "reference": "online"}},
    "apr (cached ref)": {"regularizer": {"kind": "apr", "lam": 0.1, "reference": "cached"}},
    "entropy_floor": {"regularizer": {"kind": "entropy_floor", "lam": 0.1}},
    "apr (cached ref)+compile-ro": {"regularizer": {"kind": "apr", "lam": 0.1, "reference": "cached"},
                                    "optim": {"compile": "reduce-overhead"}},
    "entropy_floor+compile-ro": {"regularizer": {"kind": "entropy_floor", "lam": 0.1},
                                 "optim": {"compile": "reduce-overhead"}},
    "full+compile-ro bf16": {"optim": {"compile": "reduce-overhead", "precision": "bf16"}},
    "full+compile-ro layers": {"optim": {"compile": "reduce-overhead", "compile_scope": "layers"}},
    "apr (cached ref)+compile-ro layers": {"regularizer": {"kind": "apr", "lam": 0.1, "reference": "cached"},
                                           "optim": {"compile": "reduce-overhead", "compile_scope": "layers"}},
    "lora+apr (cached ref)": {"method": "lora", "regularizer": {"kind": "apr", "lam": 0.1}},
}


def _config(model: str, batch: int, precision: str, delta: dict) -> RunConfig:
    base = {"id": "bench", "model": model, "dataset": "synthetic",
            "optim": {"batch_size": batch, "precision": precision}}
    for k, v in delta.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return RunConfig.model_validate(base)


def _reports_step(clf, opt, scaler, device, precision):
    """The reports' step: eager attention and every map materialised, fp16/bf16 AMP."""
    clf.vision.set_attn_implementation("eager")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)

    def step(x, y):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = clf.vision(pixel_values=x, output_attentions=True)
            loss = nn.functional.cross_entropy(clf.head(clf.projection(out.pooler_output)), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_([p for p in clf.parameters() if p.requires_grad], 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def measure(kind: str, model: str, batch: int, precision: str, device: torch.device, args) -> dict:
    cfg = _config(model, batch, precision, KINDS[kind])
    precision = cfg.optim.precision  # a kind may set its own
    clip, clf = train.build(cfg, 10, device)
    clf.train()
    params = [p for p in clf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    size = clip.config.vision_config.image_size
    n_layers = clip.config.vision_config.num_hidden_layers
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    reg = cfg.regularizer.kind
    ctx = probing(clf.vision) if reg != "none" else None
    rows = ctx.__enter__() if ctx else None
    if kind.startswith("reports"):
        step = _reports_step(clf, opt, scaler, device, precision)
    else:
        ref = None
        if reg == "apr" and cfg.method == "full":
            ref = copy.deepcopy(clf.vision).requires_grad_(False).eval()
            if device.type == "cuda":
                ref.to(torch.bfloat16)
        floor = torch.full((n_layers,), 0.7 * math.log((size // clip.config.vision_config.patch_size) ** 2),
                           device=device)
        step = make_step(cfg, clf, opt, scaler, device=device, precision=precision, rows=rows,
                               ref_vision=ref, floor=floor)
    lookup = lambda: None  # noqa: E731
    if reg == "apr" and cfg.regularizer.reference == "cached":
        # The engine's table, filled with random rows (values do not change the cost).
        cfgv = clip.config.vision_config
        tokens = (size // cfgv.patch_size) ** 2 + 1
        table = torch.rand(2, 4096, n_layers, cfgv.num_attention_heads, tokens, device=device,
                           dtype=torch.float16 if device.type == "cuda" else torch.float32)
        cache = ReferenceRows(table)
        lookup = lambda: cache.lookup(torch.randint(0, 4096, (batch,)), torch.rand(batch) < 0.5)  # noqa: E731
    reset_peak(device)
    t = time_steps(lambda: step(x, y, lookup()) if not kind.startswith("reports") else step(x, y), device,
                   warmup=args.warmup, iters=args.iters)
    if ctx:
        ctx.__exit__(None, None, None)
    return {"kind": kind, "batch": batch, "img/s": batch / t, "ms/step": 1000 * t,
            "peak GiB": peak_memory_gib(device), "trainable M": sum(p.numel() for p in params) / 1e6}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="vit-b-32-random")
    ap.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    precision = args.precision if device.type == "cuda" or args.precision != "fp16" else "fp32"
    rows = []
    for batch in args.batches:
        group = [measure(kind, args.model, batch, precision, device, args) for kind in args.kinds]
        by = {r["kind"]: r for r in group}
        for r in group:
            if "full" in by:
                r["time × full"] = by["full"]["img/s"] / r["img/s"]
            if "reports (eager+attn)" in by:
                r["speed × reports"] = r["img/s"] / by["reports (eager+attn)"]["img/s"]
        rows.extend(group)
    print(f"\nbench_train on {device_name(device)}; torch {torch.__version__}; {args.model}; "
          f"{precision} autocast; step.make_step\n")
    print_table(rows, ["kind", "batch", "img/s", "ms/step", "peak GiB", "trainable M", "time × full",
                       "speed × reports"])


if __name__ == "__main__":
    main()
