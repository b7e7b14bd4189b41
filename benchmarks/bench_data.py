"""Images/s delivered to the model: warm uint8 cache + Feeder vs DataLoader + CLIPImageProcessor.

Both paths deliver what a training step consumes: shuffled, normalised float32 batches
(B, 3, S, S) on `--device`. The images are synthetic JPEGs written to a temp dir, so the
benchmark runs offline.

    python benchmarks/bench_data.py --device cuda --n 5000
    python benchmarks/bench_data.py --device cpu --n 400 --batch-sizes 64   # smoke run

Target (issue "Data"): >= 20,000 img/s at 224 px from the cache, >= 10x the DataLoader.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import PilSet  # noqa: E402

from attncollapse import data  # noqa: E402
from attncollapse.config import DataConfig  # noqa: E402


def write_jpegs(root: Path, n: int, size: int, classes: int = 10) -> list[tuple[str, int]]:
    """n synthetic JPEGs (size×size), one sub-folder per class (an imagefolder source)."""
    files = []
    chunk = 500
    for s in range(0, n, chunk):
        # made at 64 px and upscaled: 16x cheaper to generate, a realistic smooth JPEG
        block = data.synthetic(min(chunk, n - s), classes, 64, seed=s, split="train")
        for i, (img, c) in enumerate(zip(block.images, block.labels), s):
            d = root / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            path = d / f"{i:06d}.jpg"
            big = Image.fromarray(img.transpose(1, 2, 0)).resize((size, size), Image.BILINEAR)
            big.save(path, quality=90)
            files.append((str(path), int(c)))
    return files


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_feeder(feeder: data.Feeder, batch: int, device: torch.device, min_s: float) -> float:
    """Shuffled batches with random flips, as the training loop draws them; img/s."""
    n, g = len(feeder), torch.Generator().manual_seed(0)
    for idx in torch.randperm(n, generator=g)[: batch * 2].split(batch):  # warm-up
        feeder.get(idx.to(device), flip=torch.rand(len(idx), device=device) < 0.5)
    sync(device)
    done, t0 = 0, time.perf_counter()
    while True:
        perm = torch.randperm(n, generator=g).to(device)
        for idx in perm.split(batch):
            x, y = feeder.get(idx, flip=torch.rand(len(idx), device=device) < 0.5)
            done += len(idx)
        sync(device)
        if time.perf_counter() - t0 >= min_s:
            return done / (time.perf_counter() - t0)


def bench_loader(files, processor, batch: int, workers: int, device: torch.device, min_s: float) -> float:
    """Shuffled epochs through a DataLoader until `min_s` have passed; img/s. The clock starts
    at the first batch, so worker start-up is not counted (in the DataLoader's favour)."""
    loader = torch.utils.data.DataLoader(
        PilSet(files, processor), batch_size=batch, shuffle=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    done, t0 = 0, None
    while t0 is None or time.perf_counter() - t0 < min_s:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if t0 is None:
                sync(device)
                t0 = time.perf_counter()
                continue
            done += len(y)
        sync(device)
    return done / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=5000, help="JPEGs written and served")
    p.add_argument("--image-size", type=int, default=224, help="model resolution S")
    p.add_argument("--source-size", type=int, default=256, help="side of the JPEGs")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers")
    p.add_argument("--min-seconds", type=float, default=3.0, help="timing per path and batch size")
    p.add_argument("--workdir", default=None, help="where JPEGs and cache go (default: a temp dir)")
    args = p.parse_args(argv)
    device = torch.device(args.device)

    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": args.image_size},
                                   crop_size={"height": args.image_size, "width": args.image_size})
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        files = write_jpegs(tmp / "jpegs", args.n, args.source_size)
        print(f"wrote {len(files)} JPEGs {args.source_size}px in {time.perf_counter() - t:.1f}s")
        cfg = DataConfig(cache_dir=str(tmp / "cache"), eval_subset_size=2)
        source = f"imagefolder:{tmp / 'jpegs'}"
        t = time.perf_counter()
        data.load_splits(source, cfg, image_size=args.image_size)  # cold: builds train + test
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        warm = data.load_splits(source, cfg, image_size=args.image_size)
        warm_s = time.perf_counter() - t
        # serve all n images, like the DataLoader (the source split them 80/20)
        pooled = data.ImageSet(np.concatenate([warm.train.images, warm.test.images]),
                               np.concatenate([warm.train.labels, warm.test.labels]), warm.train.class_names)
        print(f"cache: built {len(pooled)} images in {build_s:.1f}s ({len(pooled) / build_s:.0f} img/s, "
              f"{os.cpu_count()} processes); warm open {warm_s:.2f}s")
        t = time.perf_counter()
        feeder = data.Feeder(pooled, device)
        sync(device)
        print(f"Feeder on {device}: resident={feeder.resident}, set-up {time.perf_counter() - t:.2f}s "
              f"({pooled.images.nbytes / 2**20:.0f} MiB uint8)")
        print(f"processor: {type(processor).__name__}, DataLoader workers: {args.workers}")

        rows = []
        for b in args.batch_sizes:
            fast = bench_feeder(feeder, b, device, args.min_seconds)
            slow = bench_loader(files, processor, b, args.workers, device, args.min_seconds)
            rows.append((b, fast, slow))
        print(f"\n{'batch':>6} | {'cache+Feeder img/s':>19} | {'DataLoader+PIL img/s':>21} | {'ratio':>7}")
        print("-" * 64)
        for b, fast, slow in rows:
            print(f"{b:>6} | {fast:>19,.0f} | {slow:>21,.0f} | {fast / slow:>6.1f}x")
        print(f"\n{args.image_size}px on {device}; target >= 20,000 img/s from the cache and >= 10x.")


if __name__ == "__main__":
    main()
