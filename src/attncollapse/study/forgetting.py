"""A `design: forgetting` matrix after its runs: the interpolation sweeps (docs/FORGETTING_RUNS.md).

Which runs: the matrix's `interpolation:` (default: per method, the best-validation run
on the first dataset with the first seed, primary backbone, as the authors chose). Each
sweep writes `<matrix>/interpolation/<run id>__<variant>.json`; one already there and
intact is kept (resuming), a damaged one is computed again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .. import _io
from ..config import InterpolationConfig, MatrixConfig
from ..train.interpolate import choose_runs, interpolate_run, output_path
from .tasks import plan, run_state


def interpolation_targets(matrix: MatrixConfig, out: Path) -> list[str]:
    """The run ids the matrix's interpolation sweeps, among its finished runs."""
    icfg = matrix.interpolation or InterpolationConfig()
    done = [t for t in plan(matrix, out) if t.kind == "run" and run_state(t) == "done"]
    if isinstance(icfg.runs, list):
        return [t.id for t in done if t.id in icfg.runs]
    records = []
    for t in done:
        try:
            records.append((t.id, _io.read_json_checked(t.path / "record.json", ("config", "best_val_acc"))))
        except _io.DamagedFile:
            continue  # the analysis names it; no sweep from a damaged record
    runs = matrix.expand()
    dataset = icfg.dataset or runs[0].config.dataset
    seed = icfg.seed if icfg.seed is not None else matrix.seeds[0]
    return choose_runs(records, dataset=dataset, seed=seed, backbone=icfg.backbone, methods=icfg.methods)


def interpolate_matrix(matrix: MatrixConfig, out: str | Path, *, log: Callable[[str], None] = print) -> dict:
    """Every interpolation sweep the matrix asks for that is not on disk yet.

    Returns:
        {"<run id>__<variant>": "done" | "kept" | "failed: <why>"}.
    """
    out = Path(out)
    icfg = matrix.interpolation or InterpolationConfig()
    if not icfg.enabled:
        return {}
    state = {}
    for rid in interpolation_targets(matrix, out):
        for variant in icfg.variants:
            path = output_path(out / "interpolation", rid, variant)
            key = path.stem
            if path.is_file():
                try:
                    _io.read_json_checked(path, ("sweep",))
                    state[key] = "kept"
                    continue
                except _io.DamagedFile:
                    pass
            try:
                interpolate_run(out / rid, variant=variant, alphas=icfg.alphas, out_dir=out / "interpolation")
                state[key] = "done"
            except Exception as exc:  # noqa: BLE001 - one failed sweep does not stop the others
                state[key] = f"failed: {type(exc).__name__}: {exc}".splitlines()[0]
                log(f"interpolation {key} {state[key]}")
    return state
