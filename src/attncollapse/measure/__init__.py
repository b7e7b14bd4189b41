"""The measurement stage: the attention probe, the four metrics, eval rows and tables, accuracy.

Works on any vision tower it is handed; imports only `data` and `_device` of attncollapse.
"""

from .drift import cka_per_block, embedding_drift, encoder_weights, weight_drift_rel
from .evaluate import (attention_table, classifier_accuracy, probe_pass, eval_rows, eval_rows_structure, format_table,
                       representations, summarize_rows)
from .layout import LAYOUTS, Layout, UnknownLayout, layout_fields, tower_config
from .metrics import METRICS, delta_pct, entropy, erf, gini, head_diversity, layer_mean, patch_rows, summarize
from .probe import (PROBE, PROBE_SPEC_ATTR, ProbeRows, ProbeSpec, attention_modules, canonical, cls_rows,
                    pooling_head_rows, probed_forward, probing, spec_of, stack_rows)
from .structure import (STRUCTURE, StructureObs, StructureReference, js_divergence, linear_cka, observe,
                        patch_entropy, rollout_rows, structure_run_values, structure_table)

__all__ = [
    "LAYOUTS", "Layout", "cka_per_block", "embedding_drift", "encoder_weights", "representations",
    "weight_drift_rel", "probe_pass",
    "METRICS", "PROBE", "STRUCTURE", "StructureObs", "StructureReference", "eval_rows_structure",
    "js_divergence", "linear_cka", "observe", "patch_entropy", "rollout_rows", "structure_run_values",
    "structure_table", "PROBE_SPEC_ATTR", "ProbeRows", "ProbeSpec", "attention_modules", "attention_table",
    "canonical", "classifier_accuracy", "cls_rows", "delta_pct", "entropy", "erf", "eval_rows",
    "format_table", "gini", "head_diversity", "layout_fields", "layer_mean", "patch_rows", "pooling_head_rows",
    "probed_forward", "probing", "spec_of", "stack_rows", "summarize", "summarize_rows", "tower_config", "UnknownLayout",
]
