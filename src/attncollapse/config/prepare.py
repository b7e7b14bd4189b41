"""The one code path of `attncollapse validate` and `attncollapse run`: read a config file,
validate it (types, sources, local paths), and collect the warnings both print.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import collect_warnings, design_warnings
from .forgetting import grid_warnings
from .loading import ConfigError, read_config_yaml, resolve_config_path
from .matrix import MatrixConfig, matrix_from_dict
from .schema import RunConfig
from .validate import run_config_from_dict

# Keys only a matrix has: a file with any of them is read as a matrix (a matrix without
# `runs:` is then told so, not read as a run config with five unknown keys).
_MATRIX_ONLY = ("name", "runs", "defaults", "seeds", "baseline")


@dataclass
class Prepared:
    """A validated config file.

    Attributes:
        path: the file read.
        matrix: the MatrixConfig of a matrix file, else None.
        run: the RunConfig of a single run's config, else None.
        warnings: "<runs>: <sentence>" for legal settings that are likely typos.
    """

    path: Path
    matrix: MatrixConfig | None = None
    run: RunConfig | None = None
    warnings: list[str] = field(default_factory=list)


def is_matrix(data: Any) -> bool:
    return isinstance(data, dict) and any(k in data for k in _MATRIX_ONLY)


def prepare(path: str | Path, overrides: list[str] | tuple = (), *, need_matrix: bool = False) -> Prepared:
    """Read and validate a matrix or run config file exactly as `run` will use it.

    Args:
        path: a YAML file, or a packaged config's name (`paper`, `demo`).
        overrides: `--set key=value` strings.
        need_matrix: refuse a single run's config (what `run` needs is a matrix).

    Raises:
        ConfigError: every problem found, each with its location (FileNotFoundError for a
            path that does not exist).
    """
    path = resolve_config_path(path)
    data, dups = read_config_yaml(path)
    if not isinstance(data, dict):
        found = f"expected a mapping: a matrix (name:, defaults:, runs:) or a run config, found a {type(data).__name__}"
        raise ConfigError([*dups, found], str(path))
    if is_matrix(data) or need_matrix:
        if need_matrix and not is_matrix(data):
            why = "a single run's config, not a matrix: give it as `runs: {<id>: {...}}` under `name:` (see configs/demo.yaml)"
            raise ConfigError([why], str(path))
        matrix = matrix_from_dict(data, overrides=overrides, source=str(path), extra_errors=dups)
        planned = matrix.expand()
        warns = collect_warnings([(r.id, r.config) for r in planned])
        if matrix.design == "controlled":
            warns += design_warnings(planned)
        if matrix.design == "forgetting":
            warns += grid_warnings([(r.id, r.config) for r in planned])
        return Prepared(path, matrix=matrix, warnings=warns)
    cfg = run_config_from_dict(data, overrides=overrides, source=str(path), extra_errors=dups)
    return Prepared(path, run=cfg, warnings=collect_warnings([(cfg.id, cfg)]))
