"""Model contracts: presets, local loading, LoRA only touches adapters, freezing holds."""

import torch

from attncollapse import models


def _train_steps(clf, steps=3, lr=1e-2):
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=lr)
    torch.manual_seed(0)
    for _ in range(steps):
        x = torch.randn(8, 3, 32, 32)
        y = torch.randint(0, 5, (8,))
        loss = torch.nn.functional.cross_entropy(clf(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_tiny_preset_shapes_and_local_directory_roundtrip(tmp_path):
    clip = models.load_clip("tiny")
    v = clip.config.vision_config
    assert (v.image_size, v.patch_size, v.hidden_size, v.num_attention_heads, v.num_hidden_layers) == (32, 8, 32, 4, 3)
    # Presets are deterministic: every run starts from the same "pretrained" model.
    again = models.load_clip("tiny")
    torch.testing.assert_close(clip.visual_projection.weight, again.visual_projection.weight)
    clip.save_pretrained(tmp_path / "m")
    loaded = models.load_clip(str(tmp_path / "m"))
    for (n, a), (_, b) in zip(clip.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n


def test_vit_b_32_preset_is_the_paper_architecture():
    cfg = models.PRESETS["vit-b-32-random"]()
    v = cfg.vision_config
    assert (v.image_size, v.patch_size, v.hidden_size, v.num_hidden_layers, v.num_attention_heads) == (224, 32, 768, 12, 12)
    assert cfg.projection_dim == 512


def test_lora_changes_only_adapter_projection_and_head():
    clip = models.load_clip("tiny")
    clf = models.apply_lora(models.build_classifier(clip, 5), rank=4)
    before = {n: p.detach().clone() for n, p in clf.named_parameters()}
    _train_steps(clf)
    changed = {n for n, p in clf.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "nothing trained"
    for n in changed:
        assert "lora_" in n or n.startswith(("head.", "projection.")), n
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    assert not any("lora_" in n for n, _ in clip.text_model.named_parameters())
    assert clf.vision.peft_config["default"].lora_alpha == 8  # alpha = 2·rank


def test_disabled_adapter_equals_base_model_exactly():
    clip = models.load_clip("tiny")
    base = models.load_clip("tiny")
    clf = models.apply_lora(models.build_classifier(clip, 5), rank=2, targets="qkvo")
    _train_steps(clf)
    x = torch.randn(4, 3, 32, 32)
    clf.eval()
    with torch.no_grad(), clf.vision.disable_adapter():
        off = clf.vision(pixel_values=x).pooler_output
    on = clf.vision(pixel_values=x).pooler_output
    ref = base.vision_model(pixel_values=x).pooler_output
    assert torch.equal(off, ref)
    assert not torch.allclose(on, ref)


def test_frozen_layers_stay_bit_identical_and_embeddings_train_by_default():
    # The original's A3: `encoder.layers[i].requires_grad = False` for i < k, nothing else.
    clip = models.load_clip("tiny")
    clf = models.build_classifier(clip, 5)
    frozen = models.freeze_layers(clf, 2)
    layer_params = [n for n, _ in clf.vision.named_parameters() if n.startswith(("encoder.layers.0.",
                                                                                   "encoder.layers.1."))]
    assert sorted(frozen) == sorted(layer_params)  # exactly the first two blocks
    snap = {n: p.detach().clone() for n, p in clf.vision.named_parameters()}
    _train_steps(clf)
    for n, p in clf.vision.named_parameters():
        if n.startswith(("encoder.layers.0.", "encoder.layers.1.")):
            assert torch.equal(p, snap[n]), n
        else:  # embeddings, pre-LayerNorm, layer 2, post-LayerNorm: all trained
            assert not torch.equal(p, snap[n]), n


def test_freeze_embeddings_also_freezes_patch_embedding_and_pre_layernorm():
    clf = models.build_classifier(models.load_clip("tiny"), 5)
    frozen = set(models.freeze_layers(clf, 1, embeddings=True))
    assert {"embeddings.patch_embedding.weight", "embeddings.class_embedding",
            "embeddings.position_embedding.weight", "pre_layrnorm.weight", "pre_layrnorm.bias"} <= frozen
    snap = {n: p.detach().clone() for n, p in clf.vision.named_parameters()}
    _train_steps(clf)
    for n, p in clf.vision.named_parameters():
        assert torch.equal(p, snap[n]) == (n in frozen), n
    # embeddings alone (k = 0) is allowed too
    clf = models.build_classifier(models.load_clip("tiny"), 5)
    assert all(n.startswith(("embeddings.", "pre_layrnorm.")) for n in models.freeze_layers(clf, 0, embeddings=True))
    assert models.freeze_layers(models.build_classifier(models.load_clip("tiny"), 5), 0) == []


def test_freezing_more_layers_than_exist_is_an_error():
    clf = models.build_classifier(models.load_clip("tiny"), 3)
    try:
        models.freeze_layers(clf, 4)
    except ValueError as e:
        assert "4" in str(e) and "3-layer" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_tiny_tokenizer_encodes_prompts_within_vocab():
    tok = models.tiny_tokenizer()
    clip = models.load_clip("tiny")
    enc = tok(["a photo of a cat", "a photo of a golden retriever"], padding=True, return_tensors="pt")
    assert enc.input_ids.max() < clip.config.text_config.vocab_size
    assert (enc.input_ids[:, 0] == 0).all()  # bos
    assert tok.decode(enc.input_ids[0], skip_special_tokens=True).replace(" ", "") == "aphotoofacat"
