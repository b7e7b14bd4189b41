"""One fine-tuning run, written out top to bottom: setup, loop, eval point, checkpoint, finish.

`run(cfg, run_dir)` resumes by default: started again on a directory with checkpoints,
it continues from the newest intact one and ends with the same numbers as an
uninterrupted run (data order, flips and dropout are all seeded or checkpointed).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from . import _io, metrics
from .checkpoints import ConfigMismatch  # noqa: F401 - raised by run(), re-exported
from .checkpoints import CheckpointWriter, load_newest, load_weights, trainable
from .config import RunConfig
from .data import Feeder, load_splits
from .evaluate import accuracy, effective_precision, eval_rows, resolve_device, summarize_rows
from .models import (apply_lora, build_classifier, count_parameters, freeze_layers, freeze_projection, image_size,
                     load_clip)
from .probe import probing
from .step import ReferenceRows, make_step

N_OVERLAY = 4  # eval images whose attention maps are kept for the overlay figure
WARMUP_STEPS = 3  # a process's first steps: torch.compile traces, CUDA graphs record


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainState:
    """Exactly what a checkpoint holds besides weights, optimizer and RNG."""

    step: int = 0
    best_acc: float = -1.0
    best_step: int = -1
    last_acc: float | None = None
    loss_sum: float = 0.0
    loss_count: int = 0
    wall_time_s: float = 0.0
    warmup_s: float = 0.0  # part of wall_time_s: each process's first WARMUP_STEPS (compile, graph capture)
    warmup_images: int = 0
    images_seen: int = 0
    points: list = field(default_factory=list)


# --- setup ------------------------------------------------------------------------------

def build(cfg: RunConfig, num_classes: int, device: torch.device, class_names: list[str] | None = None):
    """The pretrained CLIP and the classifier to train, frozen and wrapped per `cfg`."""
    clip = load_clip(cfg.model)  # presets use one fixed init: the same "pretrained" model for every run
    clip.requires_grad_(False)
    clip.vision_model.requires_grad_(True)
    clip.visual_projection.requires_grad_(True)
    torch.manual_seed(cfg.seed)
    text_head = None
    if cfg.head_init == "text":
        from . import zeroshot

        text_head = zeroshot.head_from_text(clip, cfg.model, class_names or [], device=device)
    clf = build_classifier(clip, num_classes, text_head=text_head)
    if cfg.method == "lora":
        apply_lora(clf, rank=cfg.lora.rank, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                   targets=cfg.lora.targets)
    freeze_layers(clf, cfg.freeze_layers)
    if cfg.freeze_projection:
        freeze_projection(clf)
    clip.to(device)
    clf.to(device)
    return clip, clf


def lr_at(step: int, total: int, peak: float, warmup_frac: float) -> float:
    """Linear warmup over `warmup_frac` of the steps, then cosine to 0 (reports §2.3)."""
    warm = int(total * warmup_frac)
    if step < warm:
        return peak * step / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def _batch_indices(step: int, spe: int, n: int, batch: int, seed: int) -> torch.Tensor:
    # The permutation of an epoch depends only on (seed, epoch), so a resumed run sees the
    # same order without checkpointing any sampler state.
    epoch, b = divmod(step, spe)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[b * batch:(b + 1) * batch]


def _flip_mask(step: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 7_919 + step * 104_729 + 1)
    return torch.rand(size, generator=g) < 0.5


# --- the run ----------------------------------------------------------------------------

def run(cfg: RunConfig, run_dir: str | Path) -> dict:
    """Train one configuration into `run_dir` and return the content of final.json."""
    from tqdm.auto import tqdm

    t_setup = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # a worker runs many runs: the peak is this run's
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_root = run_dir / "checkpoints"
    device = resolve_device(cfg.device)
    precision = effective_precision(cfg.optim.precision, device)

    # Setup: data, model, optimizer, reference for APR.
    splits = load_splits(cfg.dataset, cfg.data, image_size=image_size(cfg.model))
    train_feed = Feeder(splits.train, device, resident=_resident(cfg))
    val_feed = Feeder(splits.val, device)
    eval_feed = Feeder(splits.eval_set, device)
    clip, clf = build(cfg, splits.train.num_classes, device, splits.train.class_names)
    pretrained_state = None
    if cfg.zeroshot.enabled and cfg.zeroshot.datasets:
        # The pretrained tower for the end-of-run zero-shot and WiSE-FT, kept on the host
        # now (before a checkpoint is loaded) instead of loading the model again then.
        from .wise import vision_state

        pretrained_state = {k: v.cpu() for k, v in vision_state(clf).items()}
    reg = cfg.regularizer.kind
    ref_vision = None
    if reg == "apr" and cfg.method == "full":
        # A frozen copy of the pretrained tower gives the reference rows (half precision
        # on GPU: it only runs forward). LoRA uses its adapter-disabled forward instead.
        ref_vision = copy.deepcopy(clf.vision).requires_grad_(False).eval()
        if device.type == "cuda":
            ref_vision.to(torch.bfloat16)
    ref_cache = None
    if reg == "apr" and cfg.regularizer.reference == "cached":
        ref_cache = ReferenceRows.build(clf, ref_vision, train_feed, hflip=cfg.data.hflip,
                                        batch_size=cfg.eval.batch_size * 8, precision=precision)
        ref_vision = None  # the table replaces the frozen copy
    params = list(trainable(clf).values())
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                            fused=bool(cfg.optim.fused and device.type == "cuda"))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    n_train, batch = len(splits.train), cfg.optim.batch_size
    spe = max(1, math.ceil(n_train / batch))
    total = max(1, math.ceil(spe * cfg.optim.epochs))
    eval_every = max(1, spe // cfg.eval.points_per_epoch)
    val_every = max(1, spe // cfg.eval.val_per_epoch)
    ckpt_every = max(1, spe // cfg.checkpoints_per_epoch)

    # Resume from the newest intact checkpoint, if any.
    state = TrainState()
    overlay_initial = None
    found = load_newest(ckpt_root, cfg)
    if found is not None:
        path, tensors, blob = found
        load_weights(clf, tensors)
        opt.load_state_dict(blob["optimizer"])
        scaler.load_state_dict(blob["scaler"])
        torch.set_rng_state(blob["rng_cpu"])
        if blob["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["rng_cuda"])
        state = TrainState(**blob["train_state"])
        overlay_initial = blob.get("overlay_initial")
        print(f"[{cfg.id}] resuming from {path.name} (step {state.step}/{total})")
    else:
        torch.manual_seed(cfg.seed)  # dropout stream of a fresh run
    _io.write_yaml(run_dir / "config.yaml", cfg.model_dump(mode="json"))
    _io.write_json(run_dir / "env.json", {**_io.environment(), "device_used": str(device),
                                         "precision_used": precision})
    # Checkpoints are copied at their step and written by a background thread.
    writer = CheckpointWriter(ckpt_root, cfg)
    try:
        tb = _tensorboard(run_dir, state.step)

        def eval_point(step: int, *, with_val: bool) -> tuple[dict, torch.Tensor]:
            rows = eval_rows(clf.vision, eval_feed, batch_size=cfg.eval.forward_batch_size, precision=precision)
            table = summarize_rows(rows, cfg.eval)
            loss = state.loss_sum / state.loss_count if state.loss_count else None
            if loss is not None and not math.isfinite(loss):
                msg = f"[{cfg.id}] training diverged: loss {loss} at step {step}"
                _io.write_text(run_dir / "error.txt", msg + "\n")
                raise TrainingDiverged(msg)
            acc = accuracy(clf, val_feed, batch_size=max(batch, 256), precision=precision) if with_val else None
            point = {"step": step, "epoch": step / spe, "lr": lr_at(max(step - 1, 0), total, cfg.optim.lr,
                                                                    cfg.optim.warmup_frac) if step else 0.0,
                     "train_loss": loss, "val_acc": acc, "layers": table, "mean": metrics.layer_mean(table)}
            state.points.append(point)
            state.loss_sum, state.loss_count = 0.0, 0
            if acc is not None:
                state.last_acc = acc
                if acc > state.best_acc:
                    state.best_acc, state.best_step = acc, step
                    writer.save_best(clf)
            for name, value in point["mean"].items():
                tb.add_scalar(f"attention/{name}", value, step)
            if loss is not None:
                tb.add_scalar("train/loss", loss, step)
            if acc is not None:
                tb.add_scalar("val/acc", acc, step)
            _write_history(run_dir, cfg, state, splits, spe, total)
            return point, rows

        if not state.points:  # the initial point: the model before its first step
            _, rows0 = eval_point(0, with_val=False)
            overlay_initial = rows0[:, :N_OVERLAY].contiguous()
        floor = None
        if reg == "entropy_floor":
            floor = cfg.regularizer.floor_ratio * torch.tensor(state.points[0]["layers"]["entropy"], device=device)

        # The loop.
        clf.train()
        loss_acc = torch.zeros((), device=device)
        n_acc = 0
        t0 = t_loop = time.perf_counter()
        timings = {"setup_s": t0 - t_setup}
        first_step, first_images = state.step, state.images_seen
        bar = tqdm(total=total, initial=state.step, desc=cfg.id, unit="step", dynamic_ncols=True)
        with probing(clf.vision) if reg != "none" else contextlib.nullcontext() as rows:
            step_fn = make_step(cfg, clf, opt, scaler, device=device, precision=precision, rows=rows,
                                ref_vision=ref_vision, floor=floor)
            while state.step < total:
                s = state.step
                for group in opt.param_groups:
                    group["lr"] = lr_at(s, total, cfg.optim.lr, cfg.optim.warmup_frac)
                idx = _batch_indices(s, spe, n_train, batch, cfg.seed)
                flip = _flip_mask(s, len(idx), cfg.seed) if cfg.data.hflip else None
                x, y = train_feed.get(idx, flip=flip)
                loss = step_fn(x, y, ref_cache.lookup(idx, flip) if ref_cache is not None else None)
                loss_acc += loss.detach().float()
                state.images_seen += len(idx)
                n_acc += 1
                state.step = s + 1
                bar.update(1)
                if state.step - first_step == WARMUP_STEPS:  # compile and capture are behind us
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    state.warmup_s += time.perf_counter() - t_loop
                    state.warmup_images += state.images_seen - first_images
                done = state.step == total
                want_val = state.step % val_every == 0 or done
                want_ckpt = state.step % ckpt_every == 0 or done
                if state.step % eval_every == 0 or want_val or want_ckpt:
                    state.loss_sum += loss_acc.item()
                    state.loss_count += n_acc
                    loss_acc.zero_()
                    n_acc = 0
                    now = time.perf_counter()
                    state.wall_time_s += now - t0
                    t0 = now
                    if state.step % eval_every == 0 or want_val:
                        point, _ = eval_point(state.step, with_val=want_val)
                        bar.set_postfix(loss=f"{point['train_loss']:.3f}",
                                        acc=f"{state.last_acc:.3f}" if state.last_acc is not None else "-")
                    elif not math.isfinite(state.loss_sum):
                        eval_point(state.step, with_val=False)  # records and raises the divergence
                    if want_ckpt:
                        writer.save_checkpoint(clf, opt, scaler, asdict(state), {"overlay_initial": overlay_initial})
                    clf.train()
        bar.close()
        tb.close()
        timings["loop_s"] = time.perf_counter() - t_loop
        writer.wait()  # every checkpoint and best.safetensors on disk before the end-of-run eval
        return _finish(cfg, run_dir, clip, clf, splits, state, overlay_initial, device, precision, total, timings,
                       pretrained_state)
    finally:
        writer.close()


def _resident(cfg: RunConfig) -> bool | None:
    return {"auto": None, "always": True, "never": False}[cfg.data.gpu_resident]


def _tensorboard(run_dir: Path, step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a declared dependency; keep runs going without it
        warnings.warn("tensorboard is not installed; no TensorBoard scalars", stacklevel=2)
        return _NoBoard()
    # purge_step drops events a crashed attempt wrote past the checkpoint we resume from.
    return SummaryWriter(str(run_dir / "tb"), purge_step=step if step else None)


class _NoBoard:
    def add_scalar(self, *a, **k):
        pass

    def close(self):
        pass


def _write_history(run_dir, cfg, state, splits, spe, total) -> None:
    _io.write_json(run_dir / "history.json", {
        "run_id": cfg.id, "seed": cfg.seed, "num_layers": len(state.points[0]["layers"]["entropy"]),
        "eval_idx": splits.eval_idx.tolist(), "split_protocol": splits.protocol,
        "steps_per_epoch": spe, "total_steps": total, "points": state.points,
    })


def _finish(cfg, run_dir, clip, clf, splits, state, overlay_initial, device, precision, total, timings,
            pretrained_state) -> dict:
    initial, final = state.points[0]["layers"], state.points[-1]["layers"]
    init_mean, final_mean = metrics.layer_mean(initial), metrics.layer_mean(final)
    params = count_parameters(clf)
    shown = splits.eval_set.subset(np.arange(min(N_OVERLAY, len(splits.eval_idx))))
    overlay_final = eval_rows(clf.vision, Feeder(shown, device), batch_size=N_OVERLAY, precision=precision)
    with _io.atomic_path(run_dir / "overlays.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, images=shown.images, initial=overlay_initial.cpu().numpy(),
                            final=overlay_final.cpu().numpy())
    train_images = state.images_seen
    result = {
        "run_id": cfg.id, "seed": cfg.seed, "status": "done", "method": cfg.method,
        "dataset": cfg.dataset, "model": cfg.model, "split_protocol": splits.protocol,
        "select_split": "test" if splits.protocol == "hub" else "val",
        "best_acc": state.best_acc, "best_step": state.best_step, "final_acc": state.last_acc,
        "initial": initial, "final": final, "initial_mean": init_mean, "final_mean": final_mean,
        "delta_pct": {k: metrics.delta_pct(init_mean[k], final_mean[k]) for k in init_mean},
        "delta_pct_layers": {k: [metrics.delta_pct(a, b) for a, b in zip(initial[k], final[k])]
                             for k in initial},
        "steps": total, "train_images": train_images, "wall_time_s": state.wall_time_s,
        "images_per_s": train_images / state.wall_time_s if state.wall_time_s > 0 else None,
        "images_per_s_steady": _steady_rate(state),
        "trainable_params": params["trainable"], "total_params": params["total"],
        "precision_used": precision, "zeroshot": {}, "zeroshot_acc": None,
        "zeroshot_acc_base_only": None, "wise": [],
    }
    t = time.perf_counter()
    if cfg.zeroshot.enabled and cfg.zeroshot.datasets:
        from . import zeroshot

        best = run_dir / "checkpoints" / "best.safetensors"
        if best.exists():  # zero-shot of the selected checkpoint, as the original study did
            load_weights(clf, load_file(best))
        result.update(zeroshot.evaluate_for_run(cfg, clip, clf, splits, device=device, precision=precision,
                                                pretrained_state=pretrained_state))
    # This process's wall time by phase (a resumed run: the last process only); the
    # warm-up is summed over processes and is part of wall_time_s.
    result["timings"] = {**timings, "finish_s": time.perf_counter() - t, "warmup_s": state.warmup_s}
    result["peak_gpu_memory_gib"] = (torch.cuda.max_memory_allocated(device) / 2**30
                                     if device.type == "cuda" else None)  # this process, this run
    _io.write_json(run_dir / "final.json", result)
    return result


def _steady_rate(state: TrainState) -> float | None:
    """Training images/s after each process's warm-up steps (evals and checkpoints included)."""
    seconds = state.wall_time_s - state.warmup_s
    images = state.images_seen - state.warmup_images
    return images / seconds if seconds > 0 and images > 0 else None


def load_trained(run_dir: str | Path, *, which: str = "best", device: str = "auto"):
    """Rebuild a run's model with its trained weights: (clip, clf, cfg).

    Args:
        which: "best" (the selected checkpoint) or "last" (the newest checkpoint).
    """
    run_dir = Path(run_dir)
    cfg = RunConfig.model_validate(_io.read_yaml(run_dir / "config.yaml"))
    dev = resolve_device(device)
    if which == "best" and (run_dir / "checkpoints" / "best.safetensors").exists():
        tensors = load_file(run_dir / "checkpoints" / "best.safetensors")
    else:
        found = load_newest(run_dir / "checkpoints", cfg)
        if found is None:
            raise FileNotFoundError(f"{run_dir}: no checkpoint to load")
        tensors = found[1]
    num_classes = tensors["head.weight"].shape[0]
    clip, clf = build(cfg.model_copy(update={"head_init": "random"}), num_classes, dev)
    clf.normalize_features = cfg.head_init == "text"
    load_weights(clf, tensors)
    return clip, clf.eval(), cfg
