"""WiSE-FT: interpolating a fine-tuned vision tower back towards the pretrained one.

θ = (1 − α)·θ_pre + α·θ_ft over the vision tower and visual projection (LoRA: the
adapters' scale times α); at each α, zero-shot accuracy (text.py's class embeddings, zeroshot.py's image
features), task accuracy with the trained head, and the four attention metrics per layer.
`for_run.evaluate_for_run` calls `wise` when a run's config lists `wise_alphas`
(final.json "wise", docs/FORMATS.md).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch
from torch import Tensor, nn

from ..data import ImageSet
from ..measure import attention_table, classifier_accuracy, layer_mean
from ..models import Classifier, image_projection, is_peft, normalization, vision_tower
from .text import TextCache, text_embeddings
from .zeroshot import as_feeder, image_features, zeroshot_accuracy


def _canonical(name: str) -> str:
    # PEFT renames a wrapped Linear's weight "q_proj.base_layer.weight"; the pretrained
    # tower calls it "q_proj.weight".
    return name.replace(".base_layer.", ".")


def _interp_params(vision: nn.Module, projection: nn.Module) -> dict[str, nn.Parameter]:
    """Vision tower (LoRA factors excluded) + projection parameters, by canonical name."""
    if hasattr(vision, "get_base_model"):
        vision = vision.get_base_model()
    out = {f"vision.{_canonical(n)}": p for n, p in vision.named_parameters() if "lora_" not in n}
    out.update({f"projection.{n}": p for n, p in projection.named_parameters()})
    return out


def vision_state(model: nn.Module) -> dict[str, Tensor]:
    """Detached copies of the vision tower and visual projection weights, for `wise`.

    Args:
        model: a pretrained model of any family or a Classifier (LoRA factors are skipped).

    Returns:
        {"vision.<name>": tensor, "projection.<name>": tensor} with PEFT-independent names.
    """
    if isinstance(model, Classifier):
        params = _interp_params(model.vision, model.projection)
    else:
        params = _interp_params(vision_tower(model), image_projection(model))
    return {k: p.detach().clone() for k, p in params.items()}


def wise(clf: Classifier, pretrained_state: dict[str, Tensor], alphas: Sequence[float], *,
         clip: nn.Module, tokenizer, zeroshot_set: ImageSet, task_set: ImageSet,
         eval_set: ImageSet, templates: str | Sequence[str] = "single",
         device: torch.device | str, precision: str = "fp32", batch_size: int = 1024,
         eval_batch: int = 32, erf_q: float = 0.95, diversity: str = "batch_mean", aggregate: str = "per_batch",
         cache: TextCache | dict | None = None, cache_key: str | None = None) -> list[dict]:
    """WiSE-FT: θ = (1 − α)·θ_pre + α·θ_ft over the vision tower and projection.

    LoRA adapters are scaled by α instead (PEFT `rescale_adapter_scale`, exact WiSE-FT
    for the low-rank delta); the head is kept as trained. The fine-tuned weights and
    adapter scales are restored afterwards, also on error.

    Args:
        pretrained_state: `vision_state(pretrained_clip)`.
        alphas: interpolation coefficients (0 = pretrained, 1 = fine-tuned).
        zeroshot_set: images for zero-shot accuracy (with `templates`).
        task_set: the task's test split, classified by the head.
        eval_set: the fixed metric eval subset (probe rows in batches of `eval_batch`).

    Returns:
        [{"alpha", "zeroshot_acc", "task_acc", "mean", "layers"}, ...] in `alphas` order.
    """
    params = _interp_params(clf.vision, clf.projection)
    if set(params) != set(pretrained_state):
        diff = sorted(set(params) ^ set(pretrained_state))
        raise ValueError(f"pretrained_state does not match the classifier; differing keys: {diff[:8]}")
    lora = is_peft(clf.vision)
    text = text_embeddings(clip, tokenizer, zeroshot_set.class_names, templates, device=device,
                           cache=cache, cache_key=cache_key)
    norm = normalization(clip)  # the family's (or the checkpoint's) image constants
    zs, task, ev = (as_feeder(s, device, norm) for s in (zeroshot_set, task_set, eval_set))
    ft = {k: p.detach().clone() for k, p in params.items()}
    pre = {k: pretrained_state[k].to(device=p.device, dtype=p.dtype) for k, p in params.items()}
    out = []
    try:
        for alpha in alphas:
            alpha = float(alpha)
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(torch.lerp(pre[k], ft[k], alpha))  # exact at α = 0 and α = 1
            if lora:
                from peft.helpers import rescale_adapter_scale
                scale = rescale_adapter_scale(clf.vision, alpha)
            else:
                scale = nullcontext()
            with scale:
                feats = image_features(clf, zs, batch_size=batch_size, device=device, precision=precision)
                layers = attention_table(clf.vision, ev, group_size=eval_batch, precision=precision,
                                         erf_q=erf_q, diversity=diversity, aggregate=aggregate)
                out.append({"alpha": alpha, "zeroshot_acc": zeroshot_accuracy(feats, zs.labels, text)["acc"],
                            "task_acc": classifier_accuracy(clf, task, batch_size=batch_size, precision=precision),
                            "mean": layer_mean(layers), "layers": layers})
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(ft[k])
    return out
