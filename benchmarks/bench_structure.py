"""Cost of the structure measures (issue 22): an eval point with them vs with the four metrics only.

    four      eval_rows + summarize_rows (what every eval point measured before)
    all       eval_rows_structure (full maps + hidden states in the same forwards)
              + summarize_rows + structure_table against a pretrained reference

ViT-B/32-shaped CLIP tower with random weights (`vit-b-32-random`; speed does not depend on
the weights), fp32, random normalised images as the eval subset, one forward of
`--forward-batch` images at a time (the config's `eval.forward_batch_size`, 256). The
target (issue 22): all ≤ 1.3× four.

    python benchmarks/bench_structure.py --device cpu --images 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import device_name, print_table, time_steps  # noqa: E402

from attncollapse.measure import (StructureReference, eval_rows, eval_rows_structure,  # noqa: E402
                                  structure_table, summarize_rows)
from attncollapse.models import PRESETS, build_classifier  # noqa: E402
from transformers import CLIPModel  # noqa: E402

SHAPES = {"vit-b-32": "vit-b-32-random", "vit-b-16": "vit-b-16-random", "tiny": "tiny"}


class Images:
    """The two things an eval pass asks of a Feeder: `device` and `batches(n)`."""

    def __init__(self, x: torch.Tensor):
        self.x, self.device = x, x.device

    def batches(self, n: int):
        for i in range(0, len(self.x), n):
            yield self.x[i:i + n], None

    def __len__(self):
        return len(self.x)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="vit-b-32", choices=list(SHAPES))
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--forward-batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    config = PRESETS[SHAPES[args.shape]]()
    torch.manual_seed(0)
    clf = build_classifier(CLIPModel(config), 10).to(device).eval()
    size = config.vision_config.image_size
    feed = Images(torch.randn(args.images, 3, size, size, device=device))
    _, obs0 = eval_rows_structure(clf.vision, feed, batch_size=args.forward_batch, precision="fp32")
    ref = StructureReference.of(obs0)

    def four():
        summarize_rows(eval_rows(clf.vision, feed, batch_size=args.forward_batch, precision="fp32"))

    def everything():
        rows, obs = eval_rows_structure(clf.vision, feed, batch_size=args.forward_batch, precision="fp32")
        summarize_rows(rows)
        structure_table(obs, ref)

    # Interleaved, best of `repeats`: on a shared machine other load only adds time, so the
    # minimum of alternating windows compares the two under the same conditions. On CPU the
    # process's CPU seconds are timed too (what other processes' load does not inflate).
    wall, cpu = {"four": [], "all": []}, {"four": [], "all": []}
    for fn in (four, everything):  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in (("four", four), ("all", everything)):
            c0 = time.process_time()
            wall[name].append(time_steps(fn, device, warmup=0, iters=args.iters, repeats=1))
            cpu[name].append((time.process_time() - c0) / args.iters)
    t_four, t_all = min(wall["four"]), min(wall["all"])
    c_four, c_all = min(cpu["four"]), min(cpu["all"])
    print(f"{args.shape}, {args.images} eval images, forward batch {args.forward_batch}, {device_name(device)}")
    print_table([{"eval point": "four metrics", "wall s": round(t_four, 3), "wall ratio": 1.0,
                  "cpu s": round(c_four, 3), "cpu ratio": 1.0},
                 {"eval point": "all measures", "wall s": round(t_all, 3), "wall ratio": round(t_all / t_four, 3),
                  "cpu s": round(c_all, 3), "cpu ratio": round(c_all / c_four, 3)}],
                ["eval point", "wall s", "wall ratio", "cpu s", "cpu ratio"])
    print(f"ratio all / four = {t_all / t_four:.3f} wall, {c_all / c_four:.3f} CPU time (target ≤ 1.3)")


if __name__ == "__main__":
    main()
