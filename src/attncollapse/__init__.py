"""attncollapse: measure, control and report how fine-tuning reshapes a vision transformer's attention.

The public API a notebook needs, without learning the layout:

    from attncollapse import cls_rows, load_model, summarize
    rows = cls_rows(load_model("tiny").vision_model, pixels)   # (L, B, H, T)
    table = summarize(rows)                                     # per-layer metrics

Names are resolved on first use (PEP 562), so `import attncollapse.analysis` loads no
torch: the analysis stage runs on machines that only read results.
"""

from __future__ import annotations

from typing import Any

_ANALYSIS = {"Matrix", "Run", "by_config", "describe", "select", "load_results"}
_STATS = {"analyze", "anova", "cohens_d", "compare", "correlate", "holm"}
_CONFIG = {"MatrixConfig", "RunConfig", "load_matrix", "load_run_config"}
_DATA = {"load_splits", "synthetic"}
_MEASURE = {"METRICS", "attention_table", "cls_rows", "delta_pct", "entropy", "erf", "gini", "head_diversity",
            "layer_mean", "probing", "summarize"}
_LAB = {"attention_maps", "compare_models", "measure_model"}
_MODELS = {"load_clip", "load_model"}
_STUDY = {"run_matrix", "status"}
_TRAIN = {"baseline", "load_trained", "run"}

__all__ = sorted(_ANALYSIS | _STATS | _CONFIG | _DATA | _LAB | _MEASURE | _MODELS | _STUDY | _TRAIN)


def __getattr__(name: str) -> Any:
    if name in _ANALYSIS:
        from . import analysis
        return analysis.load if name == "load_results" else getattr(analysis, name)
    if name in _STATS:
        from .analysis import stats
        return getattr(stats, name)
    if name in _CONFIG:
        from . import config
        return getattr(config, name)
    if name in _DATA:
        from . import data
        return getattr(data, name)
    if name in _MEASURE:
        from . import measure
        return getattr(measure, name)
    if name in _LAB:
        from . import lab
        return getattr(lab, name)
    if name in _MODELS:
        from . import models
        return getattr(models, name)
    if name in _STUDY:
        from . import study
        return getattr(study, name)
    if name in _TRAIN:
        from . import train
        return getattr(train, name)
    raise AttributeError(f"module 'attncollapse' has no attribute {name!r}")
