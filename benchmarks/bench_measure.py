"""`attncollapse measure` end to end against the bare fused forward pass over the same images.

    forward    the vision tower's fused (SDPA) forward over the images, already decoded,
               resized and normalised in memory, batch by batch, no probe (the floor)
    measure    `lab.measure_model` exactly as the command runs it: load the model, decode and
               preprocess the image files, the probed forward, the per-image metrics, and
               measure.csv / .json / .png written

Both in the same invocation, on the same N JPEG files (written here: 256×256, resized and
centre-cropped to 224 by both). The forward is timed before and after measure and the
ratio taken against their mean: on a shared machine the load changes within minutes.
Target (issue 21): measure ≤ 1.5× forward for 1,000 images
with `vit-b-32-random` on a CPU.

    python benchmarks/bench_measure.py                      # 1,000 images, vit-b-32-random, CPU
    python benchmarks/bench_measure.py --n 64 --model tiny  # a quick look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import device_name, print_table  # noqa: E402

from attncollapse.data import preprocess  # noqa: E402
from attncollapse.lab import measure_model  # noqa: E402
from attncollapse.models import image_size, load_model, normalization, vision_tower  # noqa: E402


def write_images(folder: Path, n: int, seed: int = 0) -> None:
    """N 256×256 JPEGs: noise plus a bright block, so decoding costs what a photo's does."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
        a[(i * 7) % 192:(i * 7) % 192 + 64, :96] = 240
        Image.fromarray(a).save(folder / f"{i:05d}.jpg", quality=90)


@torch.no_grad()
def bare_forward(model_name: str, folder: Path, batch_size: int) -> float:
    """Seconds of the fused forward over every image, pixels prepared beforehand (not timed)."""
    model = load_model(model_name)
    tower = vision_tower(model).eval()
    size = image_size(model)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalization(model))
    files = sorted(folder.glob("*.jpg"))
    pixels = torch.from_numpy(np.stack([preprocess(Image.open(f), size) for f in files]))
    x = (pixels.float() / 255 - mean) / std
    tower(pixel_values=x[:2])  # warm-up
    t0 = time.perf_counter()
    for s in range(0, len(x), batch_size):
        tower(pixel_values=x[s:s + batch_size])
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="images (default 1000)")
    ap.add_argument("--model", default="vit-b-32-random")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--images", help="an existing folder of .jpg images (default: N written to a temp dir)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.images) if args.images else Path(tmp) / "images"
        if not args.images:
            write_images(folder, args.n)
        n = len(list(folder.glob("*.jpg")))
        before_s = bare_forward(args.model, folder, args.batch_size)
        t0 = time.perf_counter()
        res = measure_model(args.model, str(folder), out=Path(tmp) / "out", batch_size=args.batch_size, device="cpu")
        measure_s = time.perf_counter() - t0
        after_s = bare_forward(args.model, folder, args.batch_size)
    forward_s = (before_s + after_s) / 2
    assert res["images"]["count"] == n
    print(f"{args.model}, {n} images 256 -> 224 px, batch {args.batch_size}, {device_name(torch.device('cpu'))}")
    rows = [{"kind": "bare fused forward (pixels ready), before", "seconds": before_s, "img/s": n / before_s,
             "× forward": before_s / forward_s},
            {"kind": "bare fused forward (pixels ready), after", "seconds": after_s, "img/s": n / after_s,
             "× forward": after_s / forward_s},
            {"kind": "measure (load, decode, probe, metrics, files)", "seconds": measure_s, "img/s": n / measure_s,
             "× forward": measure_s / forward_s}]
    print_table(rows, ["kind", "seconds", "img/s", "× forward"])
    print(f"ratio measure / forward (mean of before and after) = {measure_s / forward_s:.3f} (target ≤ 1.5); "
          f"against the slower of the two {measure_s / max(before_s, after_s):.3f}, "
          f"the faster {measure_s / min(before_s, after_s):.3f}")


if __name__ == "__main__":
    main()
