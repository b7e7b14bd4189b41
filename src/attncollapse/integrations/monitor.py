"""`CollapseMonitor`: attention collapse and forgetting signals on a fixed image set, for any training loop.

    monitor = CollapseMonitor(fixed, report_to=["tensorboard"], log_dir="runs/a")
    monitor.start(model)                      # the reference: the model before its first step (logged at step 0)
    for step in ...:
        ...train...
        if monitor.due(step):
            monitor.measure(model, step)      # every layer, Δ since start, drifts, zero-shot retention
    monitor.close()

Both callbacks (hf_callback.py, lightning_callback.py) are this object driven by their
framework's events. Every measurement runs in fp32 whatever the caller's autocast
(`_device.autocast(device, "fp32")` disables an enclosing one), and a step is measured once:
a second `measure` at the same step returns the first one's numbers and logs nothing.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .._device import autocast
from ..measure import (attention_modules, cka_per_block, embedding_drift, encoder_weights, patch_rows, probing,
                       representations, stack_rows, summarize_rows, weight_drift_rel)
from ..track import Tracker, check_report_to, delta_logs, map_grid, metric_logs
from . import checks
from .towers import find_owner, find_tower


@dataclass
class TrackingSet:
    """Labelled images whose zero-shot accuracy is followed (retention = accuracy now / at start).

    Args:
        pixel_values: (M, 3, S, S) normalised images.
        labels: (M,) class indices.
        text_embeddings: (C, E) class embeddings in the image embedding space; or
        class_names: C names, embedded at `start` by the model's own text tower (CLIP, SigLIP)
            with `tokenizer` and `templates` (`transfer.text_embeddings`).
    """

    pixel_values: Tensor
    labels: Tensor
    text_embeddings: Tensor | None = None
    class_names: Sequence[str] | None = None
    tokenizer: Any = None
    templates: str | Sequence[str] = "single"

    def check(self, who: str, check_range: bool) -> None:
        checks.pixels(self.pixel_values, who=who, arg="tracking_set.pixel_values", check_range=check_range)
        labels = torch.as_tensor(self.labels)
        if labels.shape != (len(self.pixel_values),) or labels.is_floating_point():
            raise ValueError(f"{who}: tracking_set.labels must be {len(self.pixel_values)} integer class indices, "
                             f"one per image")
        if (self.text_embeddings is None) == (self.class_names is None):
            raise ValueError(f"{who}: tracking_set needs exactly one of text_embeddings (C, E) or class_names")
        if self.class_names is not None and self.tokenizer is None:
            raise ValueError(f"{who}: tracking_set.class_names needs the model's tokenizer (tracking_set.tokenizer)")
        n_classes = len(self.class_names) if self.class_names is not None else len(self.text_embeddings)
        if int(labels.max()) >= n_classes or int(labels.min()) < 0:
            raise ValueError(f"{who}: tracking_set.labels must lie in 0..{n_classes - 1} (one per class)")


@dataclass
class _Snapshot:
    """One measurement of the model: what the logs and the next Δs are computed from."""

    table: dict[str, list[float]]
    states: Tensor  # (L, N, D) [CLS] state after each block
    embeds: Tensor  # (N, E) projected image embeddings
    weights: dict[str, Tensor] | None  # encoder_weights: kept for the reference only
    weight_drift: float  # weight_drift_rel against the reference
    maps: np.ndarray  # (L, k, P) head-mean [CLS]→patch maps of the first k images
    zeroshot: float | None


class CollapseMonitor:
    """Measure a vision tower's attention and drift on a fixed image set, and log it to trackers.

    Args:
        pixel_values: (N, 3, S, S) float NORMALISED images (checks.py states the heuristic
            that refuses raw 0–1 / 0–255 pixels), the same images at every measurement.
        tracking_set: labelled images for zero-shot retention (`TrackingSet`), or None.
        report_to: trackers (`track.SINKS`: "tensorboard", "wandb", "mlflow", "trackio"); [] = none.
        log_dir: the run's directory for the trackers; None = given at `start` (the callbacks
            pass their trainer's).
        map_images: how many of the fixed images get [CLS]→patch map pictures (0 = none).
        every_n_steps: `due(step)` is true every N steps (None = never; the callbacks also
            measure at every evaluation).
        tower: the vision tower; None = found inside the model (`find_tower`).
        mean, std: the normalisation constants, to show the images in the map pictures; None =
            the model family's (`models.normalization`), else each image stretched to 0–1.
        prefix: first part of the logged names.
        batch_size, group_size: images per forward and per metric batch (reports: 32).
        check_pixels: refuse pixels that look unnormalised.
        run_name: the run's name in the trackers.
    """

    def __init__(self, pixel_values: Tensor, *, tracking_set: TrackingSet | None = None,
                 report_to: str | Sequence[str] | None = ("tensorboard",), log_dir: str | Path | None = None,
                 map_images: int = 3, every_n_steps: int | None = None, tower: nn.Module | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, prefix: str = "collapse",
                 batch_size: int = 256, group_size: int = 32, check_pixels: bool = True,
                 run_name: str = "attncollapse", who: str = "CollapseMonitor"):
        self.who = who
        self.pixel_values = checks.pixels(pixel_values, who=who, check_range=check_pixels)
        if tracking_set is not None:
            tracking_set.check(who, check_pixels)
        self.report_to = check_report_to(report_to, who=f"{who}: report_to")
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise ValueError(f"{who}: every_n_steps must be an integer >= 1 or None, got {every_n_steps!r}")
        if not isinstance(map_images, int) or map_images < 0:
            raise ValueError(f"{who}: map_images must be an integer >= 0 (0 = no map pictures), got {map_images!r}")
        if (mean is None) != (std is None) or (mean is not None and (len(mean) != 3 or len(std) != 3)):
            raise ValueError(f"{who}: mean and std go together, 3 numbers each, or both None")
        self.tracking_set, self.log_dir, self.every_n_steps = tracking_set, log_dir, every_n_steps
        self.map_images = min(map_images, len(pixel_values))
        self.tower, self.mean, self.std, self.prefix = tower, mean, std, prefix
        self.batch_size, self.group_size, self.run_name = batch_size, group_size, run_name
        self.history: list[tuple[int, dict[str, float]]] = []
        self._ref: _Snapshot | None = None
        self._text: Tensor | None = None
        self._tracker: Tracker | None = None
        self._pictures: np.ndarray | None = None

    @property
    def started(self) -> bool:
        return self._ref is not None

    def due(self, step: int) -> bool:
        """Whether `every_n_steps` asks for a measurement at `step`."""
        return bool(self.every_n_steps) and step % self.every_n_steps == 0

    def start(self, model: nn.Module, *, step: int = 0, log_dir: str | Path | None = None) -> dict[str, float]:
        """Take the reference (the model as it is now, before its first step) and log it at `step`.

        A run resumed from a checkpoint at `step` > 0 takes the resumed model as its reference
        (its Δs count from there), and TensorBoard drops what an earlier attempt logged from
        `step` on.

        Raises:
            ValueError: the fixed images do not fit the tower, or trackers but no log_dir.
        """
        tower = self._tower(model)
        checks.image_size(tower, self.pixel_values.shape[-1], who=self.who)
        if self.tracking_set is not None:
            checks.image_size(tower, self.tracking_set.pixel_values.shape[-1], who=self.who,
                              arg="tracking_set.pixel_values")
        self.log_dir = log_dir if log_dir is not None else self.log_dir
        if self.report_to and self.log_dir is None:
            raise ValueError(f"{self.who}: no log_dir for {', '.join(self.report_to)}; pass log_dir=<the run's "
                             "directory> (or report_to=[])")
        self._text = self._text_embeddings(model) if self.tracking_set is not None else None
        self._pictures = self._images(model)
        self._ref, self.history = None, []
        self._ref = self._snapshot(model, reference=True)
        if self.report_to:
            self.close()
            # a run resumed at `step` replaces what a crashed attempt logged from there on (TensorBoard)
            self._tracker = Tracker(self.report_to, self.log_dir, run_name=self.run_name, purge_step=step or None)
        return self._emit(step, self._ref)

    def measure(self, model: nn.Module, step: int) -> dict[str, float]:
        """Measure `model` at `step` and log it; a step already measured returns its numbers again, unlogged.

        Returns:
            {name: value} as logged (docs/INTEGRATIONS.md lists the names).
        """
        if self._ref is None:
            raise ValueError(f"{self.who}: call start(model) before measure(); the reference is the model "
                             "before its first step")
        done = {s: logs for s, logs in self.history}
        if step in done:
            return done[step]
        if self.history and step < self.history[-1][0]:
            warnings.warn(f"{self.who}: step {step} comes after step {self.history[-1][0]}; not logged "
                          "(trackers need increasing steps)", stacklevel=2)
            return {}
        return self._emit(step, self._snapshot(model, reference=False))

    def close(self) -> None:
        """Flush and close the trackers (a later measurement opens them again)."""
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None

    # --- internals ----------------------------------------------------------------------

    def _tower(self, model: nn.Module) -> nn.Module:
        return self.tower if self.tower is not None else find_tower(model)

    def _projection(self, model: nn.Module) -> nn.Module | None:
        owner = find_owner(model, "visual_projection")  # CLIP; elsewhere the pooled output is the embedding
        return owner.visual_projection if owner is not None else None

    @torch.no_grad()
    def _snapshot(self, model: nn.Module, *, reference: bool) -> _Snapshot:
        tower = self._tower(model)
        device = next(tower.parameters()).device
        with autocast(device, "fp32"):  # fp32 whatever the caller's autocast (Trainer, Lightning AMP)
            rows, states, embeds = self._forward(tower, self._projection(model))
            table = summarize_rows(rows, group_size=self.group_size)
            weights = encoder_weights(tower)
            zeroshot = self._zeroshot(model, tower) if self._text is not None else None
            maps = patch_rows(rows[:, :self.map_images]).mean(-2).double().cpu().numpy()
        if reference:
            return _Snapshot(table, states, embeds, weights, 0.0, maps, zeroshot)
        return _Snapshot(table, states, embeds, None, weight_drift_rel(self._ref.weights, weights), maps, zeroshot)

    def _forward(self, tower: nn.Module, projection: nn.Module | None) -> tuple[Tensor, Tensor, Tensor]:
        """One forward per batch of the fixed images gives both the probe's rows (what
        `fixed_set_rows` returns) and `representations` (block states, embeddings).

        Returns:
            (L, N, H, 1 + P) rows, (L, N, D) [CLS] states, (N, E) embeddings; fp32.
        """
        n_layers = len(attention_modules(tower))
        rows, states, embeds = [], [], []
        with probing(tower) as probe:
            for x in self.pixel_values.split(self.batch_size):
                probe.clear()
                s, e = representations(tower, x, projection=projection, batch_size=len(x))
                rows.append(stack_rows(probe, n_layers).float())
                states.append(s)
                embeds.append(e)
        return torch.cat(rows, dim=1), torch.cat(states, dim=1), torch.cat(embeds)

    def _zeroshot(self, model: nn.Module, tower: nn.Module) -> float:
        from ..transfer import zeroshot_accuracy

        ts = self.tracking_set
        _, feats = representations(tower, ts.pixel_values, projection=self._projection(model),
                                   batch_size=self.batch_size)
        return zeroshot_accuracy(nn.functional.normalize(feats, dim=-1), ts.labels, self._text)["acc"]

    def _text_embeddings(self, model: nn.Module) -> Tensor:
        ts = self.tracking_set
        if ts.text_embeddings is not None:
            return nn.functional.normalize(ts.text_embeddings.float(), dim=-1)
        from ..transfer import text_embeddings

        owner = find_owner(model, "text_model")
        if owner is None:
            raise ValueError(f"{self.who}: tracking_set.class_names needs a model with a text tower (CLIP, SigLIP); "
                             "pass tracking_set.text_embeddings instead")
        device = next(self._tower(model).parameters()).device
        with torch.no_grad(), autocast(device, "fp32"):
            return text_embeddings(owner, ts.tokenizer, list(ts.class_names), ts.templates, device=device)

    def _images(self, model: nn.Module) -> np.ndarray:
        """(k, S, S, 3) RGB in [0, 1] of the first `map_images` fixed images, for the map pictures."""
        x = self.pixel_values[:self.map_images].detach().float().cpu()
        mean, std = self.mean, self.std
        if mean is None:
            try:
                from ..models import normalization

                mean, std = normalization(self._tower(model))
            except Exception:  # an unknown family: stretch each image instead
                mean = None
        if mean is not None:
            x = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
        else:
            lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
            x = (x - lo) / (hi - lo).clamp_min(1e-6)
        return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()

    def _logs(self, now: _Snapshot) -> dict[str, float]:
        ref, p = self._ref if self._ref is not None else now, self.prefix
        logs = metric_logs(now.table, p)
        logs.update(delta_logs(now.table, ref.table, p))
        cka = cka_per_block(ref.states, now.states)
        logs.update({f"{p}/drift/cka/layer_{i + 1}": v for i, v in enumerate(cka)})
        logs[f"{p}/drift/cka_mean"] = sum(cka) / len(cka)
        logs[f"{p}/drift/embedding"] = embedding_drift(ref.embeds, now.embeds)
        logs[f"{p}/drift/weights"] = now.weight_drift
        if now.zeroshot is not None:
            logs[f"{p}/zeroshot/acc"] = now.zeroshot
            logs[f"{p}/zeroshot/delta"] = now.zeroshot - ref.zeroshot
            if ref.zeroshot > 0:
                logs[f"{p}/zeroshot/retention"] = now.zeroshot / ref.zeroshot
        return logs

    def _emit(self, step: int, snap: _Snapshot) -> dict[str, float]:
        logs = self._logs(snap)
        self.history.append((step, logs))
        if not self.report_to:
            return logs
        if self._tracker is None:
            self._tracker = Tracker(self.report_to, self.log_dir, run_name=self.run_name)
        images = {}
        if self.map_images and math.isqrt(snap.maps.shape[-1]) ** 2 == snap.maps.shape[-1]:
            images[f"{self.prefix}/maps"] = map_grid(self._pictures, snap.maps)
        self._tracker.log(step, logs, images)
        return logs
