"""Weight interpolation of a finished forgetting run (the authors' intervention, docs/FORGETTING_RUNS.md).

θ(α) = (1 − α)·θ0 + α·θ over every weight except the classifier head (kept as trained),
θ0 = the freshly built model (pretrained weights; for LoRA, the run's initial A and B = 0),
θ = the run's selected checkpoint. Unlike the authors' script, the run is reloaded, not
retrained, so α = 1 IS the run. Per α: test accuracy with the head, zero-shot transfer
accuracy and retention (percent) on the primary transfer set, signed ΔH, CKA mean,
embedding drift and weight change against θ0 on the probe set (forgetting_signals.py).

LoRA has two variants:
- "exact": the adapter update is scaled, W0 + α·s·B·A (PEFT `rescale_adapter_scale`, as
  transfer/wise.py does): exactly the interpolation of the effective weights.
- "authors": A and B are interpolated as tensors like every other weight, which gives
  W0 + s·αB((1−α)A0 + αA) = W0 + s[α(1−α)B·A0 + α²B·A]: NOT a rescaling of the update
  unless A = A0 (the authors' script, whose docstring calls it one).
For runs without LoRA the two variants are the same computation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from .. import _io
from .._device import cpu_threads
from ..config import method_name, read_recorded_config
from ..models import is_peft
from .forgetting import SCHEMA, load_selected, setup_run
from .forgetting_signals import head_accuracy, signals, zeroshot

VARIANTS = ("exact", "authors")
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def output_path(out_dir: Path, run_id: str, variant: str) -> Path:
    """`<out_dir>/<run_id>__<variant>.json`."""
    return Path(out_dir) / f"{run_id}__{variant}.json"


def set_alpha(clf: nn.Module, theta0: dict, theta1: dict, alpha: float, variant: str) -> None:
    """Write θ(α) into `clf`'s parameters (head: θ1; LoRA factors: θ1 under "exact")."""
    with torch.no_grad():
        for name, p in clf.named_parameters():
            if name.startswith("head.") or (variant == "exact" and ".lora_" in name):
                p.copy_(theta1[name])
            else:
                p.copy_(torch.lerp(theta0[name], theta1[name], alpha))  # exact at α = 0 and 1


def interpolate_run(run_dir: str | Path, *, variant: str = "exact", alphas: Sequence[float] = ALPHAS,
                    out_dir: str | Path | None = None, device: str | None = None) -> dict:
    """The interpolation sweep of one finished run; writes and returns its JSON.

    Args:
        run_dir: a finished run of a `design: forgetting` matrix (record.json, selected checkpoint).
        variant: "exact" or "authors" (module docstring).
        alphas: interpolation coefficients.
        out_dir: where `<run_id>__<variant>.json` goes; default `<run_dir>/../interpolation`.
        device: overrides the run's device.

    Raises:
        ValueError: an unknown variant, or a run that is not a finished forgetting run.
    """
    run_dir = Path(run_dir)
    if variant not in VARIANTS:
        raise ValueError(f"unknown interpolation variant {variant!r}; expected exact or authors")
    record = _io.read_json_checked(run_dir / "record.json", ("run_id", "selected_epoch", "best_val_acc"),
                                   fix="finish the run first (`attncollapse run`)")
    cfg = read_recorded_config(run_dir / "config.yaml")
    if cfg.forgetting is None:
        raise ValueError(f"{run_dir}: not a run of a design: forgetting matrix")
    if device is not None:
        cfg = cfg.model_copy(update={"device": device})
    t0 = time.time()
    with cpu_threads(cfg.cpu_threads):
        sweep, s = _sweep(cfg, run_dir, variant, [float(a) for a in alphas])
    out = {
        "run_id": run_dir.name,
        "config": {"dataset": cfg.dataset, "method": method_name(cfg), "lr": cfg.optim.lr, "seed": cfg.seed,
                   "epochs": int(cfg.optim.epochs), "batch_size": cfg.optim.batch_size,
                   "alphas": [float(a) for a in alphas], "transfer_images": len(s.zs["cifar100"].feeder),
                   "device": str(s.device), "model_name": cfg.model,
                   "splits": {k: len(s.feeds[k]) for k in ("train", "val", "probe", "test")},
                   "backbone": cfg.forgetting.backbone, "transfer_source": s.zs["cifar100"].source},
        "selected_epoch": record["selected_epoch"],
        "best_val_acc": record["best_val_acc"],
        "pretrained_transfer_acc": s.pretrained["cifar100"],
        "transfer_images": len(s.zs["cifar100"].feeder),
        "sweep": sweep,
        "runtime_seconds": time.time() - t0,
        "variant": variant,
        "schema": SCHEMA,
    }
    path = output_path(Path(out_dir) if out_dir is not None else run_dir.parent / "interpolation", run_dir.name, variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    _io.write_json(path, out, checksum=True)
    return out


def _sweep(cfg, run_dir: Path, variant: str, alphas: list[float]):
    s = setup_run(cfg, run_dir)
    clf = s.clf
    theta0 = {n: p.detach().clone() for n, p in clf.named_parameters()}
    load_selected(run_dir, clf)
    theta1 = {n: p.detach().clone() for n, p in clf.named_parameters()}
    lora = is_peft(clf.vision)
    bs = cfg.eval.forward_batch_size
    pre = s.pretrained["cifar100"]
    sweep = []
    try:
        for alpha in alphas:
            set_alpha(clf, theta0, theta1, alpha, variant)
            if lora and variant == "exact":
                from peft.helpers import rescale_adapter_scale
                scale = rescale_adapter_scale(clf.vision, alpha)
            else:
                scale = nullcontext()
            with scale:
                sig = signals(clf, s.feeds["probe"], s.ref, batch_size=bs)
                acc = zeroshot(clf, s.zs["cifar100"], batch_size=bs)
                sweep.append({"alpha": alpha, "test_acc": head_accuracy(clf, s.feeds["test"], batch_size=bs),
                              "transfer_acc": acc, "delta_entropy_pct": sig["delta_entropy_pct"],
                              "cka_mean": sig["cka_mean"], "embedding_drift": sig["embedding_drift"],
                              "weight_drift_rel": sig["weight_drift_rel"],
                              "transfer_retention": 100.0 * acc / pre if pre else None})
    finally:
        set_alpha(clf, theta0, theta1, 1.0, variant)
    return sweep, s


def choose_runs(records: list[tuple[str, dict]], *, dataset: str, seed: int, backbone: str = "primary",
                methods: Sequence[str] | None = None) -> list[str]:
    """The authors' choice: per method, the run with the highest best_val_acc on `dataset`
    with `seed` and `backbone` (the first in the given order on a tie).

    Args:
        records: (run id, record.json content) of the finished runs, in matrix order.

    Returns:
        Run ids, one per method, in order of first appearance.
    """
    best: dict[str, tuple[str, float]] = {}
    for rid, rec in records:
        c = rec["config"]
        if (c["dataset"] != dataset or c["seed"] != seed or c.get("backbone", "primary") != backbone
                or (methods is not None and c["method"] not in methods)):
            continue
        if c["method"] not in best or rec["best_val_acc"] > best[c["method"]][1]:
            best[c["method"]] = (rid, rec["best_val_acc"])
    return [rid for rid, _v in best.values()]
