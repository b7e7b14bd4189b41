"""Model presets: randomly initialised models built from a config, as plain data (no download).

The tiny presets are the test-sized models of the tests and the demo, one per family
(`tiny` is CLIP); the ViT-B presets have the exact shapes of the real models for speed
studies.
"""

from __future__ import annotations

from typing import Callable

from transformers import (CLIPConfig, CLIPTextConfig, CLIPVisionConfig, Dinov2Config, Dinov2WithRegistersConfig,
                          PretrainedConfig, Siglip2Config, Siglip2TextConfig, Siglip2VisionConfig, SiglipConfig,
                          SiglipTextConfig, SiglipVisionConfig, ViTConfig)

# The test-sized vision transformer of STYLE.md, shared by every family.
_TINY = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4)


def _tiny(layers: int = 3, patch: int = 8) -> CLIPConfig:
    # The test-sized CLIP of STYLE.md (timm's test_vit, transformers' CLIPVisionModelTester):
    # image 32, patch 8 (16 patches), hidden 32, 4 heads, 3 layers.
    vision = CLIPVisionConfig(
        image_size=32, patch_size=patch, hidden_size=32, intermediate_size=64,
        num_hidden_layers=layers, num_attention_heads=4, projection_dim=16,
    )
    text = CLIPTextConfig(
        vocab_size=2 * 256 + 2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=16,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)


def _tiny_6l() -> CLIPConfig:
    # The demo's CLIP: the tiny one with 6 vision layers, so the reports' layer-position test
    # (one-way ANOVA over the early / middle / late thirds of the layers, per run) has two
    # layers per third to compare; 3 layers give one value per third and no test.
    return _tiny(6)


def _tiny_p4() -> CLIPConfig:
    # The tiny CLIP with 4-px patches (64 per image, 4x the tiny's 16): the forgetting demo's
    # stand-in for ViT-B/16 next to `tiny` in the ViT-B/32 role (196 vs 49 patches).
    return _tiny(3, patch=4)


def _vit_b(patch: int) -> Callable[[], CLIPConfig]:
    def make() -> CLIPConfig:
        # CLIPConfig's defaults are exactly openai/clip-vit-base-patch32's architecture.
        return CLIPConfig(vision_config=CLIPVisionConfig(patch_size=patch).to_dict())
    return make

def _tiny_siglip() -> SiglipConfig:
    vision = SiglipVisionConfig(**_TINY, intermediate_size=64)
    text = SiglipTextConfig(vocab_size=2 * 256 + 2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=64,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())


def _tiny_siglip2() -> Siglip2Config:
    # NaFlex has no image_size: the position grid is √num_patches per side (4 × 4 patches of
    # 8 px = the 32 px images of every tiny preset; models.image_size reads it back).
    tiny = {k: v for k, v in _TINY.items() if k != "image_size"}
    vision = Siglip2VisionConfig(**tiny, num_patches=(_TINY["image_size"] // _TINY["patch_size"]) ** 2,
                                 intermediate_size=64)
    text = Siglip2TextConfig(vocab_size=2 * 256 + 2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=64,
                             bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return Siglip2Config(text_config=text.to_dict(), vision_config=vision.to_dict())


# DINOv2's and ViT's default init (std 0.02) leaves a 32-wide random tower's attention
# exactly uniform (entropy ln 16 in every layer), which no metric or regularizer could move
# away from visibly; std 0.2 gives rows as peaked as the tiny CLIP's or sharper.
_PEAKED = 0.2


def _tiny_dinov2() -> Dinov2Config:
    return Dinov2Config(**_TINY, mlp_ratio=2, initializer_range=_PEAKED)


def _tiny_dinov2_reg() -> Dinov2WithRegistersConfig:
    return Dinov2WithRegistersConfig(**_TINY, mlp_ratio=2, num_register_tokens=4, initializer_range=_PEAKED)


def _tiny_vit() -> ViTConfig:
    return ViTConfig(**_TINY, intermediate_size=64, initializer_range=_PEAKED)


PRESETS: dict[str, Callable[[], PretrainedConfig]] = {
    "tiny": _tiny,
    "tiny-6l": _tiny_6l,
    "tiny-p4": _tiny_p4,
    "tiny-siglip": _tiny_siglip,
    "tiny-siglip2": _tiny_siglip2,
    "tiny-dinov2": _tiny_dinov2,
    "tiny-dinov2-reg": _tiny_dinov2_reg,
    "tiny-vit": _tiny_vit,
    "vit-b-32-random": _vit_b(32),  # exact ViT-B/32 shapes, random weights (speed studies)
    "vit-b-16-random": _vit_b(16),
}
