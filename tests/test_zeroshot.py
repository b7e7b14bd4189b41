"""Zero-shot transfer: accuracy vs brute force, base-only vs adapter-active, WiSE-FT, caches.

All on the tiny preset (random CLIP, 32 px) and synthetic images; nothing downloads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attncollapse import _io, data, models
from attncollapse.measure import attention_table
from attncollapse.train import posthoc
from attncollapse.transfer import for_run, wise, zeroshot
from attncollapse.transfer import text as text_side
from attncollapse.config import RunConfig, ZeroShotConfig

DEV = "cpu"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The tiny model's matmuls are microseconds; with two intra-op threads on two shared,
    # busy cores each one waits on a descheduled worker (measured 5 ms vs 0.4 s a forward).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def zs_set():
    return data.synthetic(64, 10, 32, split="test")


@pytest.fixture(scope="module")
def eval_set():
    return data.synthetic(40, 10, 32, seed=1, split="test")


def _clip():
    return models.load_clip("tiny")  # same seed every call: identical "pretrained" weights


def _classifier(clip, *, lora=False, seed=0):
    torch.manual_seed(seed)
    clf = models.build_classifier(clip, 10)
    return models.apply_lora(clf, rank=4) if lora else clf


def _perturb(params, seed=1, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * p.std().nan_to_num(1.0).clamp_min(0.05) * torch.randn(p.shape, generator=g))


def _lora_params(clf, kind="lora_B"):
    return [p for n, p in clf.vision.named_parameters() if kind in n]


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------- accuracy

def test_accuracy_matches_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(200, 16, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(12, 16, generator=g), dim=-1)
    labels = torch.randint(0, 12, (200,), generator=g)
    top1 = top5 = 0
    for f, y in zip(feats, labels):
        sims = [float(torch.dot(f, t)) for t in text]
        best = max(range(len(sims)), key=lambda c: sims[c])
        top1 += best == int(y)
        top5 += sum(s > sims[int(y)] for s in sims) < 5
    res = zeroshot.zeroshot_accuracy(feats, labels.numpy(), text)
    assert res == {"acc": top1 / 200, "top5": top5 / 200}
    assert 0 < res["acc"] < res["top5"] < 1


def test_image_features_match_per_image_forward(zs_set):
    clip = _clip()
    clf = _classifier(clip)
    clf.normalize_features = False  # the zero-shot path normalises regardless
    feats = zeroshot.image_features(clf, zs_set, batch_size=32, device=DEV)
    assert feats.shape == (len(zs_set), 16)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(len(zs_set)))
    feeder = data.Feeder(zs_set, DEV)
    with torch.no_grad():
        for i in (0, 17, 63):
            x, _ = feeder.get(torch.tensor([i]))
            ref = torch.nn.functional.normalize(clf.features(x), dim=-1)[0]
            torch.testing.assert_close(feats[i], ref, atol=1e-5, rtol=1e-5)
    # A plain function works too (same features).
    fn_feats = zeroshot.image_features(clf.features, zs_set, batch_size=50, device=DEV)
    torch.testing.assert_close(fn_feats, feats, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- text

def test_text_embeddings_are_mean_of_normalised_prompts():
    clip, tok = _clip(), models.tiny_tokenizer()
    names = ["cat", "dog", "apple"]
    emb = text_side.text_embeddings(clip, tok, names, "ensemble", device=DEV)
    assert emb.shape == (3, 16)
    for c, name in enumerate(names):
        prompts = [t.format(name) for t in text_side.TEMPLATES["ensemble"]]
        with torch.no_grad():
            out = clip.get_text_features(**tok(prompts, padding=True, return_tensors="pt"))
        out = out.pooler_output if hasattr(out, "pooler_output") else out  # both transformers APIs
        ref = torch.nn.functional.normalize(torch.nn.functional.normalize(out, dim=-1).mean(0), dim=-1)
        torch.testing.assert_close(emb[c], ref, atol=1e-5, rtol=1e-5)


def test_templates_single_vs_ensemble():
    assert text_side.TEMPLATES["single"] == ["a photo of a {}"]
    ens = text_side.TEMPLATES["ensemble"]
    assert len(ens) == 18 and len(set(ens)) == 18 and all(t.count("{}") == 1 for t in ens)
    clip, tok = _clip(), models.tiny_tokenizer()
    single = text_side.text_embeddings(clip, tok, ["cat", "dog"], "single", device=DEV)
    ensemble = text_side.text_embeddings(clip, tok, ["cat", "dog"], "ensemble", device=DEV)
    assert not torch.allclose(single, ensemble, atol=1e-4)
    with pytest.raises(ValueError, match="unknown template set"):
        text_side.text_embeddings(clip, tok, ["cat"], "nope", device=DEV)


def test_text_embeddings_computed_once_per_key(tmp_path):
    clip, tok = _clip(), models.tiny_tokenizer()
    calls = []
    clip.text_model.register_forward_hook(lambda *_: calls.append(1))
    names = ["cat", "dog"]
    cache = text_side.TextCache(dir=tmp_path)
    a = text_side.text_embeddings(clip, tok, names, "single", device=DEV, cache=cache)
    b = text_side.text_embeddings(clip, tok, names, "single", device=DEV, cache=cache)
    assert len(calls) == 1 and torch.equal(a, b)
    text_side.text_embeddings(clip, tok, names, "ensemble", device=DEV, cache=cache)  # new template set
    text_side.text_embeddings(clip, tok, ["cat", "cow"], "single", device=DEV, cache=cache)  # new classes
    assert len(calls) == 3
    # Another process: the disk cache answers, the text tower stays idle.
    c = text_side.text_embeddings(clip, tok, names, "single", device=DEV, cache=text_side.TextCache(dir=tmp_path))
    assert len(calls) == 3 and torch.equal(a, c)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    # A different model (another preset seed) is a different key.
    other = models.load_clip("tiny", seed=1)
    assert text_side.text_cache_key(other, names, ["x {}"]) != text_side.text_cache_key(clip, names, ["x {}"])
    # A plain dict is a memory cache.
    memo: dict = {}
    text_side.text_embeddings(clip, tok, names, "single", device=DEV, cache=memo)
    text_side.text_embeddings(clip, tok, names, "single", device=DEV, cache=memo)
    assert len(calls) == 4 and len(memo) == 1


# -------------------------------------------------------------------------- evaluate

def test_lora_base_only_equals_pretrained_adapter_active_differs(zs_set):
    tok, zcfg = models.tiny_tokenizer(), ZeroShotConfig()
    pre = _clip()
    reference = zeroshot.evaluate_dataset(_classifier(pre), pre, tok, zs_set, zcfg, method="full", device=DEV)

    clip = _clip()
    clf = _classifier(clip, lora=True)
    # Untrained LoRA (B = 0) is the base model; a trained one has B ≠ 0 and, in the
    # original study, a trained projection too.
    _perturb(_lora_params(clf), scale=3.0)
    _perturb(clf.projection.parameters(), seed=2)
    block = zeroshot.evaluate_dataset(clf, clip, tok, zs_set, zcfg, method="lora",
                              pretrained_projection=pre.visual_projection, device=DEV)
    assert block["acc_base_only"] == reference["acc"]
    assert block["top5_base_only"] == reference["top5"]
    assert block["acc"] != block["acc_base_only"]
    assert block["templates"] == "single" and block["images"] == len(zs_set)
    # Exactly the pretrained features, not just the same accuracy.
    with clf.vision.disable_adapter():
        base = zeroshot.image_features(clf, zs_set, device=DEV, projection=pre.visual_projection)
    assert torch.equal(base, zeroshot.image_features(_classifier(pre), zs_set, device=DEV))
    active = zeroshot.image_features(clf, zs_set, device=DEV)
    assert not torch.allclose(active, base, atol=1e-3)


def test_full_ft_block_and_frozen_projection(zs_set):
    tok = models.tiny_tokenizer()
    pre, clip = _clip(), _clip()
    clf = _classifier(clip)
    _perturb(clf.parameters())
    block = zeroshot.evaluate_dataset(clf, clip, tok, zs_set, ZeroShotConfig(templates="ensemble", max_images=40),
                              method="full", pretrained_projection=pre.visual_projection, device=DEV)
    assert block["acc_base_only"] is None and block["top5_base_only"] is None
    assert block["templates"] == "ensemble" and block["images"] == 40
    sub = zs_set.subset(np.arange(40))
    text = text_side.text_embeddings(pre, tok, sub.class_names, "ensemble", device=DEV)
    frozen = zeroshot.image_features(clf, sub, device=DEV, projection=pre.visual_projection)
    assert block["acc_frozen_projection"] == zeroshot.zeroshot_accuracy(frozen, sub.labels, text)["acc"]
    assert block["acc"] == zeroshot.zeroshot_accuracy(zeroshot.image_features(clf, sub, device=DEV), sub.labels, text)["acc"]
    with pytest.raises(ValueError, match="no PEFT adapters"):
        zeroshot.evaluate_dataset(clf, clip, tok, zs_set, ZeroShotConfig(), method="lora", device=DEV)


def test_baseline_zero_shot_equals_lora_base_only():
    """baseline.json's pretrained number (E1) is exactly what the reports' protocol gives."""
    data_cfg = RunConfig(data={"synthetic_test": 48}).data
    zcfg = ZeroShotConfig(datasets=["synthetic"])
    pre = _clip()
    base = zeroshot.evaluate_pretrained(pre, "tiny", zcfg, data_cfg=data_cfg, device=DEV)
    assert set(base) == {"synthetic"} and base["synthetic"]["images"] == 48
    clip = _clip()
    clf = _classifier(clip, lora=True)
    _perturb(_lora_params(clf), scale=3.0)
    _perturb(clf.projection.parameters(), seed=2)
    test = data.load_test_split("synthetic", data_cfg, image_size=32)
    block = zeroshot.evaluate_dataset(clf, clip, models.tiny_tokenizer(), test, zcfg, method="lora",
                              pretrained_projection=pre.visual_projection, device=DEV)
    assert (block["acc_base_only"], block["top5_base_only"]) == (base["synthetic"]["acc"], base["synthetic"]["top5"])


def test_head_from_text():
    clip = _clip()
    head = text_side.head_from_text(clip, "tiny", ["cat", "dog", "cow"], device=DEV)
    ref = text_side.text_embeddings(clip, models.tiny_tokenizer(), ["cat", "dog", "cow"], "ensemble", device=DEV)
    assert torch.equal(head, ref)
    clf = models.build_classifier(clip, 3, text_head=head)  # the shape build_classifier expects
    assert clf.normalize_features
    with pytest.raises(ValueError, match="class names"):
        text_side.head_from_text(clip, "tiny", [], device=DEV)


# ------------------------------------------------------------------------------ WiSE

def _numbers(clf, clip, tok, zs_set, task_set, eval_set):
    """Zero-shot acc, task acc and layer table of a classifier as it stands."""
    text = text_side.text_embeddings(clip, tok, zs_set.class_names, "single", device=DEV)
    zs_acc = zeroshot.zeroshot_accuracy(zeroshot.image_features(clf, zs_set, device=DEV), zs_set.labels, text)["acc"]
    with torch.no_grad():
        x, y = data.Feeder(task_set, DEV).get(torch.arange(len(task_set)))
        task_acc = (clf(x).argmax(-1) == y).sum().item() / len(y)
    layers = attention_table(clf.vision, data.Feeder(eval_set, DEV))
    return zs_acc, task_acc, layers


def _check_point(point, expected):
    zs_acc, task_acc, layers = expected
    assert point["zeroshot_acc"] == pytest.approx(zs_acc, abs=1e-9)
    assert point["task_acc"] == pytest.approx(task_acc, abs=1e-9)
    for k in layers:
        np.testing.assert_allclose(point["layers"][k], layers[k], rtol=1e-5, atol=1e-6)
    assert set(point["mean"]) == {"entropy", "erf", "gini", "head_diversity"}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_wise_endpoints_and_restore(zs_set, eval_set, lora):
    tok = models.tiny_tokenizer()
    task_set = data.synthetic(48, 10, 32, seed=3, split="test")
    pre, clip = _clip(), _clip()
    clf = _classifier(clip, lora=lora)
    _perturb(_lora_params(clf) if lora else clf.vision.parameters(), scale=3.0 if lora else 0.3)
    _perturb(clf.projection.parameters(), seed=2)
    ref_pre = models.Classifier(pre.vision_model, pre.visual_projection, 10)
    ref_pre.head.load_state_dict(clf.head.state_dict())  # the head is kept as trained
    expected0 = _numbers(ref_pre, pre, tok, zs_set, task_set, eval_set)
    expected1 = _numbers(clf, clip, tok, zs_set, task_set, eval_set)
    before = _state(clf)

    points = wise.wise(clf, wise.vision_state(pre), [0.0, 0.5, 1.0], clip=clip, tokenizer=tok,
                       zeroshot_set=zs_set, task_set=task_set, eval_set=eval_set, device=DEV)
    assert [p["alpha"] for p in points] == [0.0, 0.5, 1.0]
    _check_point(points[0], expected0)
    _check_point(points[2], expected1)
    assert points[1]["layers"]["entropy"] != points[0]["layers"]["entropy"]
    _assert_same_state(before, _state(clf))
    assert _numbers(clf, clip, tok, zs_set, task_set, eval_set)[0] == expected1[0]
    if lora:  # adapter scales restored too
        scales = {m.scaling["default"] for m in clf.vision.modules() if hasattr(m, "scaling")}
        assert scales == {2.0}  # alpha / rank = 8 / 4


def test_wise_restores_weights_on_error(zs_set, eval_set, monkeypatch):
    tok = models.tiny_tokenizer()
    pre, clip = _clip(), _clip()
    clf = _classifier(clip)
    _perturb(clf.parameters())
    before = _state(clf)
    calls = []
    real = wise.attention_table

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(wise, "attention_table", failing)  # fail mid-way, at α = 0.3
    with pytest.raises(RuntimeError, match="boom"):
        wise.wise(clf, wise.vision_state(pre), [0.0, 0.3], clip=clip, tokenizer=tok,
                  zeroshot_set=zs_set, task_set=eval_set, eval_set=eval_set, device=DEV)
    _assert_same_state(before, _state(clf))
    with pytest.raises(ValueError, match="does not match"):
        wise.wise(clf, {"vision.x": torch.zeros(1)}, [0.0], clip=clip, tokenizer=tok,
                  zeroshot_set=zs_set, task_set=eval_set, eval_set=eval_set, device=DEV)


# ------------------------------------------------------------------------- run directory

def _fake_run(tmp_path, monkeypatch, *, method):
    """A finished run directory, with stand-ins for loading the trained model and the zero-shot sets."""
    cfg = RunConfig(id="L1", model="tiny", dataset="synthetic", method=method, device="cpu",
                    optim={"precision": "fp32"},
                    data={"synthetic_train": 32, "synthetic_test": 64, "eval_subset_size": 32},
                    zeroshot={"datasets": ["zs_a", "zs_b"], "wise_alphas": [0.0, 1.0], "max_images": 48})
    run = tmp_path / "L1"
    _io.write_yaml(run / "config.yaml", cfg.model_dump(mode="json"))
    _io.write_json(run / "final.json", {"run_id": "L1", "best_acc": 0.5,
                                        "zeroshot": {"old": {"acc": 0.1}}})

    def load_trained(run_dir, *, device="auto"):
        clip = models.load_clip(cfg.model)  # train.build: presets have one fixed init
        clf = _classifier(clip, lora=method == "lora")
        _perturb(_lora_params(clf) if method == "lora" else clf.vision.parameters(), scale=2.0)
        return clip.to(device), clf.to(device), cfg

    def load_test_split(source, data_cfg, *, image_size):
        return data.synthetic(64, 10, image_size, seed={"zs_a": 5, "zs_b": 6}[source], split="test")

    monkeypatch.setattr(posthoc, "load_trained", load_trained)
    monkeypatch.setattr(for_run, "load_test_split", load_test_split)
    return run


@pytest.mark.parametrize("method", ["full", "lora"])
def test_evaluate_run_merges_into_final_json(tmp_path, monkeypatch, method):
    run = _fake_run(tmp_path, monkeypatch, method=method)
    out = posthoc.evaluate_run(run, device="cpu")
    final = _io.read_json(run / "final.json")
    assert final == _io.read_json(run / "final.json") and final["best_acc"] == 0.5
    assert set(final["zeroshot"]) == {"old", "zs_a", "zs_b"}
    assert final["zeroshot"]["zs_a"]["images"] == 48 and final["zeroshot"]["zs_a"]["templates"] == "single"
    assert final["zeroshot_acc"] == final["zeroshot"]["zs_a"]["acc"] == out["zeroshot_acc"]
    assert final["zeroshot"]["zs_a"]["acc_frozen_projection"] is not None
    if method == "lora":
        assert final["zeroshot_acc_base_only"] == final["zeroshot"]["zs_a"]["acc_base_only"]
        # α = 0 is the pretrained model, which is what the base-only pass evaluates.
        assert final["wise"][0]["zeroshot_acc"] == final["zeroshot_acc_base_only"]
    else:
        assert final["zeroshot_acc_base_only"] is None
    assert [w["alpha"] for w in final["wise"]] == [0.0, 1.0]
    assert final["wise"][1]["zeroshot_acc"] == final["zeroshot_acc"]
    if method == "lora":
        return
    # Only zs_b again: zs_a's block stays.
    posthoc.evaluate_run(run, ["zs_b"], device="cpu")
    again = _io.read_json(run / "final.json")
    assert again["zeroshot"]["zs_a"] == final["zeroshot"]["zs_a"]
    assert again["zeroshot_acc"] == final["zeroshot_acc"]  # the headline stays zs_a


def test_evaluate_run_rejects_wrong_pretrained_for_lora(tmp_path, monkeypatch):
    run = _fake_run(tmp_path, monkeypatch, method="lora")
    with pytest.raises(ValueError, match="differs from the LoRA run's base tower"):
        posthoc.evaluate_run(run, device="cpu", pretrained=models.load_clip("tiny", seed=123))


def test_evaluate_run_needs_finished_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="has not finished"):
        posthoc.evaluate_run(tmp_path, device="cpu")


# INTEGRATION with the real train.run / train.load_trained / data.load_test_split.
@pytest.mark.parametrize("method", ["lora", "full"])
def test_evaluate_run_on_a_real_trained_run(tmp_path, method):
    # The run keeps the pretrained tower's state from before its first step (no reload);
    # the CLI path reloads the pretrained model: both must give the same numbers.
    from attncollapse import train

    cfg = RunConfig(id="I1", model="tiny", dataset="synthetic", method=method, device="cpu", lora={"rank": 2},
                    optim={"epochs": 1, "batch_size": 16, "precision": "fp32", "lr": 1e-3},
                    data={"synthetic_train": 32, "synthetic_test": 64, "eval_subset_size": 32},
                    zeroshot={"datasets": ["synthetic"], "max_images": 48, "wise_alphas": [0.0, 1.0]})
    run = tmp_path / cfg.id
    written = train.run(cfg, run)  # its end-of-run zero-shot goes through evaluate_for_run
    final = posthoc.evaluate_run(run, device="cpu")  # the CLI path: reload, evaluate, merge
    block = final["zeroshot"]["synthetic"]
    assert block["images"] == 48 and (block["acc_base_only"] is not None) == (method == "lora")
    assert final["zeroshot"] == written["zeroshot"] and final["wise"] == written["wise"]
    if method == "lora":
        assert final["wise"][0]["zeroshot_acc"] == block["acc_base_only"]  # α = 0 is the pretrained model
    assert final["wise"][1]["zeroshot_acc"] == block["acc"]
