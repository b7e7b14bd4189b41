"""The forgetting design's run side (docs/FORGETTING_RUNS.md): split protocol, methods,
schedule, signals, record.json, selected-checkpoint finals, interpolation, the demo via the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from attncollapse import _io
from attncollapse.cli import main
from attncollapse.config import RunConfig, load_matrix, matrix_from_dict, prepare
from attncollapse.data import Feeder, balanced_indices, carve_indices, load_splits, synthetic
from attncollapse.measure import cls_rows
from attncollapse.train import build
from attncollapse.train.forgetting import schedule_lr
from attncollapse.train.forgetting_signals import reference, signals
from attncollapse.train.interpolate import set_alpha

AUTHORS = Path(__file__).parent / "data" / "study2" / "results" / "S2_eurosat_lora_r8_lr1e-4_seed7.json"


# --- the authors' split algorithm, transcribed as a plain loop (study2/data_splits.py) --------

def _authors_take(labels, per_class, rng, forbidden):
    picked = []
    for cls in sorted(set(labels.tolist())):
        pool = [int(i) for i in np.flatnonzero(labels == cls) if int(i) not in forbidden]
        rng.shuffle(pool)
        picked.extend(pool[:per_class])
    return picked


def _authors_splits(labels, val, probe, train):
    rng = np.random.RandomState(0)
    used: set[int] = set()
    v = _authors_take(labels, val, rng, used)
    used.update(v)
    p = _authors_take(labels, probe, rng, used)
    used.update(p)
    t = _authors_take(labels, train, rng, used)
    return {"val": sorted(v), "probe": sorted(p), "train": sorted(t)}


def test_carve_matches_the_authors_algorithm_on_a_look_alike():
    rng = np.random.RandomState(5)
    labels = rng.permutation(np.repeat(np.arange(10), rng.randint(215, 260, size=10)))  # EuroSAT-like, unbalanced
    got = carve_indices(labels, [("val", 30), ("probe", 20), ("train", 160)], 0)
    want = _authors_splits(labels, 30, 20, 160)
    for k in want:
        assert got[k].tolist() == want[k]
    assert not set(got["val"]) & set(got["probe"]) and not set(got["probe"]) & set(got["train"])
    # a transfer subset: a fresh RandomState(0), k per class (CIFAR-10's 2k = 200/class)
    rng0 = np.random.RandomState(0)
    assert balanced_indices(labels, 7).tolist() == sorted(_authors_take(labels, 7, rng0, set()))


def test_carve_through_load_splits(tmp_path):
    cfg = RunConfig(dataset="synthetic", data={"split": "carve", "split_seed": 0, "synthetic_train": 300,
                                               "carve": {"val": 3, "probe": 2, "train": 8}, "cache_dir": str(tmp_path)})
    sp = load_splits("synthetic", cfg.data, image_size=32)
    raw = synthetic(300, 10, 32, seed=0, split="train")
    want = _authors_splits(raw.labels, 3, 2, 8)
    assert np.array_equal(sp.train.images, raw.images[want["train"]])
    assert np.array_equal(sp.probe.images, raw.images[want["probe"]])
    assert np.array_equal(sp.val.labels, raw.labels[want["val"]])
    assert (len(sp.train), len(sp.val), len(sp.probe)) == (80, 30, 20)


# --- methods, schedule ------------------------------------------------------------------------

def _trainable(method: str, **kw) -> set[str]:
    cfg = RunConfig(model="tiny", method=method, lora={"rank": 8, "alpha": 16}, **kw)
    _clip, clf = build(cfg, 5, torch.device("cpu"))
    return {n for n, p in clf.named_parameters() if p.requires_grad}


def test_methods_train_what_the_authors_code_trains():
    _clip, plain = build(RunConfig(model="tiny"), 5, torch.device("cpu"))
    names = {n for n, _ in plain.named_parameters()}
    vision = {n for n in names if n.startswith("vision.")}
    proj_head = {"projection.weight", "head.weight", "head.bias"}
    assert _trainable("full") == vision | proj_head
    lora = _trainable("lora")
    adapters = {n for n in lora if ".lora_" in n}
    assert lora == adapters | proj_head and len(adapters) == 3 * 2 * 2  # 3 blocks × (q, v) × (A, B)
    assert all(("q_proj" in n or "v_proj" in n) for n in adapters)
    assert _trainable("lora", freeze_projection=True) == adapters | {"head.weight", "head.bias"}
    last = {n for n in vision if n.startswith(("vision.encoder.layers.2.", "vision.post_layernorm."))}
    assert _trainable("last_block") == last | proj_head  # the code: projection and head train too
    assert _trainable("linear_probe") == {"head.weight", "head.bias"}


def test_schedule_warmup_from_zero_then_cosine():
    peak = 1e-4
    assert schedule_lr(0, 300, peak, 0.05) == 0.0
    assert schedule_lr(7, 300, peak, 0.05) == pytest.approx(peak * 7 / 15)
    assert schedule_lr(15, 300, peak, 0.05) == pytest.approx(peak)  # warmup = int(0.05·300) = 15
    assert schedule_lr(299, 300, peak, 0.05) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 284 / 285)))
    assert schedule_lr(0, 10, peak, 0.05) == 0.0 and schedule_lr(1, 10, peak, 0.05) == pytest.approx(peak)  # max(1, ·)


# --- signals ----------------------------------------------------------------------------------

def test_signals_at_epoch_zero_are_exact_and_entropy_is_the_papers():
    cfg = RunConfig(model="tiny", method="lora", lora={"rank": 8, "alpha": 16})
    _clip, clf = build(cfg, 5, torch.device("cpu"))
    probe = Feeder(synthetic(24, 5, 32, seed=3), "cpu")
    ref = reference(clf, probe, batch_size=10)
    sig = signals(clf, probe, ref, batch_size=7, per_layer=True)
    assert sig["delta_entropy_pct"] == 0.0 and sig["weight_drift_rel"] == 0.0
    assert sig["embedding_drift"] == pytest.approx(0.0, abs=1e-6)
    assert sig["cka_per_layer"] == pytest.approx([1.0] * 3, abs=1e-5)
    # entropy by hand: CLS→patch rows renormalised, nats, mean over heads then images
    x = torch.cat([b for b, _ in probe.batches(24)])
    with torch.no_grad():
        rows = cls_rows(clf.vision, x).double()  # (B, L, H, T) or (L, B, H, T)
    a = rows[..., 1:] / rows[..., 1:].sum(-1, keepdim=True)
    h = -(a * torch.log(a)).sum(-1)
    per_layer = h.mean(-1).mean(1 if h.shape[0] == 3 else 0).tolist()
    assert ref.attention["entropy_per_layer"] == pytest.approx(per_layer, rel=1e-5)
    assert ref.attention["entropy_mean"] == pytest.approx(np.mean(per_layer), rel=1e-5)


# --- the demo through the CLI, and what its records say -----------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("forgetting-demo")
    rc = main(["run", "forgetting-demo", "--out", str(out), "--only", "es-lora-lr0.03-s7,es-full-lr0.03-s7",
               "--set", f"data.cache_dir={out / 'cache'}"])
    assert rc == 0
    return out


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _keys(v, f"{prefix}{k}.")
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            out |= _keys(v[0], f"{prefix}{k}[].")
    return out


def test_record_has_the_authors_keys(demo):
    ours = _io.read_json_checked(demo / "es-lora-lr0.03-s7" / "record.json")
    theirs = json.loads(AUTHORS.read_text())
    # free-named keys: the transfer sets' sizes and the corruption splits
    free = ("baseline.transfer.", "corruption_acc.")
    a = {k for k in _keys(theirs) if not k.startswith(free)}
    b = {k for k in _keys(ours) if not k.startswith(free + ("provenance.",))}
    assert b - a == {"schema", "provenance", "config.backbone", "transfer.cifar100.source", "transfer.cifar10.source"}
    assert a - b == set()
    assert set(ours["baseline"]["transfer"]) == {"cifar100@360", "cifar10@200"}
    assert ours["config"]["method"] == "lora_r8" and ours["config"]["backbone"] == "primary"
    assert ours["schema"] == "attncollapse-forgetting/1" and ours["provenance"]["config"]["seed"] == 7
    assert len(ours["history"]) == ours["config"]["epochs"] == 2


def test_finals_are_read_at_the_selected_checkpoint(demo):
    for rid in ("es-lora-lr0.03-s7", "es-full-lr0.03-s7"):
        rec = _io.read_json_checked(demo / rid / "record.json")
        vals = [h["val_acc"] for h in rec["history"]]
        assert rec["selected_epoch"] == 1 + int(np.argmax(vals))  # first maximum: strict >
        assert rec["best_val_acc"] == max(vals)
        h = rec["history"][rec["selected_epoch"] - 1]
        f = rec["final"]
        for k in ("delta_entropy_pct", "cka_mean", "embedding_drift", "weight_drift_rel"):
            assert f[k] == pytest.approx(h[k], rel=1e-6, abs=1e-9), k
        assert np.mean(f["cka_per_layer"]) == pytest.approx(f["cka_mean"])
        base = rec["baseline"]["attention"]["entropy_mean"]  # ΔH: change of the layer MEAN
        assert f["delta_entropy_pct"] == pytest.approx(100 * (f["attention"]["entropy_mean"] - base) / base)
        t = rec["transfer"]["cifar100"]
        assert t["retention"] == pytest.approx(t["accuracy"] / t["pretrained"])


def test_interpolation_ends_at_pretrained_and_at_the_run(demo):
    for rid in ("es-lora-lr0.03-s7", "es-full-lr0.03-s7"):
        rec = _io.read_json_checked(demo / rid / "record.json")
        sweep = _io.read_json_checked(demo / "interpolation" / f"{rid}__exact.json")["sweep"]
        a0, a1 = sweep[0], sweep[-1]
        assert (a0["alpha"], a1["alpha"]) == (0.0, 1.0)
        assert a0["delta_entropy_pct"] == 0.0 and a0["weight_drift_rel"] == 0.0
        assert a0["cka_mean"] == pytest.approx(1.0, abs=1e-5) and a0["embedding_drift"] == pytest.approx(0, abs=1e-6)
        assert a0["transfer_acc"] == rec["transfer"]["cifar100"]["pretrained"]
        assert a1["test_acc"] == rec["test_acc"] and a1["transfer_acc"] == rec["transfer"]["cifar100"]["accuracy"]
        for k in ("delta_entropy_pct", "cka_mean", "embedding_drift", "weight_drift_rel"):
            assert a1[k] == pytest.approx(rec["final"][k], rel=1e-6, abs=1e-9), k


def test_lora_interpolation_variants_match_merging_by_hand(demo):
    from peft.helpers import rescale_adapter_scale

    from attncollapse.config import read_recorded_config
    from attncollapse.measure import encoder_weights
    from attncollapse.train.forgetting import load_selected

    run = demo / "es-lora-lr0.03-s7"
    cfg = read_recorded_config(run / "config.yaml")
    _clip, clf = build(cfg, 10, torch.device("cpu"))
    w0 = encoder_weights(clf.vision)
    theta0 = {n: p.detach().clone() for n, p in clf.named_parameters()}
    load_selected(run, clf)
    theta1 = {n: p.detach().clone() for n, p in clf.named_parameters()}
    key = "encoder.layers.1.self_attn.q_proj.weight"
    stem = "vision.base_model.model.encoder.layers.1.self_attn.q_proj.lora_{}.default.weight"
    A0, A1, B1 = theta0[stem.format("A")], theta1[stem.format("A")], theta1[stem.format("B")]
    s, alpha = 16 / 8, 0.5
    wk = next(k for k in w0 if k.endswith(key))  # PEFT's prefix, `.base_layer` dropped
    set_alpha(clf, theta0, theta1, alpha, "exact")
    with rescale_adapter_scale(clf.vision, alpha):
        exact = encoder_weights(clf.vision)[wk]
    assert torch.allclose(exact, w0[wk] + alpha * s * B1 @ A1, atol=1e-6)
    set_alpha(clf, theta0, theta1, alpha, "authors")
    authors = encoder_weights(clf.vision)[wk]
    assert torch.allclose(authors, w0[wk] + s * (alpha * B1) @ ((1 - alpha) * A0 + alpha * A1), atol=1e-6)
    assert not torch.allclose(authors, exact, atol=1e-6)  # not a rescaling: A moved


def test_interpolate_cli_and_resume_skips_finished_runs(demo, capsys):
    rc = main(["interpolate", str(demo / "es-full-lr0.03-s7"), "--variant", "authors", "--alphas", "0", "1",
               "--out", str(demo / "cli")])
    assert rc == 0 and "alpha" in capsys.readouterr().out
    assert [r["alpha"] for r in _io.read_json_checked(demo / "cli" / "es-full-lr0.03-s7__authors.json")["sweep"]] == [0, 1]
    before = (demo / "es-full-lr0.03-s7" / "record.json").stat().st_mtime_ns
    assert main(["run", "forgetting-demo", "--out", str(demo), "--only", "es-full-lr0.03-s7",
                 "--set", f"data.cache_dir={demo / 'cache'}"]) == 0
    assert (demo / "es-full-lr0.03-s7" / "record.json").stat().st_mtime_ns == before
    assert main(["interpolate", str(demo / "nope")]) == 2


# --- the matrix --------------------------------------------------------------------------------

def test_real_config_validates_offline_and_has_the_84_runs():
    m = load_matrix("forgetting")
    runs = m.expand()
    assert len(runs) == 84 and sum(r.config.forgetting.backbone == "secondary" for r in runs) == 18
    assert {r.config.data.carve.train for r in runs if r.config.dataset == "pets"} == {40}


def test_confounded_or_incomplete_grid_warns(tmp_path):
    base = {"name": "f", "design": "forgetting", "seeds": [7, 11],
            "defaults": {"model": "tiny", "dataset": "synthetic", "data": {"split": "carve"}}}
    m = {**base, "runs": {"a": {"sweep": {"optim.lr": [1e-3, 1e-2]}}, "b": {"optim": {"lr": 1e-3}}}}
    path = tmp_path / "m.yaml"
    _io.write_yaml(path, m)
    warns = prepare(path).warnings
    assert any("repeats the cell" in w for w in warns)
    m = {**base, "runs": {"a": {"sweep": {"optim.lr": [1e-3, 1e-2]}},
                          "b": {"method": "lora", "sweep": {"optim.lr": [1e-3, 3e-2]}},
                          "c": {"method": "last_block", "optim": {"lr": 1e-3}}}}  # a subset: fine
    _io.write_yaml(path, m)
    warns = prepare(path).warnings
    assert len(warns) == 1 and "incomplete grid" in warns[0] and "full_ft and lora_r8" in warns[0]
    with pytest.raises(Exception, match="data.split"):
        matrix_from_dict({**base, "defaults": {"model": "tiny"}, "runs": {"a": {}}})


# --- corruption splits of an hf: source, and resuming an interrupted run -------------------------

def _eurosat_look_alike(root: Path) -> str:
    """A tiny `save_to_disk` dataset with EuroSAT's layout: train, test and a corrupted split."""
    import datasets as hfd
    from PIL import Image

    rng = np.random.RandomState(0)
    feats = hfd.Features({"image": hfd.Image(), "label": hfd.ClassLabel(names=["annual_crop", "forest", "river"])})

    def split(n):
        labels = [i % 3 for i in range(n)]
        imgs = [Image.fromarray(rng.randint(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in labels]
        return hfd.Dataset.from_dict({"image": imgs, "label": labels}, features=feats)

    hfd.DatasetDict({"train": split(30), "test": split(9), "gaussian_noise": split(12)}).save_to_disk(str(root))
    return f"hf:{root}"


def test_corruptions_and_resume_give_the_same_record(tmp_path, monkeypatch):
    import attncollapse.train.forgetting as fg

    source = _eurosat_look_alike(tmp_path / "eurosat")
    cfg = RunConfig.model_validate({
        "model": "tiny", "dataset": source, "method": "lora", "lora": {"rank": 8, "alpha": 16}, "seed": 7,
        "cpu_threads": 1, "optim": {"lr": 3e-2, "epochs": 2, "batch_size": 4, "precision": "fp32"},
        "data": {"split": "carve", "split_seed": 0, "carve": {"val": 2, "probe": 2, "train": 4},
                 "cache_dir": str(tmp_path / "cache")},
        "forgetting": {"transfer": "digits", "track_per_class": 2, "second_transfer": None,
                       "corruptions": ["gaussian_noise"], "corruption_per_class": 2}})
    whole = fg.run_forgetting(cfg, tmp_path / "whole")
    rec = _io.read_json_checked(tmp_path / "whole" / "record.json")
    assert set(rec["corruption_acc"]) == {"gaussian_noise"} and "cifar10" not in rec["transfer"]
    assert rec["config"]["splits"] == {"train": 12, "val": 6, "probe": 6, "test": 9}

    real = fg._checkpoint

    def stop_after_first(s, opt, epoch, elapsed):
        real(s, opt, epoch, elapsed)
        raise KeyboardInterrupt

    monkeypatch.setattr(fg, "_checkpoint", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        fg.run_forgetting(cfg, tmp_path / "cut")
    monkeypatch.setattr(fg, "_checkpoint", real)
    resumed = fg.run_forgetting(cfg, tmp_path / "cut")
    again = _io.read_json_checked(tmp_path / "cut" / "record.json")
    assert resumed["best_acc"] == whole["best_acc"]
    for a, b in zip(again["history"], rec["history"]):
        assert a == b
    assert again["final"] == rec["final"] and again["corruption_acc"] == rec["corruption_acc"]


def test_the_demo_report_says_it_is_a_pipeline_demonstration_and_the_authors_records_do_not(demo, tmp_path):
    from attncollapse.analysis.forgetting import reanalyse

    rec = json.loads((demo / "es-full-lr0.03-s7" / "record.json").read_text())
    assert rec["provenance"]["model_random_init"] is True
    stats = json.loads((demo / "stats.json").read_text())
    assert stats["demonstration"] == ["the model `tiny` is a randomly initialised preset, not pretrained CLIP",
                                      "the dataset `synthetic` is offline demo data, not the study's"]
    assert "PIPELINE DEMONSTRATION" in (demo / "report.md").read_text().split("## ", 1)[0]
    authors = reanalyse(Path(__file__).parent / "data" / "study2", tmp_path / "re")
    assert authors["demonstration"] == []
    assert "PIPELINE DEMONSTRATION" not in (tmp_path / "re" / "report.md").read_text()
