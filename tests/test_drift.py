"""The forgetting signals (measure/drift.py) against direct computations."""

import numpy as np
import torch

from attncollapse.measure import cka_per_block, embedding_drift, encoder_weights, representations, weight_drift_rel
from attncollapse.models.clip import apply_lora, build_classifier, load_model


def _numpy_cka(x, y):
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def test_embedding_drift_and_cka_match_numpy():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
    cos = (a.numpy() * b.numpy()).sum(1) / (np.linalg.norm(a.numpy(), axis=1) * np.linalg.norm(b.numpy(), axis=1))
    assert abs(embedding_drift(a, b) - (1 - cos.mean())) < 1e-9
    assert embedding_drift(a, a) < 1e-12
    ref, cur = torch.randn(3, 20, 8, generator=g), torch.randn(3, 20, 8, generator=g)
    got = cka_per_block(ref, cur)
    want = [_numpy_cka(r.double().numpy(), c.double().numpy()) for r, c in zip(ref, cur)]
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_weight_drift_merges_lora_and_matches_the_merged_model():
    clf = build_classifier(load_model("tiny", seed=0), 5)
    before = encoder_weights(clf.base_vision)
    apply_lora(clf, rank=4, alpha=8)
    assert weight_drift_rel(before, encoder_weights(clf.base_vision)) == 0.0  # B = 0 at start
    with torch.no_grad():
        for name, p in clf.base_vision.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    now = encoder_weights(clf.base_vision)
    assert now.keys() == before.keys()  # adapter factors dropped, names canonical
    # merged by hand: W + (alpha / rank) · B · A for every adapted linear
    merged = dict(before)
    for name, mod in clf.base_vision.named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            key = f"{name}.weight".replace(".base_layer", "")
            a, b = mod.lora_A["default"].weight.detach().double(), mod.lora_B["default"].weight.detach().double()
            merged[key] = before[key].double() + (8 / 4) * (b @ a)
    num = sum(float((merged[k].double() - before[k].double()).square().sum()) for k in before)
    den = sum(float(before[k].double().square().sum()) for k in before)
    assert abs(weight_drift_rel(before, now) - (num / den) ** 0.5) < 1e-9
    assert weight_drift_rel(before, now) > 0


def test_representations_are_fp32_inside_a_callers_autocast():
    clip = load_model("tiny", seed=0)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    states, emb = representations(clip.vision_model, x, projection=clip.visual_projection, batch_size=4)
    assert states.shape[:2] == (3, 6) and emb.shape == (6, clip.config.projection_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s2, e2 = representations(clip.vision_model, x, projection=clip.visual_projection, batch_size=4)
    assert torch.equal(states, s2) and torch.equal(emb, e2)
    # the last block's [CLS] state is the one the pooled output normalises
    out = clip.vision_model(pixel_values=x, output_hidden_states=True)
    torch.testing.assert_close(states[-1], out.hidden_states[-1][:, 0], rtol=1e-5, atol=1e-5)
