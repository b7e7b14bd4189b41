"""Token layout read from the model, never guessed (measure/layout.py).

A tower built with plain transformers (no spec attached by `load_model`) gives the same
rows as the same weights loaded through `load_model`, for every family; the rows match
eager attention read with the family's own layout; an unknown architecture is refused in
one line.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from attncollapse import models
from attncollapse.measure import PROBE_SPEC_ATTR, UnknownLayout, cls_rows, layout_fields, spec_of, summarize
from attncollapse.models.naflex import accept_square_images

# preset → the plain transformers tower class of its family
PLAIN = {
    "tiny": "CLIPVisionModel", "tiny-siglip": "SiglipVisionModel", "tiny-siglip2": "Siglip2VisionModel",
    "tiny-dinov2": "Dinov2Model", "tiny-dinov2-reg": "Dinov2WithRegistersModel", "tiny-vit": "ViTModel",
}


def _plain_tower(preset: str):
    """The preset's vision tower rebuilt from its config with plain transformers, same weights."""
    model = models.load_model(preset)
    tower = models.vision_tower(model)
    cls_name = PLAIN[preset]
    cls = getattr(transformers, cls_name)
    vcfg = models.vision_config(model.config)
    kwargs = {"add_pooling_layer": False} if cls_name == "ViTModel" else {}
    plain = cls(type(vcfg).from_dict(vcfg.to_dict()), **kwargs).eval()
    plain.load_state_dict(tower.state_dict())
    if preset == "tiny-siglip2":
        accept_square_images(plain)  # NaFlex input from square images, as load_model does
    assert not hasattr(plain, PROBE_SPEC_ATTR)
    return tower, plain


@pytest.mark.parametrize("preset", sorted(PLAIN))
def test_plain_transformers_tower_gives_the_rows_of_load_model(preset):
    tower, plain = _plain_tower(preset)
    assert spec_of(plain) == spec_of(tower)  # the config-derived spec equals the model stage's attached one
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = cls_rows(plain, x), cls_rows(tower, x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert summarize(got)["entropy"] == pytest.approx(summarize(want)["entropy"], abs=1e-6)


def _eager_attentions(tower, x):
    tower.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return tower(pixel_values=x, output_attentions=True).attentions
    finally:
        tower.set_attn_implementation("sdpa")


def test_siglip_tower_rows_are_the_mean_query_row_not_patch_0():
    # SigLIP has no [CLS]: a plain SiglipVisionModel's row is the mean over all queries of
    # eager attention, with every token a patch (entry 0 = 0 mass on prefix tokens).
    _, plain = _plain_tower("tiny-siglip")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        rows = cls_rows(plain, x)
    eager = _eager_attentions(plain, x)
    for layer, att in enumerate(eager):  # (B, H, 16, 16)
        want = att.mean(-2)
        assert rows[layer, :, :, 0].abs().max() == 0
        torch.testing.assert_close(rows[layer, :, :, 1:], want, atol=1e-5, rtol=0)


def test_dinov2_registers_are_not_counted_as_patches():
    _, plain = _plain_tower("tiny-dinov2-reg")
    regs = plain.config.num_register_tokens
    assert regs == 4
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        rows = cls_rows(plain, x)
    assert rows.shape[-1] == 1 + 16  # [CLS]+registers, then the 4×4 patches
    for layer, att in enumerate(_eager_attentions(plain, x)):  # (B, H, 21, 21)
        row0 = att[:, :, 0]
        torch.testing.assert_close(rows[layer, :, :, 0], row0[..., :1 + regs].sum(-1), atol=1e-5, rtol=0)
        torch.testing.assert_close(rows[layer, :, :, 1:], row0[..., 1 + regs:], atol=1e-5, rtol=0)


def test_a_peft_wrapped_plain_tower_keeps_its_layout():
    from peft import LoraConfig, get_peft_model

    _, plain = _plain_tower("tiny-dinov2-reg")
    wrapped = get_peft_model(plain, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert spec_of(wrapped).prefix_tokens == 5


def test_unknown_model_type_is_refused_in_one_line():
    cfg = transformers.DeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=4, intermediate_size=64)
    tower = transformers.DeiTModel(cfg, add_pooling_layer=False)
    with pytest.raises(UnknownLayout) as err:
        cls_rows(tower, torch.randn(1, 3, 32, 32))
    msg = str(err.value)
    assert "\n" not in msg and "'deit'" in msg and "DeiTModel" in msg and "spec=" in msg
    with pytest.raises(UnknownLayout):
        layout_fields(None)
