"""Which run plays which role in the study, named from the runs' config fields.

`select` names the runs each analysis needs, so stats, figures and report agree on which
run is "the full-FT reference" or "the LR sweep"; `describe` gives a run a human label.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from .table import Matrix, Run


def close(a: Any, b: Any) -> bool:
    """Two config values equal up to float rounding (None equals nothing)."""
    return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9)


def unregularized(r: Run) -> bool:
    return (r.get("regularizer") or "none") == "none" or not r.get("reg_lambda")


def _default(runs: list[Run], key: str, spec_value: Any, groups: tuple[str, ...]) -> Any:
    """The most common value of `key` (ties: the matrix defaults, then the reports' ids)."""
    counts = Counter(float(r.get(key)) for r in runs if r.get(key) is not None)
    if not counts:
        return spec_value
    top = [v for v, c in counts.items() if c == max(counts.values())]
    for v in ([spec_value] if spec_value is not None else []) + [r.get(key) for r in runs if r.get("group") in groups]:
        if v is not None and any(close(v, t) for t in top):
            return float(v)
    return top[0]


def describe(r: Run) -> str:
    """A short human label from the config fields, e.g. "LoRA r=8 (pets)", "APR λ=0.1"."""
    ds = r.get("dataset", "?")
    if r.get("method") == "lora":
        tg = str(r.get("lora_targets") or "qv").upper()
        return f"LoRA r={r.get('lora_rank')}" + (f" {tg}" if tg != "QV" else "") + f" ({ds})"
    if not unregularized(r):
        kind = {"apr": "APR", "entropy_floor": "EntFloor"}.get(r.get("regularizer"), r.get("regularizer"))
        return f"{kind} λ={r.get('reg_lambda'):g} ({ds})"
    if r.get("freeze_layers"):
        return f"Freeze {r.get('freeze_layers')} ({ds})"
    return f"Full FT lr={r.get('lr', float('nan')):g} wd={r.get('weight_decay', float('nan')):g} ({ds})"


def headline_zeroshot(runs: list[Run]) -> str | None:
    """The first zero-shot dataset any run measured (the one `zeroshot_acc` reports)."""
    return next((n for r in runs for n in (r.final or {}).get("zeroshot") or {}), None)


def pretrained_zeroshot(baseline: dict[str, dict], name: str | None, model: str | None = None) -> float | None:
    """E1's zero-shot accuracy on dataset `name`: the first baseline that measured it, or None.

    Args:
        baseline: {file stem: baseline JSON} (`Matrix.baseline`).
        name: a zero-shot dataset as final.json names it (`headline_zeroshot`).
        model: only E1 of this model counts (a matrix of several models has one E1 per model;
            another model's pretrained accuracy is no reference). None = any baseline.
    """
    for b in baseline.values():
        if model is not None and b.get("model") != model:
            continue
        acc = ((b.get("zeroshot") or {}).get(name) or {}).get("acc")
        if acc is not None:
            return acc
    return None


def by_config(runs: list[Run]) -> dict[str, list[Run]]:
    """Group runs (seeds) by config id, keeping their order."""
    out: dict[str, list[Run]] = {}
    for r in runs:
        out.setdefault(r.config_id, []).append(r)
    return out


def select(m: Matrix) -> dict[str, Any]:
    """Name the runs each analysis needs, from their config fields (results.csv columns).

    Returns a dict: `datasets` (most runs first), `primary`, `default_lr`, `default_wd`,
    `reference` {dataset: plain full-FT runs at the defaults (E2, E3)}, `lora` {dataset:
    LoRA QV runs (E4–E7)}, `lora_all` (incl. QKVO, A2), `lr_sweep` (A1 + E2), `wd_sweep`
    (R3 + E2), `freezing` (A3 + E2), `regularized` (R1, R2), all on the primary dataset.
    """
    done = m.done
    counts = Counter(r.get("dataset") for r in done)
    datasets = [ds for ds, _ in sorted(counts.items(), key=lambda kv: -kv[1])]
    primary = datasets[0] if datasets else None
    full = [r for r in done if r.get("method") == "full"]
    optim = (m.spec.get("defaults") or {}).get("optim") or {}
    lr0 = _default(full, "lr", optim.get("lr"), ("E2", "E3"))
    wd0 = _default(full, "weight_decay", optim.get("weight_decay"), ("E2", "E3"))
    plain = [r for r in full if not r.get("freeze_layers") and unregularized(r)]
    at_lr = lambda r: close(r.get("lr"), lr0)  # noqa: E731
    at_wd = lambda r: close(r.get("weight_decay"), wd0)  # noqa: E731
    on = lambda rs, ds=primary: [r for r in rs if r.get("dataset") == ds]  # noqa: E731
    lora_all = [r for r in done if r.get("method") == "lora"]
    return {
        "datasets": datasets, "primary": primary, "default_lr": lr0, "default_wd": wd0,
        "reference": {ds: on([r for r in plain if at_lr(r) and at_wd(r)], ds) for ds in datasets},
        "lora": {ds: on([r for r in lora_all if (r.get("lora_targets") or "qv") == "qv"
                         and unregularized(r) and not r.get("freeze_layers")], ds) for ds in datasets},
        "lora_all": on(lora_all),
        "lr_sweep": sorted(on([r for r in plain if at_wd(r)]), key=lambda r: r.get("lr")),
        "wd_sweep": sorted(on([r for r in plain if at_lr(r)]), key=lambda r: r.get("weight_decay")),
        "freezing": sorted(on([r for r in full if unregularized(r) and at_lr(r) and at_wd(r)]),
                           key=lambda r: r.get("freeze_layers") or 0),
        "regularized": on([r for r in full if not unregularized(r) and not r.get("freeze_layers")
                           and at_lr(r) and at_wd(r)]),
    }
