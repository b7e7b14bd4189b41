"""Cost of the forgetting design's per-epoch signal pass vs one training epoch (issue 27).

    signals   what a run measures after every epoch (train/forgetting.py `_after_epoch`,
              without the val accuracy): one fp32 forward of the probe set (attention rows,
              per-block [CLS] states, projected embeddings) + attention summary, CKA per
              block, embedding drift, tower weight change (LoRA merged), and the zero-shot
              accuracy of the tracking subset (live tower and projection)
    epoch     one training epoch: forward, cross-entropy, backward, clip 1.0, AdamW, fp32

At the study's sizes: probe 200 images, tracking subset 1,000, epoch 1,600 images in
batches of 32 (50 steps). ViT-B/32-shaped CLIP with random weights (`vit-b-32-random`:
speed does not depend on the weights), random images. Target: signals ≤ 25% of an epoch.

On a slow CPU a full epoch takes minutes: `--steps`, `--probe-images`, `--track-images`
time fewer and scale linearly to the study's sizes (per-image and per-step costs are
constant at a fixed batch); the table says what was measured and what was scaled.

    python benchmarks/bench_forgetting.py --device cpu --steps 3 --probe-images 64 --track-images 128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import device_name, print_table, sync  # noqa: E402

from attncollapse.config import RunConfig  # noqa: E402
from attncollapse.data import Feeder, ImageSet  # noqa: E402
from attncollapse.train import build  # noqa: E402
from attncollapse.measure import encoder_weights, weight_drift_rel  # noqa: E402
from attncollapse.train.forgetting_signals import ZeroShotSet, reference, signals, zeroshot  # noqa: E402

STUDY = {"probe": 200, "track": 1000, "epoch_images": 1600, "batch": 32}


class Clock:
    """Wall and process CPU seconds of a block (on a shared CPU the wall clock also counts
    waiting for a core; CPU seconds do not, so the ratio uses them on CPU)."""

    def __init__(self, dev: torch.device):
        self.dev = dev

    def __enter__(self):
        sync(self.dev)
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        sync(self.dev)
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def images(n: int, classes: int, size: int = 224, seed: int = 0) -> ImageSet:
    rng = np.random.RandomState(seed)
    return ImageSet(rng.randint(0, 256, (n, 3, size, size), dtype=np.uint8), np.arange(n) % classes,
                    [f"class {i}" for i in range(classes)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--method", default="full", choices=["full", "lora"])
    ap.add_argument("--steps", type=int, default=50, help="training steps timed (the study's epoch: 50)")
    ap.add_argument("--probe-images", type=int, default=STUDY["probe"])
    ap.add_argument("--track-images", type=int, default=STUDY["track"])
    ap.add_argument("--forward-batch", type=int, default=256)
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    cfg = RunConfig(model="vit-b-32-random", method=args.method, lora={"rank": 8, "alpha": 16})
    _clip, clf = build(cfg, 10, dev)
    probe = Feeder(images(args.probe_images, 10, seed=1), dev)
    track = ZeroShotSet("track", "random", Feeder(images(args.track_images, 100, seed=2), dev),
                        nn.functional.normalize(torch.randn(100, 512, device=dev), dim=-1))
    ref = reference(clf, probe, batch_size=args.forward_batch)

    # training: `steps` steps of batch 32 (the first one untimed: allocator warm-up)
    train = Feeder(images(args.steps * STUDY["batch"] + STUDY["batch"], 10, seed=3), dev)
    params = [p for p in clf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)

    def step(i: int) -> None:
        x, y = train.get(torch.arange(i * STUDY["batch"], (i + 1) * STUDY["batch"]))
        loss = nn.functional.cross_entropy(clf(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    clf.train()
    step(args.steps)  # warm-up
    with Clock(dev) as t_train:
        for i in range(args.steps):
            step(i)
    signals(clf, probe, ref, batch_size=args.forward_batch)  # warm-up
    with Clock(dev) as t_sig:
        signals(clf, probe, ref, batch_size=args.forward_batch)
    with Clock(dev) as t_w:  # the weight change: a fixed cost per pass, not per image
        weight_drift_rel(ref.weights, encoder_weights(clf.vision))
    with Clock(dev) as t_track:
        zeroshot(clf, track, batch_size=args.forward_batch)

    key = "cpu" if dev.type == "cpu" else "wall"
    steps_epoch = STUDY["epoch_images"] // STUDY["batch"]
    rows, study = [], {}
    for part, clock, n, full, fixed in (
            (f"training epoch ({steps_epoch} steps × {STUDY['batch']})", t_train, args.steps, steps_epoch, None),
            (f"probe signals ({STUDY['probe']} images)", t_sig, args.probe_images, STUDY["probe"], t_w),
            (f"tracking zero-shot ({STUDY['track']} images)", t_track, args.track_images, STUDY["track"], None)):
        measured = getattr(clock, key)
        f = getattr(fixed, key) if fixed is not None else 0.0
        study[part] = f + (measured - f) * full / n
        rows.append({"part": part, "measured": f"{n} {'steps' if clock is t_train else 'images'}",
                     "wall s": round(clock.wall, 2), "cpu s": round(clock.cpu, 2), f"study {key} s": round(study[part], 2)})
    epoch = list(study.values())[0]
    for r, v in zip(rows, study.values()):
        r["% of epoch"] = round(100 * v / epoch, 1)
    total = sum(list(study.values())[1:])
    rows.append({"part": "signal pass, total", f"study {key} s": round(total, 2), "% of epoch": round(100 * total / epoch, 1)})
    print(f"# bench_forgetting: ViT-B/32 shapes, {args.method}, fp32, {device_name(dev)}; "
          f"weight change {getattr(t_w, key):.2f} {key} s per pass (not scaled)")
    print_table(rows, ["part", "measured", "wall s", "cpu s", f"study {key} s", "% of epoch"])
    print(f"signal pass / epoch = {total / epoch:.3f} (target ≤ 0.25: {'met' if total / epoch <= 0.25 else 'NOT met'})")


if __name__ == "__main__":
    main()
