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
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import _io
from .._device import cpu_threads, effective_precision, resolve_device
from ..config import RunConfig
from ..data import Feeder, Splits, load_splits
from ..measure import (StructureReference, classifier_accuracy, delta_pct, eval_rows, eval_rows_structure,
                       layer_mean, patch_rows, probing, structure_run_values, structure_table, summarize_rows)
from ..models import PRESETS, block_weights, count_parameters, family_of, image_size, normalization, weight_drift
from ..track import Tracker, map_grid, metric_logs
from ..transfer import evaluate_for_run, vision_state
from .build import build
from .checkpoints import CheckpointWriter, load_best, load_newest, load_weights, trainable
from .evalmaps import STORE, point_maps, write_store
from .schedule import batch_indices, flip_mask, lr_at
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
    last_loss: float | None = None  # the latest step's loss, for `eval.train_loss: last`
    wall_time_s: float = 0.0
    warmup_s: float = 0.0  # part of wall_time_s: each process's first WARMUP_STEPS (compile, graph capture)
    warmup_images: int = 0
    images_seen: int = 0
    points: list = field(default_factory=list)
    maps: list = field(default_factory=list)  # [(step, (L, k, H, P) fp16)] per eval point: evalmaps.npz


# --- setup ------------------------------------------------------------------------------


# --- the run ----------------------------------------------------------------------------

@dataclass
class Schedule:
    """Step counts of a run, all derived from the config and the training set size."""

    steps_per_epoch: int
    total: int
    eval_every: int
    val_every: int
    ckpt_every: int


def schedule_of(cfg: RunConfig, n_train: int) -> Schedule:
    """The run's step counts: eval points every `len(loader) // points_per_epoch` steps (reports)."""
    per_epoch = max(1, math.ceil(n_train / cfg.optim.batch_size))
    return Schedule(steps_per_epoch=per_epoch, total=max(1, math.ceil(per_epoch * cfg.optim.epochs)),
                    eval_every=max(1, per_epoch // cfg.eval.points_per_epoch),
                    val_every=max(1, per_epoch // cfg.eval.val_per_epoch),
                    ckpt_every=max(1, per_epoch // cfg.checkpoints_per_epoch))


@dataclass
class Run:
    """Everything a run builds before its first step (none of it is checkpointed)."""

    cfg: RunConfig
    dir: Path
    device: torch.device
    precision: str
    splits: Splits
    train_feed: Feeder
    val_feed: Feeder
    eval_feed: Feeder
    clip: nn.Module
    clf: nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: Schedule
    ref_vision: nn.Module | None = None
    ref_cache: ReferenceRows | None = None
    pretrained_state: dict | None = None
    initial_blocks: list | None = None  # models.block_weights before the first step (weight drift)
    structure_ref: StructureReference | None = None  # eval.structure: the pretrained side of CKA, map drift
    eval_precision: str = "fp32"  # eval.precision: every measurement's, whatever the training step's


def run(cfg: RunConfig, run_dir: str | Path, *, before_step: Callable[[int], None] | None = None,
        batch_order: Callable[[int], torch.Tensor] | None = None) -> dict:
    """Train one configuration into `run_dir` and return the content of final.json.

    Args:
        cfg: the run's validated config.
        run_dir: its directory; checkpoints there are resumed from.
        before_step: called with the step index before each optimisation step (a test
            kills a run there to check that resuming gives the same numbers).
        batch_order: step index → that step's training-set indices, in place of the
            seeded per-epoch permutation (`schedule.batch_indices`); the equivalence test
            with the original loop feeds both loops one explicit order. It must be a pure
            function of the step for resuming to be exact.
    """
    with cpu_threads(cfg.cpu_threads):
        return _run(cfg, Path(run_dir), before_step, batch_order)


def _run(cfg: RunConfig, run_dir: Path, before_step: Callable[[int], None] | None,
         batch_order: Callable[[int], torch.Tensor] | None = None) -> dict:
    t_setup = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # a worker runs many runs: the peak is this run's
    r = _setup(cfg, run_dir)
    # A kill during an atomic write left `.<name>.*.tmp` (e.g. of history.json); this run
    # holds the lock, so no other writer is filling one.
    for orphan in _io.clean_orphans(r.dir):
        warnings.warn(f"removed {orphan}: a write interrupted by an earlier kill", stacklevel=2)
    state, overlay_initial = _resume(r)
    _io.write_yaml(r.dir / "config.yaml", cfg.model_dump(mode="json"), checksum=True)
    if state.points:  # rebuilt from the checkpoint: repairs a damaged or lost history.json
        _write_history(r, state)
    _io.write_json(r.dir / "env.json", {**_io.environment(), "device_used": str(r.device),
                                        "precision_used": r.precision}, checksum=True)
    # Checkpoints are copied at their step and written by a background thread.
    writer = CheckpointWriter(r.dir / "checkpoints", cfg)
    try:
        board = _tracker(cfg, r.dir, state.step)
        if not state.points:  # the initial point: the model before its first step
            rows0 = _eval_point(r, state, writer, board, 0, with_val=False)
            overlay_initial = rows0[:, :N_OVERLAY].contiguous()
        timings = {"setup_s": time.perf_counter() - t_setup}
        timings["loop_s"] = _train(r, state, writer, board, overlay_initial, before_step, batch_order)
        board.close()
        writer.wait()  # every checkpoint and best.safetensors on disk before the end-of-run eval
        return _finish(r, state, overlay_initial, timings)
    finally:
        writer.close()


def _setup(cfg: RunConfig, run_dir: Path) -> Run:
    """Data, model, optimizer, and APR's reference, as the config asks."""
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    precision = effective_precision(cfg.optim.precision, device)
    splits = load_splits(cfg.dataset, cfg.data, image_size=image_size(cfg.model))
    mean, std = normalization(cfg.model)  # the family's (or the checkpoint's) image constants
    train_feed = Feeder(splits.train, device, resident=_resident(cfg), mean=mean, std=std)
    clip, clf = build(cfg, splits.train.num_classes, device, splits.train.class_names)
    pretrained_state = None
    if cfg.zeroshot.enabled and cfg.zeroshot.datasets:
        # The pretrained tower for the end-of-run zero-shot and WiSE-FT, kept on the host
        # now (before a checkpoint is loaded) instead of loading the model again then.
        pretrained_state = {k: v.cpu() for k, v in vision_state(clf).items()}
    ref_vision, ref_cache = _apr_reference(cfg, clf, train_feed, device, precision)
    # θ₀ per block, before `_resume` loads a checkpoint; on the device, so each eval point's
    # drift is computed there instead of copying the tower to the host
    initial_blocks = block_weights(clf, device)
    opt = torch.optim.AdamW(list(trainable(clf).values()), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                            fused=bool(cfg.optim.fused and device.type == "cuda"))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return Run(cfg=cfg, dir=run_dir, device=device, precision=precision, splits=splits, train_feed=train_feed,
               val_feed=train_feed.of(splits.val), eval_feed=train_feed.of(splits.eval_set), clip=clip, clf=clf,
               opt=opt, scaler=scaler, schedule=schedule_of(cfg, len(splits.train)), ref_vision=ref_vision,
               ref_cache=ref_cache, pretrained_state=pretrained_state, initial_blocks=initial_blocks,
               eval_precision=effective_precision(cfg.eval.precision, device))


def _apr_reference(cfg: RunConfig, clf: nn.Module, train_feed: Feeder, device: torch.device,
                   precision: str) -> tuple[nn.Module | None, ReferenceRows | None]:
    """APR's pretrained reference: a frozen tower copy, or its rows computed once ("cached")."""
    if cfg.regularizer.kind != "apr":
        return None, None
    ref_vision = None
    if cfg.method == "full":
        # A frozen copy of the pretrained tower gives the reference rows, kept in fp32 and run
        # under the training step's autocast as the original's (so the penalty is 0 at step 0
        # and pulls toward the pretrained weights, not rounded ones). LoRA uses its
        # adapter-disabled forward instead.
        ref_vision = copy.deepcopy(clf.vision).requires_grad_(False).eval()
    if cfg.regularizer.reference != "cached":
        return ref_vision, None
    ref_cache = ReferenceRows.build(clf, ref_vision, train_feed, hflip=cfg.data.hflip,
                                    batch_size=cfg.eval.batch_size * 8, precision=precision)
    return None, ref_cache  # the table replaces the frozen copy


def _resume(r: Run) -> tuple[TrainState, torch.Tensor | None]:
    """The state of the newest intact checkpoint (weights, optimizer, RNG loaded), or a fresh one."""
    found = load_newest(r.dir / "checkpoints", r.cfg)
    if found is None:
        torch.manual_seed(r.cfg.seed)  # dropout stream of a fresh run
        return TrainState(), None
    path, tensors, blob = found
    if r.cfg.eval.structure:
        # The pretrained reference from the weights before the checkpoint loads: the same
        # forward as the step-0 point, so a resumed run's numbers equal an uninterrupted one's.
        _, obs = eval_rows_structure(r.clf.vision, r.eval_feed, batch_size=r.cfg.eval.forward_batch_size,
                                     precision=r.eval_precision)
        r.structure_ref = StructureReference.of(obs)
    load_weights(r.clf, tensors)
    r.opt.load_state_dict(blob["optimizer"])
    r.scaler.load_state_dict(blob["scaler"])
    torch.set_rng_state(blob["rng_cpu"])
    if blob["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng_cuda"])
    state = TrainState(**blob["train_state"])
    print(f"[{r.cfg.id}] resuming from {path.name} (step {state.step}/{r.schedule.total})")
    return state, blob.get("overlay_initial")


def _train(r: Run, state: TrainState, writer: CheckpointWriter, board, overlay_initial,
           before_step: Callable[[int], None] | None, batch_order: Callable[[int], torch.Tensor] | None) -> float:
    """Steps from `state.step` to the end, with eval points and checkpoints; returns the loop's seconds."""
    cfg, sched, device = r.cfg, r.schedule, r.device
    floor = None
    if cfg.regularizer.kind == "entropy_floor":
        floor = cfg.regularizer.floor_ratio * torch.tensor(state.points[0]["layers"]["entropy"], device=device)
    r.clf.train()
    loss_acc = torch.zeros((), device=device)
    n_acc = 0
    t0 = t_loop = time.perf_counter()
    first_step, first_images = state.step, state.images_seen
    bar = _io.progress(sched.total, state.step, cfg.id)  # plain lines every few seconds in a log
    shift = 1 if cfg.eval.timing == "original" else 0
    with probing(r.clf.vision) if cfg.regularizer.kind != "none" else contextlib.nullcontext() as rows:
        step_fn = make_step(cfg, r.clf, r.opt, r.scaler, device=device, precision=r.precision, rows=rows,
                            ref_vision=r.ref_vision, floor=floor)
        while state.step < sched.total:
            s = state.step
            if before_step is not None:
                before_step(s)
            for group in r.opt.param_groups:
                group["lr"] = lr_at(s, sched.total, cfg.optim.lr, cfg.optim.warmup_frac)
            idx = (batch_order(s) if batch_order is not None else
                   batch_indices(s, sched.steps_per_epoch, len(r.splits.train), cfg.optim.batch_size, cfg.seed))
            flip = flip_mask(s, len(idx), cfg.seed) if cfg.data.hflip else None
            x, y = r.train_feed.get(idx, flip=flip)
            loss = step_fn(x, y, r.ref_cache.lookup(idx, flip) if r.ref_cache is not None else None)
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
            done = state.step == sched.total
            want_eval = (state.step - shift) % sched.eval_every == 0
            want_val = state.step % sched.val_every == 0 or done
            want_ckpt = state.step % sched.ckpt_every == 0 or done
            if not (want_eval or want_val or want_ckpt):
                continue
            state.loss_sum += loss_acc.item()
            state.loss_count += n_acc
            state.last_loss = loss.item()
            loss_acc.zero_()
            n_acc = 0
            now = time.perf_counter()
            state.wall_time_s += now - t0
            t0 = now
            if want_eval or want_val:
                _eval_point(r, state, writer, board, state.step, with_val=want_val)
                bar.set_postfix(loss=f"{state.points[-1]['train_loss']:.3f}",
                                acc=f"{state.last_acc:.3f}" if state.last_acc is not None else "-")
            elif not math.isfinite(state.loss_sum):
                _eval_point(r, state, writer, board, state.step, with_val=False)  # records and raises the divergence
            if want_ckpt:
                writer.save_checkpoint(r.clf, r.opt, r.scaler, asdict(state), {"overlay_initial": overlay_initial})
            r.clf.train()
    bar.close()
    return time.perf_counter() - t_loop


def _eval_point(r: Run, state: TrainState, writer: CheckpointWriter, board, step: int, *,
                with_val: bool) -> torch.Tensor:
    """Measure the four metrics (and accuracy) at `step`, append the point to `state`, write
    history.json; keep the best checkpoint. Returns the eval rows (L, N, H, T)."""
    cfg, sched = r.cfg, r.schedule
    structure = None
    if cfg.eval.structure:  # the same forward passes, with full maps and hidden states
        rows, obs = eval_rows_structure(r.clf.vision, r.eval_feed, batch_size=cfg.eval.forward_batch_size,
                                        precision=r.eval_precision)
        if r.structure_ref is None:  # the initial point: the model before its first step is the reference
            r.structure_ref = StructureReference.of(obs)
        structure = structure_table(obs, r.structure_ref, group_size=cfg.eval.batch_size, erf_q=cfg.eval.erf_q,
                                    aggregate=cfg.eval.aggregate)
    else:
        rows = eval_rows(r.clf.vision, r.eval_feed, batch_size=cfg.eval.forward_batch_size, precision=r.eval_precision)
    if cfg.eval.map_images:
        _keep_maps(r, state, step, rows)
    table = summarize_rows(rows, **cfg.eval.metric_options())
    loss = state.loss_sum / state.loss_count if state.loss_count else None
    if loss is not None and not math.isfinite(loss):
        msg = f"[{cfg.id}] training diverged: loss {loss} at step {step}"
        _io.write_text(r.dir / "error.txt", msg + "\n")
        raise TrainingDiverged(msg)
    if loss is not None and cfg.eval.train_loss == "last":
        loss = state.last_loss
    acc = (classifier_accuracy(r.clf, r.val_feed, batch_size=max(cfg.optim.batch_size, 256),
                               precision=r.eval_precision)
           if with_val else None)
    lr = lr_at(max(step - 1, 0), sched.total, cfg.optim.lr, cfg.optim.warmup_frac) if step else 0.0
    point = {"step": step, "epoch": step / sched.steps_per_epoch, "lr": lr, "train_loss": loss, "val_acc": acc,
             "layers": table, "mean": layer_mean(table), "weight_drift": weight_drift(r.clf, r.initial_blocks)}
    if structure is not None:
        point["structure"] = structure
    state.points.append(point)
    state.loss_sum, state.loss_count = 0.0, 0
    if acc is not None:
        state.last_acc = acc
        if acc > state.best_acc:
            state.best_acc, state.best_step = acc, step
            writer.save_best(r.clf, step)
    _track(r, board, step, point, rows)
    _write_history(r, state)
    return rows


def _keep_maps(r: Run, state: TrainState, step: int, rows: torch.Tensor) -> None:
    """Add this point's maps of the first `eval.map_images` eval images; rewrite evalmaps.npz."""
    k = min(r.cfg.eval.map_images, rows.shape[1])
    state.maps = [p for p in state.maps if p[0] < step] + [(step, point_maps(rows, k))]
    shown = r.splits.eval_set.subset(np.arange(k))
    write_store(r.dir / STORE, state.maps, shown.images, r.splits.eval_idx[:k],
                {"run_id": r.cfg.id, "seed": r.cfg.seed, "model": r.cfg.model, "dataset": r.cfg.dataset,
                 "method": r.cfg.method})


def _resident(cfg: RunConfig) -> bool | None:
    return {"auto": None, "always": True, "never": False}[cfg.data.gpu_resident]


def _tracker(cfg: RunConfig, run_dir: Path, step: int) -> Tracker:
    """The trackers of `eval.report_to`, writing into `run_dir/tb`; a missing library warns, the run goes on."""
    try:
        # purge_step drops events a crashed attempt wrote past the checkpoint we resume from.
        return Tracker(cfg.eval.report_to, run_dir / "tb", run_name=cfg.id, purge_step=step if step else None)
    except ValueError as e:
        warnings.warn(f"{e}; this run logs to no tracker", stacklevel=2)
        return Tracker([], run_dir / "tb")


def _track(r: Run, board: Tracker, step: int, point: dict, rows: torch.Tensor) -> None:
    """An eval point in the trackers: every layer's four metrics and their means (`collapse/...`, the
    callbacks' names), structure measures, loss, accuracy, and the first eval images' [CLS]→patch maps."""
    if not board.names:
        return
    scalars = metric_logs(point["layers"], "collapse")
    scalars.update({f"structure/{k}": v for k, v in (structure_run_values(point["structure"])
                                                     if point.get("structure") else {}).items()})
    scalars.update({f"collapse/weight_drift/layer_{i + 1}": v for i, v in enumerate(point["weight_drift"] or [])})
    if point["train_loss"] is not None:
        scalars["train/loss"] = point["train_loss"]
    if point["val_acc"] is not None:
        scalars["val/acc"] = point["val_acc"]
    n = min(N_OVERLAY, rows.shape[1])
    pictures = np.asarray(r.splits.eval_set.images[:n]).transpose(0, 2, 3, 1) / 255.0
    maps = patch_rows(rows[:, :n]).mean(-2).double().cpu().numpy()  # (L, n, P) head-mean [CLS]→patch
    images = {"collapse/maps": map_grid(pictures, maps)} if math.isqrt(maps.shape[-1]) ** 2 == maps.shape[-1] else {}
    board.log(step, scalars, images)


def _write_history(r: Run, state: TrainState) -> None:
    _io.write_json(r.dir / "history.json", {
        "run_id": r.cfg.id, "seed": r.cfg.seed, "num_layers": len(state.points[0]["layers"]["entropy"]),
        "eval_idx": r.splits.eval_idx.tolist(), "split_protocol": r.splits.protocol,
        "steps_per_epoch": r.schedule.steps_per_epoch, "total_steps": r.schedule.total, "points": state.points,
    }, checksum=True)


def _finish(r: Run, state: TrainState, overlay_initial: torch.Tensor, timings: dict) -> dict:
    """Overlays, final.json (Δ per metric and layer, accuracy, zero-shot of the selected checkpoint)."""
    cfg, splits = r.cfg, r.splits
    initial, final = state.points[0]["layers"], state.points[-1]["layers"]
    init_mean, final_mean = layer_mean(initial), layer_mean(final)
    params = count_parameters(r.clf)
    _write_overlays(r, overlay_initial)
    train_images = state.images_seen
    result = {
        "run_id": cfg.id, "seed": cfg.seed, "status": "done", "method": cfg.method,
        "dataset": cfg.dataset, "model": cfg.model, "model_random_init": cfg.model in PRESETS,
        "model_family": family_of(r.clip).name, "weight_drift": state.points[-1].get("weight_drift"),
        "split_protocol": splits.protocol, "data": splits.info,  # classes and split sizes, for the report
        "select_split": "test" if splits.protocol == "hub" else "val",
        "best_acc": state.best_acc, "best_step": state.best_step, "final_acc": state.last_acc,
        "initial": initial, "final": final, "initial_mean": init_mean, "final_mean": final_mean,
        "delta_pct": {k: delta_pct(init_mean[k], final_mean[k]) for k in init_mean},
        "delta_pct_layers": {k: [delta_pct(a, b) for a, b in zip(initial[k], final[k])]
                             for k in initial},
        "steps": r.schedule.total, "train_images": train_images, "wall_time_s": state.wall_time_s,
        "images_per_s": train_images / state.wall_time_s if state.wall_time_s > 0 else None,
        "images_per_s_steady": _steady_rate(state),
        "trainable_params": params["trainable"], "total_params": params["total"],
        "precision_used": r.precision, "eval_precision_used": r.eval_precision, "zeroshot": {}, "zeroshot_acc": None,
        "zeroshot_acc_base_only": None, "wise": [],
    }
    result.update(_structure_result(state))
    t = time.perf_counter()
    if cfg.zeroshot.enabled and cfg.zeroshot.datasets:
        if state.best_step >= 0:  # zero-shot of the selected checkpoint, as the original study did
            # verified: a damaged best.safetensors is restored from the checkpoint of the
            # same step or stops the run naming it, never replaced by other weights
            load_weights(r.clf, load_best(r.dir / "checkpoints", state.best_step))
        result.update(evaluate_for_run(cfg, r.clip, r.clf, splits, device=r.device, precision=r.eval_precision,
                                       pretrained_state=r.pretrained_state))
    # This process's wall time by phase (a resumed run: the last process only); the
    # warm-up is summed over processes and is part of wall_time_s.
    result["timings"] = {**timings, "finish_s": time.perf_counter() - t, "warmup_s": state.warmup_s}
    result["peak_gpu_memory_gib"] = (torch.cuda.max_memory_allocated(r.device) / 2**30
                                     if r.device.type == "cuda" else None)  # this process, this run
    _io.write_json(r.dir / "final.json", result, checksum=True)
    return result


def _structure_result(state: TrainState) -> dict:
    """final.json's structure keys: the first and last points' tables and the run-level values
    with Δ% (the columns of results.csv; docs/FORMATS.md). None when eval.structure was off."""
    s0, s1 = state.points[0].get("structure"), state.points[-1].get("structure")
    if s0 is None or s1 is None:
        return {"structure_initial": None, "structure_final": None, "structure_summary": None}
    v0, v1 = structure_run_values(s0), structure_run_values(s1)
    summary = {}
    for k in ("rollout_entropy", "rollout_erf", "rollout_gini", "patch_entropy"):
        summary.update({f"{k}_initial": v0[k], f"{k}_final": v1[k], f"{k}_delta_pct": delta_pct(v0[k], v1[k])})
    summary.update({"cka_final": v1["cka"], "map_drift_final": v1["map_drift"]})
    return {"structure_initial": s0, "structure_final": s1, "structure_summary": summary}


def _write_overlays(r: Run, overlay_initial: torch.Tensor) -> None:
    """overlays.npz: the first eval images and their [CLS] rows before and after training."""
    shown = r.splits.eval_set.subset(np.arange(min(N_OVERLAY, len(r.splits.eval_idx))))
    overlay_final = eval_rows(r.clf.vision, r.eval_feed.of(shown), batch_size=N_OVERLAY, precision=r.eval_precision)
    _io.save_arrays(r.dir / "overlays.npz", {"images": shown.images, "initial": overlay_initial.cpu().numpy(),
                                              "final": overlay_final.cpu().numpy()})


def _steady_rate(state: TrainState) -> float | None:
    """Training images/s after each process's warm-up steps (evals and checkpoints included)."""
    seconds = state.wall_time_s - state.warmup_s
    images = state.images_seen - state.warmup_images
    return images / seconds if seconds > 0 and images > 0 else None
