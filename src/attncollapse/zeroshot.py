"""Zero-shot classification with text prompts: base-only vs adapter-active.

The reports' headline "LoRA perfectly preserves zero-shot (60.22% = baseline)" was
measured with the adapters dropped: their loader copied only `vision_model.` keys into a
plain CLIPModel (English report §6.2), i.e. it evaluated the pretrained model. Here a
LoRA run gets both numbers side by side: `acc` with adapters active (correct) and
`acc_base_only` with adapters off and the pretrained projection (the reports' protocol,
equal to the pretrained model's accuracy by construction).

Image features = (fine-tuned) vision tower pooled output → (fine-tuned) visual
projection → L2 norm; text features = the original text tower, one embedding per class
(mean of the normalised prompt features over templates, renormalised); prediction =
cosine-similarity argmax (DESIGN.md "Reproduction defaults"). WiSE-FT weight
interpolation builds on these features in wise.py; `evaluate_for_run` runs both.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import _io, data
from .evaluate import autocast, effective_precision, resolve_device
from .models import Classifier

# The original study's single prompt (no trailing period, as in its code).
_SINGLE = ["a photo of a {}"]
# The 18 CIFAR-10/100 prompts of CLIP (Radford et al. 2021; openai/CLIP data/prompts.md).
_CIFAR_ENSEMBLE = [
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.",
    "a photo of the {}.", "a blurry photo of the {}.", "a black and white photo of the {}.",
    "a low contrast photo of the {}.", "a high contrast photo of the {}.",
    "a bad photo of the {}.", "a good photo of the {}.", "a photo of the small {}.",
    "a photo of the big {}.",
]
TEMPLATES: dict[str, list[str]] = {"single": _SINGLE, "ensemble": _CIFAR_ENSEMBLE}


def _autocast(device: torch.device | str, precision: str):
    if precision not in ("fp16", "bf16", "fp32"):
        raise ValueError(f"unknown precision {precision!r}; expected 'fp16', 'bf16' or 'fp32'")
    return autocast(torch.device(device), precision)


@contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Eval mode inside the block (LoRA dropout off), each module's mode restored after."""
    was = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, w in zip(modules, was):
            m.train(w)


def _is_peft(vision: nn.Module) -> bool:
    return hasattr(vision, "disable_adapter")


# ---------------------------------------------------------------------------- text side

@dataclass
class TextCache:
    """Class text embeddings already computed, in memory and optionally on disk.

    Attributes:
        dir: directory of `<key>.safetensors` files (written atomically); None = memory only.
        memory: key → (C, D) float32 embeddings on the CPU.
    """

    dir: str | Path | None = None
    memory: dict[str, Tensor] = field(default_factory=dict)

    def _file(self, key: str) -> Path | None:
        return None if self.dir is None else Path(self.dir) / f"{re.sub(r'[^A-Za-z0-9._-]', '_', key)}.safetensors"

    def get(self, key: str) -> Tensor | None:
        if key in self.memory:
            return self.memory[key]
        path = self._file(key)
        if path is not None and path.is_file():
            from safetensors.torch import load_file

            self.memory[key] = load_file(str(path))["embeddings"]
            return self.memory[key]
        return None

    def put(self, key: str, emb: Tensor, meta: dict[str, str]) -> None:
        self.memory[key] = emb
        path = self._file(key)
        if path is not None:
            from safetensors.torch import save_file

            with _io.atomic_path(path) as tmp:
                save_file({"embeddings": emb.contiguous()}, str(tmp), metadata=meta)


def _templates(templates: str | Sequence[str]) -> tuple[str, list[str]]:
    """(name recorded in results, template list) for a `TEMPLATES` key or an explicit list."""
    if isinstance(templates, str):
        if templates not in TEMPLATES:
            raise ValueError(f"unknown template set {templates!r}; expected one of {list(TEMPLATES)}")
        return templates, TEMPLATES[templates]
    return "custom", list(templates)


def _model_digest(clip: nn.Module) -> str:
    # Cheap identity of the text side: name plus sums of the token embedding and the text
    # projection. Two random presets with different seeds get different keys; the same
    # hub model gets the same key in every process (so the disk cache is reusable).
    parts = [getattr(clip.config, "_name_or_path", "") or ""]
    for p in (clip.text_model.get_input_embeddings().weight, clip.text_projection.weight):
        d = p.detach().double()
        parts.append(f"{d.sum().item():.10e},{d.square().sum().item():.10e}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def text_cache_key(clip: nn.Module, class_names: Sequence[str], templates: Sequence[str], *,
                   cache_key: str | None = None) -> str:
    """Key of one (model, class names, template set) triple.

    Args:
        cache_key: names the model (e.g. its hub id); None = a digest of its text weights.
            The class names and templates are always hashed in.
    """
    blob = json.dumps([list(class_names), list(templates)]).encode()
    return f"{cache_key or _model_digest(clip)}-{hashlib.sha256(blob).hexdigest()[:16]}"


@torch.no_grad()
def _encode_text(clip: nn.Module, tokenizer, prompts: list[str], device, batch_size: int = 1024) -> Tensor:
    """(len(prompts), D) float32 L2-normalised projected text features."""
    out = []
    for s in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[s:s + batch_size], padding=True, truncation=True,
                        max_length=77, return_tensors="pt").to(device)
        # text_model + text_projection directly: `get_text_features` returns a tensor in
        # older transformers and a BaseModelOutputWithPooling in 5.2x.
        res = clip.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        pooled = res.pooler_output if hasattr(res, "pooler_output") else res[1]
        out.append(nn.functional.normalize(clip.text_projection(pooled).float(), dim=-1))
    return torch.cat(out)


def text_embeddings(clip: nn.Module, tokenizer, class_names: Sequence[str],
                    templates: str | Sequence[str] = "single", *, device: torch.device | str,
                    cache: TextCache | dict | None = None, cache_key: str | None = None) -> Tensor:
    """One zero-shot classifier row per class.

    Per class: mean over templates of the L2-normalised text features, renormalised
    (CLIP's prompt ensembling). Computed once per `text_cache_key` when a cache is given.

    Args:
        clip: the CLIPModel whose (pretrained) text tower and text projection are used.
        tokenizer: its CLIPTokenizer.
        class_names: C human-readable names.
        templates: a `TEMPLATES` key or a list of format strings with one `{}`.
        device: where the text tower runs and the result lives.
        cache: a `TextCache` or a plain dict (memory only); None = no caching.
        cache_key: model part of the key (see `text_cache_key`).

    Returns:
        (C, D) float32 unit rows on `device`.
    """
    _, tmpl = _templates(templates)
    if isinstance(cache, dict):
        cache = TextCache(memory=cache)
    key = text_cache_key(clip, class_names, tmpl, cache_key=cache_key) if cache is not None else None
    if cache is not None and (hit := cache.get(key)) is not None:
        return hit.to(device)
    prompts = [t.format(name) for name in class_names for t in tmpl]
    # Tokens go where the text tower is (`train.build` asks for a text head before it
    # moves the model to the GPU); the result goes to `device`.
    text_device = next(clip.text_model.parameters()).device
    with _eval_mode(clip.text_model):
        feats = _encode_text(clip, tokenizer, prompts, text_device)
    emb = nn.functional.normalize(feats.view(len(class_names), len(tmpl), -1).mean(1), dim=-1)
    if cache is not None:
        cache.put(key, emb.cpu(), {"class_names": json.dumps(list(class_names)),
                                   "templates": json.dumps(tmpl)})
    return emb.to(device)


def head_from_text(clip: nn.Module, spec: str, class_names: Sequence[str], *,
                   device: torch.device | str, templates: str | Sequence[str] = "ensemble") -> Tensor:
    """Zero-shot classifier rows for a text-initialised head (`head_init: text`, WiSE-FT/FLYP).

    Args:
        clip: the pretrained CLIPModel.
        spec: its model spec (for the tokenizer, `models.load_tokenizer`).
        class_names: the C training classes.
        templates: prompt set; default the 18-prompt ensemble (WiSE-FT initialises its
            head from ensembled prompts).

    Returns:
        (C, D) float32 unit rows on `device`.
    """
    from .models import load_tokenizer

    if not class_names:
        raise ValueError("a text-initialised head needs the class names")
    return text_embeddings(clip, load_tokenizer(spec), class_names, templates, device=device)


# --------------------------------------------------------------------------- image side

def _feeder(src: data.ImageSet | data.Feeder, device) -> data.Feeder:
    return src if isinstance(src, data.Feeder) else data.Feeder(src, device)


@torch.no_grad()
def _pooled(vision: nn.Module, feeder: data.Feeder, *, batch_size: int, precision: str) -> Tensor:
    """(N, hidden) pooled outputs of the vision tower over the whole feeder, in order."""
    out = []
    with _eval_mode(vision), _autocast(feeder.device, precision):
        for x, _ in feeder.batches(batch_size):
            out.append(vision(pixel_values=x).pooler_output)
    return torch.cat(out)


@torch.no_grad()
def _project(pooled: Tensor, projection: nn.Module, *, batch_size: int, precision: str) -> Tensor:
    """(N, hidden) → (N, D) float32 unit features, under the same autocast as the tower."""
    with _autocast(pooled.device, precision):
        feats = torch.cat([projection(p) for p in pooled.split(batch_size)])
    return nn.functional.normalize(feats.float(), dim=-1)


def image_features(clf_or_fn: Classifier | Callable[[Tensor], Tensor],
                   feeder_or_imageset: data.ImageSet | data.Feeder, *, batch_size: int = 1024,
                   device: torch.device | str, precision: str = "fp32",
                   projection: nn.Module | None = None) -> Tensor:
    """Zero-shot image features of every image, in order.

    `Classifier.features` without the head, always L2-normalised (whatever the
    classifier's `normalize_features`): vision tower pooled output → projection.

    Args:
        clf_or_fn: a Classifier (its vision tower, PEFT adapters as currently enabled),
            or any function (B, 3, S, S) normalised pixels → (B, D) features.
        feeder_or_imageset: uint8 images; normalisation happens on `device`.
        batch_size: images per no-grad forward.
        precision: autocast "fp16", "bf16" or "fp32" (off).
        projection: replaces `clf.projection` (the frozen-projection variant).

    Returns:
        (N, D) float32 unit rows on `device`.
    """
    feeder = _feeder(feeder_or_imageset, device)
    if isinstance(clf_or_fn, Classifier):
        pooled = _pooled(clf_or_fn.vision, feeder, batch_size=batch_size, precision=precision)
        return _project(pooled, projection or clf_or_fn.projection, batch_size=batch_size, precision=precision)
    with torch.no_grad(), _autocast(feeder.device, precision):
        feats = torch.cat([clf_or_fn(x) for x, _ in feeder.batches(batch_size)])
    return nn.functional.normalize(feats.float(), dim=-1)


def accuracy(image_feats: Tensor, labels: Tensor | np.ndarray, text_emb: Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy of cosine-similarity classification.

    Args:
        image_feats: (N, D) unit image features.
        labels: (N,) int class indices.
        text_emb: (C, D) unit class embeddings.

    Returns:
        {"acc": top-1, "top5": top-k with k = min(5, C)}.
    """
    labels = torch.as_tensor(labels, device=image_feats.device).long()
    sims = image_feats.float() @ text_emb.float().to(image_feats.device).T  # (N, C)
    top = sims.topk(min(5, sims.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    n = len(labels)  # exact count ratios (a float32 mean would print 0.0949999988 for 19/200)
    return {"acc": hit[:, 0].sum().item() / n, "top5": hit.any(1).sum().item() / n}


def evaluate(clf: Classifier, clip: nn.Module, tokenizer, imageset: data.ImageSet, zcfg, *,
             method: str, pretrained_projection: nn.Module | None = None,
             device: torch.device | str, precision: str = "fp32", batch_size: int = 1024,
             cache: TextCache | dict | None = None, cache_key: str | None = None) -> dict:
    """One dataset's block of final.json's "zeroshot" (docs/FORMATS.md).

    Args:
        clf: the fine-tuned classifier (PEFT-wrapped vision tower for LoRA).
        clip: the CLIPModel holding the original text tower.
        imageset: the zero-shot test split (capped at `zcfg.max_images`, first images).
        zcfg: a `config.ZeroShotConfig` (templates, max_images).
        method: "full" or "lora".
        pretrained_projection: the pretrained visual projection; gives
            `acc_frozen_projection` (fine-tuned tower + pretrained projection) and, for
            LoRA, the projection of the base-only pass (what the reports' loader used;
            without it the base-only pass uses the classifier's projection).

    Returns:
        {"acc", "top5", "acc_base_only", "top5_base_only", "acc_frozen_projection",
        "templates", "images"}; base-only fields are None unless method == "lora".
    """
    if method not in ("full", "lora"):
        raise ValueError(f"unknown method {method!r}; expected 'full' or 'lora'")
    if method == "lora" and not _is_peft(clf.vision):
        raise ValueError("method='lora' but the classifier's vision tower has no PEFT adapters")
    imageset = _capped(imageset, zcfg)
    name, _ = _templates(zcfg.templates)
    text = text_embeddings(clip, tokenizer, imageset.class_names, zcfg.templates, device=device,
                           cache=cache, cache_key=cache_key)
    feeder = _feeder(imageset, device)
    opts = dict(batch_size=batch_size, precision=precision)
    # One tower pass serves both projections: they only differ after pooling.
    pooled = _pooled(clf.vision, feeder, **opts)
    res = accuracy(_project(pooled, clf.projection, **opts), feeder.labels, text)
    block = {"acc": res["acc"], "top5": res["top5"], "acc_base_only": None, "top5_base_only": None,
             "acc_frozen_projection": None, "templates": name, "images": len(imageset)}
    if pretrained_projection is not None:
        block["acc_frozen_projection"] = accuracy(
            _project(pooled, pretrained_projection, **opts), feeder.labels, text)["acc"]
    if method == "lora":
        with clf.vision.disable_adapter():
            base = _pooled(clf.vision, feeder, **opts)
        base_res = accuracy(_project(base, pretrained_projection or clf.projection, **opts), feeder.labels, text)
        block["acc_base_only"], block["top5_base_only"] = base_res["acc"], base_res["top5"]
    return block


# ------------------------------------------------------------------- runs and baseline

def _capped(imageset: data.ImageSet, zcfg) -> data.ImageSet:
    if zcfg.max_images is not None and zcfg.max_images < len(imageset):
        return imageset.subset(np.arange(zcfg.max_images))
    return imageset


def evaluate_pretrained(clip: nn.Module, spec: str, zcfg, *, data_cfg, device: torch.device | str,
                        precision: str = "fp32", batch_size: int = 1024,
                        cache: TextCache | dict | None = None) -> dict:
    """E1's zero-shot block (baseline.json): the pretrained model on `zcfg.datasets`.

    Same code path as the base-only pass of `evaluate`, so a LoRA run's `acc_base_only`
    equals this `acc` exactly.

    Returns:
        {dataset: {"acc", "top5", "templates", "images"}}.
    """
    from .models import load_tokenizer

    tokenizer = load_tokenizer(spec)
    dev = torch.device(device)
    precision = effective_precision(precision, dev)
    size = clip.config.vision_config.image_size
    out = {}
    for name in zcfg.datasets:
        imageset = _capped(data.load_test_split(name, data_cfg, image_size=size), zcfg)
        text = text_embeddings(clip, tokenizer, imageset.class_names, zcfg.templates, device=dev, cache=cache)
        feeder = _feeder(imageset, dev)
        pooled = _pooled(clip.vision_model, feeder, batch_size=batch_size, precision=precision)
        res = accuracy(_project(pooled, clip.visual_projection, batch_size=batch_size, precision=precision),
                       feeder.labels, text)
        out[name] = {**res, "templates": _templates(zcfg.templates)[0], "images": len(imageset)}
    return out


def evaluate_for_run(cfg, clip: nn.Module, clf: Classifier, splits: data.Splits | None = None, *,
                     device: torch.device | str, precision: str = "fp32", datasets: Sequence[str] | None = None,
                     pretrained: nn.Module | None = None, pretrained_state: dict | None = None,
                     batch_size: int = 1024, cache: TextCache | dict | None = None) -> dict:
    """The zero-shot part of a run's final.json (docs/FORMATS.md), for a trained model.

    Args:
        cfg: the run's `RunConfig` (method, model, data, eval and zeroshot sections).
        clip: the run's CLIPModel (its text tower is the pretrained one).
        clf: the trained classifier (PEFT-wrapped for LoRA).
        splits: the run's splits, for WiSE-FT's task accuracy and metrics; loaded when
            `cfg.zeroshot.wise_alphas` asks for them and none are given.
        datasets: zero-shot sources overriding `cfg.zeroshot.datasets`.
        pretrained: the pretrained CLIPModel; None = `load_clip(cfg.model)` (presets have
            one fixed init, the one `train.build` starts from).
        pretrained_state: `wise.vision_state` of the model before training (what
            `train.run` keeps); replaces `pretrained` and its reload.

    Returns:
        {"zeroshot": {dataset: block}, "zeroshot_acc", "zeroshot_acc_base_only", "wise"}.
    """
    from .models import load_clip, load_tokenizer
    from .wise import vision_state, wise  # lazy: wise builds on this module

    zcfg = cfg.zeroshot
    datasets = list(datasets or zcfg.datasets)
    if not datasets:
        return {"zeroshot": {}, "zeroshot_acc": None, "zeroshot_acc_base_only": None, "wise": []}
    tokenizer = load_tokenizer(cfg.model)
    dev = torch.device(device)
    precision = effective_precision(precision, dev)
    if pretrained_state is not None:
        pre_state = pretrained_state
        weight = pre_state["projection.weight"]
        projection = nn.Linear(weight.shape[1], weight.shape[0], bias=False).to(dev)
        with torch.no_grad():
            projection.weight.copy_(weight)
    else:
        pretrained = (pretrained if pretrained is not None else load_clip(cfg.model)).to(dev)
        pre_state, projection = vision_state(pretrained), pretrained.visual_projection
    if cfg.method == "lora":
        # LoRA never changes the base tower: a mismatch means `pretrained` is the wrong model.
        ft_state = vision_state(clf)
        bad = [k for k in ft_state if k.startswith("vision.") and not torch.equal(ft_state[k], pre_state[k])]
        if bad:
            raise ValueError(f"pretrained model differs from the LoRA run's base tower (e.g. {bad[0]})")
    cache = TextCache() if cache is None else cache
    size = clip.config.vision_config.image_size
    sets = {name: _capped(data.load_test_split(name, cfg.data, image_size=size), zcfg) for name in datasets}
    blocks = {name: evaluate(clf, clip, tokenizer, s, zcfg, method=cfg.method,
                             pretrained_projection=projection, device=dev,
                             precision=precision, batch_size=batch_size, cache=cache)
              for name, s in sets.items()}
    first = blocks[datasets[0]]
    out = {"zeroshot": blocks, "zeroshot_acc": first["acc"],
           "zeroshot_acc_base_only": first["acc_base_only"], "wise": []}
    if zcfg.wise_alphas:
        splits = splits or data.load_splits(cfg.dataset, cfg.data, image_size=size)
        out["wise"] = wise(clf, pre_state, zcfg.wise_alphas, clip=clip, tokenizer=tokenizer,
                           zeroshot_set=sets[datasets[0]], task_set=splits.test, eval_set=splits.eval_set,
                           templates=zcfg.templates, device=dev, precision=precision, batch_size=batch_size,
                           eval_batch=cfg.eval.batch_size, erf_q=cfg.eval.erf_q,
                           diversity=cfg.eval.diversity, cache=cache)
    return out


def evaluate_run(run_dir: str | Path, datasets: Sequence[str] | None = None, *,
                 device: str | torch.device | None = None, precision: str | None = None,
                 batch_size: int = 1024, pretrained: nn.Module | None = None,
                 cache: TextCache | dict | None = None) -> dict:
    """`attncollapse zeroshot RUN_DIR`: evaluate a finished run and merge into its final.json.

    Rebuilds the trained model (`train.load_trained`, the selected checkpoint), runs
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
    from .config import RunConfig
    from .train import load_trained  # lazy: train imports this module for its end-of-run eval

    run_dir = Path(run_dir)
    final_path = run_dir / "final.json"
    if not final_path.is_file():
        raise FileNotFoundError(f"{final_path} missing: the run has not finished")
    final = _io.read_json(final_path)
    cfg = RunConfig.model_validate(_io.read_yaml(run_dir / "config.yaml"))
    dev = resolve_device(str(device) if device is not None else cfg.device)
    clip, clf, cfg = load_trained(run_dir, device=str(dev))
    res = evaluate_for_run(cfg, clip, clf, device=dev, precision=precision or cfg.optim.precision,
                           datasets=datasets, pretrained=pretrained, batch_size=batch_size, cache=cache)
    if not res["zeroshot"]:
        return final
    merged = final["zeroshot"] = {**(final.get("zeroshot") or {}), **res["zeroshot"]}
    # The headline stays the config's first dataset when it has a block (CIFAR-100 in the
    # reports), whichever subset was evaluated now.
    head = next((d for d in cfg.zeroshot.datasets if d in merged), next(iter(res["zeroshot"])))
    final["zeroshot_acc"], final["zeroshot_acc_base_only"] = merged[head]["acc"], merged[head].get("acc_base_only")
    if cfg.zeroshot.wise_alphas or "wise" not in final:
        final["wise"] = res["wise"]
    _io.write_json(final_path, final)
    return final
