"""The transfer stage: prompts and text embeddings, zero-shot (every protocol), WiSE-FT
(`transfer.wise.wise`), k-NN and linear probe on frozen features for every family
(`transfer.representation`), per-run transfer.

Imports `measure`, `models`, `data` and `_device` of attncollapse.
"""

from .for_run import evaluate_for_run
from .representation import (KNN_PROTOCOL, LINEAR_PROBE_PROTOCOL, evaluate_features, frozen_features,
                             knn_accuracy, linear_probe_accuracy, pretrained_classifier, transfer_headline,
                             transfer_sets, wants_features)
from .text import TEMPLATES, TextCache, head_from_text, template_set, text_cache_key, text_embeddings
from .wise import vision_state
from .zeroshot import (as_feeder, evaluate_dataset, evaluate_pretrained, image_features, zeroshot_accuracy,
                       zeroshot_data_cfg)

__all__ = [
    "KNN_PROTOCOL", "LINEAR_PROBE_PROTOCOL", "evaluate_features", "frozen_features", "knn_accuracy",
    "linear_probe_accuracy", "pretrained_classifier", "transfer_headline", "transfer_sets", "wants_features",
    "TEMPLATES", "TextCache", "as_feeder", "evaluate_dataset", "evaluate_for_run", "evaluate_pretrained",
    "head_from_text", "image_features", "template_set", "text_cache_key", "text_embeddings", "vision_state",
    "zeroshot_accuracy", "zeroshot_data_cfg",
]
