"""A run's checkpoints: what one holds, how it is written in the background, how it is read.

A checkpoint (`checkpoints/step-<N>/`: model.safetensors, state.pt, manifest.json) holds
the trainable weights, optimizer, GradScaler, RNG states and `TrainState` of one step, so
a resumed run ends bit-identical to an uninterrupted one. Writing one of a ViT-B/32 full
fine-tune is ~1 GB (weights + AdamW moments) plus its sha256 manifest: seconds of disk
work that would stop training at every epoch. `CheckpointWriter` instead copies the state
(device → host, into buffers it reuses) at the step and leaves serialising, hashing and
the atomic rename to one background thread; the next checkpoint of the same kind waits
for the previous one, so at most one copy of each is held. A crash while a write is in
flight leaves only a hidden temporary directory: the previous checkpoint stays the newest.
"""

from __future__ import annotations

import errno
import itertools
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.utils._pytree import tree_map

from .. import _io
from ..config import RunConfig, config_change, fingerprint, fingerprint_fields


BEST_NAME = "best.safetensors"


class ConfigMismatch(RuntimeError):
    """A run directory holds checkpoints of a different config."""


def trainable(clf: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in clf.named_parameters() if p.requires_grad}


class _Buffers:
    """Host copies of a nest of tensors, reused from one snapshot to the next.

    On CUDA the copies go to pinned memory without a sync per tensor (one sync at the
    end); on the CPU they are plain clones (the live tensors change at the next step).
    """

    def __init__(self) -> None:
        self._bufs: dict[int, torch.Tensor] = {}

    def copy(self, nest: Any) -> Any:
        counter = itertools.count()  # the nest has the same structure every time
        cuda = False

        def one(t):
            nonlocal cuda
            if not isinstance(t, torch.Tensor):
                return t
            t = t.detach()
            key = next(counter)
            buf = self._bufs.get(key)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=t.is_cuda)
                self._bufs[key] = buf
            cuda |= t.is_cuda
            buf.copy_(t, non_blocking=t.is_cuda)
            return buf

        out = tree_map(one, nest)
        if cuda:
            torch.cuda.synchronize()
        return out


class CheckpointWriter:
    """Checkpoints and best-weight files of one run, written by a background thread.

    `save_checkpoint` / `save_best` return once the state is copied to host memory; the
    files appear later. `wait()` blocks until everything submitted is on disk and raises
    the first write error (also raised by the next save). `synchronous=True` writes in
    the calling thread instead (same files).
    """

    def __init__(self, root: Path, cfg: RunConfig, *, synchronous: bool = False) -> None:
        self.root, self.cfg = Path(root), cfg
        # A kill during an earlier write left its hidden temporary directory (~1 GB at
        # ViT-B/32 scale); this run holds the lock now, so nothing else is filling one.
        for orphan in _io.clean_orphans(self.root):
            warnings.warn(f"removed {orphan}: a checkpoint write interrupted by an earlier kill", stacklevel=2)
        self._pool = None if synchronous else ThreadPoolExecutor(1, thread_name_prefix="attncollapse-ckpt")
        self._pending: dict[str, Future] = {}
        self._bufs = {"checkpoint": _Buffers(), "best": _Buffers()}
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def save_checkpoint(self, clf: nn.Module, opt, scaler, train_state: dict, extra: dict) -> None:
        """Checkpoint `step-<train_state['step']>` of the current weights and optimizer."""
        def snapshot():
            return self._bufs["checkpoint"].copy({"model": trainable(clf), "optimizer": opt.state_dict()})

        def write(snap):
            blob = {
                "train_state": train_state,
                "optimizer": snap["optimizer"],
                "scaler": scaler_state,
                "rng_cpu": rng_cpu,
                "rng_cuda": rng_cuda,
                "fingerprint": fingerprint(self.cfg),
                "fields": fingerprint_fields(self.cfg),
                **extra,
            }
            with _io.checkpoint_dir(self.root, train_state["step"]) as d:
                # Python file objects (`_io.open_output`), not paths: on a full disk the
                # write's OSError(ENOSPC) is kept (torch given a path says only
                # "enforce fail ... unexpected pos").
                _io.write_bytes(d / "model.safetensors", safetensors_bytes(snap["model"]))
                with _io.open_output(d / "state.pt") as fh:
                    torch.save(blob, fh)
            _io.prune_checkpoints(self.root, self.cfg.keep_checkpoints)

        scaler_state = scaler.state_dict()
        rng_cpu = torch.get_rng_state()
        rng_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        self._submit("checkpoint", snapshot, write)

    def save_best(self, clf: nn.Module, step: int) -> None:
        """`best.safetensors`: the trainable weights of the selected step, with that step
        and their checksum in its header (`load_best`)."""
        self._submit("best", lambda: self._bufs["best"].copy(trainable(clf)),
                     lambda snap: _io.save_tensors(self.root / BEST_NAME, snap, {"step": step}, checksum=True))

    def wait(self) -> None:
        """Block until every submitted write is on disk; raise the first write error."""
        for fut in list(self._pending.values()):
            fut.exception()  # waits; the error itself is recorded by _run
        self._raise()

    def close(self) -> None:
        """Wait for the writes in flight (errors are kept for `wait`) and stop the thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    # -- internals --

    def _submit(self, kind: str, snapshot: Callable[[], Any], write: Callable[[Any], None]) -> None:
        self._raise()
        prev = self._pending.get(kind)
        if prev is not None:
            prev.exception()  # its buffers are about to be overwritten
            self._raise()
        snap = snapshot()
        if self._pool is None:
            write(snap)
            return
        self._pending[kind] = self._pool.submit(self._run, write, snap)

    def _run(self, write, snap) -> None:
        try:
            write(snap)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the training thread
            if _io.disk_full_message(exc, self.root) is not None:  # name the disk, keep the cause
                full = OSError(errno.ENOSPC, "No space left on device", str(self.root))
                full.__cause__ = exc
                exc = full
            with self._lock:
                self._error = self._error or exc

    def _raise(self) -> None:
        with self._lock:
            err = self._error
        if err is not None:
            raise RuntimeError(f"writing a checkpoint under {self.root} failed: {err}") from err


def load_newest(ckpt_root: Path, cfg: RunConfig):
    """(path, model tensors, state dict) of the newest intact checkpoint, or None.

    A damaged checkpoint is skipped with a warning in favour of the one before; one
    written under a different config is an error naming the differing keys.
    """
    for path in _io.checkpoints(ckpt_root):
        problem = _io.verify_checkpoint(path)
        if problem is None:
            try:
                tensors = load_file(path / "model.safetensors")
                blob = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable file means "skip it"
                problem = f"unreadable: {exc}"
        if problem is not None:
            warnings.warn(f"skipping checkpoint {path.name}: {problem}", stacklevel=2)
            continue
        if blob["fingerprint"] != fingerprint(cfg):
            raise ConfigMismatch(f"{ckpt_root.parent}: checkpoints were written with a different config; "
                                 f"{config_change(blob['fields'], cfg)}")
        return path, tensors, blob
    return None


def load_weights(clf: nn.Module, tensors: dict[str, torch.Tensor], where: str | Path = "checkpoint") -> None:
    """Copy saved trainable tensors into `clf`: exactly its trainable parameters, by name.

    Raises:
        _io.DamagedFile: the checkpoint lacks some of `clf`'s trainable parameters (they
            would stay pretrained or random) or holds some it lacks; the first few named,
            all counted.
    """
    params = dict(clf.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    missing = sorted(set(trainable(clf)) - set(tensors))
    problems = [f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                for what, keys in (("trainable weights missing", missing),
                                   ("weights the model lacks", unknown)) if keys]
    if problems:
        raise _io.DamagedFile(where, f"the checkpoint does not fit the run's model: {'; '.join(problems)}; "
                                     "the run's config.yaml (model, method, freezing) must be the one it "
                                     "was trained with")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)


def load_best(ckpt_root: Path, best_step: int) -> dict[str, torch.Tensor]:
    """The trainable weights of step `best_step`, verified.

    `best.safetensors` when its checksum and recorded step hold; else the intact checkpoint
    of that same step (the writer saves both from one state: the same weights), from which
    best.safetensors is written again, with a warning. Neither left: the weights of the
    best step are gone and no honest substitute exists (another step's weights would give
    another zero-shot number), so DamagedFile names the file and the fix that retrains it.
    """
    ckpt_root = Path(ckpt_root)
    best = ckpt_root / BEST_NAME
    try:
        tensors, meta = _io.load_tensors_checked(best)
        if meta.get("step") == str(best_step):
            return tensors
        problem = f"holds step {meta.get('step')}, not the best step {best_step}"
    except _io.DamagedFile as exc:
        problem = exc.why
    ck = ckpt_root / _io.checkpoint_name(best_step)
    if ck.is_dir() and _io.verify_checkpoint(ck) is None:
        tensors = load_file(ck / "model.safetensors")
        _io.save_tensors(best, tensors, {"step": best_step}, checksum=True)
        warnings.warn(f"{best}: {problem}; restored from checkpoint {ck.name} (the same weights)", stacklevel=2)
        return tensors
    raise _io.DamagedFile(best, f"{problem}, and no intact checkpoint of the best step {best_step} is left "
                                f"to restore it from; delete the run directory {ckpt_root.parent} and rerun "
                                "to retrain it")
