"""`attncollapse zeroshot RUN_DIR`: transfer numbers of a finished run, merged into its final.json."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .. import _io
from .._device import resolve_device
from ..config import read_recorded_config
from ..transfer import TextCache, evaluate_for_run, transfer_headline
from .build import load_trained


def evaluate_run(run_dir: str | Path, datasets: Sequence[str] | None = None, *,
                 device: str | torch.device | None = None, precision: str | None = None,
                 batch_size: int = 1024, pretrained: nn.Module | None = None,
                 cache: TextCache | dict | None = None) -> dict:
    """`attncollapse zeroshot RUN_DIR`: evaluate a finished run and merge into its final.json.

    Rebuilds the trained model (`build.load_trained`, the selected checkpoint), runs
    `evaluate_for_run` and writes final.json atomically: "zeroshot" blocks are merged per
    dataset (others kept), "zeroshot_acc" / "zeroshot_acc_base_only" follow the config's
    first dataset (adapters active / off), "wise" is replaced when the config asks for it.

    Args:
        run_dir: a run directory with config.yaml, checkpoints and final.json.
        datasets: zero-shot sources overriding the config's.
        device: None = the run config's ("auto" → CUDA when available).
        precision: autocast precision; None = the run's (fp32 on the CPU).

    Returns:
        The updated final.json content.
    """
    run_dir = Path(run_dir)
    final_path = run_dir / "final.json"
    if not final_path.is_file():
        raise FileNotFoundError(f"{final_path} missing: the run has not finished")
    final = _io.read_json_checked(final_path, ("run_id", "best_acc"),  # all zeroshot needs of it
                                  fix="`attncollapse run` trains the run again, then zeroshot works")
    cfg = read_recorded_config(run_dir / "config.yaml")
    dev = resolve_device(str(device) if device is not None else cfg.device)
    clip, clf, cfg = load_trained(run_dir, device=str(dev))
    res = evaluate_for_run(cfg, clip, clf, device=dev, precision=precision or cfg.eval.precision,
                           datasets=datasets, pretrained=pretrained, batch_size=batch_size, cache=cache)
    if not res["zeroshot"]:
        return final
    merged = final["zeroshot"] = {**(final.get("zeroshot") or {}), **res["zeroshot"]}
    # The headline stays the config's first dataset when it has a block (CIFAR-100 in the
    # reports), whichever subset was evaluated now.
    head = next((d for d in cfg.zeroshot.datasets if d in merged), next(iter(res["zeroshot"])))
    final["zeroshot_acc"], final["zeroshot_acc_base_only"] = merged[head].get("acc"), merged[head].get("acc_base_only")
    final.update(transfer_headline(merged, cfg.zeroshot.datasets))  # k-NN where zero-shot is missing
    if cfg.zeroshot.wise_alphas or "wise" not in final:
        final["wise"] = res["wise"]
    _io.write_json(final_path, final, checksum=_io.json_has_checksum(final_path))  # keeps it verifiable
    return final
