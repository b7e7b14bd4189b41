"""Config of the forgetting design (the authors' final study, docs/FORGETTING_RUNS.md).

`ForgettingConfig` is a run's `forgetting:` section: which backbone role it plays, the
transfer sets read every epoch and at the selected checkpoint, the prompt and where the
pretrained accuracies are cached. `InterpolationConfig` is a matrix's `interpolation:`
(which finished runs get the weight-interpolation sweep). `grid_warnings` says when a
`design: forgetting` matrix is confounded or incomplete.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import Field

from .base import Strict

FORGETTING_METHODS = ("full_ft", "lora_r8", "lora_r8_frozen_proj", "last_block", "linear_probe")
"""The authors' method names, as the records spell them."""


def method_name(cfg: Any) -> str:
    """The authors' name of a run's method: full → full_ft, lora → lora_r<rank> (+ _frozen_proj
    with a frozen projection), last_block and linear_probe as they are."""
    if cfg.method == "full":
        return "full_ft"
    if cfg.method == "lora":
        return f"lora_r{cfg.lora.rank}" + ("_frozen_proj" if cfg.freeze_projection else "")
    return cfg.method


class ForgettingConfig(Strict):
    backbone: Literal["primary", "secondary"] = "primary"
    """The run's backbone role: "primary" (ViT-B/32 in the study; every pooled statistic
    uses only these) or "secondary" (ViT-B/16, analysed on its own)."""
    transfer: str = "cifar100"
    """Primary transfer axis (record key "cifar100"): zero-shot source, its test split."""
    transfer_per_class: int | None = Field(None, ge=1)
    """Balanced subset of `transfer` read at the selected checkpoint; None = the whole
    test split (the study: all 10,000 CIFAR-100 test images)."""
    track_per_class: int = Field(10, ge=1)
    """The per-epoch tracking subset of `transfer`, per class (the study: 10 → 1,000)."""
    second_transfer: str | None = "cifar10"
    """Second transfer axis (record key "cifar10"); None = none."""
    second_per_class: int | None = Field(200, ge=1)
    """Balanced subset of `second_transfer` per class (the study: 200 → 2,000)."""
    corruptions: list[str] = Field(default_factory=list)
    """Extra splits of the training source read with the head at the selected checkpoint
    (EuroSAT: contrast, gaussian_noise, ...); empty = none (Pets)."""
    corruption_per_class: int = Field(100, ge=1)
    """Balanced subset of each corruption split, per class (the study: 100)."""
    subset_seed: int = Field(0, ge=0)
    """`RandomState` seed of every balanced subset (the study: 0, fresh per subset)."""
    prompt: str = "a photo of a {}."
    """The one zero-shot template; class names with underscores as spaces."""
    pretrained_cache: str | None = None
    """Directory of the per-backbone cache of pretrained transfer accuracies; None =
    `pretrained/` beside the run directories (the matrix directory)."""
    max_transfer_images: int | None = Field(None, ge=1)
    """Cap on each transfer set before subsetting (demos); None = none."""


class InterpolationConfig(Strict):
    enabled: bool = True
    """Run the sweep after the runs finish (before the analysis)."""
    runs: Literal["best_val"] | list[str] = "best_val"
    """Which finished runs: "best_val" = per method, the run with the highest best_val_acc
    on `dataset` with seed `seed` (the authors' choice), or a list of run ids."""
    dataset: str | None = None
    """Dataset of the "best_val" choice; None = the first dataset of the matrix."""
    seed: int | None = None
    """Seed of the "best_val" choice; None = the matrix's first seed."""
    backbone: Literal["primary", "secondary"] = "primary"
    """Backbone of the "best_val" choice."""
    methods: list[str] | None = None
    """Methods of the "best_val" choice; None = every method of the matrix."""
    variants: list[Literal["exact", "authors"]] = Field(default_factory=lambda: ["exact", "authors"], min_length=1)
    """"exact" scales LoRA's update α·s·B·A; "authors" interpolates A and B as tensors."""
    alphas: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], min_length=1)
    """Interpolation coefficients (0 = pretrained weights, 1 = the selected checkpoint)."""


def grid_warnings(runs: list[tuple[str, Any]]) -> list[str]:
    """Warnings for a forgetting matrix whose grid is confounded or incomplete.

    Confounded: two runs in one (backbone, dataset, method, lr, seed) cell (the analysis
    cannot tell them apart), or one backbone role played by two models. Incomplete: two
    methods of one (backbone, dataset) whose lr sets overlap without one holding the other
    (the paired method tests pair on identical lr and seed), or a method missing a seed at
    some lr. Reference arms on a subset of the core lrs (the study's design) do not warn.
    """
    out: list[str] = []
    cells: dict[tuple, str] = {}
    models: dict[str, set] = {}
    groups: dict[tuple, dict[str, set]] = {}
    for rid, cfg in runs:
        backbone = cfg.forgetting.backbone if cfg.forgetting is not None else "primary"
        m = method_name(cfg)
        cell = (backbone, cfg.dataset, m, float(cfg.optim.lr), cfg.seed)
        if cell in cells:
            out.append(f"{rid}: repeats the cell backbone={backbone}, dataset={cfg.dataset}, method={m}, "
                       f"lr={cfg.optim.lr:g}, seed={cfg.seed} of {cells[cell]} (confounded: the analysis cannot "
                       "tell them apart)")
        cells.setdefault(cell, rid)
        models.setdefault(backbone, set()).add(cfg.model)
        groups.setdefault((backbone, cfg.dataset), {}).setdefault(m, set()).add((float(cfg.optim.lr), cfg.seed))
    for backbone, ms in models.items():
        if len(ms) > 1:
            out.append(f"backbone {backbone}: played by {len(ms)} models ({', '.join(sorted(ms))}); confounded: "
                       "give each model its own forgetting.backbone")
    for (backbone, ds), methods in groups.items():
        seeds = {s for got in methods.values() for _lr, s in got}
        lrs = {m: {lr for lr, _s in got} for m, got in methods.items()}
        for m, got in methods.items():
            missing = sorted(set(itertools.product(lrs[m], seeds)) - got)
            if missing:
                out.append(f"{backbone}/{ds}/{m}: incomplete grid, missing (lr, seed) "
                           + ", ".join(f"({lr:g}, {s})" for lr, s in missing[:4]))
        for a, b in itertools.combinations(sorted(lrs), 2):
            if lrs[a] & lrs[b] and not (lrs[a] <= lrs[b] or lrs[b] <= lrs[a]):
                only = sorted(lrs[a] ^ lrs[b])
                out.append(f"{backbone}/{ds}: incomplete grid, {a} and {b} share some lrs but not "
                           f"{', '.join(f'{lr:g}' for lr in only)} (paired comparisons lose those cells)")
    return out


def run_problems(cfg: Any) -> list[str]:
    """What a run of a forgetting design must not be (whole epochs, a carved split)."""
    out = []
    if float(cfg.optim.epochs) != int(cfg.optim.epochs):
        out.append(f"optim.epochs: {cfg.optim.epochs} is not a whole number (the forgetting design measures per epoch)")
    if cfg.data.split != "carve":
        out.append(f"data.split: {cfg.data.split!r}; the forgetting design carves val, probe and train from the "
                   "train split (set data.split: carve)")
    if cfg.regularizer.kind != "none":
        out.append("regularizer.kind: the forgetting design trains without attention regularizers (set none)")
    if cfg.method == "lora" and method_name(cfg) not in FORGETTING_METHODS:
        out.append(f"lora.rank: {cfg.lora.rank}; the forgetting design's LoRA arms are rank 8 ({', '.join(FORGETTING_METHODS)})")
    return out
