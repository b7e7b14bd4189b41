"""The model stage: presets as data, loading CLIP, the classifier head, LoRA, freezing.

Imports nothing of attncollapse.
"""

from .clip import (LORA_TARGETS, Classifier, apply_lora, build_classifier, count_parameters, freeze_layers,
                   freeze_projection, image_size, is_peft, load_clip, load_tokenizer, tiny_tokenizer)
from .presets import PRESETS

__all__ = [
    "LORA_TARGETS", "PRESETS", "Classifier", "apply_lora", "build_classifier", "count_parameters",
    "freeze_layers", "freeze_projection", "image_size", "is_peft", "load_clip", "load_tokenizer",
    "tiny_tokenizer",
]
