"""The original study's training loop, re-implemented for the equivalence test (test-only).

Written here, in this file's own code, after the logic of `train_one_experiment`,
`compute_metrics_on_eval`, `evaluate_accuracy`, `CLIPClassifier.forward` and the two
regularizers of the original code (xiaruize0911/Attention_Collapse_in_CLIP_Fine-tuning_repo at
commit 0aed578, which made the reports' numbers: `run_all_experiments.py`, `src/model.py`, `src/metrics.py`, `src/regularizer.py`):

- AdamW over the parameters with `requires_grad`, `LambdaLR` with a linear warmup over
  `int(0.05 · steps)` then cosine to 0, stepped after every update;
- every step: eager attention with `output_attentions=True`, cross-entropy (+ the
  regularizer), `GradScaler` (disabled off CUDA), unscale, `clip_grad_norm_(all, 1.0)`,
  step, `zero_grad`, scheduler step;
- metrics before the first step, then whenever `step % max(1, len(loader) // 5) == 0`
  *after* that step's update and before `step += 1`, and once after training;
- validation accuracy after every epoch; the best weights kept on a strict `>` over 0.0.

It records a little more than the original wrote (every step's loss and learning rate,
the number of updates behind each point) so the test can line its points up with ours.
The data loader is replaced by explicit batches: the test gives both loops one order.
"""

from __future__ import annotations

import copy
from itertools import combinations

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


class OriginalClassifier(nn.Module):
    """`CLIPClassifier`: logits from `classifier(visual_projection(pooler_output))` and the
    eager attention maps of every layer."""

    def __init__(self, vision: nn.Module, projection: nn.Module, head: nn.Module):
        super().__init__()
        self.vision_model, self.visual_projection, self.classifier = vision, projection, head
        configs = {id(m.config): m.config for m in vision.modules()
                   if hasattr(m, "q_proj") and hasattr(m, "config")}
        for c in configs.values():  # the original loaded CLIP with attn_implementation="eager"
            c._attn_implementation = "eager"

    def forward(self, pixel_values, output_attentions=False):
        out = self.vision_model(pixel_values=pixel_values, output_attentions=output_attentions)
        logits = self.classifier(self.visual_projection(out.pooler_output))
        return logits, (out.attentions if output_attentions else None)


def from_ours(clf: nn.Module) -> OriginalClassifier:
    """An independent copy of one of our classifiers (same weights, same trainable flags)."""
    c = copy.deepcopy(clf)
    return OriginalClassifier(c.vision, c.projection, c.head)


def compute_all_metrics(attentions) -> dict[str, list[float]]:
    """`compute_all_metrics` of one batch: per layer, the [CLS]→patch row renormalised with
    `+1e-10`; entropy with `log(p + 1e-10)`; ERF@0.95 on a float32 cumulative sum; Gini;
    head diversity on the batch-mean row of each head."""
    out = {"entropy": [], "erf": [], "gini": [], "head_diversity": []}
    for attn in attentions:
        p = attn[:, :, 0, 1:].float()
        p = p / (p.sum(-1, keepdim=True) + 1e-10)
        out["entropy"].append((-(p * torch.log(p + 1e-10)).sum(-1)).mean().item())
        k = (p.sort(-1, descending=True).values.cumsum(-1) >= 0.95).float().argmax(-1) + 1
        out["erf"].append((k.float() / p.shape[-1]).mean().item())
        B, H, N = p.shape
        x = p.reshape(B * H, N).sort(-1).values
        i = torch.arange(1, N + 1, dtype=torch.float32)
        out["gini"].append(((2 * i * x).sum(-1) / (N * x.sum(-1) + 1e-10) - (N + 1) / N).mean().item())
        m = p.mean(0)
        cos = [nn.functional.cosine_similarity(m[a:a + 1], m[b:b + 1]).item() for a, b in combinations(range(H), 2)]
        out["head_diversity"].append(1.0 - float(np.mean(cos)))
    return out


def compute_metrics_on_eval(model: OriginalClassifier, eval_batches) -> dict[str, list[float]]:
    """`compute_metrics_on_eval`: eval mode, per batch, then the plain mean over batches."""
    model.eval()
    with torch.no_grad():
        per_batch = [compute_all_metrics(model(x, output_attentions=True)[1]) for x, _ in eval_batches]
    return {k: np.mean([b[k] for b in per_batch], axis=0).tolist() for k in per_batch[0]}


def evaluate_accuracy(model: OriginalClassifier, batches) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            correct += model(x)[0].argmax(1).eq(y).sum().item()
            total += len(y)
    return correct / total if total else 0.0


class APR:
    """`AttentionPreservationRegularizer`: λ · mean over layers of the mean KL(current ‖
    pretrained) of the renormalised [CLS]→patch rows; the reference is a frozen model
    run on the same batch with `output_attentions=True`."""

    def __init__(self, pretrained: OriginalClassifier, lam: float):
        self.pretrained = pretrained.eval()
        for p in self.pretrained.parameters():
            p.requires_grad = False
        self.lam = lam

    def compute(self, images, current):
        with torch.no_grad():
            ref = self.pretrained(images, output_attentions=True)[1]
        kl = 0.0
        for cur_l, ref_l in zip(current, ref):  # the original's range(12): every layer of ViT-B/32
            c = cur_l[:, :, 0, 1:]
            r = ref_l[:, :, 0, 1:]
            c = c / (c.sum(-1, keepdim=True) + 1e-10)
            r = r / (r.sum(-1, keepdim=True) + 1e-10)
            kl = kl + (c * (torch.log(c + 1e-10) - torch.log(r + 1e-10))).sum(-1).mean()
        return self.lam * kl / len(current)


class EntropyFloor:
    """`EntropyFloorRegularizer`: λ · Σ over layers of mean relu(0.7·H⁰_l − H)."""

    def __init__(self, baseline_entropy_per_layer, lam: float, floor_ratio: float = 0.7):
        self.thresholds = [e * floor_ratio for e in baseline_entropy_per_layer]
        self.lam = lam

    def compute(self, current):
        loss = 0.0
        for attn, t in zip(current, self.thresholds):
            p = attn[:, :, 0, 1:]
            p = p / (p.sum(-1, keepdim=True) + 1e-10)
            ent = -(p * torch.log(p + 1e-10)).sum(-1)
            loss = loss + torch.relu(t - ent).mean()
        return self.lam * loss


def train_one_experiment(model: OriginalClassifier, epochs: list[list[tuple[torch.Tensor, torch.Tensor]]],
                         val_batches, eval_batches, *, lr: float, weight_decay: float = 0.01,
                         regularizer: str | None = None, lam: float = 0.0,
                         reference: OriginalClassifier | None = None, floor_ratio: float = 0.7,
                         seed: int = 42) -> dict:
    """The original loop on explicit batches: `epochs[e]` is epoch e's list of (x, y).

    Args:
        regularizer: None, "apr" (against `reference`, the pretrained model) or
            "entropy_floor" (`floor_ratio` × the baseline's per-layer entropy; the original
            fixed 0.7), weighted by `lam`.

    Returns:
        history: "points" (updates, loss of that step, metrics) from the baseline through
        the final metrics, "val_acc" per epoch, "best_val_acc", "best_updates",
        "best_state" (the kept state_dict), "step_loss" and "step_lr" of every update.
    """
    optimizer = torch.optim.AdamW(filter(lambda p: p.requires_grad, model.parameters()), lr=lr,
                                  weight_decay=weight_decay)
    per_epoch = len(epochs[0])
    total_steps = per_epoch * len(epochs)
    warmup_steps = int(0.05 * total_steps)

    def lr_lambda(step):
        if step < warmup_steps:
            return step / max(warmup_steps, 1)
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + np.cos(np.pi * progress))

    scheduler = LambdaLR(optimizer, lr_lambda)
    criterion = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # CPU: no fp16 AMP
    baseline = compute_metrics_on_eval(model, eval_batches)
    floor = EntropyFloor(baseline["entropy"], lam, floor_ratio) if regularizer == "entropy_floor" else None
    apr = APR(reference, lam) if regularizer == "apr" else None
    hist = {"points": [{"updates": 0, "loss": None, "metrics": baseline}], "val_acc": [], "step_loss": [],
            "step_lr": [], "best_val_acc": 0.0, "best_updates": None, "best_state": None}
    torch.manual_seed(seed)  # the dropout stream (LoRA) starts where ours does
    step = 0
    for epoch in epochs:
        model.train()
        for images, labels in epoch:
            hist["step_lr"].append(optimizer.param_groups[0]["lr"])
            logits, attentions = model(images, output_attentions=True)
            loss = criterion(logits, labels)
            if apr is not None:
                loss = loss + apr.compute(images, attentions)
            elif floor is not None:
                loss = loss + floor.compute(attentions)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            scheduler.step()
            hist["step_loss"].append(loss.item())
            if step % max(1, per_epoch // 5) == 0:
                hist["points"].append({"updates": step + 1, "loss": loss.item(),
                                       "metrics": compute_metrics_on_eval(model, eval_batches)})
                model.train()
            step += 1
        val_acc = evaluate_accuracy(model, val_batches)
        hist["val_acc"].append(val_acc)
        if val_acc > hist["best_val_acc"]:
            hist["best_val_acc"], hist["best_updates"] = val_acc, step
            hist["best_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hist["final"] = compute_metrics_on_eval(model, eval_batches)
    return hist
