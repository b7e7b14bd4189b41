"""Where and how tensors run: the device, the autocast precision, eval mode.

One home for the device plumbing that training, evaluation and transfer all need.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def effective_precision(precision: str, device: torch.device) -> str:
    """fp16 autocast is a GPU feature; on the CPU the run falls back to fp32 (and says so)."""
    if precision == "fp16" and device.type != "cuda":
        warnings.warn("fp16 autocast needs CUDA; running this CPU run in fp32", stacklevel=2)
        return "fp32"
    return precision


def autocast(device: torch.device | str, precision: str):
    """Autocast context for `precision` ("fp16" | "bf16" | "fp32" = off, an enclosing autocast included)."""
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; expected 'fp16', 'bf16' or 'fp32'")
    dtype = _DTYPES[precision]
    kind = torch.device(device).type
    if dtype is None:
        # fp32 means fp32 even inside a caller's autocast (a Trainer's or Lightning's mixed
        # precision): the measurements must not change with the caller's precision.
        return torch.autocast(device_type=kind, enabled=False)
    return torch.autocast(device_type=kind, dtype=dtype)


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to `n` inside the block and restored after (None: unchanged).

    The setting is process-wide: a worker that runs several runs must not carry one run's
    choice into the next.
    """
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Eval mode inside the block (dropout, LoRA dropout off), each module's mode restored after."""
    was = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, was_training in zip(modules, was):
            m.train(was_training)
