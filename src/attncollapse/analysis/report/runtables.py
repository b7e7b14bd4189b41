"""The report's per-run tables: experiment matrix, datasets, grand comparison, zero-shot.

Every number is read from the matrix's files (results.csv, final.json, history.json,
config.yaml, baseline/*.json); nothing is computed but means over a configuration's seeds
and the differences final − initial. One row per configuration: with one seed it shows the
run's value, with several `mean ± sd` over seeds (`config_summary`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import roles
from ..statistics import seeds
from .render import Block, dpct, num, pct
from ..instability import UNSTABLE_MARK, unstable, unstable_rule  # noqa: F401 (re-exported)
from ..table import METRICS, Run

ZS_PROTOCOLS = (("acc", "as trained"), ("acc_frozen_projection", "frozen pretrained projection"),
                ("acc_base_only", "adapters off"))
"""final.json zero-shot keys and the protocol each names (docs/FORMATS.md)."""


# ----------------------------------------------------------------------------- seeds

def _zs(r: Run, key: str) -> float | None:
    """The first zero-shot dataset's accuracy under one protocol (final.json key), or None."""
    zs = (r.final or {}).get("zeroshot") or {}
    block = next(iter(zs.values()), None)
    return block.get(key) if isinstance(block, dict) else None


def _getters() -> dict[str, Callable[[Run], Any]]:
    cols = ["best_acc", "final_acc"] + [f"{m}_{k}" for m in METRICS for k in ("initial", "final", "delta_pct")]
    out: dict[str, Callable[[Run], Any]] = {c: (lambda r, c=c: r.get(c)) for c in cols}
    for m in METRICS:
        out[f"{m}_delta_abs"] = lambda r, m=m: (None if r.get(f"{m}_final") is None or r.get(f"{m}_initial") is None
                                                else r.get(f"{m}_final") - r.get(f"{m}_initial"))
    for key, _ in ZS_PROTOCOLS:
        out[f"zeroshot_{key}"] = lambda r, key=key: _zs(r, key)
    return out


def config_summary(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """Per configuration, every reported number over its seeds (`seeds.aggregate`, plus the
    report's derived columns such as absolute Δ).

    Returns:
        {config_id: {"n_seeds", "seeds", "run_ids", "runs", <column>: {"mean", "sd", "ci_low", "ci_high", "n"}}}
    """
    base = seeds.aggregate(runs)
    out = {}
    for cid, rs in roles.by_config(runs).items():
        agg: dict[str, Any] = {**base.get(cid, {}), "n_seeds": len(rs), "seeds": [r.get("seed") for r in rs],
                               "run_ids": [r.run_id for r in rs], "runs": rs}
        for col, get in _getters().items():
            if isinstance(agg.get(col), dict):
                continue  # aggregated by seeds.aggregate (with its 95% CI)
            v = np.asarray([float(x) for x in map(get, rs) if x is not None], float)
            agg[col] = {"mean": float(v.mean()) if len(v) else None, "n": len(v),
                        "sd": float(v.std(ddof=1)) if len(v) > 1 else None, "ci_low": None, "ci_high": None}
        out[cid] = agg
    return out


def config_means(runs: list[Run], value: Callable[[Run], Any]) -> dict[str, float]:
    """{config_id: mean of `value` over its seeds}, for configurations with at least one value."""
    out = {}
    for cid, rs in roles.by_config(runs).items():
        mean = seeds.summarize([value(r) for r in rs])["mean"]
        if mean is not None:
            out[cid] = mean
    return out


def cell(agg: dict, col: str, fmt: Callable[[Any], str]) -> str:
    """One number of a configuration: the value (one seed) or "mean ± sd" (several)."""
    c = agg.get(col) or {}
    if c.get("mean") is None:
        return "—"
    return fmt(c["mean"]) + (f" ± {fmt(c['sd']).lstrip('+')}" if c.get("sd") is not None else "")


def _cfg(r: Run) -> dict:
    return r.config()


# ----------------------------------------------------------------------------- tables

def matrix_table(runs: list[Run]) -> list[Block]:
    """Every configuration's settings (lr, LoRA rank and targets, λ, weight decay, frozen layers)."""
    head = ["Run", "Method", "Dataset", "lr", "LoRA rank", "LoRA targets", "Regularizer", "λ", "Weight decay",
            "Frozen layers", "Epochs", "Batch", "Seeds"]
    rows = []
    for cid, rs in roles.by_config(runs).items():
        r = rs[0]
        lora = r.get("method") == "lora"
        rows.append([cid, r.get("method", "—"), r.get("dataset", "—"), num(r.get("lr"), "g"),
                     num(r.get("lora_rank"), "d") if lora else "—", str(r.get("lora_targets") or "—") if lora else "—",
                     r.get("regularizer") or "none", num(r.get("reg_lambda"), "g"), num(r.get("weight_decay"), "g"),
                     num(r.get("freeze_layers") or 0, "d"), num(r.get("epochs"), "g"), num(r.get("batch_size"), "d"),
                     ", ".join(str(x.get("seed")) for x in rs)])
    return [("table", head, rows)] + [("p", t) for t in confounds(runs)]


def confounds(runs: list[Run]) -> list[str]:
    """Settings that change together with the method, so the method's effect cannot be told apart."""
    full = {r.get("lr") for r in runs if r.get("method") == "full" and r.get("lr") is not None}
    lora = {r.get("lr") for r in runs if r.get("method") == "lora" and r.get("lr") is not None}
    if full and lora and not full & lora:
        return [f"**Method and learning rate are confounded**: every LoRA run used lr "
                f"{', '.join(format(x, 'g') for x in sorted(lora))}, every full-FT run lr "
                f"{', '.join(format(x, 'g') for x in sorted(full))}. A full-FT vs LoRA difference below may come "
                "from either (the reports' setup has the same confound: LoRA 1e-4, full FT 1e-5)."]
    return []


def datasets_table(runs: list[Run], baseline: dict[str, dict]) -> list[Block]:
    """Training and zero-shot datasets: classes, split sizes and protocol, eval subset."""
    head = ["Dataset", "Role", "Source", "Classes", "Train", "Val", "Test", "Eval subset", "Split protocol",
            "Split seed"]
    rows, seen = [], set()
    for r in runs:
        ds = r.get("dataset")
        if ds in seen or not r.final:
            continue
        seen.add(ds)
        info, cfg = r.final.get("data") or {}, _cfg(r)
        sizes, dc = info.get("sizes") or {}, cfg.get("data") or {}
        hist = r.history() or {}
        classes = info.get("classes") or (dc.get("synthetic_classes") if ds == "synthetic" else None)
        proto = r.final.get("split_protocol") or hist.get("split_protocol") or dc.get("split")
        if proto == "hub":
            proto = "hub (its train/test; test doubles as val: the best checkpoint is chosen on test)"
        rows.append([ds, "training", info.get("source", ds), num(classes, "d"), num(sizes.get("train"), "d"),
                     num(sizes.get("val"), "d"), num(sizes.get("test"), "d"),
                     f"{len(hist['eval_idx'])} test images (seed {dc.get('eval_subset_seed', '—')})"
                     if hist.get("eval_idx") else "—", proto or "—", num(info.get("split_seed", dc.get("split_seed")), "d")])
    zs = {}
    for r in runs:
        for name, b in ((r.final or {}).get("zeroshot") or {}).items():
            zs.setdefault(name, b.get("images") if isinstance(b, dict) else None)
    rows += [[name, "zero-shot", name, "—", "—", "—", num(n, "d"), "—", "test split", "—"] for name, n in zs.items()]
    for key, b in baseline.items():
        ds = b.get("dataset", key)  # a matrix of several models keys E1 by <model>_<dataset>
        if ds not in seen:
            seen.add(ds)
            rows.append([ds, "baseline (E1) only", ds, "—", "—", "—", "—", f"{b.get('images', '—')} images", "—", "—"])
    note = ("Classes and split sizes come from final.json `data`; a run that predates it shows —."
            if any(r.final and not r.final.get("data") for r in runs) else None)
    return [("table", head, rows)] + ([("p", note)] if note else [])


def grand_tables(runs: list[Run]) -> list[Block]:
    """Accuracy per configuration, then one table per metric: initial, final, Δ, Δ% (unstable marked)."""
    summ = config_summary(runs)
    pp = lambda x: num(100 * x, ".2f") + "%"  # noqa: E731
    acc = [[cid, roles.describe(a["runs"][0]), str(a["n_seeds"]), cell(a, "best_acc", pp), cell(a, "final_acc", pp),
            cell(a, "zeroshot_acc", pp)] for cid, a in summ.items()]
    B: list[Block] = [("table", ["Run", "Configuration", "Seeds", "Best acc", "Final acc", "Zero-shot (as trained)"], acc)]
    marked = False
    for mt in METRICS:
        rows = []
        for cid, a in summ.items():
            ini = (a.get(f"{mt}_initial") or {}).get("mean")
            mark = UNSTABLE_MARK if unstable(mt, ini) else ""
            marked |= bool(mark)
            four = lambda x: num(x, ".4f")  # noqa: E731  (head diversity starts near 0.001 on the demo)
            rows.append([cid, cell(a, f"{mt}_initial", four), cell(a, f"{mt}_final", four),
                         cell(a, f"{mt}_delta_abs", lambda x: num(x, "+.4f")), cell(a, f"{mt}_delta_pct", dpct) + mark])
        B += [("h", 3, f"{mt}"), ("table", ["Run", "Initial", "Final", "Δ (final − initial)", "Δ%"], rows)]
    B.append(("p", unstable_rule() + ("" if marked else " No Δ% in these tables is marked.")))
    return B


def zeroshot_table(runs: list[Run], baseline: dict[str, dict]) -> list[Block]:
    """Zero-shot accuracy under the three protocols, each named, beside the pretrained model's."""
    names = sorted({n for r in runs for n in (r.final or {}).get("zeroshot") or {}})
    if not names:
        return [("p", "*No zero-shot results in this matrix.*")]
    B: list[Block] = [("p", "Protocols, all measured on the best-accuracy checkpoint (as the reports did): **as "
                            "trained** — the fine-tuned vision tower and its fine-tuned projection (LoRA adapters "
                            "active); **frozen pretrained projection** — the fine-tuned tower with the pretrained "
                            "projection, so a trained projection cannot move the number; this is the reports' "
                            "full-FT protocol (their code loads only the checkpoint's `vision_model.` weights into a "
                            "fresh pretrained CLIP); **adapters off** — LoRA runs with the adapters disabled and the "
                            "pretrained projection, i.e. the pretrained model: the reports' LoRA protocol (English "
                            "report §6.2; — for full FT).")]
    for n in names:
        models = list(dict.fromkeys(r.get("model") for r in runs))
        rows = [[f"E1 (pretrained{'' if len(models) == 1 else ' ' + str(mdl)})", "baseline", "—",
                 pct(roles.pretrained_zeroshot(baseline, n, mdl)), "—", "—"] for mdl in models]
        for cid, rs in roles.by_config(runs).items():
            base = roles.pretrained_zeroshot(baseline, n, rs[0].get("model"))
            blocks = [((r.final or {}).get("zeroshot") or {}).get(n) or {} for r in rs]
            cells = []
            for k, _ in ZS_PROTOCOLS:
                agg = seeds.summarize([z.get(k) for z in blocks])
                rel = f" ({100 * (agg['mean'] - base) / base:+.1f}%)" if base and agg["mean"] is not None else ""
                cells.append(cell({k: agg}, k, pct) + rel)
            rows.append([cid, roles.describe(rs[0]), str(len(rs))] + cells)
        B += [("h", 3, f"{n}"), ("table", ["Run", "Configuration", "Seeds"] + [p for _, p in ZS_PROTOCOLS], rows)]
    return B + [("p", "One row per configuration: its run's accuracy (one seed) or mean ± sd over its seeds. "
                      "In parentheses: change of the (mean) accuracy relative to the pretrained model's.")]


def metric_settings(b: dict) -> str:
    """How an E1 table's numbers were aggregated (baseline.json's EvalConfig fields), in words;
    a file that predates a field shows —."""
    return (f"aggregation {b.get('aggregate', '—')} over batches of {b.get('group_size', '—')}, "
            f"head diversity {b.get('diversity', '—')}, ERF q {b.get('erf_q', '—')}")


def baseline_blocks(baseline: dict[str, dict]) -> list[Block]:
    """E1: each dataset's per-layer table of the pretrained model."""
    if not baseline:
        return [("p", "*No baseline/<dataset>.json in this matrix.*")]
    out: list[Block] = []
    for ds, b in baseline.items():
        lay = b.get("layers") or {}
        out.append(("p", f"**{ds}** ({b.get('images', '?')} eval images, model `{b.get('model', '?')}`; "
                         f"{metric_settings(b)}): "
                         + "; ".join(f"{mt} mean {num((b.get('mean') or {}).get(mt))}, range "
                                     f"{num(min(lay[mt]))}–{num(max(lay[mt]))}" for mt in METRICS if lay.get(mt))))
        L = len(lay.get("entropy", []))
        out.append(("table", ["Layer"] + list(METRICS), [[str(i + 1)] + [num(lay[mt][i]) for mt in METRICS]
                                                          for i in range(L)]))
    return out

