"""One training step of a CLIP vision tower, four ways, side by side in one run.

    sdpa        fused attention, no attention read out (our plain step)
    eager+attn  attn_implementation="eager" + output_attentions=True (the reports' method)
    probe       fused attention + the [CLS]-row probe (rows collected, not in the loss)
    probe+reg   as probe, with the rows in the loss (a regularized step)

ViT-B/32- and ViT-B/16-shaped towers with random weights (speed does not depend on the
weights), bf16 autocast, AdamW. Prints img/s, peak memory and each ratio to eager+attn.

    python benchmarks/bench_probe.py --device cuda
    python benchmarks/bench_probe.py --device cpu --shapes tiny --batches 8 --iters 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import device_name, peak_memory_gib, print_table, reset_peak, time_steps  # noqa: E402

from attncollapse.measure.metrics import entropy, patch_rows  # noqa: E402
from attncollapse.models import PRESETS, build_classifier  # noqa: E402
from attncollapse.measure.probe import attention_modules, probing, stack_rows  # noqa: E402
from transformers import CLIPModel  # noqa: E402

SHAPES = {"vit-b-32": "vit-b-32-random", "vit-b-16": "vit-b-16-random", "tiny": "tiny"}


def make(shape: str, impl: str, device: torch.device):
    config = PRESETS[SHAPES[shape]]()
    config._attn_implementation = impl
    torch.manual_seed(0)
    clip = CLIPModel(config)
    clf = build_classifier(clip, 10).to(device).train()
    opt = torch.optim.AdamW(clf.parameters(), lr=1e-5, fused=device.type == "cuda")
    return clf, opt


def step_fn(kind: str, clf, opt, x, y, dtype, device):
    n_layers = len(attention_modules(clf.vision))
    ctx = probing(clf.vision) if kind.startswith("probe") else None
    rows = ctx.__enter__() if ctx else None

    def step(_keep=ctx):  # holding the context keeps its hooks alive
        with torch.autocast(device.type, dtype=dtype):
            if kind == "eager+attn":
                out = clf.vision(pixel_values=x, output_attentions=True)
                logits = clf.head(clf.projection(out.pooler_output))
                loss = nn.functional.cross_entropy(logits, y)
            else:
                if rows is not None:
                    rows.clear()
                loss = nn.functional.cross_entropy(clf(x), y)
                if kind == "probe+reg":
                    loss = loss + 0.1 * entropy(patch_rows(stack_rows(rows, n_layers))).mean()
        loss.backward()
        nn.utils.clip_grad_norm_(clf.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", nargs="+", default=["vit-b-32", "vit-b-16"], choices=list(SHAPES))
    ap.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16
    kinds = ["sdpa", "eager+attn", "probe", "probe+reg"]
    results = []
    for shape in args.shapes:
        size = PRESETS[SHAPES[shape]]().vision_config.image_size
        for batch in args.batches:
            x = torch.randn(batch, 3, size, size, device=device)
            y = torch.randint(0, 10, (batch,), device=device)
            times = {}
            for kind in kinds:
                impl = "eager" if kind == "eager+attn" else "sdpa"
                clf, opt = make(shape, impl, device)
                reset_peak(device)
                try:
                    t = time_steps(step_fn(kind, clf, opt, x, y, dtype, device), device,
                                   warmup=args.warmup, iters=args.iters)
                except torch.OutOfMemoryError:
                    results.append({"shape": shape, "batch": batch, "method": kind, "img/s": None, "note": "OOM"})
                    continue
                times[kind] = t
                results.append({"shape": shape, "batch": batch, "method": kind, "img/s": batch / t,
                                "ms/step": 1000 * t, "peak GiB": peak_memory_gib(device)})
                del clf, opt
            for r in results:
                if r["shape"] == shape and r["batch"] == batch and r.get("img/s") and "eager+attn" in times:
                    r["× eager+attn"] = times["eager+attn"] * r["img/s"] / batch
                    r["× sdpa"] = times["sdpa"] * r["img/s"] / batch if "sdpa" in times else None
    print(f"\nbench_probe on {device_name(device)}; torch {torch.__version__}; bf16 autocast; AdamW; one step\n")
    print_table(results, ["shape", "batch", "method", "img/s", "ms/step", "peak GiB", "× eager+attn", "× sdpa"])


if __name__ == "__main__":
    main()
