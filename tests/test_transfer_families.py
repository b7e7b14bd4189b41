"""Transfer for every family: k-NN and linear probe vs independent computations, the
numbers a vision-only run and E1 record, and `method: linear_probe` as the "no collapse" run.

Tiny random presets, synthetic images and scikit-learn's bundled digits; nothing downloads.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from attncollapse import data, models, train
from attncollapse.analysis.table import results_row
from attncollapse.config import DataConfig, RunConfig, ZeroShotConfig
from attncollapse.transfer import representation as rep
from conftest import tiny_run_config

T = rep.KNN_TEMPERATURE


def _clusters(n: int, classes: int = 5, dim: int = 16, seed: int = 0):
    """Unit features around `classes` random centres (overlapping: accuracy is not trivial)."""
    centres = np.random.default_rng(42).normal(size=(classes, dim))  # shared by train and test
    g = np.random.default_rng(seed)
    y = g.integers(0, classes, n)
    x = centres[y] + 1.5 * g.normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def _knn_numpy(xtr, ytr, xte, classes, k=20):
    """DINO's weighted vote, one test row at a time."""
    out = []
    for row in xte:
        sims = xtr @ row
        top = np.argsort(-sims)[:k]
        votes = np.zeros(classes)
        for j in top:
            votes[ytr[j]] += np.exp(sims[j] / T)
        out.append(int(np.argmax(votes)))
    return np.asarray(out)


def test_knn_equals_numpy_brute_force_and_sklearn():
    xtr, ytr = _clusters(300, seed=0)
    xte, yte = _clusters(120, seed=1)
    ours = rep.knn_predict(torch.tensor(xtr, dtype=torch.float64), torch.tensor(ytr),
                           torch.tensor(xte, dtype=torch.float64), num_classes=5, chunk=50).numpy()
    np.testing.assert_array_equal(ours, _knn_numpy(xtr, ytr, xte, 5))
    # scikit-learn's brute-force k-NN with cosine distance d = 1 - cos and weights exp(cos / T).
    sk = KNeighborsClassifier(n_neighbors=20, metric="cosine", algorithm="brute",
                              weights=lambda d: np.exp((1 - d) / T)).fit(xtr, ytr)
    np.testing.assert_array_equal(ours, sk.predict(xte))
    acc = rep.knn_accuracy(torch.tensor(xtr), ytr, torch.tensor(xte), yte, num_classes=5)
    assert acc == (sk.predict(xte) == yte).sum() / len(yte)
    assert 0.3 < acc < 1.0  # between chance (0.2) and perfect: the test can tell votes apart


def test_knn_with_fewer_train_images_than_k_uses_them_all():
    xtr, ytr = _clusters(7, seed=2)
    xte, _ = _clusters(9, seed=3)
    ours = rep.knn_predict(torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xte), num_classes=5).numpy()
    np.testing.assert_array_equal(ours, _knn_numpy(xtr, ytr, xte, 5, k=7))


def test_linear_probe_equals_sklearn_on_digits():
    d = load_digits()
    x = d.data / np.linalg.norm(d.data, axis=1, keepdims=True)
    xtr, ytr, xte, yte = x[:1200], d.target[:1200], x[1200:], d.target[1200:]
    ours = rep.linear_probe_accuracy(torch.tensor(xtr, dtype=torch.float32), ytr,
                                     torch.tensor(xte, dtype=torch.float32), yte)
    ref = LogisticRegression(C=1.0, max_iter=1000).fit(xtr.astype(np.float32).astype(np.float64), ytr)
    assert ours == (ref.predict(xte.astype(np.float32).astype(np.float64)) == yte).mean()
    assert ours > 0.85  # a working probe on digits pixels


def test_linear_probe_with_one_class_is_one_line():
    with pytest.raises(ValueError, match="at least two classes"):
        rep.linear_probe_accuracy(torch.ones(4, 3), [0, 0, 0, 0], torch.ones(2, 3), [0, 0])


def _manual_features(model, images) -> np.ndarray:
    """Each family's image feature by hand: ViT the final-LN [CLS] token, DINOv2 its pooler,
    CLIP the projected pooler; L2-normalised. Pixels normalised with the family's constants."""
    mean, std = models.normalization(model)
    feeder = data.Feeder(images, "cpu", mean=mean, std=std)
    x = feeder.get(torch.arange(len(images)))[0]
    fam = models.family_of(model).name
    with torch.no_grad():
        if fam == "vit":
            f = model(pixel_values=x).last_hidden_state[:, 0]
        elif fam == "clip":
            f = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
        else:
            f = model(pixel_values=x).pooler_output
    return torch.nn.functional.normalize(f.float(), dim=-1).numpy()


@pytest.mark.parametrize("preset", ["tiny", "tiny-dinov2", "tiny-vit", "tiny-siglip"])
def test_frozen_features_are_the_family_pooling(preset):
    model = models.load_model(preset)
    images = data.synthetic(12, 3, 32, split="test")
    before = torch.get_rng_state()
    clf = rep.pretrained_classifier(model)
    assert torch.equal(before, torch.get_rng_state())  # the unused head leaves the RNG alone
    norm = models.normalization(model)
    got = rep.frozen_features(clf, images, device="cpu", batch_size=5, norm=norm).numpy()
    if preset == "tiny-siglip":
        x = data.Feeder(images, "cpu", mean=norm[0], std=norm[1]).get(torch.arange(12))[0]
        with torch.no_grad():
            want = torch.nn.functional.normalize(model.vision_model(pixel_values=x).pooler_output, dim=-1).numpy()
    else:
        want = _manual_features(model, images)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def _independent_scores(model, train_set, test_set):
    ftr, fte = _manual_features(model, train_set), _manual_features(model, test_set)
    classes = train_set.num_classes
    knn = (_knn_numpy(ftr, train_set.labels, fte, classes) == test_set.labels).mean()
    lr = LogisticRegression(C=1.0, max_iter=1000).fit(ftr.astype(np.float64), train_set.labels)
    return knn, (lr.predict(fte.astype(np.float64)) == test_set.labels).mean()


ZS = {"zeroshot.datasets": ["digits"], "zeroshot.max_images": 60, "zeroshot.max_train_images": 150,
      "zeroshot.wise_alphas": [], "zeroshot.enabled": True}


def test_vision_only_run_and_baseline_record_knn_and_linear_probe(tmp_path):
    cfg = tiny_run_config(model="tiny-dinov2", **{"optim.epochs": 1, **ZS})
    final = train.run(cfg, tmp_path / "run")
    block = final["zeroshot"]["digits"]
    assert "vision-only" in final["zeroshot_skipped"] and block["acc"] is None
    assert block["knn_protocol"] == "knn-cosine-k20-T0.07" and block["linear_probe_protocol"] == "logreg-l2-C1.0"
    assert (block["images"], block["train_images"]) == (60, 150)
    # Independent: the digits splits loaded by hand, the trained tower's [CLS] pooler by hand.
    own = DataConfig(split="hub", max_train_images=150, eval_subset_size=2, synthetic_train=256, synthetic_test=128)
    splits = data.load_splits("digits", own, image_size=32)
    test_set = splits.test.subset(np.arange(60))
    _, clf, _ = train.load_trained(tmp_path / "run")
    knn, lr = _independent_scores(clf.base_vision, splits.train, test_set)
    assert block["knn_acc"] == knn and block["linear_probe_acc"] == lr
    assert (final["transfer_acc"], final["transfer_protocol"]) == (knn, "knn")
    row = results_row(cfg.model_dump(mode="json"), final, run_id="E2", group="E2", status="done")
    assert (row["knn_acc"], row["linear_probe_acc"], row["transfer_acc"], row["transfer_protocol"]) == (
        knn, lr, knn, "knn")
    assert row["zeroshot_digits"] is None
    # E1: the pretrained tower's numbers, so that the run's drop can be computed.
    zcfg = ZeroShotConfig(datasets=["digits"], max_images=60, max_train_images=150)
    base = train.baseline("tiny-dinov2", "synthetic", data_cfg=cfg.data, eval_cfg=cfg.eval, out_dir=tmp_path / "e1",
                          zeroshot_cfg=zcfg, device="cpu")
    pre_knn, pre_lr = _independent_scores(models.load_model("tiny-dinov2"), splits.train, test_set)
    assert (base["zeroshot"]["digits"]["knn_acc"], base["zeroshot"]["digits"]["linear_probe_acc"]) == (pre_knn, pre_lr)
    assert (base["transfer_acc"], base["transfer_protocol"]) == (pre_knn, "knn")


def test_linear_probe_method_changes_only_the_head_and_every_delta_is_zero(tmp_path):
    cfg = tiny_run_config(method="linear_probe", dataset="synthetic",
                          **{"optim.lr": 1e-2, **ZS, "zeroshot.feature_transfer": "always"})
    final = train.run(cfg, tmp_path / "lp")
    assert set(final["delta_pct"]) == {"entropy", "erf", "gini", "head_diversity"}
    assert all(v == 0.0 for v in final["delta_pct"].values())
    assert all(v == 0.0 for layer in final["delta_pct_layers"].values() for v in layer)
    assert final["initial"] == final["final"]
    history = json.loads((tmp_path / "lp" / "history.json").read_text())
    assert all(d == 0.0 for pt in history["points"] for d in pt["weight_drift"])
    saved = load_file(tmp_path / "lp" / "checkpoints" / "best.safetensors")
    assert set(saved) == {"head.weight", "head.bias"}
    # Every parameter but the head is bit-identical to the pretrained model's.
    _, clf, _ = train.load_trained(tmp_path / "lp")
    fresh = models.build_classifier(models.load_model("tiny"), 10)
    changed = [n for n, p in clf.named_parameters() if not torch.equal(p, dict(fresh.named_parameters())[n])]
    assert changed == ["head.weight", "head.bias"]
    assert final["trainable_params"] == clf.head.weight.numel() + clf.head.bias.numel()
    assert final["best_acc"] > 0.1  # the head did learn (10 classes)
    # Transfer is the pretrained model's too: zero-shot, k-NN and linear probe equal E1's.
    zcfg = cfg.zeroshot
    base = train.baseline("tiny", "synthetic", data_cfg=cfg.data, eval_cfg=cfg.eval, out_dir=tmp_path / "e1",
                          zeroshot_cfg=zcfg, device="cpu")
    for key in ("acc", "knn_acc", "linear_probe_acc"):
        assert final["zeroshot"]["digits"][key] == base["zeroshot"]["digits"][key], key
    assert (final["transfer_protocol"], final["transfer_acc"]) == ("zeroshot", final["zeroshot_acc"])


def test_linear_probe_with_a_regularizer_is_a_config_error():
    with pytest.raises(ValueError, match="linear_probe freezes the tower"):
        RunConfig(method="linear_probe", regularizer={"kind": "apr", "lam": 0.1})


def test_siglip_zeroshot_equals_the_models_own_sigmoid_logits():
    from attncollapse.transfer import evaluate_pretrained, text

    model = models.load_model("tiny-siglip")
    assert models.zeroshot_problem(model) is None
    with torch.no_grad():  # a trained SigLIP's bias (-10 in the paper's init), not the random 0
        model.logit_bias.fill_(-10.0)
    zcfg = ZeroShotConfig(datasets=["synthetic"], max_images=50)
    dcfg = DataConfig(synthetic_test=64)
    got = evaluate_pretrained(model, "tiny-siglip", zcfg, data_cfg=dcfg, device="cpu")["synthetic"]
    # Independent: SiglipModel's own forward (logit_scale·cos + logit_bias, the sigmoid's
    # argument) on prompts padded to the full length, as transformers' SigLIP docs do.
    test_set = data.load_test_split("synthetic", dcfg, image_size=32).subset(np.arange(50))
    prompts = [f"a photo of a {c}" for c in test_set.with_class_names("raw").class_names]
    ids = models.load_tokenizer("tiny-siglip")(prompts, padding="max_length", truncation=True, max_length=64,
                                               return_tensors="pt")["input_ids"]
    mean, std = models.normalization(model)
    x = data.Feeder(test_set, "cpu", mean=mean, std=std).get(torch.arange(50))[0]
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=x).logits_per_image  # (50, C)
    assert logits.std(1).min() > 0  # prompts fit the 64 positions: classes get different texts
    want = (torch.sigmoid(logits).argmax(1).numpy() == test_set.labels).mean()
    assert got["acc"] == want and got["images"] == 50
    assert text.TEMPLATES["single"] == ["a photo of a {}"]


def test_siglip_run_records_zeroshot_and_transfer(tmp_path):
    cfg = tiny_run_config(model="tiny-siglip", method="lora", **{"optim.epochs": 1, "optim.lr": 1e-2, **ZS,
                                                                 "zeroshot.wise_alphas": [0.0, 1.0]})
    final = train.run(cfg, tmp_path / "run")
    block = final["zeroshot"]["digits"]
    assert "zeroshot_skipped" not in final and "knn_acc" not in block
    assert (final["transfer_protocol"], final["transfer_acc"]) == ("zeroshot", block["acc"])
    base = train.baseline("tiny-siglip", "synthetic", data_cfg=cfg.data, eval_cfg=cfg.eval,
                          out_dir=tmp_path / "e1", zeroshot_cfg=cfg.zeroshot, device="cpu")
    # LoRA with adapters off and WiSE at α = 0 are the pretrained model: E1's accuracy exactly.
    assert block["acc_base_only"] == base["zeroshot"]["digits"]["acc"] == final["wise"][0]["zeroshot_acc"]
    assert final["wise"][1]["zeroshot_acc"] == block["acc"]


@pytest.mark.parametrize("mode, problem, want", [
    ("auto", None, False), ("auto", "vision-only", True), ("always", None, True), ("never", "vision-only", False)])
def test_feature_transfer_modes(mode, problem, want):
    assert rep.wants_features(ZeroShotConfig(feature_transfer=mode), problem) is want
