"""Study matrices: `defaults:` + per-run deltas + sweeps, read from YAML and validated as
a whole (every problem of every run reported at once), then expanded into `RunConfig`s.

The run-level schema (`RunConfig` and its sections) lives in `config.py`.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from .. import _io
from .checks import dir_setting_problem, model_depth, model_problem, source_problem
from .schema import DEFAULTS, RunConfig, Strict

# --- matrices: defaults + per-run deltas + sweeps ----------------------------------------
# A study is `defaults:` (a partial RunConfig) plus `runs:` keyed by the reports' ids,
# each holding only what differs (PEFT method_comparison, big_vision sweeps). A run entry
# may carry `sweep:` to expand into several runs with stable, readable ids. Validation
# collects every problem of every run before anything runs (torchtune's ConfigError).

_MATRIX_KEYS = ("name", "description", "seeds", "baseline", "defaults", "runs")

# Short labels of swept fields in expanded ids (A1-lr1e-06, A3-freeze3, R3-wd0.0); a sweep
# entry may name its own label (`{label: apr, values: [...]}` gives R1-apr0.1).
SWEEP_LABELS = {
    "optim.lr": "lr", "optim.weight_decay": "wd", "optim.epochs": "ep", "optim.batch_size": "bs",
    "freeze_layers": "freeze", "lora.rank": "r", "lora.alpha": "alpha", "lora.targets": "",
    "regularizer.lam": "lam", "regularizer.kind": "", "method": "", "dataset": "", "model": "",
}


class ConfigError(ValueError):
    """Every problem found in a config, each as "location: message".

    Attributes:
        errors: the messages, in file order.
    """

    def __init__(self, errors: list[str], source: str | None = None):
        self.errors = list(dict.fromkeys(errors))  # drop exact repeats, keep order
        where = f" in {source}" if source else ""
        n = len(self.errors)
        super().__init__(f"{n} problem{'s' * (n != 1)}{where}:\n  " + "\n  ".join(self.errors))


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-5` as a float (YAML 1.1 wants `1.0e-5`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A `--set` value as YAML (`1e-4` → float, `[1, 2]` → list, `qv` → str)."""
    return yaml.load(text, Loader=_Loader)


def parse_assignments(items: list[str] | tuple, flag: str = "--set") -> tuple[list[tuple[str, Any]], list[str]]:
    """`KEY=VALUE` strings as (key, parsed value) pairs, plus one error per malformed item.

    The one parser of `--set` and `--executor-opt`: a missing `=` or an empty key is an
    error (never a silent `key=None`).
    """
    pairs, errors = [], []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            errors.append(f"{flag} {item}: expected KEY=VALUE")
            continue
        pairs.append((key.strip(), parse_value(text)))
    return pairs, errors


def _duplicate_keys(node: yaml.Node, path: str = "") -> list[str]:
    """Keys given twice in one YAML mapping (PyYAML silently keeps the last)."""
    out: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            key = str(k.value)
            here = f"{path}.{key}" if path else key
            if key in seen:
                out.append(f"{here}: duplicate key (line {k.start_mark.line + 1}, "
                           f"first at line {seen[key]})")
            else:
                seen[key] = k.start_mark.line + 1
            out.extend(_duplicate_keys(v, here))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.extend(_duplicate_keys(v, f"{path}[{i}]"))
    return out


def read_config_yaml(path: str | Path) -> tuple[Any, list[str]]:
    """Parse a YAML file; returns (data, duplicate-key errors).

    Raises:
        ConfigError: not UTF-8 text, binary, unreadable, not YAML, or empty.
    """
    try:
        text = _io.read_text_checked(path)
    except _io.DamagedFile as exc:
        raise ConfigError([exc.why], str(path)) from None
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        raise ConfigError(["empty file: expected a matrix (name:, defaults:, runs:) or a run config"],
                          str(path))
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError([f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"], str(path)) from None
    return data, (_duplicate_keys(node) if node is not None else [])


def packaged_configs() -> dict[str, Path]:
    """The configs shipped in the package: name → path (paper, demo, paper-shapes)."""
    root = Path(__file__).resolve().parent.parent / "configs"
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}


def resolve_config_path(name: str | Path) -> Path:
    """A config file path, or the name of a packaged config (`paper`, `demo.yaml`)."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    shipped = packaged_configs()
    stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
    if p.parent == Path(".") and stem in shipped:
        return shipped[stem]
    raise FileNotFoundError(f"{name}: no such file, and not a packaged config ({', '.join(shipped)})")


# --- schema helpers ---------------------------------------------------------------------

def _sub_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    field = model.model_fields.get(name)
    ann = getattr(field, "annotation", None)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _check_path(path: str) -> str | None:
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


def _get(d: dict, path: str, default: Any = None) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def _has(d: dict, path: str) -> bool:
    sentinel = object()
    return _get(d, path, sentinel) is not sentinel


def _set(d: dict, path: str, value: Any) -> None:
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


def format_value(v: Any) -> str:
    """A swept value as it appears in a run id: 1e-06, 5e-05, 0.1, 1.0, 3, qkvo."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if v != 0 and abs(v) < 1e-3:
            mant, exp = f"{v:e}".split("e")
            return f"{mant.rstrip('0').rstrip('.')}e{exp}"
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "+".join(format_value(x) for x in v)
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", str(v))


def _pydantic_errors(exc, base_loc: str, sweep_locs: dict[str, str]) -> list[tuple[tuple, str]]:
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


def _semantic_problems(raw: dict, depths: dict[str, int | None], *,
                       cross_field: bool = False) -> list[tuple[str, str]]:
    """(field, message) for what pydantic cannot check: sources, model spec, layers to freeze.

    Works on the unvalidated dict (RunConfig defaults filling the gaps), so these problems
    are reported together with type errors in other fields.
    """
    def get(path: str, typ: type | tuple) -> Any:
        v = _get(raw, path, _get(DEFAULTS, path))
        return v if isinstance(v, typ) and not isinstance(v, bool) else None

    errs = []
    if (ds := get("dataset", str)) is not None and (p := source_problem(ds)) is not None:
        errs.append(("dataset", p))
    if _get(raw, "zeroshot.enabled", True) is not False:
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
    for key in ("data.cache_dir", "data.data_root"):
        if (p := dir_setting_problem(_get(raw, key))) is not None:
            errs.append((key, p))
    kind, lam = get("regularizer.kind", str), get("regularizer.lam", (int, float))
    if cross_field and kind in ("apr", "entropy_floor") and lam is not None and lam <= 0:
        errs.append(("regularizer.lam", f"regularizer {kind} needs lam > 0"))
    return errs


# --- the matrix -------------------------------------------------------------------------

@dataclass(frozen=True)
class PlannedRun:
    """One run of an expanded matrix.

    Attributes:
        id: the run directory's name (`E2`, `A1-lr5e-05`, `E2-s1` with several seeds).
        entry: the `runs:` key it came from (`A1`).
        group: the reports' experiment family, the id up to its first "-" (`A1`).
        config: the validated RunConfig (`config.id` excludes the seed suffix).
    """

    id: str
    entry: str
    group: str
    config: RunConfig


class MatrixConfig(Strict):
    """A study: shared defaults, runs keyed by the reports' ids, seeds and the E1 baseline."""

    name: str
    """Matrix name; the default output directory is runs/<name>."""
    description: str = ""
    """Free text (what this matrix reproduces, for whom)."""
    seeds: list[int] = Field(default_factory=lambda: [42], min_length=1)
    """Each run is repeated per seed; run dirs get `-s<seed>` only with several (reports: [42])."""
    baseline: list[str] = Field(default_factory=list)
    """E1: datasets to measure the pretrained model on (reports: eurosat, pets)."""
    defaults: dict[str, Any] = Field(default_factory=dict)
    """A partial RunConfig shared by every run (the reports' §2.3 settings)."""
    runs: dict[str, dict[str, Any] | None] | list[dict[str, Any]]
    """Run id → fields that differ from defaults (+ optional `sweep:`); or a list with `id:`."""
    _planned: list[PlannedRun] | None = PrivateAttr(default=None)

    def entries(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(location, entry id, delta) of every run entry, in file order."""
        if isinstance(self.runs, dict):
            return [(f"runs.{k}", str(k), dict(v or {})) for k, v in self.runs.items()]
        return [(f"runs[{i}]", str(d.get("id", "")), {k: v for k, v in d.items() if k != "id"})
                for i, d in enumerate(self.runs)]

    def expand(self) -> list[PlannedRun]:
        """Every run, validated; raises ConfigError with all problems found."""
        if self._planned is None:
            self._planned = _expand(self)
        return list(self._planned)

    def selected(self, only: str | list[str] | None = None) -> list[PlannedRun]:
        """The expanded runs matching `only` (comma-separated ids, entries, groups or globs)."""
        runs = self.expand()
        if not only:
            return runs
        pats = [p.strip() for p in (only.split(",") if isinstance(only, str) else only) if p.strip()]
        keep = [r for r in runs if any(fnmatch.fnmatchcase(name, p) for p in pats
                                       for name in (r.id, r.entry, r.group, r.config.id))]
        unmatched = [p for p in pats if not any(fnmatch.fnmatchcase(n, p) for r in runs
                                                for n in (r.id, r.entry, r.group, r.config.id))]
        if unmatched:
            raise ConfigError([f"--only {p}: matches no run (runs: {', '.join(r.id for r in runs)})"
                               for p in unmatched])
        return keep

    def baseline_config(self, dataset: str, model: str | None = None) -> RunConfig:
        """The RunConfig whose model and data/eval/zero-shot settings the E1 baseline on
        `dataset` (of `model`, default any) uses: the first such run training on `dataset`,
        else the defaults with `dataset` (and `model`). Its `dataset` is always `dataset`."""
        for run in self.expand():
            if run.config.dataset == dataset and model in (None, run.config.model):
                return run.config
        return RunConfig.model_validate({**self.defaults, "dataset": dataset, **({"model": model} if model else {})})

    def models(self) -> list[str]:
        """The models the runs train, in order of first appearance."""
        return list(dict.fromkeys(run.config.model for run in self.expand()))


def _expand_entry(loc: str, entry: str, delta: dict, defaults: dict) -> tuple[list, list[str]]:
    """One run entry → ([(merged dict, {swept key: location}, [(swept key, label)])], errors)."""
    errors: list[str] = []
    sweep = delta.pop("sweep", None)
    for bad in ("id", "seed"):
        if bad in delta:
            errors.append(f"{loc}.{bad}: set by the matrix ({'the run key' if bad == 'id' else 'seeds:'}), "
                          "not inside a run")
            delta.pop(bad)
    if not entry:
        errors.append(f"{loc}: a run in a list needs an `id:`")
    merged = deep_merge(defaults, delta)
    if sweep is None:
        return [(merged, {}, [])], errors
    if not isinstance(sweep, dict) or not sweep:
        return [], errors + [f"{loc}.sweep: expected a mapping of dotted key → list of values"]
    axes = []
    for key, spec in sweep.items():
        here = f"{loc}.sweep.{key}"
        label = SWEEP_LABELS.get(key, key.split(".")[-1])
        if isinstance(spec, dict):
            unknown = set(spec) - {"values", "label"}
            if unknown:
                errors.append(f"{here}: unknown key(s) {', '.join(map(str, unknown))}; valid keys: values, label")
            label, spec = str(spec.get("label", label)), spec.get("values")
        if key in ("id", "seed"):
            errors.append(f"{here}: {key} cannot be swept (use seeds:)")
        elif (p := _check_path(key)) is not None:
            errors.append(f"{here}: {p}")
        elif not isinstance(spec, list) or not spec:
            errors.append(f"{here}: expected a non-empty list of values")
        else:
            axes.append((key, label, spec, here))
    if errors:
        return [], errors
    out = []
    for combo in itertools.product(*[range(len(a[2])) for a in axes]):
        d, locs = merged, {}
        for (key, _label, values, here), i in zip(axes, combo):
            d = copy.deepcopy(d)
            _set(d, key, values[i])
            locs[key] = f"{here}[{i}]"
        out.append((d, locs, [(a[0], a[1]) for a in axes]))
    return out, errors


def _expand(matrix: MatrixConfig) -> list[PlannedRun]:
    errors: list[str] = []
    depths: dict[str, int | None] = {}
    defaults = dict(matrix.defaults)
    for bad in ("id", "seed"):
        if bad in defaults:
            errors.append(f"defaults.{bad}: set by the matrix ({'run keys' if bad == 'id' else 'seeds:'})")
            defaults.pop(bad)
    # Defaults first, on their own: their problems are reported once, not once per run.
    default_locs: set[tuple] = set()
    try:
        RunConfig.model_validate(defaults)
    except ValidationError as exc:
        for loc, msg in _pydantic_errors(exc, "defaults", {}):
            if loc:  # cross-field checks depend on the run; they are reported there
                default_locs.add(loc)
                errors.append(msg)
    default_fields: set[str] = set()
    for field, msg in _semantic_problems(defaults, depths):
        default_fields.add(field)
        errors.append(f"defaults.{field}: {msg}")
    planned: list[PlannedRun] = []
    where_ids: dict[str, str] = {}
    entries = matrix.entries()
    if not entries:
        errors.append("runs: no runs given")
    for loc, entry, delta in entries:
        expanded, errs = _expand_entry(loc, entry, dict(delta), defaults)
        errors.extend(errs)
        for merged, sweep_locs, labels in expanded:
            def given(field: str, _d=delta, _sl=sweep_locs) -> bool:
                return field.split("[")[0] in _sl or _has(_d, field.split("[")[0])

            def where(field: str, _loc=loc, _sl=sweep_locs) -> str:
                base = field.split("[")[0]
                return _sl[base] + field[len(base):] if base in _sl else f"{_loc}.{field}"

            run_id, cfg, cross_checked = entry, None, False
            try:
                cfg = RunConfig.model_validate(dict(merged, id=entry or "run"))
            except ValidationError as exc:
                for eloc, msg in _pydantic_errors(exc, loc, sweep_locs):
                    cross_checked |= eloc == ()  # pydantic's own cross-field check ran
                    if eloc not in default_locs or given(".".join(map(str, eloc))):
                        errors.append(msg)
            for field, msg in _semantic_problems(merged, depths,
                                                 cross_field=cfg is None and not cross_checked):
                if field not in default_fields or given(field):
                    errors.append(f"{where(field)}: {msg}")
            if cfg is None:
                continue
            if labels:
                values = cfg.model_dump()
                run_id = entry + "-" + "-".join(f"{label}{format_value(_get(values, key))}"
                                                for key, label in labels)
                try:
                    cfg = RunConfig.model_validate(dict(merged, id=run_id))
                except ValidationError as exc:
                    errors.extend(m for _l, m in _pydantic_errors(exc, loc, sweep_locs))
                    continue
            for seed in matrix.seeds:
                rid = f"{run_id}-s{seed}" if len(matrix.seeds) > 1 else run_id
                if rid in where_ids:
                    errors.append(f"{loc}: duplicate run id {rid!r} (also from {where_ids[rid]})")
                    continue
                where_ids[rid] = loc
                planned.append(PlannedRun(rid, entry, run_id.split("-")[0],
                                          cfg.model_copy(update={"seed": seed})))
    for i, ds in enumerate(matrix.baseline):
        if (p := source_problem(ds)) is not None:
            errors.append(f"baseline[{i}]: {p}")
    if errors:
        raise ConfigError(errors)
    return planned


def _apply_override(data: dict, key: str, value: Any) -> None:
    """`--set key=value`: top-level matrix keys as named, `runs.<id>.…` into one run,
    anything else into `defaults`."""
    if key.split(".")[0] in _MATRIX_KEYS:
        _set(data, key, value)
    else:
        data.setdefault("defaults", {})
        if not isinstance(data["defaults"], dict):
            data["defaults"] = {}
        _set(data["defaults"], key, value)


def matrix_from_dict(data: Any, *, overrides: list[str] | tuple = (), source: str | None = None,
                     extra_errors: list[str] | None = None) -> MatrixConfig:
    """Validate a matrix given as a dict (plus `--set` overrides); ConfigError lists all problems."""
    errors = list(extra_errors or [])
    if not isinstance(data, dict):
        raise ConfigError(errors + ["expected a mapping with name:, defaults: and runs:"], source)
    data = json.loads(json.dumps(data))  # a deep copy we may modify
    pairs, bad = parse_assignments(overrides)
    errors.extend(bad)
    for key, value in pairs:
        if (p := _check_path(key)) is not None and key.split(".")[0] not in _MATRIX_KEYS:
            errors.append(f"--set {key}: {p}")
            continue
        _apply_override(data, key, value)
    try:
        matrix = MatrixConfig.model_validate(data)
    except ValidationError as exc:
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("dict[", "list[")))
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                msg = f"unknown key; valid keys: {', '.join(_MATRIX_KEYS)}"
            errors.append(f"{loc}: {msg}")
        raise ConfigError(errors, source) from None
    try:
        matrix.expand()
    except ConfigError as exc:
        errors.extend(exc.errors)
    if errors:
        raise ConfigError(errors, source)
    return matrix


def load_matrix(path: str | Path, overrides: list[str] | tuple = ()) -> MatrixConfig:
    """Read, override and validate a matrix YAML file (a path or a packaged config's name).

    Args:
        path: a YAML file, or `paper` / `demo` / `paper-shapes` (packaged configs).
        overrides: `key=value` strings (values parsed as YAML). Keys name a matrix field
            (`seeds=[1,2]`, `name=x`), one run (`runs.E3.optim.epochs=1`) or, otherwise, a
            field of `defaults` (`optim.lr=1e-4`, `model=tiny`).

    Raises:
        ConfigError: every problem found, each with its location.
    """
    path = resolve_config_path(path)
    data, dups = read_config_yaml(path)
    return matrix_from_dict(data, overrides=overrides, source=str(path), extra_errors=dups)


def read_recorded_config(path: str | Path) -> RunConfig:
    """The RunConfig a run recorded in its config.yaml.

    Raises:
        DamagedFile: unreadable, not YAML, or not a valid RunConfig (naming the file).
    """
    fix = (f"delete {Path(path).parent / 'final.json'} and `attncollapse run` the matrix: the run "
           "resumes from its last checkpoint and rewrites it")
    data = _io.read_yaml_checked(path, fix=fix)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        first = _pydantic_errors(exc, "", {})[0][1]
        raise _io.DamagedFile(path, f"not a valid run config ({first}); {fix}") from None


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
        _set(data, key, value)
    cfg, cross_checked = None, False
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        for loc, msg in _pydantic_errors(exc, "", {}):
            cross_checked |= loc == ()
            errors.append(msg)
    errors.extend(f"{field}: {msg}" for field, msg in
                  _semantic_problems(data, {}, cross_field=cfg is None and not cross_checked))
    if errors:
        raise ConfigError(errors, source)
    return cfg
