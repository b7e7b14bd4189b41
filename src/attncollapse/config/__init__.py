"""The config stage: the run schema (strict pydantic), YAML loading, checks with located
errors, and matrix expansion (`defaults` + `runs`, sweeps, seeds, `--set`).

Imports `data` and `models` of attncollapse for names only (sources, presets).
"""

from .checks import hub_dataset_id, hub_model_id, model_depth
from .forgetting import FORGETTING_METHODS, ForgettingConfig, InterpolationConfig, grid_warnings, method_name
from .loading import (ConfigError, packaged_configs, parse_assignments, parse_value, read_config_yaml,
                      resolve_config_path)
from .matrix import (MatrixConfig, PlannedRun, format_value, load_matrix, match_only, matrix_from_dict,
                     only_error, only_patterns)
from .prepare import Prepared, prepare
from .schema import (DEFAULTS, DataConfig, EvalConfig, LoraConfig, OptimConfig, RegularizerConfig, RunConfig,
                     ZeroShotConfig, compile_key, config_change, diff_fields, fingerprint,
                     fingerprint_fields)
from .validate import load_run_config, read_recorded_config, run_config_from_dict

__all__ = [
    "FORGETTING_METHODS", "ForgettingConfig", "InterpolationConfig", "grid_warnings", "method_name",
    "ConfigError", "DEFAULTS", "DataConfig", "EvalConfig", "LoraConfig", "MatrixConfig", "OptimConfig",
    "PlannedRun", "Prepared", "RegularizerConfig", "RunConfig", "ZeroShotConfig", "compile_key",
    "config_change", "diff_fields", "fingerprint", "fingerprint_fields", "format_value", "hub_dataset_id",
    "hub_model_id", "load_matrix", "load_run_config", "match_only", "matrix_from_dict", "model_depth",
    "only_error", "only_patterns", "packaged_configs", "parse_assignments", "parse_value", "prepare",
    "read_config_yaml", "read_recorded_config", "resolve_config_path", "run_config_from_dict",
]
