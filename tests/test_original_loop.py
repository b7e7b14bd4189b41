"""Our training loop against the original study's loop (tests/original_loop.py, our own
re-implementation of its `train_one_experiment`): same tiny model, same data, one explicit
batch order, fp32. The loss, the validation accuracy, the best checkpoint and the four
metrics per layer at every eval point agree to 1e-5 for full fine-tuning, LoRA, APR, the
entropy floor and freezing, with the settings `configs/paper.yaml` uses for the original's
behaviour (`eval.timing: original`, `eval.train_loss: last`, `freeze_embeddings: false`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import original_loop as orig
from attncollapse import train
from attncollapse.config import DataConfig, EvalConfig, OptimConfig, RegularizerConfig, RunConfig, ZeroShotConfig
from attncollapse.data import Feeder, load_splits
from attncollapse.measure import METRICS
from attncollapse.models import normalization
from attncollapse.train.build import build

N_TRAIN, BATCH, EPOCHS = 42, 4, 2  # 11 steps per epoch (the last of 2 images), eval every 11 // 5 = 2
ATOL = 1e-5

CASES = {
    "full": {},
    "lora": {"method": "lora", "lora": {"rank": 2}, "optim": {"lr": 1e-2}},  # dropout 0.05: one RNG stream
    "apr": {"regularizer": RegularizerConfig(kind="apr", lam=1.0)},
    "apr_lora": {"method": "lora", "lora": {"rank": 2}, "regularizer": RegularizerConfig(kind="apr", lam=1.0)},
    # a floor at 1.0 × (not the original's 0.7 ×) the initial entropy: active from the first step
    "entropy_floor": {"regularizer": RegularizerConfig(kind="entropy_floor", lam=1.0, floor_ratio=1.0)},
    "freeze": {"freeze_layers": 2},
}


def _config(tmp_path, case: str) -> RunConfig:
    extra = dict(CASES[case])
    optim = {"lr": 3e-3, "batch_size": BATCH, "epochs": EPOCHS, "precision": "fp32", **extra.pop("optim", {})}
    return RunConfig(
        id=case, model="tiny", dataset="synthetic", cpu_threads=1, optim=OptimConfig(**optim),
        data=DataConfig(synthetic_classes=4, synthetic_train=N_TRAIN, synthetic_test=24, eval_subset_size=20,
                        hflip=False, cache_dir=str(tmp_path / "cache")),
        eval=EvalConfig(batch_size=8, timing="original", train_loss="last"),  # 20 = 8 + 8 + 4
        zeroshot=ZeroShotConfig(enabled=False), **extra)


def _order(seed: int = 5) -> list[torch.Tensor]:
    """One explicit batch order for both loops: a permutation per epoch, cut into batches."""
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(EPOCHS):
        perm = torch.as_tensor(rng.permutation(N_TRAIN))
        out += [perm[i:i + BATCH] for i in range(0, N_TRAIN, BATCH)]
    return out


def _original(cfg: RunConfig, order: list[torch.Tensor]) -> dict:
    """The same model, data and order through the original loop."""
    splits = load_splits(cfg.dataset, cfg.data, image_size=32)
    mean, std = normalization(cfg.model)
    feed = Feeder(splits.train, "cpu", mean=mean, std=std)
    # the initial weights our run starts from; the original's own freezing applied below
    _, clf = build(cfg.model_copy(update={"freeze_layers": 0, "freeze_embeddings": False}), splits.train.num_classes,
                   torch.device("cpu"))
    model = orig.from_ours(clf)
    reference = orig.from_ours(clf) if cfg.regularizer.kind == "apr" else None
    for i in range(cfg.freeze_layers):  # run_full_ft_experiment's A3 freezing
        for p in model.vision_model.encoder.layers[i].parameters():
            p.requires_grad = False
    per_epoch = len(order) // EPOCHS
    epochs = [[feed.get(idx) for idx in order[e * per_epoch:(e + 1) * per_epoch]] for e in range(EPOCHS)]
    val = list(feed.of(splits.val).batches(64))
    evals = list(feed.of(splits.eval_set).batches(cfg.eval.batch_size))
    reg = None if cfg.regularizer.kind == "none" else cfg.regularizer.kind
    return orig.train_one_experiment(model, epochs, val, evals, lr=cfg.optim.lr,
                                     weight_decay=cfg.optim.weight_decay, regularizer=reg,
                                     lam=cfg.regularizer.lam, reference=reference,
                                     floor_ratio=cfg.regularizer.floor_ratio, seed=cfg.seed)


@pytest.mark.parametrize("case", list(CASES))
def test_training_trajectory_equals_the_original_loop(tmp_path, case):
    cfg = _config(tmp_path, case)
    order = _order()
    final = train.run(cfg, tmp_path / "run", batch_order=lambda s: order[s])
    ref = _original(cfg, order)
    points = json.loads((tmp_path / "run" / "history.json").read_text())["points"]
    ours = {p["step"]: p for p in points}
    per_epoch = len(order) // EPOCHS
    # eval points: the original's (after 1, 3, 5, ... updates), plus our accuracy evaluations
    epoch_ends = {per_epoch * (e + 1) for e in range(EPOCHS)}
    assert set(ours) == {p["updates"] for p in ref["points"]} | epoch_ends
    for rp in ref["points"]:
        p = ours[rp["updates"]]
        for m in METRICS:
            np.testing.assert_allclose(p["layers"][m], rp["metrics"][m], atol=ATOL, rtol=0,
                                       err_msg=f"{case} {m} after {rp['updates']} updates")
        if rp["loss"] is not None:  # the loss of the step just taken, as the original logged it
            assert p["train_loss"] == pytest.approx(rp["loss"], rel=ATOL, abs=ATOL), rp["updates"]
            assert p["lr"] == pytest.approx(ref["step_lr"][rp["updates"] - 1], rel=1e-12, abs=0)
    for m in METRICS:  # the original's final metrics: our last point
        np.testing.assert_allclose(points[-1]["layers"][m], ref["final"][m], atol=ATOL, rtol=0, err_msg=m)
    for e, acc in enumerate(ref["val_acc"]):  # per-epoch accuracy on the selection split
        assert ours[per_epoch * (e + 1)]["val_acc"] == acc
    assert final["best_step"] == ref["best_updates"] and final["best_acc"] == ref["best_val_acc"]
    best = load_file(tmp_path / "run" / "checkpoints" / "best.safetensors")
    names = {"vision.": "vision_model.", "projection.": "visual_projection.", "head.": "classifier."}
    for k, v in best.items():
        if k.endswith("k_proj.bias"):
            # Its gradient is 0 in exact arithmetic (a key bias shifts all of a query's logits
            # alike, and softmax ignores a shift): AdamW divides rounding noise by its own
            # root-mean-square, so these weights random-walk by ~lr per step in either loop,
            # without changing any output (the metrics and losses above agree).
            continue
        theirs = ref["best_state"][next(b + k[len(a):] for a, b in names.items() if k.startswith(a))]
        torch.testing.assert_close(v, theirs, atol=ATOL, rtol=0, msg=k)
    # the run trained: the trajectory is not a flat line that any two loops would share
    assert max(abs(a - b) for a, b in zip(points[0]["layers"]["entropy"], points[-1]["layers"]["entropy"])) > 1e-3


def test_default_eval_points_fall_on_multiples_and_average_the_loss(tmp_path):
    # The defaults (not the original's): points after k, 2k, ... updates, each holding the
    # mean loss of the steps since the previous point; the same training underneath.
    cfg = _config(tmp_path, "full").model_copy(update={"eval": EvalConfig(batch_size=8)})
    order = _order()
    train.run(cfg, tmp_path / "run", batch_order=lambda s: order[s])
    ref = _original(cfg, order)
    points = json.loads((tmp_path / "run" / "history.json").read_text())["points"]
    steps = [p["step"] for p in points]
    per_epoch, k = len(order) // EPOCHS, (len(order) // EPOCHS) // 5
    assert steps == sorted(set(range(0, len(order) + 1, k)) | {per_epoch * (e + 1) for e in range(EPOCHS)})
    for prev, p in zip(steps, points[1:]):
        want = float(np.mean(ref["step_loss"][prev:p["step"]]))
        assert p["train_loss"] == pytest.approx(want, rel=ATOL, abs=ATOL), p["step"]
    for m in METRICS:  # the end point is the original's final metrics either way
        np.testing.assert_allclose(points[-1]["layers"][m], ref["final"][m], atol=ATOL, rtol=0, err_msg=m)
