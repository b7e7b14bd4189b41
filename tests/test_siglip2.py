"""SigLIP 2 (NaFlex): the tiny preset loads, its tower takes the study's (B, 3, S, S)
images exactly as SigLIP 2's own image processor would feed it, the probe reads its mean
query rows as eager attention does (values and gradients), and the pipeline (classifier,
LoRA, E1 baseline with zero-shot, a training run) runs on it."""

import json
import math

import numpy as np
import pytest
import torch
from transformers.models.siglip2.image_processing_pil_siglip2 import (Siglip2ImageProcessorPil,
                                                                     convert_image_to_patches)

from attncollapse import measure, models
from attncollapse.measure import probe
from attncollapse.models.naflex import patchify
from attncollapse.train.regularizers import apr

PRESET = "tiny-siglip2"


def _eager_mean_rows(x: torch.Tensor, grad: bool = False):
    """Reference canonical rows: [0, mean over queries of eager's (B, H, T, T) maps]."""
    model = models.load_model(PRESET, attn_implementation="eager")
    with torch.set_grad_enabled(grad):
        maps = models.vision_tower(model)(pixel_values=x, output_attentions=True).attentions
    rows = [a.mean(-2) for a in maps]  # (B, H, T): no [CLS], no prefix tokens
    return torch.stack([torch.cat([torch.zeros_like(r[..., :1]), r], -1) for r in rows]), model


def test_preset_is_tiny_and_family_is_siglip2():
    model = models.load_model(PRESET)
    fam = models.family_of(model)
    assert fam.name == "siglip2" and type(model).__name__ == "Siglip2Model"
    v = models.vision_config(model.config)
    assert (v.num_patches, v.patch_size, v.hidden_size, v.num_hidden_layers, v.num_attention_heads) == (16, 8, 32, 3, 4)
    assert models.image_size(PRESET) == 32 and models.num_layers(PRESET) == 3
    spec = probe.spec_of(models.vision_tower(model))
    assert (spec.query, spec.prefix_tokens, spec.attention) == ("mean", 0, ("Siglip2Attention",))
    proc = Siglip2ImageProcessorPil()  # the published checkpoints' processor defaults
    assert models.normalization(PRESET) == (tuple(proc.image_mean), tuple(proc.image_std))
    assert models.zeroshot_problem(PRESET) is None


def test_patchify_matches_the_image_processors_patch_order():
    x = torch.randn(2, 3, 32, 32)
    got = patchify(x, 8)
    for i in range(2):
        ref = convert_image_to_patches(x[i].numpy(), 8)  # transformers' (16, 8·8·3)
        np.testing.assert_array_equal(got[i].numpy(), ref)
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        patchify(torch.zeros(1, 3, 30, 30), 8)


def test_square_images_give_the_processors_features():
    # The same uint8 images through SigLIP 2's own processor (patches, all-ones mask,
    # spatial shapes) and through the study's path (Feeder-style normalisation, (B, 3, S, S)).
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    proc = Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16, do_resize=False)
    enc = proc([img for img in images], return_tensors="pt")
    assert enc["pixel_attention_mask"].all() and enc["spatial_shapes"].tolist() == [[4, 4], [4, 4]]
    tower = models.vision_tower(models.load_model(PRESET))
    with torch.no_grad():
        ref = tower(pixel_values=enc["pixel_values"], pixel_attention_mask=enc["pixel_attention_mask"],
                    spatial_shapes=enc["spatial_shapes"])
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in models.normalization(PRESET))
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
        ours = tower(pixel_values=x)
    torch.testing.assert_close(ours.last_hidden_state, ref.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.pooler_output, ref.pooler_output, atol=1e-5, rtol=0)


def test_probe_rows_equal_eager_rows():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    ref, _ = _eager_mean_rows(x)
    model = models.load_model(PRESET)
    rows = measure.cls_rows(models.vision_tower(model), x)
    assert rows.shape == ref.shape == (3, 3, 4, 17)
    torch.testing.assert_close(rows, ref, atol=1e-5, rtol=0)
    assert (rows[..., 0] == 0).all()
    assert model.config.vision_config._attn_implementation == "sdpa"  # restored
    # Not uniform: the random tiny tower's rows carry something for the metrics to move.
    assert rows[..., 1:].max() > 1.5 / 16


def test_gradients_through_probe_equal_eager_and_apr_trains():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    target = torch.softmax(torch.randn(3, 2, 4, 17), -1)
    ref, eager = _eager_mean_rows(x, grad=True)
    apr(ref, target, 1.0).backward()
    model = models.load_model(PRESET).train()
    tower = models.vision_tower(model)
    loss = apr(measure.cls_rows(tower, x), target, 1.0)
    loss.backward()
    checked = 0
    for (n, p), (_, q) in zip(tower.named_parameters(), models.vision_tower(eager).named_parameters()):
        if "q_proj.weight" in n or "patch_embedding.weight" in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)
            checked += 1
    assert checked == 4  # 3 layers' q_proj + the patch embedding (gradients reach the pixels' layer)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad
    assert apr(measure.cls_rows(tower, x), target, 1.0) < loss


def test_pooling_head_rows_match_hand_computation():
    tower = models.vision_tower(models.load_model(PRESET))
    x = torch.randn(2, 3, 32, 32)
    got = probe.pooling_head_rows(tower.head.attention, lambda: tower(pixel_values=x))
    hidden = tower(pixel_values=x).last_hidden_state.detach()  # post-LayerNorm tokens
    mha, d = tower.head.attention, 32 // 4
    wq, wk, _ = mha.in_proj_weight.split(32)
    bq, bk, _ = mha.in_proj_bias.split(32)
    q = (tower.head.probe @ wq.T + bq).view(1, 1, 4, d).transpose(1, 2)
    k = (hidden @ wk.T + bk).view(2, 16, 4, d).transpose(1, 2)
    hand = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, -1)
    torch.testing.assert_close(got, hand, atol=1e-5, rtol=0)


def test_classifier_lora_and_freezing():
    clf = models.build_classifier(models.load_model(PRESET), 5)
    x = torch.randn(2, 3, 32, 32)
    assert clf(x).shape == (2, 5)
    frozen = models.freeze_layers(clf, 1)
    assert frozen and all(n.startswith("encoder.layers.0.") for n in frozen)  # the original's A3
    assert any(n.startswith("embeddings.patch_embedding")
               for n in models.freeze_layers(clf, 1, embeddings=True))
    clf = models.apply_lora(clf, rank=2, targets="qkvo")
    names = [n for n, _ in clf.vision.named_parameters() if "lora_A" in n]
    # 3 layers' q_proj; out_proj of the 3 layers plus the pooling head's (as on SigLIP).
    assert sum("q_proj" in n for n in names) == 3 and sum("out_proj" in n for n in names) == 4
    # The PEFT-wrapped tower still takes square images, and the probe still reads 3 layers.
    assert clf(x).shape == (2, 5)
    assert measure.cls_rows(clf.vision, x).shape == (3, 2, 4, 17)


def test_baseline_cli_with_zeroshot(tmp_path):
    from attncollapse.cli import main

    out = tmp_path / "b"
    assert main(["baseline", "--model", PRESET, "--data", "synthetic", "--out", str(out),
                 "--zeroshot", "synthetic"]) == 0
    result = json.loads((out / "baseline.json").read_text())
    assert result["family"] == "siglip2" and result["transfer_protocol"] == "zeroshot"
    ent = result["layers"]["entropy"]
    assert len(ent) == 3 and all(0 < e < math.log(16) - 1e-3 for e in ent)
    acc = result["zeroshot"]["synthetic"]["acc"]
    assert acc is not None and 0 <= acc <= 1


def test_training_run_one_epoch_with_zeroshot(tmp_path):
    from conftest import tiny_run_config

    from attncollapse import train

    cfg = tiny_run_config(model=PRESET, **{"optim.lr": 1e-2, "optim.epochs": 1,
                                           "zeroshot.enabled": True, "zeroshot.datasets": ["digits"]})
    final = train.run(cfg, tmp_path / "run")
    assert final["model_family"] == "siglip2" and "zeroshot_skipped" not in final
    assert final["zeroshot"]["digits"]["acc"] is not None
    assert final["final_acc"] > 0.2  # 10 synthetic classes: chance is 0.1
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["points"]) >= 2 and history["num_layers"] == 3
    last = history["points"][-1]
    assert len(last["weight_drift"]) == 3 and all(d > 0 for d in last["weight_drift"])
    # The saved run reloads as a SigLIP 2 classifier that still takes square images.
    _, clf, _ = train.load_trained(tmp_path / "run", which="last", device="cpu")
    assert type(clf.base_vision).__name__ == "Siglip2VisionModel"
    assert clf(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    start = models.vision_tower(models.load_model(PRESET)).embeddings.patch_embedding.weight
    assert not torch.equal(clf.base_vision.embeddings.patch_embedding.weight, start)  # trained
