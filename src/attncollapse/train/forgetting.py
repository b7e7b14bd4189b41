"""One run of the forgetting design (the authors' final study, docs/FORGETTING_RUNS.md).

Recipe: AdamW (weight decay on every trainable tensor), per-step LambdaLR-style schedule
(linear warmup from 0 over max(1, int(0.05·T)) steps, then cosine to 0), gradient clipping,
fp32, whole epochs. The signals are read at epoch 0 and after every epoch on the unlabelled
probe set (forgetting_signals.py), with the zero-shot tracking subset; the epoch of best
validation accuracy (strict >: the earliest wins ties) is selected, and every "final"
quantity — attention, CKA, drifts, test, transfer, corruptions — is measured there.

Files of a finished run: record.json (the authors' per-run schema plus "schema",
"config.backbone", "provenance"), final.json / history.json / config.yaml (what the matrix
runner reads to call it done), checkpoints/last.pt (resume, per epoch) and
checkpoints/selected.safetensors (the selected epoch's trainable tensors, verified).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import _io
from .._device import cpu_threads, resolve_device
from ..config import RunConfig, fingerprint, method_name
from ..data import Feeder, Splits, load_splits
from ..models import PRESETS, count_parameters, image_size, normalization
from .build import build
from .forgetting_signals import (Reference, ZeroShotSet, cached_pretrained, corruption_images, head_accuracy,
                                 reference, signals, store_pretrained, transfer_images, zeroshot, zeroshot_set)
from .schedule import flip_mask, lr_at

SCHEMA = "attncollapse-forgetting/1"
CKPT = "last.pt"
SELECTED = "selected.safetensors"


@dataclass
class Setup:
    """Everything a forgetting run holds while it trains."""

    cfg: RunConfig
    dir: Path
    device: torch.device
    clip: nn.Module
    clf: nn.Module
    splits: Splits
    feeds: dict[str, Feeder]  # train, val, probe, test, corruption:<name>
    zs: dict[str, ZeroShotSet]  # track, cifar100, cifar10
    ref: Reference
    pretrained: dict[str, float]  # record key → pretrained accuracy
    baseline_track: float
    steps_per_epoch: int
    total: int
    history: list[dict] = field(default_factory=list)
    best_val: float = -1.0
    selected_epoch: int = 0
    diverged: bool = False


def run_forgetting(cfg: RunConfig, run_dir: str | Path) -> dict:
    """Train one run of a `design: forgetting` matrix into `run_dir`; returns final.json's content.

    A run killed between epochs resumes from checkpoints/last.pt (same numbers: the batch
    order, flips and dropout state are restored).
    """
    with cpu_threads(cfg.cpu_threads):
        return _run(cfg, Path(run_dir))


def schedule_lr(step: int, total: int, peak: float, warmup_frac: float) -> float:
    """The authors' per-step learning rate: warmup max(1, int(frac·T)) from 0, then cosine to 0."""
    return lr_at(step, total, peak, warmup_frac, min_warmup=1)


def trainable_state(clf: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of every trainable tensor of `clf`, by name (what the selection keeps)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in clf.named_parameters() if p.requires_grad}


def _run(cfg: RunConfig, run_dir: Path) -> dict:
    t0 = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    s = setup_run(cfg, run_dir)
    _io.write_yaml(run_dir / "config.yaml", cfg.model_dump(mode="json"), checksum=True)
    params = [p for p in s.clf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    torch.manual_seed(cfg.seed)  # dropout (LoRA's) from here on
    start, elapsed = _resume(s, opt)
    gen = torch.Generator().manual_seed(cfg.seed)  # the shuffle: one permutation per epoch
    n = len(s.splits.train)
    for _ in range(start):
        torch.randperm(n, generator=gen)
    epochs = int(cfg.optim.epochs)
    for epoch in range(start, epochs):
        perm = torch.randperm(n, generator=gen)
        loss, acc = _epoch(s, opt, params, perm, epoch)
        _after_epoch(s, epoch + 1, loss, acc)
        _checkpoint(s, opt, epoch + 1, elapsed + time.time() - t0)
    return _finish(s, elapsed + time.time() - t0)


def setup_run(cfg: RunConfig, run_dir: Path) -> Setup:
    """Data, model (freshly built: the pretrained weights), transfer sets and the epoch-0 reference of a run."""
    fcfg = cfg.forgetting
    device = resolve_device(cfg.device)
    size = image_size(cfg.model)
    splits = load_splits(cfg.dataset, cfg.data, image_size=size)
    if splits.probe is None:
        raise ValueError("the forgetting design needs data.split: carve (a probe set)")
    clip, clf = build(cfg, splits.train.num_classes, device)
    norm = normalization(clip)

    def feed(images):
        return Feeder(images, device, mean=norm[0], std=norm[1])

    feeds = {"train": feed(splits.train), "val": feed(splits.val), "probe": feed(splits.probe), "test": feed(splits.test)}
    for name, images in corruption_images(cfg.dataset, fcfg, cfg.data, image_size=size).items():
        feeds[f"corruption:{name}"] = feed(images)
    text_cache: dict = {}
    zs = {k: zeroshot_set(clip, cfg.model, images, src, fcfg.prompt, device=device, text_cache=text_cache)
          for k, (src, images) in transfer_images(fcfg, cfg.data, image_size=size).items()}
    bs = cfg.eval.forward_batch_size
    # The freshly built model is the pretrained one (a random head; LoRA's B = 0): the
    # reference of every drift, and the pretrained zero-shot where the cache lacks it.
    ref = reference(clf, feeds["probe"], batch_size=bs)
    cache_dir = Path(fcfg.pretrained_cache) if fcfg.pretrained_cache else run_dir.parent / "pretrained"
    pretrained = {}
    for key in ("cifar100", "cifar10"):
        if key in zs:
            acc = cached_pretrained(cache_dir, cfg.model, zs[key], fcfg.prompt)
            if acc is None:
                acc = zeroshot(clf, zs[key], batch_size=bs)
                store_pretrained(cache_dir, cfg.model, zs[key], fcfg.prompt, acc)
            pretrained[key] = acc
    steps = math.ceil(len(splits.train) / cfg.optim.batch_size)  # drop_last=False
    return Setup(cfg, run_dir, device, clip, clf, splits, feeds, zs, ref, pretrained,
                 zeroshot(clf, zs["track"], batch_size=bs), steps, steps * int(cfg.optim.epochs))


def _epoch(s: Setup, opt, params, perm: torch.Tensor, epoch: int) -> tuple[float, float]:
    """One training epoch; (mean of the batch losses, training accuracy in train mode)."""
    cfg = s.cfg
    s.clf.train()
    losses, correct = [], 0
    bs = cfg.optim.batch_size
    for b in range(s.steps_per_epoch):
        step = epoch * s.steps_per_epoch + b
        idx = perm[b * bs:(b + 1) * bs]
        flip = flip_mask(step, len(idx), cfg.seed) if cfg.data.hflip else None
        x, y = s.feeds["train"].get(idx, flip=flip)
        for g in opt.param_groups:
            g["lr"] = schedule_lr(step, s.total, cfg.optim.lr, cfg.optim.warmup_frac)
        logits = s.clf(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        correct += int((logits.detach().argmax(-1) == y).sum())
    mean = sum(losses) / len(losses)
    s.diverged |= not math.isfinite(mean)
    return mean, correct / len(s.splits.train)


def _after_epoch(s: Setup, epoch: int, loss: float, acc: float) -> None:
    bs = s.cfg.eval.forward_batch_size
    val = head_accuracy(s.clf, s.feeds["val"], batch_size=bs)
    sig = signals(s.clf, s.feeds["probe"], s.ref, batch_size=bs)
    track = zeroshot(s.clf, s.zs["track"], batch_size=bs)
    att = sig.pop("attention")
    s.history.append({
        "epoch": epoch, "train_loss": loss, "train_acc": acc, "val_acc": val,
        "entropy_mean": att["entropy_mean"], "entropy_per_layer": att["entropy_per_layer"],
        "erf95_mean": att["erf95_mean"], "gini_mean": att["gini_mean"], **sig,
        "transfer_track_acc": track,
        "transfer_track_retention": track / s.baseline_track if s.baseline_track else None})
    if val > s.best_val:  # strict: the earliest epoch wins a tie
        s.best_val, s.selected_epoch = val, epoch
        _io.save_tensors(s.dir / "checkpoints" / SELECTED, trainable_state(s.clf), {"epoch": epoch}, checksum=True)


def _checkpoint(s: Setup, opt, epoch: int, elapsed: float) -> None:
    state = {"epoch": epoch, "fingerprint": fingerprint(s.cfg), "trainable": trainable_state(s.clf),
             "optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "history": s.history,
             "best_val": s.best_val, "selected_epoch": s.selected_epoch, "diverged": s.diverged, "elapsed": elapsed}
    path = s.dir / "checkpoints" / CKPT
    path.parent.mkdir(parents=True, exist_ok=True)
    with _io.atomic_path(path) as tmp:
        torch.save(state, tmp)


def _resume(s: Setup, opt) -> tuple[int, float]:
    """(epochs already done, seconds they took) from checkpoints/last.pt, restoring the state."""
    path = s.dir / "checkpoints" / CKPT
    if not path.is_file():
        return 0, 0.0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, not a checkpoint
        raise _io.DamagedFile(path, f"unreadable ({type(exc).__name__}); delete it to train the run "
                                    "from the start") from None
    if state["fingerprint"] != fingerprint(s.cfg):
        raise ValueError(f"{path}: written by a run of another config; delete {s.dir} to rerun it or use another --out")
    _load_trainable(s.clf, state["trainable"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    s.history, s.best_val = list(state["history"]), state["best_val"]
    s.selected_epoch, s.diverged = state["selected_epoch"], state["diverged"]
    return int(state["epoch"]), float(state["elapsed"])


def _load_trainable(clf: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(clf.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t.to(params[name].device))


def load_selected(run_dir: Path, clf: nn.Module) -> int:
    """Load a run's selected checkpoint into a freshly built `clf`; returns its epoch."""
    tensors, meta = _io.load_tensors_checked(run_dir / "checkpoints" / SELECTED,
                                             fix=f"delete {run_dir} and run it again")
    _load_trainable(clf, tensors)
    return int(meta.get("epoch", 0))


def _finish(s: Setup, elapsed: float) -> dict:
    cfg = s.cfg
    bs = cfg.eval.forward_batch_size
    load_selected(s.dir, s.clf)
    final = signals(s.clf, s.feeds["probe"], s.ref, batch_size=bs, per_layer=True)
    test_acc = head_accuracy(s.clf, s.feeds["test"], batch_size=bs)  # read once, here
    transfer = {}
    for key, ref_acc in s.pretrained.items():
        acc = zeroshot(s.clf, s.zs[key], batch_size=bs)
        transfer[key] = {"accuracy": acc, "pretrained": ref_acc, "retention": acc / ref_acc if ref_acc else None,
                         "n_images": len(s.zs[key].feeder), "source": s.zs[key].source}
    corruption = {k.split(":", 1)[1]: head_accuracy(s.clf, f, batch_size=bs)
                  for k, f in s.feeds.items() if k.startswith("corruption:")}
    record = build_record(s, final, test_acc, transfer, corruption, elapsed)
    _io.write_json(s.dir / "history.json", {"points": s.history}, checksum=True)
    _io.write_json(s.dir / "record.json", record, checksum=True)
    out = {"run_id": s.dir.name, "status": "done", "best_acc": s.best_val, "final_acc": test_acc,
           "zeroshot_acc": (transfer.get("cifar100") or {}).get("accuracy"),
           "delta_pct": {"entropy": final["delta_entropy_pct"], "erf": final["delta_erf95_pct"],
                         "gini": final["delta_gini_pct"]},
           "selected_epoch": s.selected_epoch, "wall_time_s": elapsed, "record": "record.json"}
    _io.write_json(s.dir / "final.json", out, checksum=True)  # last: the run is done
    return out


def build_record(s: Setup, final: dict, test_acc: float, transfer: dict, corruption: dict, elapsed: float) -> dict:
    """record.json: the authors' per-run keys, then "schema", "config.backbone", "provenance"."""
    cfg = s.cfg
    env = _io.environment()
    sizes = {k: len(s.feeds[k]) for k in ("train", "val", "probe", "test")}
    counts = count_parameters(s.clf)
    total = sum(p.numel() for p in s.clip.parameters()) + sum(p.numel() for p in s.clf.head.parameters())
    return {
        "run_id": s.dir.name,
        "config": {"dataset": cfg.dataset, "method": method_name(cfg), "lr": cfg.optim.lr, "seed": cfg.seed,
                   "epochs": int(cfg.optim.epochs), "batch_size": cfg.optim.batch_size,
                   "weight_decay": cfg.optim.weight_decay, "tag": None, "overwrite": False, "device": str(s.device),
                   "num_classes": s.splits.train.num_classes, "model_name": cfg.model, "splits": sizes,
                   "steps_per_epoch": s.steps_per_epoch, "total_steps": s.total,
                   "backbone": cfg.forgetting.backbone},
        "parameters": {"trainable": counts["trainable"], "total": total},
        "diverged": s.diverged,
        "baseline": {"attention": s.ref.attention, "transfer_track_acc": s.baseline_track,
                     "transfer": {f"{k}@{len(s.zs[k].feeder)}": v for k, v in s.pretrained.items()}},
        "history": s.history,
        "selected_epoch": s.selected_epoch,
        "best_val_acc": s.best_val,
        "test_acc": test_acc,
        "final": final,
        "transfer": transfer,
        "corruption_acc": corruption,
        "runtime_seconds": elapsed,
        "environment": {"torch": torch.__version__, "commit": env.get("git_commit")},
        "schema": SCHEMA,
        "provenance": {"config": cfg.model_dump(mode="json"), "seed": cfg.seed, "versions": env,
                       "commit": env.get("git_commit"), "fingerprint": fingerprint(cfg),
                       "model_random_init": cfg.model in PRESETS},
    }
