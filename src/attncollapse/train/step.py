"""The training step and its speed paths: `make_step` (eager or `torch.compile`d, plain or
regularized through the probe), the per-process compile cache, and APR's reference rows
computed once per training image (`ReferenceRows`) instead of a second forward per step.
`train.run` drives these; the benchmarks time exactly them.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .._device import autocast
from ..config import RunConfig, compile_key
from ..data import Feeder
from ..measure import ProbeRows, attention_modules, probed_forward, probing, stack_rows
from .regularizers import apr, entropy_floor


def make_step(cfg: RunConfig, clf: nn.Module, opt, scaler, *, device: torch.device, precision: str,
              rows: ProbeRows | None = None, ref_vision: nn.Module | None = None, floor: torch.Tensor | None = None):
    """One optimisation step as a function of a batch: `step(x, y, ref=None) -> loss`.

    Plain runs use the fused attention and no probe; regularized runs read the probe rows
    that `rows` (from an active `probing` block) collects during the forward. Either is
    `torch.compile`d when `optim.compile` asks.
    """
    reg = cfg.regularizer.kind
    n_layers = len(attention_modules(clf.vision))
    params = [p for p in clf.parameters() if p.requires_grad]
    # The probe's rows reach the loss through forward hooks, which dynamo traces into the
    # compiled graph (no break), so regularized steps compile too.
    fwd = clf
    if cfg.optim.compile != "off":
        _fresh_compile_cache(compile_key(cfg))
        if cfg.optim.compile_scope == "model":
            fwd = torch.compile(clf, mode=cfg.optim.compile)
        else:
            fwd = _layer_compiled(clf, cfg.optim.compile)

    def step(x: torch.Tensor, y: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """One update on batch (x, y); `ref` = cached APR reference rows (L, B, H, T)."""
        with autocast(device, precision):
            if reg == "none":
                loss = nn.functional.cross_entropy(fwd(x), y)
            else:
                if reg == "apr" and ref is None:
                    ref = reference_rows(clf, ref_vision, x, rows, n_layers)
                rows.clear()
                logits = fwd(x)
                cur = stack_rows(rows, n_layers)
                loss = nn.functional.cross_entropy(logits, y)
                if reg == "apr":
                    loss = loss + apr(cur, ref, cfg.regularizer.lam)
                else:
                    loss = loss + entropy_floor(cur, floor, cfg.regularizer.lam)
        scaler.scale(loss).backward()
        if cfg.optim.grad_clip is not None:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def _layer_compiled(clf: nn.Module, mode: str):
    """`clf`'s forward with each transformer layer compiled on its own (regional compile).

    The compiled layers stand in the layer list only during the training forward, so
    eval points, zero-shot and the APR reference stay eager (compiling them too would
    add graphs per batch size and mode).
    """
    slots = [(m, i) for m in clf.vision.modules() if isinstance(m, nn.ModuleList)
             for i, layer in enumerate(m) if type(layer).__name__.endswith("EncoderLayer")]
    if not slots:
        raise ValueError("optim.compile_scope 'layers': no transformer layers found in the vision tower")
    compiled = [torch.compile(m[i], mode=mode) for m, i in slots]

    def fwd(x: torch.Tensor) -> torch.Tensor:
        originals = [m[i] for m, i in slots]
        for (m, i), c in zip(slots, compiled):
            m[i] = c
        try:
            return clf(x)
        finally:
            for (m, i), orig in zip(slots, originals):
                m[i] = orig

    return fwd


_compiled_key: tuple | None = None


def _fresh_compile_cache(key: tuple) -> None:
    """Keep this process's compiled step when the next run has the same graph; else drop it.

    A worker process runs many runs. Dynamo keeps every graph it compiled for a function
    (8 at most by default: past that it silently runs eager, 4x slower) and CUDA graphs
    keep their memory pools, so a run of a new kind starts from a reset; the on-disk
    inductor caches still make a repeated compile cheaper.
    """
    global _compiled_key
    if _compiled_key is not None and _compiled_key != key:
        torch._dynamo.reset()
    _compiled_key = key


class ReferenceRows:
    """APR reference rows of every training image, computed once before the first step.

    The pretrained tower is frozen and its forward is deterministic, so its [CLS] rows
    for a given image and flip state never change: one pass over the training set (both
    flip states when flipping is on) replaces a second forward on every step. Stored in
    fp32, the precision of the original's online reference (fp32 weights under the step's
    autocast, rows out of an fp32 softmax), so the cached and online penalties are equal:
    ~1.2 GB for EuroSAT at ViT-B/32 (21,600 × 2 × 12 layers × 12 heads × 50 tokens × 4 bytes).
    """

    def __init__(self, table: torch.Tensor):
        self.table = table  # (F, N, L, H, T), F = 2 flip states (or 1)

    @classmethod
    @torch.no_grad()
    def build(cls, clf, ref_vision, feeder: Feeder, *, hflip: bool, batch_size: int, precision: str):
        from tqdm.auto import tqdm

        n_layers = len(attention_modules(clf.vision))
        dtype = torch.float32  # not fp16: a rounded reference makes the penalty non-zero at step 0
        flips = (False, True) if hflip else (False,)
        n = len(feeder)
        out = None
        bar = tqdm(total=n * len(flips), desc="APR reference rows", unit="img", leave=False,
                   disable=None)  # no bar in a log (stderr not a terminal), as README says
        tower = ref_vision if ref_vision is not None else clf.vision
        adapter_off = ref_vision is None and hasattr(clf.vision, "disable_adapter")
        with probing(tower) as rows, (clf.vision.disable_adapter() if adapter_off else contextlib.nullcontext()):
            for f, flip in enumerate(flips):
                for s in range(0, n, batch_size):
                    idx = torch.arange(s, min(s + batch_size, n))
                    x, _ = feeder.get(idx, flip=torch.full((len(idx),), flip))
                    with autocast(feeder.device, precision):
                        r = probed_forward(tower, rows, x, n_layers)
                    r = r.to(dtype).permute(1, 0, 2, 3)  # (B, L, H, T)
                    if out is None:
                        out = torch.empty((len(flips), n, *r.shape[1:]), dtype=dtype, device=feeder.device)
                    out[f, s:s + len(idx)] = r
                    bar.update(len(idx))
        bar.close()
        return cls(out)

    def lookup(self, idx: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
        """Rows of batch `idx` in flip state `flip`: (L, B, H, T) float32."""
        dev = self.table.device
        f = flip.long().to(dev) if flip is not None and self.table.shape[0] == 2 else torch.zeros_like(idx, device=dev)
        return self.table[f, idx.to(dev)].permute(1, 0, 2, 3).float()


def reference_rows(clf: nn.Module, ref_vision: nn.Module | None, x: torch.Tensor, rows: ProbeRows,
                   n_layers: int) -> torch.Tensor:
    """APR's reference: the pretrained model's rows on batch `x`, computed online (no grad).

    Args:
        clf: the classifier being trained (its vision tower is probed by `rows`).
        ref_vision: a frozen copy of the pretrained tower (full fine-tuning), or None for
            LoRA, whose base model is `clf.vision` with the adapters disabled.
        x: (B, 3, S, S) normalised images.
        rows: the `ProbeRows` of the active `probing(clf.vision)` block.
        n_layers: probed layers.

    Returns:
        (L, B, H, 1 + P) float32 rows; `ReferenceRows.lookup` gives the same from its table.
    """
    with torch.no_grad():
        if ref_vision is not None:
            with probing(ref_vision) as ref:
                return probed_forward(ref_vision, ref, x, n_layers).float()
        with clf.vision.disable_adapter():  # LoRA: the base model, no second copy in memory
            return probed_forward(clf.vision, rows, x, n_layers).float()
