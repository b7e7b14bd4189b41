"""The logged names, one scheme for the study's loop and the callbacks.

`<prefix>/<metric>/layer_<i>` (1-based), `<prefix>/<metric>/mean`, and against the
reference (the model before its first step) `<prefix>/<metric>/delta/...` (absolute Δ,
always) and `<prefix>/<metric>/delta_pct/...` (Δ%, only where stable under
`analysis.instability.unstable`: a Δ% over an initial value near zero multiplies noise, so
it is left out rather than logged as a spike).
"""

from __future__ import annotations


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def metric_logs(table: dict[str, list[float]], prefix: str = "collapse") -> dict[str, float]:
    """`{prefix}/{metric}/layer_{i}` and `{prefix}/{metric}/mean` of a per-layer table {metric: [L]}."""
    logs = {f"{prefix}/{m}/layer_{i + 1}": float(v) for m, vals in table.items() for i, v in enumerate(vals)}
    logs.update({f"{prefix}/{m}/mean": float(_mean(vals)) for m, vals in table.items()})
    return logs


def delta_logs(table: dict[str, list[float]], reference: dict[str, list[float]],
               prefix: str = "collapse") -> dict[str, float]:
    """Δ and Δ% of every layer and of the layer mean, current `table` against `reference`.

    Δ = current − reference, always; Δ% = 100·Δ/reference, only where the reference value
    is not near zero (`analysis.instability.unstable`).
    """
    from ..analysis.instability import unstable  # the analysis package is heavy: only when deltas are asked for

    logs: dict[str, float] = {}
    for m, vals in table.items():
        pairs = [(f"layer_{i + 1}", reference[m][i], v) for i, v in enumerate(vals)]
        pairs.append(("mean", _mean(reference[m]), _mean(vals)))
        for key, v0, v in pairs:
            logs[f"{prefix}/{m}/delta/{key}"] = float(v - v0)
            if v0 != 0 and not unstable(m, v0):
                logs[f"{prefix}/{m}/delta_pct/{key}"] = float(100.0 * (v - v0) / v0)
    return logs
