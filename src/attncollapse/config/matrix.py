"""Study matrices: `defaults:` + per-run deltas + sweeps, validated as a whole (every
problem of every run reported at once), expanded into `RunConfig`s, `--set` overrides and
`--only` selection.

The run-level schema lives in `schema.py`, YAML reading in `loading.py`, one run's
validation in `validate.py`.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator

from .checks import source_problem
from .forgetting import InterpolationConfig, run_problems
from .loading import ConfigError, parse_assignments, read_config_yaml, resolve_config_path
from .schema import SEED_MAX, RunConfig, Strict, diff_fields, fingerprint_fields, name_problem
from .validate import (deep_merge, get_path, has_path, key_problem, pydantic_problems, semantic_problems,
                       set_path)

# --- matrices: defaults + per-run deltas + sweeps ----------------------------------------
# A study is `defaults:` (a partial RunConfig) plus `runs:` keyed by the reports' ids,
# each holding only what differs (PEFT method_comparison, big_vision sweeps). A run entry
# may carry `sweep:` to expand into several runs with stable, readable ids. Validation
# collects every problem of every run before anything runs (torchtune's ConfigError).

_MATRIX_KEYS = ("name", "description", "seeds", "baseline", "defaults", "runs", "design", "interpolation")

# Short labels of swept fields in expanded ids (A1-lr1e-06, A3-freeze3, R3-wd0.0); a sweep
# entry may name its own label (`{label: apr, values: [...]}` gives R1-apr0.1).
SWEEP_LABELS = {
    "optim.lr": "lr", "optim.weight_decay": "wd", "optim.epochs": "ep", "optim.batch_size": "bs",
    "freeze_layers": "freeze", "lora.rank": "r", "lora.alpha": "alpha", "lora.targets": "",
    "regularizer.lam": "lam", "regularizer.kind": "", "method": "", "dataset": "", "model": "",
}


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

    @property
    def names(self) -> tuple[str, ...]:
        """What `--only` may call it: its id, entry, group and config id."""
        return (self.id, self.entry, self.group, self.config.id)


def only_patterns(only: str | list[str] | None) -> list[str]:
    """`--only` as patterns: a comma-separated string or a list, blanks dropped."""
    return [p.strip() for p in (only.split(",") if isinstance(only, str) else only or []) if p.strip()]


def match_only(runs: list[PlannedRun], patterns: list[str]) -> tuple[list[PlannedRun], list[str]]:
    """The one `--only` matcher: (runs any pattern matches, in order; patterns matching no run).

    A pattern is a run id, an entry (`A1`), a group or a glob (`R*`), matched case-sensitively.
    """
    keep = [r for r in runs if any(fnmatch.fnmatchcase(n, p) for p in patterns for n in r.names)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for r in runs for n in r.names)]
    return keep, unmatched


def only_error(unmatched: list[str], ids: list[str]) -> ConfigError:
    """The error for `--only` patterns that match nothing, listing what there is."""
    return ConfigError([f"--only {p}: matches no run (runs: {', '.join(ids)})" for p in unmatched])


class MatrixConfig(Strict):
    """A study: shared defaults, runs keyed by the reports' ids, seeds and the E1 baseline."""

    name: str
    """Matrix name, a plain name (letters, digits, . _ + = @ -); the default output
    directory is runs/<name>, so a path here would write outside runs/."""
    description: str = ""
    """Free text (what this matrix reproduces, for whom)."""
    design: Literal["study", "controlled", "forgetting"] = "study"
    """How the analysis reads the runs: `study` (the reports' 21 configurations, by role) or
    `controlled` (a factorial dataset × method × lr with seeds as replicates: two-way ANOVA,
    matched-LR tables, retention model; docs/CONTROLLED.md). A controlled matrix holds one
    run per (dataset, method, lr) cell and seed, its runs of a dataset differing only there.
    `forgetting`: the authors' final study (docs/FORGETTING_RUNS.md): every run follows the
    forgetting protocol (its `forgetting:` section, default values unless given) and writes
    record.json; a confounded or incomplete grid warns."""
    interpolation: InterpolationConfig | None = None
    """design: forgetting only: the weight-interpolation sweep after the runs (None = the
    defaults: the best-validation run per method on the first dataset and seed)."""
    seeds: list[Annotated[int, Field(ge=0, le=SEED_MAX)]] = Field(default_factory=lambda: [42], min_length=1)
    """Each run is repeated per seed; run dirs get `-s<seed>` only with several (reports: [42])."""
    baseline: list[str] = Field(default_factory=list)
    """E1: datasets to measure the pretrained model on (reports: eurosat, pets)."""
    defaults: dict[str, Any] = Field(default_factory=dict)
    """A partial RunConfig shared by every run (the reports' §2.3 settings)."""
    runs: dict[str, dict[str, Any] | None] | list[dict[str, Any]]
    """Run id → fields that differ from defaults (+ optional `sweep:`); or a list with `id:`."""
    _planned: list[PlannedRun] | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if (p := name_problem(v, "matrix name")) is not None:
            raise ValueError(p)
        return v

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
        runs, pats = self.expand(), only_patterns(only)
        if not pats:
            return runs
        keep, unmatched = match_only(runs, pats)
        if unmatched:
            raise only_error(unmatched, [r.id for r in runs])
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
        elif (p := key_problem(key)) is not None:
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
            set_path(d, key, values[i])
            locs[key] = f"{here}[{i}]"
        out.append((d, locs, [(a[0], a[1]) for a in axes]))
    return out, errors


@dataclass
class _Defaults:
    """The matrix defaults and what is already reported about them (reported once, not per run)."""

    values: dict
    locs: set  # pydantic error locations found in the defaults
    fields: set  # fields with a semantic problem in the defaults
    depths: dict  # model spec → encoder layers (looked up once per spec)


def _check_defaults(matrix: MatrixConfig, errors: list[str]) -> _Defaults:
    """The defaults validated on their own; their problems are appended to `errors`."""
    values = dict(matrix.defaults)
    for bad in ("id", "seed"):
        if bad in values:
            errors.append(f"defaults.{bad}: set by the matrix ({'run keys' if bad == 'id' else 'seeds:'})")
            values.pop(bad)
    known = _Defaults(values, set(), set(), {})
    try:
        RunConfig.model_validate(values)
    except ValidationError as exc:
        for loc, msg in pydantic_problems(exc, "defaults", {}):
            if loc:  # cross-field checks depend on the run; they are reported there
                known.locs.add(loc)
                errors.append(msg)
    for field, msg in semantic_problems(values, known.depths):
        known.fields.add(field)
        errors.append(f"defaults.{field}: {msg}")
    return known


def _validate_run(loc: str, entry: str, delta: dict, merged: dict, sweep_locs: dict[str, str],
                  labels: list, known: _Defaults, errors: list[str]) -> tuple[str, RunConfig | None]:
    """(run id, RunConfig or None) of one expanded run; its own problems go to `errors` (those
    of the defaults only where this run gives the field itself)."""
    def given(field: str) -> bool:
        return field.split("[")[0] in sweep_locs or has_path(delta, field.split("[")[0])

    def where(field: str) -> str:
        base = field.split("[")[0]
        return sweep_locs[base] + field[len(base):] if base in sweep_locs else f"{loc}.{field}"

    run_id, cfg, cross_checked = entry, None, False
    try:
        cfg = RunConfig.model_validate(dict(merged, id=entry or "run"))
    except ValidationError as exc:
        for eloc, msg in pydantic_problems(exc, loc, sweep_locs):
            cross_checked |= eloc == ()  # pydantic's own cross-field check ran
            if eloc not in known.locs or given(".".join(map(str, eloc))):
                errors.append(msg)
    for field, msg in semantic_problems(merged, known.depths, cross_field=cfg is None and not cross_checked):
        if field not in known.fields or given(field):
            errors.append(f"{where(field)}: {msg}")
    if cfg is None or not labels:
        return run_id, cfg
    values = cfg.model_dump()
    run_id = entry + "-" + "-".join(f"{label}{format_value(get_path(values, key))}" for key, label in labels)
    try:
        return run_id, RunConfig.model_validate(dict(merged, id=run_id))
    except ValidationError as exc:
        errors.extend(m for _l, m in pydantic_problems(exc, loc, sweep_locs))
        return run_id, None


def _expand(matrix: MatrixConfig) -> list[PlannedRun]:
    errors: list[str] = []
    if matrix.design == "forgetting" and "forgetting" not in matrix.defaults:
        matrix = matrix.model_copy(update={"defaults": {**matrix.defaults, "forgetting": {}}})
    elif matrix.design != "forgetting" and matrix.interpolation is not None:
        errors.append("interpolation: only a design: forgetting matrix runs the interpolation sweep")
    known = _check_defaults(matrix, errors)
    planned: list[PlannedRun] = []
    where_ids: dict[str, str] = {}
    entries = matrix.entries()
    if not entries:
        errors.append("runs: no runs given")
    for loc, entry, delta in entries:
        expanded, errs = _expand_entry(loc, entry, dict(delta), known.values)
        errors.extend(errs)
        for merged, sweep_locs, labels in expanded:
            run_id, cfg = _validate_run(loc, entry, delta, merged, sweep_locs, labels, known, errors)
            if cfg is None:
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
    if matrix.design == "controlled":
        errors.extend(_factorial_problems(planned, where_ids))
    for run in planned:
        if (run.config.forgetting is not None) != (matrix.design == "forgetting"):
            errors.append(f"{where_ids[run.id]}: a forgetting: section needs design: forgetting (and that design "
                          "gives every run one)")
        elif matrix.design == "forgetting":
            errors.extend(f"{where_ids[run.id]}.{p}" for p in run_problems(run.config))
    if errors:
        raise ConfigError(errors)
    return planned


_FACTORS = ("id", "seed", "method", "optim.lr")
"""What may differ between the runs of one dataset in a controlled design (besides `lora.*`,
which only LoRA runs use, and which must agree among them)."""


def _factorial_problems(planned: list[PlannedRun], where: dict[str, str]) -> list[str]:
    """A controlled design reads each run's factors from its config, so within a dataset runs
    may differ only in method, lr and seed (a second difference would hide in a factor), and
    two runs in one (dataset, method, lr, seed) cell would be replicates of nothing."""
    seen: dict[tuple, str] = {}
    first: dict[tuple, tuple[str, dict]] = {}
    out = []
    for run in planned:
        c = run.config
        cell = (c.dataset, c.method, float(c.optim.lr), c.seed)
        if cell in seen:
            out.append(f"{where[run.id]}: run {run.id} repeats the cell dataset={c.dataset}, method={c.method}, "
                       f"lr={c.optim.lr:g}, seed={c.seed} of {seen[cell]} (design: controlled allows one run "
                       "per cell and seed; vary only dataset, method and optim.lr)")
            continue
        seen[cell] = run.id
        flat = {k: v for k, v in fingerprint_fields(c).items() if k not in _FACTORS}
        shared = {k: v for k, v in flat.items() if not k.startswith("lora.")}
        lora = {k: v for k, v in flat.items() if k.startswith("lora.")} if c.method == "lora" else {}
        for key, fields in (((c.dataset,), shared), ((c.dataset, "lora"), lora)):
            if not fields:
                continue
            ref_id, ref = first.setdefault(key, (run.id, fields))
            if diff := diff_fields(ref, fields):
                out.append(f"{where[run.id]}: run {run.id} differs from {ref_id} in {', '.join(diff[:5])} "
                           "(design: controlled: within a dataset, runs vary only in method, optim.lr and seed)")
    return out


def _apply_override(data: dict, key: str, value: Any) -> None:
    """`--set key=value`: top-level matrix keys as named, `runs.<id>.…` into one run,
    anything else into `defaults`."""
    if key.split(".")[0] in _MATRIX_KEYS:
        set_path(data, key, value)
    else:
        data.setdefault("defaults", {})
        if not isinstance(data["defaults"], dict):
            data["defaults"] = {}
        set_path(data["defaults"], key, value)


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
        if (p := key_problem(key)) is not None and key.split(".")[0] not in _MATRIX_KEYS:
            errors.append(f"--set {key}: {p}")
            continue
        _apply_override(data, key, value)
    try:
        matrix = MatrixConfig.model_validate(data)
    except ValidationError as exc:
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("dict[", "list[")))
            msg = e["msg"].removeprefix("Value error, ")
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
