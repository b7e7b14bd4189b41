"""One RunConfig from a dict: dotted-key access, pydantic's errors as located messages,
the checks pydantic cannot make (sources, model spec, layers to freeze), and the run-config
readers. `matrix.py` builds on these for a whole study.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .. import _io
from .checks import device_problem, dir_setting_problem, model_depth, model_problem, source_problem, synthetic_problems
from .loading import ConfigError, parse_assignments, read_config_yaml
from .schema import DEFAULTS, RunConfig


def _sub_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    field = model.model_fields.get(name)
    ann = getattr(field, "annotation", None)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def key_problem(path: str) -> str | None:
    """None if dotted `path` names a RunConfig field, else a message listing valid keys."""
    model: type[BaseModel] | None = RunConfig
    parts = path.split(".")
    for i, part in enumerate(parts):
        if model is None:
            return f"unknown key {'.'.join(parts[:i + 1])!r} ({'.'.join(parts[:i])} has no sub-keys)"
        if part not in model.model_fields:
            return f"unknown key; valid keys: {', '.join(model.model_fields)}"
        model = _sub_model(model, part)
    return None


def _valid_keys_at(loc: tuple) -> list[str]:
    model: type[BaseModel] | None = RunConfig
    for part in loc:
        if model is None or not isinstance(part, str):
            return []
        model = _sub_model(model, part)
    return list(model.model_fields) if model else []


def get_path(d: dict, path: str, default: Any = None) -> Any:
    """The value at dotted `path` (`optim.lr`) of a nested dict, or `default`."""
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def has_path(d: dict, path: str) -> bool:
    """Whether dotted `path` is given in a nested dict (even as None)."""
    sentinel = object()
    return get_path(d, path, sentinel) is not sentinel


def set_path(d: dict, path: str, value: Any) -> None:
    """Set dotted `path` of a nested dict in place, making (or replacing) parents as dicts."""
    parts = path.split(".")
    for part in parts[:-1]:
        if not isinstance(d.get(part), dict):
            d[part] = {}
        d = d[part]
    d[parts[-1]] = value


def deep_merge(base: dict, delta: dict) -> dict:
    """`base` with `delta` laid over it: dicts merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in delta.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def pydantic_problems(exc, base_loc: str, sweep_locs: dict[str, str]) -> list[tuple[tuple, str]]:
    """(loc, "location: message") pairs of a pydantic ValidationError."""
    out = []
    for e in exc.errors():
        loc = tuple(e["loc"])
        dotted = ".".join(str(p) for p in loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            keys = _valid_keys_at(loc[:-1])
            msg = "unknown key" + (f"; valid keys: {', '.join(keys)}" if keys else "")
        elif "input" in e and not isinstance(e["input"], (dict, list)) and e["type"] != "missing":
            msg += f" (got {e['input']!r})"
        where = sweep_locs.get(dotted) or ".".join(x for x in (base_loc, dotted) if x) or "config"
        out.append((loc, f"{where}: {msg}"))
    return out


def semantic_problems(raw: dict, depths: dict[str, int | None], *,
                       cross_field: bool = False) -> list[tuple[str, str]]:
    """(field, message) for what pydantic cannot check: sources, model spec, layers to freeze.

    Works on the unvalidated dict (RunConfig defaults filling the gaps), so these problems
    are reported together with type errors in other fields.
    """
    def get(path: str, typ: type | tuple) -> Any:
        v = get_path(raw, path, get_path(DEFAULTS, path))
        return v if isinstance(v, typ) and not isinstance(v, bool) else None

    errs = []
    if (ds := get("dataset", str)) is not None and (p := source_problem(ds)) is not None:
        errs.append(("dataset", p))
    if get_path(raw, "zeroshot.enabled", True) is not False:
        for i, zs in enumerate(get("zeroshot.datasets", list) or []):
            if isinstance(zs, str) and (p := source_problem(zs)) is not None:
                errs.append((f"zeroshot.datasets[{i}]", p))
    model, freeze = get("model", str), get("freeze_layers", int)
    if model is not None and (p := model_problem(model)) is not None:
        errs.append(("model", p))
    elif model is not None and freeze:
        if model not in depths:
            depths[model] = model_depth(model)
        if depths[model] is not None and freeze > depths[model]:
            errs.append(("freeze_layers", f"cannot freeze {freeze} layers; {model} has {depths[model]}"))
    n_eval, n_test = get("data.eval_subset_size", int), get("data.synthetic_test", int)
    if ds == "synthetic" and n_eval and n_test and n_eval > n_test:
        errs.append(("data.eval_subset_size", f"{n_eval} eval images > data.synthetic_test {n_test}"))
    if ds == "synthetic":
        errs.extend(synthetic_problems(model if model is not None and model_problem(model) is None else None,
                                       get("data.synthetic_classes", int), get("data.synthetic_train", int),
                                       n_test))
    if (dev := get("device", str)) is not None and dev != "auto" and (p := device_problem(dev)) is not None:
        errs.append(("device", p))
    for key in ("data.cache_dir", "data.data_root"):
        if (p := dir_setting_problem(get_path(raw, key))) is not None:
            errs.append((key, p))
    kind, lam = get("regularizer.kind", str), get("regularizer.lam", (int, float))
    if cross_field and kind in ("apr", "entropy_floor") and lam is not None and lam <= 0:
        errs.append(("regularizer.lam", f"regularizer {kind} needs lam > 0"))
    return errs


def read_recorded_config(path: str | Path) -> RunConfig:
    """The RunConfig a run recorded in its config.yaml.

    Raises:
        DamagedFile: unreadable, not YAML, or not a valid RunConfig (naming the file).
    """
    fix = (f"delete {Path(path).parent / 'final.json'} and `attncollapse run` the matrix: the run "
           "resumes from its last checkpoint and rewrites it")
    data = _io.read_yaml_checked(path, fix=fix)
    try:
        return RunConfig.model_validate(_as_recorded(data))
    except ValidationError as exc:
        first = pydantic_problems(exc, "", {})[0][1]
        raise _io.DamagedFile(path, f"not a valid run config ({first}); {fix}") from None


def _as_recorded(data: Any) -> Any:
    """A config.yaml written before a field existed, read as what that run did: before
    `freeze_embeddings`, `freeze_layers: k > 0` froze the embeddings and pre-LayerNorm too."""
    if isinstance(data, dict) and "freeze_embeddings" not in data and data.get("freeze_layers"):
        return {**data, "freeze_embeddings": True}
    return data


def load_run_config(path: str | Path, overrides: list[str] | tuple = ()) -> RunConfig:
    """Read and validate one RunConfig YAML file (e.g. a run's config.yaml)."""
    data, dups = read_config_yaml(path)
    return run_config_from_dict(data, overrides=overrides, source=str(path), extra_errors=dups)


def run_config_from_dict(data: Any, *, overrides: list[str] | tuple = (), source: str | None = None,
                         extra_errors: list[str] | None = None) -> RunConfig:
    """Validate one RunConfig given as a dict (plus `--set` overrides); ConfigError lists all problems."""
    errors = list(extra_errors or [])
    if not isinstance(data, dict):
        raise ConfigError(errors + ["expected a mapping of RunConfig fields"], source)
    data = json.loads(json.dumps(data))
    pairs, bad = parse_assignments(overrides)
    errors.extend(bad)
    for key, value in pairs:
        set_path(data, key, value)
    cfg, cross_checked = None, False
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        for loc, msg in pydantic_problems(exc, "", {}):
            cross_checked |= loc == ()
            errors.append(msg)
    errors.extend(f"{field}: {msg}" for field, msg in
                  semantic_problems(data, {}, cross_field=cfg is None and not cross_checked))
    if errors:
        raise ConfigError(errors, source)
    return cfg
