"""Typed, validated run configs. YAML in, every problem reported at once.

A `RunConfig` is everything one fine-tuning run needs; its defaults are the original
study's (docs/STUDY.md "The original code, and which commit"). Unknown keys are errors that list the valid
ones (pydantic `extra="forbid"`). Study matrices built from these are `matrix.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import Strict
from .forgetting import ForgettingConfig


SEED_MAX = 2**32 - 1
"""Largest seed: `numpy.random.RandomState` (the eval subset, splits) takes seeds below 2**32."""

NAME_MAX = 100
"""Longest run id or matrix name: a run directory's name, plus suffixes such as `-s<seed>`,
must stay under the 255 bytes most file systems allow."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]*$")

RESERVED_IDS = frozenset({
    "E1", "baseline", "figures", "tb", "results.csv", "results_by_config.csv", "stats.json", "matrix.yaml",
    "report.md", "report.html", "figures.json", "env.json", "runs",
})
"""Names a matrix directory already uses for itself (E1 is the pretrained baseline):
a run with one of them as its id would overwrite, or be overwritten by, that file."""


def name_problem(v: str, what: str) -> str | None:
    """Why `v` cannot name a directory under runs/ (a run id or a matrix name), or None."""
    if not v:
        return f"{what} must not be empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in v):
        return f"{what} {v!r} contains control characters; use letters, digits and . _ + = @ -"
    if len(v) > NAME_MAX:
        return f"{what} is {len(v)} characters long; at most {NAME_MAX}"
    if not _NAME.match(v):
        return (f"{what} {v!r} must be a plain name: letters, digits and . _ + = @ -, starting with a letter or "
                "digit (no spaces, slashes or leading dots)")
    return None


class CarveCounts(Strict):
    val: int = Field(30, ge=1)
    """Validation images per class (checkpoint selection)."""
    probe: int = Field(20, ge=1)
    """Unlabelled probe images per class (the per-epoch signals)."""
    train: int = Field(160, ge=1)
    """Training images per class."""


class DataConfig(Strict):
    split: Literal["hub", "pooled_80_20", "holdout_val", "carve"] = "hub"
    """Split protocol: "hub" = the dataset's own train/test, test doubling as validation
    (original study's code); "pooled_80_20" = the reports' stated stratified 80/20 of
    train+test (seed 42; the hub's EuroSAT has 24,300 images, so 19,440 / 4,860, not the
    reports' 21,600 / 5,400 of 27,000); "holdout_val" = val carved from train, test kept apart;
    "carve" = val, probe and train drawn per class from train in that order (`carve`
    counts, one `RandomState(split_seed)`; the authors' final study), test kept apart."""
    carve: CarveCounts = Field(default_factory=lambda: CarveCounts())
    """Images per class of each carved split under split="carve" (EuroSAT 30/20/160, Pets 10/6/40)."""
    val_frac: float = Field(0.1, gt=0.0, lt=1.0)
    """Fraction of train held out as validation under split="holdout_val"."""
    split_seed: int = 42
    """Seed of the stratified splits (reports: 42)."""
    eval_subset_size: int = Field(200, ge=2)
    """Images in the fixed metric eval subset (reports: 200, class-balanced)."""
    eval_subset_seed: int = 42
    """`numpy.random.RandomState` seed of the eval subset (reports: 42)."""
    preprocess: Literal["original", "clip"] = "original"
    """Resize and crop: "original" = torchvision `Resize(S)` + `CenterCrop(S)` on PIL images
    (bilinear, the original study's code); "clip" = the CLIP image processor (bicubic)."""
    alpha: Literal["drop", "white"] = "drop"
    """Transparent pixels: "drop" = PIL `convert("RGB")` keeps their stored colour (original
    code); "white" = composited onto white (the CLIP image processor)."""
    hflip: bool = True
    """Random horizontal flip during training (original study's only augmentation)."""
    max_train_images: int | None = Field(None, ge=1)
    """Cap on training images (demos); None = the whole split."""
    synthetic_classes: int = Field(10, ge=2)
    """Classes of the offline `synthetic` source."""
    synthetic_train: int = Field(512, ge=2)
    """Training images of the `synthetic` source."""
    synthetic_test: int = Field(256, ge=2)
    """Test images of the `synthetic` source."""
    cache_dir: str | None = None
    """Where the uint8 image cache lives; None = $ATTNCOLLAPSE_CACHE or ~/.cache/attncollapse."""
    gpu_resident: Literal["auto", "always", "never"] = "auto"
    """Keep the uint8 cache on the GPU ("auto": when it fits in a quarter of free memory)."""
    image_column: str | None = None
    """Image column of an `hf:` dataset; None = the only `datasets.Image` column."""
    label_column: str | None = None
    """Label column of an `hf:` dataset; None = the only ClassLabel column (or "label")."""
    cache_workers: int | None = Field(None, ge=1)
    """Processes decoding images into the cache; None = CPU count."""
    data_root: str | None = None
    """Download/lookup directory of `torchvision:` sources; None = <cache dir>/torchvision."""


class LoraConfig(Strict):
    rank: int = Field(8, ge=1)
    """LoRA rank r (reports: 4, 8, 16)."""
    alpha: float | None = Field(None, gt=0)
    """LoRA alpha; None = 2·rank (original study's code)."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """LoRA dropout (original: 0.05)."""
    targets: Literal["qv", "qkvo"] = "qv"
    """Adapted projections: "qv" (reports' default) or "qkvo" (A2)."""


class OptimConfig(Strict):
    lr: float = Field(1e-5, gt=0)
    """Peak learning rate (reports: full FT 1e-5; LoRA 1e-4 in the original code)."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay (reports: 0.01; R3: 0.0, 0.1)."""
    batch_size: int = Field(64, ge=1)
    """Training batch size (reports: 64)."""
    epochs: float = Field(20, gt=0, le=10_000)
    """Training epochs (reports: EuroSAT 20, Pets 30); fractions allowed for benchmarks."""
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    """Linear warmup as a fraction of all steps (reports: 5%), then cosine to 0."""
    grad_clip: float | None = Field(1.0, gt=0)
    """Max gradient norm (reports: 1.0); None = no clipping."""
    precision: Literal["fp16", "bf16", "fp32"] = "fp16"
    """Autocast precision (reports: fp16 AMP with a GradScaler)."""
    fused: bool = True
    """Use the fused AdamW kernel on CUDA (same maths, fewer launches)."""
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"
    """torch.compile mode of the training forward/backward, probe included
    ("reduce-overhead" adds CUDA graphs on GPU); true/false mean "default"/"off"."""

    compile_scope: Literal["model", "layers"] = "model"
    """What `compile` compiles: the whole classifier as one graph, or each transformer
    layer on its own (one layer's graph serves all: compile time ~1/5 on CPU, fusion
    across layer boundaries lost). Same numbers either way."""

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_bool(cls, v):
        return {True: "default", False: "off"}.get(v, v) if isinstance(v, bool) else v


class RegularizerConfig(Strict):
    kind: Literal["none", "apr", "entropy_floor"] = "none"
    """Attention regularizer: APR (R1) or entropy floor (R2)."""
    lam: float = Field(0.0, ge=0)
    """Regularizer weight λ (reports: APR 0.01/0.1/1.0, entropy floor 0.01/0.1)."""
    floor_ratio: float = Field(0.7, gt=0, le=1)
    """Entropy floor τ_l = ratio × pretrained per-layer entropy (original: 0.7)."""
    reference: Literal["cached", "online"] = "cached"
    """APR reference rows: computed once per training image and flip state before the
    first step ("cached": the same values, no second forward per step) or by a second
    forward of the pretrained model every step ("online", the original's way)."""


class EvalConfig(Strict):
    points_per_epoch: int = Field(5, ge=1)
    """Metric eval points per epoch (reports: ~5, every len(loader)//5 steps)."""
    batch_size: int = Field(32, ge=1)
    """Batch size of metric evaluation; also the head-diversity grouping (reports: 32)."""
    forward_batch_size: int = Field(256, ge=1)
    """Images per forward pass at an eval point (speed only: the metrics still group the
    rows by `batch_size`, and a row does not depend on its batch-mates)."""
    diversity: Literal["batch_mean", "per_image"] = "batch_mean"
    """Head diversity aggregation (reports: batch_mean)."""
    aggregate: Literal["per_batch", "per_image"] = "per_batch"
    """A layer's value of every metric: "per_batch" = the unweighted mean of the per-batch
    means over batches of `batch_size` eval images in draw order, a short last batch
    weighing as much as a full one (the original code, which made the reports' numbers);
    "per_image" = the mean over images (the reports' text)."""
    timing: Literal["multiples", "original"] = "multiples"
    """When the eval points fall, k = steps_per_epoch // points_per_epoch: "multiples" = after
    k, 2k, 3k, ... updates (a point's `step` is the updates done); "original" = after 1,
    k+1, 2k+1, ... updates, as the original code, which tested `step % k == 0` after the
    update but before counting it (and labelled them 0, k, 2k). Both add the initial point
    and every accuracy evaluation."""
    train_loss: Literal["mean", "last"] = "mean"
    """A point's `train_loss`: the mean over the steps since the previous point, or "last" =
    the loss of the step just taken (the value the original code logged)."""
    val_per_epoch: int = Field(1, ge=1)
    """Accuracy evaluations per epoch on the selection split."""
    erf_q: float = Field(0.95, gt=0, le=1)
    """Mass of ERF (reports: 0.95)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast of every measurement — attention metrics, accuracy, zero-shot — whatever
    `optim.precision` the training step runs in (original code: fp32, outside autocast; only
    its training step ran under fp16 AMP). fp32 keeps a run's step-0 point equal to E1's."""
    structure: bool = True
    """Also measure, in the same forward passes of every eval point, the original authors'
    follow-up structure measures per layer (measure/structure.py): [CLS] attention rollout
    (0.5·A + 0.5·I through layers 1..l) with its entropy (nats), ERF@`erf_q` (fraction of
    patches) and Gini; patch-to-patch attention entropy (nats); linear CKA of the [CLS]
    hidden state against the model before its first step (0..1); map drift = mean over
    images of the Jensen–Shannon divergence (nats, 0..ln 2) of head-averaged [CLS]→patch
    maps against that model. Off = the four metrics only. Costs ~1.05× an eval point of the
    four metrics (ViT-B/32, CPU; BENCHMARKS.md); memory: each forward's L full maps,
    L·B·H·T²·4 bytes (ViT-B/32, 256 images: 0.37 GB; ViT-B/16: 5.7 GB — lower
    `forward_batch_size` where short). Not in the resume fingerprint: it adds measures only."""
    map_images: int = Field(4, ge=0)
    """Eval images whose head-level [CLS]→patch maps are kept at every eval point in
    evalmaps.npz (fp16, L·H·P·2 bytes per image and point: ViT-B/32 14 KiB) for `attncollapse
    explore`; 0 = none. Not in the resume fingerprint: it keeps maps only."""

    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = Field(
        default_factory=lambda: ["tensorboard"])
    """Trackers every eval point is logged to (attncollapse.track): per-layer curves of the
    four metrics, structure measures, loss, accuracy and [CLS]→patch map pictures, written
    under the run's `tb/`; [] = none. Not in the resume fingerprint."""

    def metric_options(self) -> dict:
        """The keyword arguments of `measure.summarize_rows` / `attention_table` this config sets."""
        return {"group_size": self.batch_size, "erf_q": self.erf_q, "diversity": self.diversity,
                "aggregate": self.aggregate}


class ZeroShotConfig(Strict):
    datasets: list[str] = Field(default_factory=lambda: ["cifar100"])
    """Zero-shot sources; the first is the headline `zeroshot_acc` (reports: CIFAR-100)."""
    templates: Literal["single", "ensemble"] = "single"
    """Prompts: "a photo of a {name}" (original) or the 18-template CLIP CIFAR ensemble."""
    wise_alphas: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    """WiSE-FT coefficients α (θ = (1−α)·θ_pretrained + α·θ_finetuned) evaluated at the
    end of each run (empty = skip; the reports had none)."""
    class_names: Literal["raw", "humanized"] = "raw"
    """Class names in the prompts: "raw" as the dataset gives them (`aquarium_fish`, HF
    CIFAR-100's `cra`; the original code) or "humanized" (underscores to spaces)."""
    max_images: int | None = Field(None, ge=1)
    """Cap on zero-shot images (demos); None = the whole test split."""
    enabled: bool = True
    """Evaluate zero-shot at the end of the run."""
    feature_transfer: Literal["auto", "always", "never"] = "auto"
    """k-NN and linear-probe accuracy on the zero-shot datasets (transfer/representation.py):
    "auto" = for models without zero-shot (vision-only families), "always" = every family
    (a cross-family comparison on one protocol), "never" = off."""
    max_train_images: int | None = Field(None, ge=1)
    """Cap on each zero-shot dataset's train images for k-NN and the linear probe (seeded,
    stratified); None = the whole train split."""


class RunConfig(Strict):
    id: str = "run"
    """Stable run id (reports' ids: E2, A1-lr5e-05, R1-apr0.1, ...)."""
    seed: int = Field(42, ge=0, le=SEED_MAX)
    """Seed of initialisation, shuffling and dropout (reports: 42); 0 ≤ seed < 2**32."""
    model: str = "openai/clip-vit-base-patch32"
    """Hub id, local directory or preset (`tiny`, `vit-b-32-random`)."""
    dataset: str = "eurosat"
    """Training source: eurosat, pets, cifar100, hf:<id>, imagefolder:<path>, synthetic, digits."""
    method: Literal["full", "lora", "linear_probe", "last_block"] = "full"
    """Full fine-tuning or LoRA on the vision tower, or "linear_probe": tower and projection
    frozen, only the head trains (the "no collapse" reference: every Δ is exactly 0), or
    "last_block": the last encoder block, the post-LayerNorm, the projection and the head
    train (the authors' final study's code; docs/FORGETTING_RUNS.md)."""
    freeze_layers: int = Field(0, ge=0)
    """Freeze the first k encoder layers (A3: 3, 6, 9); the patch embedding and
    pre-LayerNorm keep training, as in the original code (see `freeze_embeddings`)."""
    freeze_embeddings: bool = False
    """Also freeze the embeddings (patch, position, [CLS]) and CLIP's pre-LayerNorm
    (original code: false, they train even when layers are frozen)."""
    freeze_projection: bool = False
    """Keep the visual projection frozen (original: trainable)."""
    head_init: Literal["random", "text"] = "random"
    """Classifier head: random (original) or zero-shot text embeddings (WiSE-FT/FLYP)."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    regularizer: RegularizerConfig = Field(default_factory=RegularizerConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    zeroshot: ZeroShotConfig = Field(default_factory=ZeroShotConfig)
    forgetting: ForgettingConfig | None = None
    """Set by a `design: forgetting` matrix: the run follows the forgetting protocol
    (train/forgetting.py: per-epoch signals, record.json; docs/FORGETTING_RUNS.md)."""
    checkpoints_per_epoch: int = Field(1, ge=1)
    """Checkpoints written per epoch (at least one, atomically)."""
    keep_checkpoints: int = Field(2, ge=1)
    """Newest checkpoints kept on disk."""
    device: str = "auto"
    """"auto" (CUDA when available), "cpu", "cuda", "cuda:1", "mps"; a GPU the machine
    does not have is an error of `validate` and `run` alike."""
    cpu_threads: int | None = Field(None, ge=1)
    """torch's intra-op CPU threads for the run (`torch.set_num_threads`); None = torch's
    default (one per core). The tiny demo models run fastest on 1: their ops are too small
    to split, and on a busy machine extra threads only wait for each other."""

    @field_validator("id")
    @classmethod
    def _id_is_path_safe(cls, v: str) -> str:
        if (p := name_problem(v, "run id")) is not None:
            raise ValueError(p)
        if v in RESERVED_IDS:
            raise ValueError(f"run id {v!r} is reserved: the matrix directory uses it for its own "
                             f"{'E1 baseline' if v == 'E1' else 'file'}; pick another id")
        return v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", v):
            raise ValueError(f"unknown device {v!r}; expected auto, cpu, cuda, cuda:<index> or mps")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        if self.regularizer.kind != "none" and self.regularizer.lam <= 0:
            raise ValueError(f"regularizer {self.regularizer.kind} needs lam > 0")
        if self.method == "linear_probe" and self.regularizer.kind != "none":
            raise ValueError("method linear_probe freezes the tower, so an attention regularizer has nothing "
                             "to act on; set regularizer.kind: none")
        return self


DEFAULTS = RunConfig().model_dump()
"""Every field's default, as plain data (the matrix checks read them)."""

# Fields that do not change a run's numbers: excluded from the resume fingerprint.
# eval.structure only adds measures (the four metrics, training and accuracy are the same
# either way), so runs checkpointed before it existed still resume; a run whose switch
# changed midway has no structure_summary (train/loop.py).
_NOT_FINGERPRINTED = {"device", "cpu_threads", "eval.forward_batch_size", "eval.structure", "eval.map_images",
                      "eval.report_to", "data.cache_dir", "data.gpu_resident", "data.cache_workers", "data.data_root",
                      "zeroshot"}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def fingerprint_fields(cfg: RunConfig) -> dict[str, Any]:
    """The flattened config fields that determine a run's numbers."""
    flat = _flatten(cfg.model_dump(mode="json"))
    return {k: v for k, v in flat.items()
            if not any(k == x or k.startswith(x + ".") for x in _NOT_FINGERPRINTED)}


def fingerprint(cfg: RunConfig) -> str:
    """A short hash of `fingerprint_fields(cfg)`: equal for configs that give the same numbers."""
    return _hash(fingerprint_fields(cfg))


def _hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def compile_key(cfg: RunConfig) -> tuple:
    """What decides a run's compiled training graph (`optim.compile`): runs with the same
    key reuse one process's compiled step; the executors run them back to back."""
    lora = (cfg.lora.rank, cfg.lora.targets, cfg.lora.dropout > 0) if cfg.method == "lora" else None
    return (cfg.model, cfg.method, lora, cfg.freeze_layers, cfg.freeze_embeddings, cfg.freeze_projection,
            cfg.head_init, cfg.dataset, cfg.data.synthetic_classes, cfg.regularizer.kind != "none", cfg.optim.precision,
            cfg.optim.batch_size, cfg.optim.compile, cfg.optim.compile_scope)


def diff_fields(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two flattened field dicts."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def config_change(recorded: dict[str, Any], cfg: RunConfig, *, limit: int | None = None) -> str | None:
    """What makes a recorded config give other numbers than `cfg`, or None when nothing does.

    Args:
        recorded: the `fingerprint_fields` a run recorded (checkpoint, config.yaml).
        limit: name at most this many keys.

    Returns:
        None when the fingerprints agree; else "differing keys: a, b, ...".
    """
    now = fingerprint_fields(cfg)
    if _hash(recorded) == _hash(now):
        return None
    return f"differing keys: {', '.join(diff_fields(recorded, now)[:limit])}"

