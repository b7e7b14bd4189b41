"""The monitor's input checks: each a one-line error naming the argument and the fix, before any training.

Pixels: a float (N, 3, S, S) tensor of NORMALISED images, `(x / 255 − mean) / std` with the
model's constants. The heuristic that refuses raw pixels: normalisation puts every pixel
darker than the channel mean below zero, so a set of images with no negative value at all is
taken for unnormalised 0–1 or 0–255 pixels; and normalised values stay within about ±3 (CLIP:
−1.8…2.2, ImageNet: −2.1…2.7, SigLIP: −1…1), so a value beyond ±10 is taken for 0–255 pixels.
`check_pixels=False` skips the heuristic (not the dtype and shape checks).
"""

from __future__ import annotations

from torch import Tensor, nn

MAX_NORMALISED = 10.0
"""|value| above which pixels are taken for raw 0–255 ones."""


def pixels(x, *, who: str, arg: str = "pixel_values", check_range: bool = True) -> Tensor:
    """`x` itself when it is a float (N, 3, S, S) tensor of normalised images (N ≥ 1, S × S square).

    Raises:
        ValueError: one line naming `arg`, what is wrong and the fix.
    """
    fix = "pass float images normalised as the model expects, (x / 255 - mean) / std"
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3 or x.shape[0] == 0 or x.shape[2] != x.shape[3]:
        got = f"a tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{who}: {arg} must be a (N, 3, S, S) tensor of N >= 1 square images, got {got}")
    if not x.is_floating_point():
        raise ValueError(f"{who}: {arg} is {str(x.dtype).replace('torch.', '')} (raw pixels); {fix}")
    if check_range:
        lo, hi = float(x.min()), float(x.max())
        if lo >= 0.0 or max(-lo, hi) > MAX_NORMALISED:
            kind = "0-255" if hi > MAX_NORMALISED else "0-1"
            raise ValueError(f"{who}: {arg} looks like unnormalised {kind} pixels (min {lo:.3g}, max {hi:.3g}: "
                             f"normalised images have negative values and stay within ±{MAX_NORMALISED:g}); {fix}, "
                             "or pass check_pixels=False")
    return x


def image_size(tower: nn.Module, size: int, *, who: str, arg: str = "pixel_values") -> None:
    """Refuse images the tower cannot take: another size than its config's fixed position grid.

    DINOv2 interpolates its position embeddings (any multiple of the patch size runs); the
    other families (CLIP, SigLIP, ViT) take exactly `config.image_size`.
    """
    cfg = getattr(tower, "config", None)
    cfg = getattr(cfg, "vision_config", cfg)
    want, patch = getattr(cfg, "image_size", None), getattr(cfg, "patch_size", None)
    if str(getattr(cfg, "model_type", "")).startswith("dinov2"):
        if isinstance(patch, int) and size % patch:
            raise ValueError(f"{who}: {arg} are {size}×{size} pixels, not a multiple of the tower's patch size "
                             f"{patch}; resize them to a multiple of {patch}")
        return
    if isinstance(want, int) and size != want:
        raise ValueError(f"{who}: {arg} are {size}×{size} pixels but the vision tower takes {want}×{want} "
                         f"(its config's image_size); resize the images to {want}×{want}")
