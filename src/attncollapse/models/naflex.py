"""SigLIP 2's NaFlex input, fed from the study's fixed-size square images.

SigLIP 2's vision tower takes pre-patchified pixels: `pixel_values` (B, N, p·p·3) in its
image processor's order (`convert_image_to_patches`: patch rows, patch columns, then
(row-in-patch, column-in-patch, channel)), a `pixel_attention_mask` (B, N) over padding
patches, and `spatial_shapes` (B, 2) = the patch grid each image's position embeddings are
resized to. The rest of the study hands every tower (B, 3, S, S) normalised images
(`vision(pixel_values=x)` in the classifier, the probe, zero-shot, training).

The seam is a forward pre-hook on the tower (`accept_square_images`), put there by
`load_model`: a 4-D `pixel_values` is patchified into the NaFlex layout with
spatial_shapes = (S/p, S/p); inputs already in the NaFlex layout pass through untouched.
A hook rather than a wrapper module keeps the tower's class, parameter names (PEFT,
WiSE-FT interpolation, layer freezing, checkpoints) and `set_attn_implementation`
unchanged, and every caller unchanged. For a square image with no padding the processor's
mask is all ones, which is the same as no mask: the hook passes None, so SDPA keeps its
unmasked fused kernels and the pooling head attends to every patch (tests pin the
equality with the processor's all-ones-mask input).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_HOOKED = "_attncollapse_naflex"


def patchify(pixel_values: Tensor, patch_size: int) -> Tensor:
    """(B, C, S, S) images → (B, (S/p)², p·p·C) patches in SigLIP 2's processor order.

    Raises:
        ValueError: when S is not a multiple of the patch size.
    """
    b, c, h, w = pixel_values.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch_size}: "
                         "resize the images to the model's image_size")
    x = pixel_values.reshape(b, c, h // patch_size, patch_size, w // patch_size, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch_size) * (w // patch_size), -1)


def _square_to_naflex(module: nn.Module, args: tuple, kwargs: dict):
    # Positional or keyword pixel_values; anything but a 4-D image batch is left alone.
    x = kwargs.get("pixel_values", args[0] if args else None)
    if not isinstance(x, Tensor) or x.dim() != 4:
        return None
    p = module.config.patch_size
    patches = patchify(x, p)
    grid = torch.tensor([x.shape[-2] // p, x.shape[-1] // p], device=x.device, dtype=torch.long)
    kwargs = {**kwargs, "pixel_values": patches, "spatial_shapes": grid.expand(x.shape[0], 2),
              "pixel_attention_mask": None}
    return args[1:], kwargs


def accept_square_images(tower: nn.Module) -> nn.Module:
    """Let a SigLIP 2 vision tower take (B, 3, S, S) images (idempotent); returns the tower."""
    if not tower.__dict__.get(_HOOKED):
        tower.register_forward_pre_hook(_square_to_naflex, with_kwargs=True)
        tower.__dict__[_HOOKED] = True
    return tower


def naflex_image_size(vision_config) -> int:
    """The square input size S of a SigLIP 2 tower: its position grid √num_patches × patch."""
    return math.isqrt(int(vision_config.num_patches)) * int(vision_config.patch_size)
