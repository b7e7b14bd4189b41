"""Building a run's model: the pretrained model (any family) and the classifier to train, and a trained one back."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import _io
from .._device import resolve_device
from ..config import RunConfig, read_recorded_config
from ..models import (apply_lora, build_classifier, freeze_layers, freeze_projection, image_projection, load_model,
                      num_layers, vision_tower, zeroshot_problem)
from ..transfer import head_from_text
from .checkpoints import BEST_NAME, load_best, load_newest, load_weights


def build(cfg: RunConfig, num_classes: int, device: torch.device, class_names: list[str] | None = None):
    """The pretrained model and the classifier to train, frozen and wrapped per `cfg`.

    Any family: the classifier sits on the family's pooled (and, for CLIP, projected)
    image feature (`models.build_classifier`). `method: linear_probe` freezes everything
    but the head.
    """
    clip = load_model(cfg.model)  # presets use one fixed init: the same "pretrained" model for every run
    clip.requires_grad_(False)
    vision_tower(clip).requires_grad_(True)
    image_projection(clip).requires_grad_(True)
    torch.manual_seed(cfg.seed)
    text_head = None
    if cfg.head_init == "text":
        problem = zeroshot_problem(clip)
        if problem:
            raise ValueError(f"head_init: text needs CLIP's text tower ({problem}); set head_init: random")
        text_head = head_from_text(clip, cfg.model, class_names or [], device=device)
    clf = build_classifier(clip, num_classes, text_head=text_head)
    if cfg.method == "lora":
        apply_lora(clf, rank=cfg.lora.rank, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                   targets=cfg.lora.targets)
    freeze_layers(clf, cfg.freeze_layers, embeddings=cfg.freeze_embeddings)
    if cfg.freeze_projection:
        freeze_projection(clf)
    if cfg.method == "last_block":
        # The authors' final study (their code, not their paper's words): the last encoder
        # block and the post-LayerNorm train, with the projection and the head.
        freeze_layers(clf, num_layers(clip) - 1, embeddings=True)
    if cfg.method == "linear_probe":
        # The "no collapse" reference (issue 16): tower and projection frozen, only the
        # head trains, so every attention metric and the zero-shot stay the pretrained ones.
        clf.vision.requires_grad_(False)
        freeze_projection(clf)
    clip.to(device)
    clf.to(device)
    return clip, clf


def load_trained(run_dir: str | Path, *, which: str = "best", device: str = "auto"):
    """Rebuild a run's model with its trained weights: (clip, clf, cfg).

    Args:
        which: "best" (the selected checkpoint) or "last" (the newest checkpoint).
    """
    run_dir = Path(run_dir)
    cfg = read_recorded_config(run_dir / "config.yaml")
    dev = resolve_device(device)
    final = run_dir / "final.json"
    best_step = -1
    if which == "best" and final.is_file():
        best_step = _io.read_json_checked(final, ("best_step",), fix="`attncollapse run` trains it again")["best_step"]
    if best_step >= 0:  # verified against its checksum and step (load_best)
        tensors = load_best(run_dir / "checkpoints", best_step)
    elif which == "best" and not final.is_file() and (run_dir / "checkpoints" / BEST_NAME).exists():
        tensors = _io.load_tensors_checked(run_dir / "checkpoints" / BEST_NAME)[0]  # an unfinished run's best so far
    else:
        found = load_newest(run_dir / "checkpoints", cfg)
        if found is None:
            raise FileNotFoundError(f"{run_dir}: no checkpoint to load")
        tensors = found[1]
    num_classes = tensors["head.weight"].shape[0]
    clip, clf = build(cfg.model_copy(update={"head_init": "random"}), num_classes, dev)
    clf.normalize_features = cfg.head_init == "text"
    load_weights(clf, tensors, run_dir / "checkpoints")
    return clip, clf.eval(), cfg
