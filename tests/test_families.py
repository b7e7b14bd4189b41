"""Model families: every tiny random preset loads, the probe reads its rows exactly as eager
attention does (per family's query rule and prefix tokens) and differentiably, and the
pipeline (classifier, LoRA, freezing, E1 baseline) runs on each family."""

import json
import math

import pytest
import torch
import transformers

from attncollapse import measure, models
from attncollapse.measure import probe
from attncollapse.train.regularizers import apr

TINY = {"tiny": "clip", "tiny-siglip": "siglip", "tiny-dinov2": "dinov2", "tiny-dinov2-reg": "dinov2-reg",
        "tiny-vit": "vit"}
# (query rule, tokens before the patches) written out by hand from each architecture.
RULES = {"clip": ("first", 1), "siglip": ("mean", 0), "dinov2": ("first", 1), "dinov2-reg": ("first", 5),
         "vit": ("first", 1)}


def _eager_rows(preset: str, x: torch.Tensor, grad: bool = False):
    """Reference canonical rows from eager attention's full (B, H, T, T) maps."""
    model = models.load_model(preset, attn_implementation="eager")
    tower = models.vision_tower(model)
    with torch.set_grad_enabled(grad):
        maps = tower(pixel_values=x, output_attentions=True).attentions
    query, prefix = RULES[TINY[preset]]
    out = []
    for a in maps:
        row = a[:, :, 0] if query == "first" else a.mean(-2)  # (B, H, T)
        mass = row[..., :prefix].sum(-1, keepdim=True)  # [CLS] + registers, or 0 (SigLIP)
        out.append(torch.cat([mass, row[..., prefix:]], -1))
    return torch.stack(out), model


@pytest.mark.parametrize("preset", list(TINY))
def test_family_detected_from_config_and_preset_is_tiny(preset):
    model = models.load_model(preset)
    fam = models.family_of(model)
    assert fam.name == TINY[preset]
    assert type(model).__name__ == fam.model_class
    v = models.vision_config(model.config)
    assert (v.image_size, v.patch_size, v.hidden_size, v.num_hidden_layers, v.num_attention_heads) == (32, 8, 32, 3, 4)
    assert models.image_size(preset) == 32 and models.num_layers(preset) == 3
    spec = probe.spec_of(models.vision_tower(model))
    assert (spec.query, spec.prefix_tokens) == RULES[fam.name]
    # The two stages spell the attribute the same way (measure never imports models).
    assert models.PROBE_SPEC_ATTR == probe.PROBE_SPEC_ATTR


def test_every_family_class_name_exists_in_transformers():
    for fam in models.FAMILIES.values():
        assert hasattr(transformers, fam.model_class), fam.model_class
        module = getattr(transformers, fam.model_class).__module__
        for name in fam.attention:
            assert hasattr(__import__(module, fromlist=[name]), name), (fam.name, name)


def test_unknown_model_type_is_one_line():
    with pytest.raises(ValueError, match="model_type 'bert' is not a known family"):
        models.family_for_type("bert")


@pytest.mark.parametrize("preset", list(TINY))
def test_probe_rows_equal_eager_rows(preset):
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    ref, _ = _eager_rows(preset, x)
    model = models.load_model(preset)  # sdpa, same seeded weights
    tower = models.vision_tower(model)
    rows = measure.cls_rows(tower, x)
    assert rows.shape == ref.shape == (3, 3, 4, 17)
    torch.testing.assert_close(rows, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(rows.sum(-1), torch.ones(3, 3, 4), atol=1e-5, rtol=0)
    assert model.config._attn_implementation == "sdpa"  # restored
    # The E1 table reads the same rows: entropy of renormalised patch rows (by hand).
    table = measure.summarize(rows.detach())
    p = ref[..., 1:] / ref[..., 1:].sum(-1, keepdim=True)
    hand = (-(p * p.log()).sum(-1)).mean((1, 2))
    torch.testing.assert_close(torch.tensor(table["entropy"]), hand, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", list(TINY))
def test_gradients_through_probe_equal_eager_and_apr_trains(preset):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    target = torch.softmax(torch.randn(3, 2, 4, 17), -1)  # a fixed reference distribution
    ref, eager = _eager_rows(preset, x, grad=True)
    apr(ref, target, 1.0).backward()
    model = models.load_model(preset)
    model.train()  # dropout probabilities are 0 in every tiny config
    rows = measure.cls_rows(models.vision_tower(model), x)
    loss = apr(rows, target, 1.0)
    loss.backward()
    for (n, p), (_, q) in zip(models.vision_tower(model).named_parameters(),
                              models.vision_tower(eager).named_parameters()):
        if "q_proj.weight" in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)
    # One SGD step on the rows' loss lowers it: APR trains on this family.
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad
    after = apr(measure.cls_rows(models.vision_tower(model), x), target, 1.0)
    assert after < loss


def test_siglip_pooling_head_rows_match_hand_computation():
    model = models.load_model("tiny-siglip")
    tower = models.vision_tower(model)
    x = torch.randn(2, 3, 32, 32)
    got = probe.pooling_head_rows(tower.head.attention, lambda: tower(pixel_values=x))
    hidden = tower.post_layernorm(tower.encoder(tower.embeddings(x)).last_hidden_state).detach()
    mha, d = tower.head.attention, 32 // 4
    wq, wk, _ = mha.in_proj_weight.split(32)
    bq, bk, _ = mha.in_proj_bias.split(32)
    q = (tower.head.probe @ wq.T + bq).view(1, 1, 4, d).transpose(1, 2)
    k = (hidden @ wk.T + bk).view(2, 16, 4, d).transpose(1, 2)
    hand = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, -1)
    assert got.shape == (2, 4, 1, 16)
    torch.testing.assert_close(got, hand, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", list(TINY))
def test_classifier_lora_and_freezing_on_every_family(preset):
    model = models.load_model(preset)
    clf = models.build_classifier(model, 5)
    assert clf(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    frozen = set(models.freeze_layers(clf, 1))  # the original's A3: the first block only
    assert not any(n.startswith("embeddings.") for n in frozen) and any(".0.attention" in n or ".0.self_attn" in n
                                                                        for n in frozen)
    assert all(".0." in n for n in frozen)
    snap = {n: p.detach().clone() for n, p in clf.vision.named_parameters()}
    opt = torch.optim.SGD([p for p in clf.parameters() if p.requires_grad], lr=0.1)
    torch.nn.functional.cross_entropy(clf(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    opt.step()
    for n, p in clf.vision.named_parameters():
        stem = n.removeprefix("vision_model.")  # SigLIP's tower names from its transformer root
        unused = p.grad is None and stem not in frozen  # DINOv2's mask_token: not in a plain forward
        assert torch.equal(p, snap[n]) == (stem in frozen or unused), n
    assert any(n.removeprefix("vision_model.").startswith("embeddings.") and not torch.equal(p, snap[n])
               for n, p in clf.vision.named_parameters())  # the embeddings trained
    with_emb = set(models.freeze_layers(models.build_classifier(models.load_model(preset), 5), 1, embeddings=True))
    assert frozen < with_emb and all(n.startswith(("embeddings.", "pre_layrnorm.")) for n in with_emb - frozen)
    clf = models.apply_lora(clf, rank=2, targets="qkvo")
    names = [n for n, _ in clf.vision.named_parameters() if "lora_A" in n]
    assert any("q_proj" in n for n in names) and any(("o_proj" in n) or ("out_proj" in n) for n in names)
    # The spec survives PEFT wrapping: the probe still finds 3 layers and the right rule.
    assert len(measure.attention_modules(clf.vision)) == 3
    assert measure.cls_rows(clf.vision, torch.randn(1, 3, 32, 32)).shape == (3, 1, 4, 17)


def test_zeroshot_problem_names_the_reason():
    assert models.zeroshot_problem("tiny") is None
    assert "vision-only" in models.zeroshot_problem("tiny-dinov2")
    assert models.zeroshot_problem("tiny-siglip") is None  # text tower + sigmoid scoring
    with pytest.raises(ValueError, match="CLIP model with a text tower"):
        models.build_classifier(models.load_model("tiny-vit"), 4, text_head=torch.zeros(4, 32))


@pytest.mark.parametrize("preset", list(TINY))
def test_baseline_cli_runs_on_every_family(preset, tmp_path, capsys):
    from attncollapse.cli import main

    out = tmp_path / preset
    assert main(["baseline", "--model", preset, "--data", "synthetic", "--out", str(out),
                 "--zeroshot", "synthetic"]) == 0
    result = json.loads((out / "baseline.json").read_text())
    assert result["family"] == TINY[preset]
    ent = result["layers"]["entropy"]
    # 16 patches: every family's tiny preset attends less than uniformly (ln 16).
    assert len(ent) == 3 and all(0 < e < math.log(16) - 1e-3 for e in ent)
    if preset in ("tiny", "tiny-siglip"):
        assert "synthetic" in result["zeroshot"] and "zeroshot_skipped" not in result
        assert result["transfer_protocol"] == "zeroshot"
    else:
        assert "zero-shot is skipped" in result["zeroshot_skipped"]
        assert "zero-shot is skipped" in capsys.readouterr().out
        # k-NN and the linear probe stand in (tests/test_transfer_families.py).
        assert result["transfer_protocol"] == "knn" and result["zeroshot"]["synthetic"]["acc"] is None


def test_nested_probing_keeps_the_outer_blocks_rule():
    # An eval point (inner block) inside a regularized training loop (outer block) on the
    # same SigLIP tower: after the inner block the outer one still reads mean rows.
    tower = models.vision_tower(models.load_model("tiny-siglip"))
    x = torch.randn(2, 3, 32, 32)
    with measure.probing(tower) as rows:
        tower(pixel_values=x)
        first = measure.stack_rows(rows, 3)
        with measure.probing(tower):
            tower(pixel_values=x)
        rows.clear()
        tower(pixel_values=x)
        again = measure.stack_rows(rows, 3)
    assert again.shape == (3, 2, 4, 17) and torch.equal(first, again)
    assert (again[..., 0] == 0).all()  # SigLIP: no prefix tokens, entry 0 holds no mass


def test_dinov2_with_registers_trains_end_to_end_with_apr(tmp_path):
    from conftest import tiny_run_config

    from attncollapse import train

    cfg = tiny_run_config(model="tiny-dinov2-reg", **{
        "optim.lr": 1e-2, "regularizer.kind": "apr", "regularizer.lam": 0.1,
        "zeroshot.enabled": True, "zeroshot.datasets": ["digits"]})
    final = train.run(cfg, tmp_path / "run")
    assert final["zeroshot"]["digits"]["acc"] is None and "vision-only" in final["zeroshot_skipped"]
    assert final["transfer_acc"] == final["zeroshot"]["digits"]["knn_acc"]  # k-NN stands in
    assert final["final_acc"] > 0.3  # 10 synthetic classes: chance is 0.1
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["points"]) >= 2 and history["num_layers"] == 3
    saved = json.loads((tmp_path / "run" / "final.json").read_text())
    assert saved["zeroshot_skipped"] == final["zeroshot_skipped"]
    # Weight drift per layer at every eval point: 0 at step 0, and at the last point equal
    # to ‖θ − θ₀‖ / ‖θ₀‖ computed by hand from the last checkpoint and the preset.
    first, last = history["points"][0], history["points"][-1]
    assert first["weight_drift"] == [0.0, 0.0, 0.0]
    _, clf, _ = train.load_trained(tmp_path / "run", which="last", device="cpu")
    trained, start = clf.base_vision.state_dict(), models.load_model("tiny-dinov2-reg").state_dict()
    assert last["step"] == final["steps"]
    for i, got in enumerate(last["weight_drift"]):
        keys = [k for k in start if k.startswith(f"encoder.layer.{i}.")]
        num = sum(((trained[k].double() - start[k].double()) ** 2).sum() for k in keys)
        den = sum((start[k].double() ** 2).sum() for k in keys)
        assert got > 0 and abs(got - float((num / den).sqrt())) < 1e-6


def test_weight_drift_of_lora_is_the_merged_weights_drift():
    import copy

    clf = models.apply_lora(models.build_classifier(models.load_model("tiny-vit"), 3), rank=2)
    initial = models.block_weights(clf)
    with torch.no_grad():
        for n, p in clf.vision.named_parameters():
            if "lora_B" in n:
                p.normal_()
    merged = copy.deepcopy(clf.vision).merge_and_unload().state_dict()  # PEFT's own merge
    start = models.load_model("tiny-vit").state_dict()
    got = models.weight_drift(clf, initial)
    for i in range(3):
        keys = [k for k in start if k.startswith(f"layers.{i}.")]
        num = sum(((merged[k] - start[k]).double() ** 2).sum() for k in keys)
        den = sum((start[k].double() ** 2).sum() for k in keys)
        assert abs(got[i] - float((num / den).sqrt())) < 1e-6 and got[i] > 0


def test_families_demo_matrix_expands_to_every_family():
    from attncollapse.config import load_matrix

    planned = load_matrix("configs/families-demo.yaml").expand()
    by_id = {p.id: p.config for p in planned}
    demo = [*TINY, "tiny-siglip2"]  # SigLIP 2 has its own tests (tests/test_siglip2.py)
    assert len(by_id) == 3 * len(demo) == 18
    assert {models.family_of(models.model_config(p)).name for p in demo} == set(models.FAMILIES)
    for preset in demo:
        e2, e4, r1 = (by_id[f"{entry}-{preset}"] for entry in ("E2", "E4", "R1"))
        assert e2.model == e4.model == r1.model == preset
        assert (e2.method, e4.method, e4.lora.rank, r1.regularizer.kind) == ("full", "lora", 4, "apr")


def test_dinov2_checkpoints_are_fed_their_processors_crop_not_the_pretraining_size():
    # DINOv2's config.json names 518 px (pretraining); its processor crops 224 and the model
    # interpolates positions. Feeding 518 would give ~5x the tokens of every other family.
    from transformers import Dinov2Config, Dinov2WithRegistersConfig
    from attncollapse.models import image_size, load_model

    assert image_size(Dinov2Config(image_size=518)) == 224
    assert image_size(Dinov2WithRegistersConfig(image_size=518)) == 224
    assert image_size("tiny-dinov2") == 32  # smaller than the crop: the config's own size
    # and a model with a 518-px config runs on 224-px input (position grid interpolated)
    import torch
    cfg = Dinov2Config(image_size=56, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                       intermediate_size=64)
    model = load_model("tiny-dinov2").__class__(cfg).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(1, 3, 32, 32))
    assert out.last_hidden_state.shape[1] == 1 + (32 // 8) ** 2
