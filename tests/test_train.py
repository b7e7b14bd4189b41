"""Engine contracts on the tiny model: learns, regularizers act, resume is exact."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from attncollapse import train
from attncollapse.measure import metrics
from attncollapse.train import step
from attncollapse.data import Feeder, load_splits
from attncollapse.measure import eval_rows
from attncollapse.models import load_clip

from conftest import tiny_run_config


def _final(run_dir):
    return json.loads((run_dir / "final.json").read_text())


def _history(run_dir):
    return json.loads((run_dir / "history.json").read_text())


def test_full_ft_learns_and_writes_every_output(tmp_path):
    cfg = tiny_run_config(**{"optim.epochs": 3})
    out = train.run(cfg, tmp_path / "r")
    assert out["best_acc"] > 0.3  # 10 classes: chance is 0.1
    hist = _history(tmp_path / "r")
    spe = hist["steps_per_epoch"]
    assert spe == 8 and hist["total_steps"] == 24
    steps = [p["step"] for p in hist["points"]]
    assert steps[0] == 0 and steps[-1] == 24 and steps == sorted(steps)
    assert hist["points"][0]["train_loss"] is None
    # Δ% is computed from the step-0 and last points.
    ent0 = np.mean(hist["points"][0]["layers"]["entropy"])
    ent1 = np.mean(hist["points"][-1]["layers"]["entropy"])
    assert out["delta_pct"]["entropy"] == pytest.approx(100 * (ent1 - ent0) / ent0)
    for name in ["config.yaml", "env.json", "history.json", "final.json", "overlays.npz"]:
        assert (tmp_path / "r" / name).is_file(), name
    assert list((tmp_path / "r" / "tb").iterdir())
    env = json.loads((tmp_path / "r" / "env.json").read_text())
    assert env["torch"] and env["transformers"] and env["peft"]
    ov = np.load(tmp_path / "r" / "overlays.npz")
    assert ov["initial"].shape == ov["final"].shape == (3, 4, 4, 17)
    # Each point records the lr of the last update before it.
    assert hist["points"][-1]["lr"] == pytest.approx(train.lr_at(23, 24, cfg.optim.lr, 0.05))


def test_lr_schedule_matches_warmup_cosine():
    assert train.lr_at(0, 100, 1.0, 0.05) == 0.0
    assert train.lr_at(5, 100, 1.0, 0.05) == pytest.approx(1.0)
    assert train.lr_at(52, 100, 1.0, 0.05) == pytest.approx(0.5 * (1 + np.cos(np.pi * 47 / 95)))
    assert train.lr_at(100, 100, 1.0, 0.05) == pytest.approx(0.0, abs=1e-12)


def _kl_to_initial(run_dir, cfg):
    """Mean KL(final ‖ initial) of the eval-subset rows, from a rebuilt model."""
    clip, clf, _ = train.load_trained(run_dir, which="last", device="cpu")
    splits = load_splits(cfg.dataset, cfg.data, image_size=32)
    feed = Feeder(splits.eval_set, "cpu")
    final = eval_rows(clf.vision, feed, batch_size=32, precision="fp32")
    initial = eval_rows(load_clip("tiny").vision_model, feed, batch_size=32, precision="fp32")
    p, q = metrics.patch_rows(final), metrics.patch_rows(initial)
    return (p * (p.log() - q.log())).sum(-1).mean().item()


def test_apr_keeps_attention_closer_to_pretrained(tmp_path):
    common = {"optim.lr": 3e-3, "optim.epochs": 2}
    plain = tiny_run_config(**common)
    reg = tiny_run_config(**common, **{"regularizer.kind": "apr", "regularizer.lam": 50.0})
    train.run(plain, tmp_path / "plain")
    train.run(reg, tmp_path / "apr")
    kl_plain, kl_reg = _kl_to_initial(tmp_path / "plain", plain), _kl_to_initial(tmp_path / "apr", reg)
    assert kl_reg < 0.5 * kl_plain, (kl_reg, kl_plain)


def test_entropy_floor_keeps_entropy_higher(tmp_path):
    common = {"optim.lr": 1e-2, "optim.epochs": 2}
    plain = train.run(tiny_run_config(**common), tmp_path / "plain")
    reg = train.run(tiny_run_config(**common, **{"regularizer.kind": "entropy_floor", "regularizer.lam": 50.0,
                                                 "regularizer.floor_ratio": 1.0}), tmp_path / "floor")
    assert plain["delta_pct"]["entropy"] < 0
    assert reg["delta_pct"]["entropy"] > plain["delta_pct"]["entropy"]


class _Crash(Exception):
    pass


def _crash_at(step):
    """A `before_step` hook that kills the run before optimisation step `step`."""
    def hook(s):
        if s == step:
            raise _Crash(f"killed at step {s}")
    return hook


@pytest.mark.parametrize("overrides", [
    {},  # full FT with flips
    {"method": "lora", "lora.rank": 2, "regularizer.kind": "apr", "regularizer.lam": 1.0},  # dropout RNG + probe
])
def test_interrupt_and_resume_equals_uninterrupted(tmp_path, monkeypatch, overrides):
    cfg = tiny_run_config(**{"checkpoints_per_epoch": 2, **overrides})
    ref = train.run(cfg, tmp_path / "ref")
    with pytest.raises(_Crash):  # after the step-8 checkpoint, before the step-12 one
        train.run(cfg, tmp_path / "cut", before_step=_crash_at(11))
    assert not (tmp_path / "cut" / "final.json").exists()
    got = train.run(cfg, tmp_path / "cut")
    for key in ["best_acc", "final_acc", "best_step", "delta_pct", "final", "initial",
                "structure_initial", "structure_final", "structure_summary"]:
        assert got[key] == ref[key], key
    assert [p["train_loss"] for p in _history(tmp_path / "cut")["points"]] == \
           [p["train_loss"] for p in _history(tmp_path / "ref")["points"]]
    # The structure measures after the resume use a pretrained reference recomputed from the
    # weights before the checkpoint loaded: every point equals the uninterrupted run's.
    cut, full = _history(tmp_path / "cut")["points"], _history(tmp_path / "ref")["points"]
    assert [p["structure"] for p in cut] == [p["structure"] for p in full]
    assert full[-1]["structure"]["cka"] != full[0]["structure"]["cka"]  # they did move
    from attncollapse.train.evalmaps import read_store  # the explorer's maps of every eval point, too

    m_cut, m_ref = read_store(tmp_path / "cut" / "evalmaps.npz"), read_store(tmp_path / "ref" / "evalmaps.npz")
    assert m_cut["steps"].tolist() == [p["step"] for p in full] and np.array_equal(m_cut["maps"], m_ref["maps"])
    a = load_file(tmp_path / "ref" / "checkpoints" / "step-000000016" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoints" / "step-000000016" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_checkpoint_is_skipped_for_the_one_before(tmp_path, monkeypatch):
    cfg = tiny_run_config(**{"checkpoints_per_epoch": 2, "keep_checkpoints": 3})
    ref = train.run(cfg, tmp_path / "ref")
    with pytest.raises(_Crash):
        train.run(cfg, tmp_path / "cut", before_step=_crash_at(13))
    newest = tmp_path / "cut" / "checkpoints" / "step-000000012" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # half-written
    with pytest.warns(UserWarning, match="skipping checkpoint step-000000012"):
        got = train.run(cfg, tmp_path / "cut")
    assert got["final"] == ref["final"] and got["best_acc"] == ref["best_acc"]


def test_resume_with_a_different_config_is_refused(tmp_path, monkeypatch):
    cfg = tiny_run_config()
    with pytest.raises(_Crash):
        train.run(cfg, tmp_path / "r", before_step=_crash_at(10))
    other = tiny_run_config(**{"optim.lr": 5e-4, "optim.weight_decay": 0.1})
    with pytest.raises(train.ConfigMismatch, match="optim.lr, optim.weight_decay"):
        train.run(other, tmp_path / "r")


def test_nan_loss_stops_with_a_recorded_error(tmp_path, monkeypatch):
    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(train.TrainingDiverged, match="diverged"):
        train.run(tiny_run_config(), tmp_path / "r")
    assert "diverged" in (tmp_path / "r" / "error.txt").read_text()
    assert not (tmp_path / "r" / "final.json").exists()


def test_lora_run_checkpoints_only_adapters_projection_and_head(tmp_path):
    cfg = tiny_run_config(method="lora", **{"lora.rank": 2})
    train.run(cfg, tmp_path / "r")
    saved = load_file(tmp_path / "r" / "checkpoints" / "best.safetensors")
    assert all("lora_" in k or k.startswith(("head.", "projection.")) for k in saved)
    clip, clf, _ = train.load_trained(tmp_path / "r", device="cpu")
    base = load_clip("tiny")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), clf.vision.disable_adapter():
        assert torch.equal(clf.vision(pixel_values=x).pooler_output, base.vision_model(pixel_values=x).pooler_output)


def test_frozen_layers_unchanged_after_a_run(tmp_path):
    cfg = tiny_run_config(freeze_layers=2)
    train.run(cfg, tmp_path / "r")
    saved = load_file(tmp_path / "r" / "checkpoints" / "best.safetensors")
    assert not any(k.startswith(("vision.encoder.layers.0.", "vision.encoder.layers.1.")) for k in saved)
    # the original's A3: the embeddings and the pre-LayerNorm keep training
    assert any(k.startswith("vision.encoder.layers.2.") for k in saved)
    assert {"vision.embeddings.patch_embedding.weight", "vision.pre_layrnorm.weight"} <= set(saved)
    _, clf, _ = train.load_trained(tmp_path / "r", device="cpu")
    base = load_clip("tiny").vision_model
    assert torch.equal(clf.vision.encoder.layers[1].mlp.fc1.weight, base.encoder.layers[1].mlp.fc1.weight)
    assert not torch.equal(clf.vision.encoder.layers[2].mlp.fc1.weight, base.encoder.layers[2].mlp.fc1.weight)
    assert not torch.equal(clf.vision.embeddings.patch_embedding.weight, base.embeddings.patch_embedding.weight)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_cached_apr_reference_equals_the_online_forward(method):
    cfg = tiny_run_config(method=method, **{"lora.rank": 2, "regularizer.kind": "apr", "regularizer.lam": 1.0})
    splits = load_splits(cfg.dataset, cfg.data, image_size=32)
    feed = Feeder(splits.train, "cpu")
    clip, clf = train.build(cfg, splits.train.num_classes, torch.device("cpu"))
    ref_vision = None
    if method == "full":
        import copy
        ref_vision = copy.deepcopy(clf.vision).requires_grad_(False).eval()
    cache = step.ReferenceRows.build(clf, ref_vision, feed, hflip=True, batch_size=100, precision="fp32")
    # Train the live model away from the reference: the table must still be the pretrained one.
    with torch.no_grad():
        for n, p in clf.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    idx = torch.tensor([5, 17, 3, 200])
    flip = torch.tensor([True, False, True, False])
    x, _ = feed.get(idx, flip=flip)
    from attncollapse.measure.probe import probing
    with probing(clf.vision) as rows:
        online = step.reference_rows(clf, ref_vision, x, rows, 3)
    torch.testing.assert_close(cache.lookup(idx, flip), online, atol=1e-6, rtol=1e-5)
    assert cache.table.shape == (2, len(feed), 3, 4, 17)


@pytest.mark.parametrize("scope,reg", [
    ("model", {}), ("model", {"regularizer.kind": "entropy_floor", "regularizer.lam": 5.0}),
    ("layers", {}), ("layers", {"regularizer.kind": "apr", "regularizer.lam": 5.0}),
])
def test_compiled_step_matches_the_plain_step(tmp_path, scope, reg):
    # The speed path (torch.compile of the forward/backward as one graph or layer by layer,
    # probe hooks included; on GPU with CUDA graphs) must train to the eager path's numbers.
    from torch._dynamo.utils import counters
    plain = train.run(tiny_run_config(**{"optim.epochs": 1, **reg}), tmp_path / "plain")
    before = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    fast = train.run(tiny_run_config(**{"optim.epochs": 1, "optim.compile": "default",
                                        "optim.compile_scope": scope, **reg}), tmp_path / "compiled")
    assert counters["stats"]["unique_graphs"] - before == 1  # one graph (per layer: the same one), no break
    assert fast["best_acc"] == plain["best_acc"]
    for metric in plain["final"]:
        np.testing.assert_allclose(fast["final"][metric], plain["final"][metric], atol=1e-5)
    losses = lambda d: [p["train_loss"] for p in _history(d)["points"][1:]]  # noqa: E731
    np.testing.assert_allclose(losses(tmp_path / "compiled"), losses(tmp_path / "plain"), rtol=1e-4)


def test_eval_point_does_not_depend_on_the_forward_batch():
    # Eval points run the eval subset in big forward passes (speed); the table must equal
    # the one from the reports' batches of 32, and the diversity grouping must stay at
    # eval.batch_size (a different grouping gives a different table).
    from attncollapse.measure import attention_table, summarize_rows
    cfg = tiny_run_config(**{"data.eval_subset_size": 70, "eval.batch_size": 32})
    splits = load_splits(cfg.dataset, cfg.data, image_size=32)
    feed = Feeder(splits.eval_set, "cpu")
    vision = load_clip("tiny").vision_model
    small = eval_rows(vision, feed, batch_size=32, precision="fp32")
    big = eval_rows(vision, feed, batch_size=256, precision="fp32")
    torch.testing.assert_close(big, small, atol=1e-6, rtol=1e-5)
    table = attention_table(vision, feed, **cfg.eval.metric_options())
    ref = summarize_rows(small, **cfg.eval.metric_options())
    for m in ref:
        np.testing.assert_allclose(table[m], ref[m], atol=1e-6)
    regrouped = summarize_rows(small, **{**cfg.eval.metric_options(), "group_size": 35})
    assert not np.allclose(regrouped["head_diversity"], ref["head_diversity"], atol=1e-6)


def test_a_worker_process_compiles_each_new_kind_and_reuses_a_repeated_one(tmp_path):
    # One worker runs many runs. Dynamo keeps at most `recompile_limit` graphs per function
    # and silently runs eager past it; with the limit at 1 here, a second kind of run
    # would be eager unless the engine starts it from a fresh compile cache.
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    graphs = lambda: counters["stats"]["unique_graphs"]  # noqa: E731
    runs = [("full", {}), ("lora", {"method": "lora", "lora.rank": 2}),
            ("lora, other lr", {"method": "lora", "lora.rank": 2, "optim.lr": 5e-3})]
    new = {}
    with torch._dynamo.config.patch(recompile_limit=1):
        for name, over in runs:
            before = graphs()
            train.run(tiny_run_config(**{"optim.epochs": 1, "optim.compile": "default", **over}), tmp_path / name)
            new[name] = graphs() - before
    assert new == {"full": 1, "lora": 1, "lora, other lr": 0}


def test_compiled_lora_run_with_dropout_resumes_exactly(tmp_path, monkeypatch):
    # The speed path and resume together: compiled forward/backward, LoRA dropout drawn
    # inside the compiled graph (its seeds come from the checkpointed RNG), APR probe rows.
    cfg = tiny_run_config(**{"checkpoints_per_epoch": 2, "method": "lora", "lora.rank": 2, "lora.dropout": 0.2,
                             "regularizer.kind": "apr", "regularizer.lam": 1.0, "optim.compile": "default"})
    ref = train.run(cfg, tmp_path / "ref")
    with pytest.raises(_Crash):
        train.run(cfg, tmp_path / "cut", before_step=_crash_at(11))
    got = train.run(cfg, tmp_path / "cut")
    for key in ["best_acc", "final_acc", "best_step", "final"]:
        assert got[key] == ref[key], key
    assert [p["train_loss"] for p in _history(tmp_path / "cut")["points"]] == \
           [p["train_loss"] for p in _history(tmp_path / "ref")["points"]]
