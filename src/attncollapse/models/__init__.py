"""The model stage: presets and families as data, loading any family, the classifier head,
LoRA, freezing. Imports nothing of attncollapse but `_io`.
"""

from .clip import (LORA_TARGETS, PICKLE_REFUSED, Classifier, apply_lora, block_weights, build_classifier,
                   count_parameters, freeze_layers, freeze_projection, from_pretrained_checked, image_size, is_peft,
                   load_clip, load_model, load_tokenizer, model_config, num_layers, pickled_code, tiny_tokenizer,
                   weight_drift, zeroshot_problem)
from .families import (FAMILIES, PROBE_SPEC_ATTR, Family, family_for_type, family_of, feature_dim, image_projection,
                       prefix_tokens, probe_spec, vision_config, vision_tower)
from .normalize import normalization
from .presets import PRESETS

__all__ = [
    "Classifier", "FAMILIES", "Family", "LORA_TARGETS", "PICKLE_REFUSED", "PRESETS", "PROBE_SPEC_ATTR",
    "apply_lora", "block_weights", "build_classifier", "count_parameters", "family_for_type", "family_of",
    "feature_dim", "freeze_layers", "freeze_projection", "from_pretrained_checked", "image_projection",
    "image_size", "is_peft", "load_clip", "load_model", "load_tokenizer", "model_config", "normalization",
    "num_layers", "pickled_code", "prefix_tokens", "probe_spec", "tiny_tokenizer", "vision_config",
    "vision_tower", "weight_drift", "zeroshot_problem",
]
