"""The probe equals eager attention's row 0, trains through, and restores the model."""

import pytest
import torch

from attncollapse.models import Classifier, apply_lora, build_classifier, load_clip
from attncollapse.measure.probe import PROBE, cls_rows, probed_forward, probing


def _eager_row0(vision, x):
    out = vision(pixel_values=x, output_attentions=True)
    return torch.stack([a[:, :, 0] for a in out.attentions])


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_probe_equals_eager_row0_and_restores_implementation(impl):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 32, 32)
    eager = load_clip("tiny", attn_implementation="eager")
    model = load_clip("tiny", attn_implementation=impl)
    text_before = model.text_model.config._attn_implementation
    rows = cls_rows(model.vision_model, x)
    ref = _eager_row0(eager.vision_model, x)
    assert rows.shape == (3, 6, 4, 17) and rows.dtype == torch.float32
    assert (rows - ref).abs().max().item() <= 1e-5
    torch.testing.assert_close(rows.sum(-1), torch.ones(3, 6, 4))
    assert model.vision_model.config._attn_implementation == impl
    assert model.text_model.config._attn_implementation == text_before


def test_probe_keeps_the_fused_output():
    x = torch.randn(4, 3, 32, 32)
    model = load_clip("tiny")
    plain = model.vision_model(pixel_values=x).last_hidden_state
    with probing(model.vision_model) as rows:
        probed = model.vision_model(pixel_values=x).last_hidden_state
        assert model.vision_model.config._attn_implementation == PROBE
        assert len(rows) == 3 and rows[0].shape == (4, 4, 1, 17)
        model.vision_model(pixel_values=x[:2])  # a second forward replaces the rows
        assert len(rows) == 3 and rows[2].shape == (2, 4, 1, 17)
    assert len(rows) == 0  # dropped on exit
    torch.testing.assert_close(probed, plain, atol=1e-6, rtol=1e-5)


def test_probed_forward_gives_each_batch_its_own_rows():
    # The one probed forward loop (eval rows, APR reference rows, cls_rows): batch after
    # batch in one probing block, each call must return that batch's eager row 0.
    torch.manual_seed(1)
    a, b = torch.randn(5, 3, 32, 32), torch.randn(2, 3, 32, 32)
    eager = load_clip("tiny", attn_implementation="eager")
    model = load_clip("tiny")
    with probing(model.vision_model) as rows:
        got_a = probed_forward(model.vision_model, rows, a, 3)
        got_b = probed_forward(model.vision_model, rows, b, 3)
        with pytest.raises(RuntimeError, match="3 rows for a 4-layer"):
            probed_forward(model.vision_model, rows, b, 4)
    torch.testing.assert_close(got_a, _eager_row0(eager.vision_model, a), atol=1e-5, rtol=0)
    torch.testing.assert_close(got_b, _eager_row0(eager.vision_model, b), atol=1e-5, rtol=0)


def test_gradients_flow_through_the_rows():
    model = load_clip("tiny")
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    rows = cls_rows(model.vision_model, x)
    (rows[..., 1:] ** 2).sum().backward()
    q = model.vision_model.encoder.layers[0].self_attn.q_proj.weight
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_probe_on_a_peft_wrapped_tower_sees_the_adapter():
    clip = load_clip("tiny")
    clf = build_classifier(clip, 5)
    x = torch.randn(3, 3, 32, 32)
    before = cls_rows(clf.vision, x)
    apply_lora(clf, rank=2)
    with torch.no_grad():
        for name, p in clf.vision.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    active = cls_rows(clf.vision, x)
    with clf.vision.disable_adapter():
        off = cls_rows(clf.vision, x)
    torch.testing.assert_close(off, before)
    assert (active - before).abs().max() > 1e-4
    assert isinstance(clf, Classifier)
