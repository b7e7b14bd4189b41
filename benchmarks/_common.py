"""Timing helpers shared by the benchmarks (CUDA events on GPU, perf_counter on CPU)."""

from __future__ import annotations

import statistics
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(fn, device: torch.device, *, warmup: int, iters: int, repeats: int = 3) -> float:
    """Median seconds per call of `fn()` over `repeats` windows of `iters` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    windows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        windows.append((time.perf_counter() - t0) / iters)
    return statistics.median(windows)


def peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print(" | ".join(c.ljust(widths[c]) for c in columns))
    print("-|-".join("-" * widths[c] for c in columns))
    for r in rows:
        print(" | ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) >= 10 else f"{v:.3f}"
    return str(v)


class PilSet(torch.utils.data.Dataset):
    """The reports' per-item pipeline: open the JPEG, random flip, CLIP processor.

    Args:
        files: (path, label) pairs.
        processor: a transformers CLIPImageProcessor (built from a config, no download).
    """

    def __init__(self, files: list[tuple[str, int]], processor):
        self.files, self.processor = files, processor

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.files[i]
        img = Image.open(path).convert("RGB")
        if torch.rand(()) < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return self.processor(img, return_tensors="pt")["pixel_values"][0], label
