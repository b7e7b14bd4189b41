"""An eval point's measurements: [CLS] rows of the eval subset, their per-layer table, accuracy.

An eval point is the four metrics per layer on the fixed eval subset (probe on, no
grad, forward passes of `forward_batch_size` images, metrics grouped by `group_size`
images), plus a classifier's accuracy when scheduled; with `eval.structure`, the same
forwards also feed the structure measures (`eval_rows_structure`, measure/structure.py). Works on any vision tower it is
handed; training, the E1 baseline and WiSE-FT all measure through here.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .._device import autocast, eval_mode
from ..data import Feeder
from . import metrics
from .probe import attention_modules, probed_forward, probing, spec_of, stack_rows
from .structure import StructureObs, observe, query_token


@torch.no_grad()
def eval_rows(vision: nn.Module, feeder: Feeder, *, batch_size: int, precision: str) -> Tensor:
    """[CLS] rows of every eval image: (L, N, H, T) fp32, in the feeder's order."""
    n_layers = len(attention_modules(vision))
    chunks = []
    with eval_mode(vision), probing(vision) as rows:
        for x, _ in feeder.batches(batch_size):
            with autocast(feeder.device, precision):
                r = probed_forward(vision, rows, x, n_layers)
            chunks.append(r.float())
    return torch.cat(chunks, dim=1)


@torch.no_grad()
def eval_rows_structure(vision: nn.Module, feeder: Feeder, *, batch_size: int,
                        precision: str) -> tuple[Tensor, StructureObs]:
    """`eval_rows` plus the structure measures' observations, from the same forward passes.

    The probe also records each layer's full map (`probing(maps=True)`) and hooks on the
    transformer layers keep the [CLS] token of each layer's output (hidden states 1..L);
    the rows are those `eval_rows` returns, bit for bit (the layers still run fused SDPA).

    Returns:
        ((L, N, H, T) fp32 rows, `StructureObs` of the N images), in the feeder's order.
    """
    spec = spec_of(vision)
    mods = attention_modules(vision)
    chunks, parts = [], []
    with eval_mode(vision), probing(vision, maps=True) as rows, _layer_tokens(vision, mods, spec.query) as tokens:
        for x, _ in feeder.batches(batch_size):
            rows.clear()
            tokens.clear()
            with autocast(feeder.device, precision):
                vision(pixel_values=x)
            r = stack_rows(rows, len(mods)).float()
            chunks.append(r)
            parts.append(observe(rows.maps(), r, torch.stack(tokens), prefix_tokens=spec.prefix_tokens,
                                 query=spec.query))
            rows.clear()  # the maps are L·B·H·T² floats: free them before the next batch
    return torch.cat(chunks, dim=1), StructureObs.cat(parts)


@contextmanager
def _layer_tokens(vision: nn.Module, attention: list[nn.Module], query: str):
    """Within the block, each forward appends `query_token` of every transformer layer's output,
    in layer order, to the yielded list (the caller clears it between forwards).

    The layers are the attention modules' parents (CLIP, SigLIP, DINOv2, ViT). Not
    `output_hidden_states`: transformers 5 answers it by installing output-capturing hooks on
    every layer for good, and compiled layers (`optim.compile_scope: layers`) would then trace
    a different hook per layer (one graph each instead of one).
    """
    names = {id(m): n for n, m in vision.named_modules()}
    layers = [vision.get_submodule(names[id(m)].rpartition(".")[0]) for m in attention]
    got: list[Tensor] = []

    def keep(_mod, _args, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        got.append(query_token(out, query).float())

    handles = [layer.register_forward_hook(keep) for layer in layers]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def representations(vision: nn.Module, pixel_values: Tensor, *, projection: nn.Module | None = None,
                    batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """What the drift signals compare (measure/drift.py), in fp32 whatever the caller's autocast.

    Args:
        vision: the vision tower (eval mode inside, its mode restored after).
        pixel_values: (N, 3, S, S) normalised images.
        projection: applied to the pooled output (CLIP's `visual_projection`); None = the
            pooled output itself (the query token of the last layer where a tower pools nothing).
        batch_size: images per forward.

    Returns:
        (L, N, D) the query token's state after each block, and (N, E) the image embeddings.
    """
    spec = spec_of(vision)
    param = next(vision.parameters())
    attention = attention_modules(vision)
    states, embeds = [], []
    with eval_mode(vision), autocast(param.device, "fp32"), _layer_tokens(vision, attention, spec.query) as tokens:
        for x in pixel_values.split(batch_size):
            out = vision(pixel_values=x.to(param.device, param.dtype))
            states.append(torch.stack(tokens).float())
            tokens.clear()
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                pooled = query_token(out.last_hidden_state, spec.query)
            embeds.append((projection(pooled) if projection is not None else pooled).float())
    return torch.cat(states, dim=1), torch.cat(embeds)


@torch.no_grad()
def probe_pass(vision: nn.Module, feeder: Feeder, *, projection: nn.Module | None = None,
               batch_size: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """[CLS] rows, per-block query states and image embeddings from ONE fp32 forward per batch.

    What the forgetting design reads on its probe set every epoch (`eval_rows` plus
    `representations`, sharing the forward: half the cost of calling both).

    Args:
        vision: the vision tower (eval mode inside, its mode restored after).
        feeder: the probe images, in order.
        projection: applied to the pooled output (CLIP's `visual_projection`); None = the
            pooled output itself.
        batch_size: images per forward.

    Returns:
        ((L, N, H, T) fp32 rows, (L, N, D) query token after each block, (N, E) embeddings).
    """
    spec = spec_of(vision)
    mods = attention_modules(vision)
    chunks, states, embeds = [], [], []
    with (eval_mode(vision), autocast(feeder.device, "fp32"), probing(vision) as rows,
          _layer_tokens(vision, mods, spec.query) as tokens):
        for x, _ in feeder.batches(batch_size):
            tokens.clear()
            rows.clear()
            out = vision(pixel_values=x)
            chunks.append(stack_rows(rows, len(mods)).float())
            states.append(torch.stack(tokens).float())
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                pooled = query_token(out.last_hidden_state, spec.query)
            embeds.append((projection(pooled) if projection is not None else pooled).float())
    return torch.cat(chunks, dim=1), torch.cat(states, dim=1), torch.cat(embeds)


def summarize_rows(rows: Tensor, *, group_size: int = 32, erf_q: float = 0.95,
                   diversity: str = "batch_mean", aggregate: str = "per_batch") -> dict[str, list[float]]:
    """Per-layer table of eval rows (L, N, H, T) (`metrics.summarize`).

    Args:
        group_size: images per metric batch (reports: 32), in the rows' order; head
            diversity, and every metric under "per_batch", depend on it.
        erf_q: ERF mass.
        diversity: "batch_mean" (the reports') or "per_image".
        aggregate: "per_batch" (the original code's mean of batch means) or "per_image".
    """
    return metrics.summarize(rows, erf_q=erf_q, diversity=diversity, diversity_batch=group_size,
                             aggregate=aggregate)


def attention_table(vision: nn.Module, feeder: Feeder, *, forward_batch_size: int = 256, group_size: int = 32,
                    erf_q: float = 0.95, diversity: str = "batch_mean", aggregate: str = "per_batch",
                    precision: str = "fp32") -> dict[str, list[float]]:
    """Per-layer table of the four metrics on the eval subset, exactly as at every eval point."""
    rows = eval_rows(vision, feeder, batch_size=forward_batch_size, precision=precision)
    return summarize_rows(rows, group_size=group_size, erf_q=erf_q, diversity=diversity, aggregate=aggregate)


@torch.no_grad()
def classifier_accuracy(clf: nn.Module, feeder: Feeder, *, batch_size: int = 256, precision: str = "fp32") -> float:
    """Top-1 accuracy of a classifier's logits over every image of `feeder` (the task accuracy)."""
    correct = torch.zeros((), dtype=torch.long, device=feeder.device)
    with eval_mode(clf):
        for x, y in feeder.batches(batch_size):
            with autocast(feeder.device, precision):
                logits = clf(x)
            correct += (logits.argmax(-1) == y).sum()
    return correct.item() / len(feeder)


def format_table(table: dict[str, list[float]]) -> str:
    """The per-layer table as aligned terminal text (plus the mean over layers)."""
    names = [m for m in metrics.METRICS if m in table]
    header = f"{'layer':>6} " + " ".join(f"{n:>15}" for n in names)
    lines = [header, "-" * len(header)]
    for i in range(len(table[names[0]])):
        lines.append(f"{i + 1:>6} " + " ".join(f"{table[n][i]:>15.4f}" for n in names))
    means = metrics.layer_mean(table)
    lines.append("-" * len(header))
    lines.append(f"{'mean':>6} " + " ".join(f"{means[n]:>15.4f}" for n in names))
    return "\n".join(lines)
