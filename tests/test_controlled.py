"""The controlled (factorial) study: its configs, its statistics against independent
computations (a balanced two-way ANOVA by hand, scipy's Welch + statsmodels' Holm, the
retention OLS by numpy least squares), and the whole thing through the real runner on
controlled-demo, whose report must print the numbers stats.json holds."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sp

from attncollapse.analysis import table
from attncollapse.analysis.design import factorial
from attncollapse.analysis.statistics import controlled
from attncollapse.cli import main
from attncollapse.config import ConfigError, load_matrix, matrix_from_dict

RESPONSES = ("entropy_delta_pct", "erf_delta_pct", "best_acc", "zeroshot_acc")
PCT = {"best_acc", "zeroshot_acc"}  # fractions in results.csv, percent in stats.json


# ----------------------------------------------------------------------------- independent computations

def hand_anova(cells: dict[tuple[str, float], list[float]]) -> dict[str, tuple[float, float, float, float]]:
    """Balanced two-way ANOVA with replication, by the textbook sums of squares:
    term → (sum_sq, df, F, p); 'residual' → (sum_sq, df, nan, nan)."""
    a_lv = sorted({k[0] for k in cells})
    b_lv = sorted({k[1] for k in cells})
    n = len(next(iter(cells.values())))
    assert all(len(v) == n for v in cells.values()), "the demo is balanced"
    y = np.concatenate([cells[(a, b)] for a in a_lv for b in b_lv])
    m = y.mean()
    ss_a = len(b_lv) * n * sum((np.mean([cells[(a, b)] for b in b_lv]) - m) ** 2 for a in a_lv)
    ss_b = len(a_lv) * n * sum((np.mean([cells[(a, b)] for a in a_lv]) - m) ** 2 for b in b_lv)
    ss_cells = n * sum((np.mean(cells[(a, b)]) - m) ** 2 for a in a_lv for b in b_lv)
    ss_e = sum(((np.asarray(v) - np.mean(v)) ** 2).sum() for v in cells.values())
    df_a, df_b = len(a_lv) - 1, len(b_lv) - 1
    df_e = len(a_lv) * len(b_lv) * (n - 1)
    out = {"residual": (ss_e, df_e, np.nan, np.nan)}
    for name, ss, df in (("method", ss_a, df_a), ("lr", ss_b, df_b), ("method:lr", ss_cells - ss_a - ss_b, df_a * df_b)):
        F = (ss / df) / (ss_e / df_e)
        out[name] = (ss, df, F, sp.f.sf(F, df, df_e))
    return out


def read_results(d: Path) -> list[dict]:
    with open(d / "results.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["status"] == "done"]


def val(row: dict, key: str) -> float:
    return 100 * float(row[key]) if key in PCT else float(row[key])


# ----------------------------------------------------------------------------- configs

def test_controlled_config_is_the_80_run_factorial():
    runs = load_matrix("controlled").expand()
    cells = [(r.config.dataset, r.config.method, r.config.optim.lr, r.config.seed) for r in runs]
    assert sorted(cells) == sorted(itertools.product(["eurosat", "pets"], ["full", "lora"],
                                                     [1e-6, 5e-6, 1e-5, 5e-5], [7, 11, 19, 42, 123]))
    assert {(r.config.dataset, r.config.optim.epochs) for r in runs} == {("eurosat", 20), ("pets", 30)}
    assert {(r.config.lora.rank, r.config.lora.alpha, r.config.optim.batch_size) for r in runs} == {(8, 16, 64)}
    assert load_matrix("controlled").design == "controlled" and load_matrix("demo").design == "study"
    demo = load_matrix("controlled-demo").expand()
    assert len({r.config.dataset for r in demo}) == 2 and len({r.config.method for r in demo}) == 2
    assert len({r.config.optim.lr for r in demo}) >= 2 and len({r.config.seed for r in demo}) >= 2


def test_controlled_design_rejects_two_runs_in_one_cell():
    spec = {"name": "x", "design": "controlled", "seeds": [1, 2],
            "defaults": {"model": "tiny", "dataset": "synthetic"},
            "runs": {"a": {"sweep": {"optim.lr": [0.1, 0.2]}}, "b": {"optim": {"lr": 0.2}}}}
    with pytest.raises(ConfigError) as info:
        matrix_from_dict(spec)
    msg = "\n".join(info.value.errors)
    assert "runs.b: run b-s1 repeats the cell dataset=synthetic, method=full, lr=0.2, seed=1 of a-lr0.2-s1" in msg
    confounded = {**spec, "runs": {"a": {"sweep": {"optim.lr": [0.1, 0.2]}},
                                   "b": {"method": "lora", "optim": {"lr": 0.1, "weight_decay": 0.5}}}}
    with pytest.raises(ConfigError) as info:
        matrix_from_dict(confounded)
    assert "runs.b: run b-s1 differs from a-lr0.1-s1 in optim.weight_decay" in "\n".join(info.value.errors)
    with pytest.raises(ConfigError, match="design"):
        matrix_from_dict({**spec, "design": "latin-square", "runs": {"a": {}}})


# ----------------------------------------------------------------------------- statistics with E's measures

def _synthetic_matrix(tmp_path: Path, *, with_structure: bool, drop_cell: bool = False) -> table.Matrix:
    """A results table shaped like results.csv (the structure columns of the new measures
    included or not), 2 datasets × 2 methods × 3 lrs × 3 seeds, with E1's zero-shot."""
    rng = np.random.default_rng(0)
    runs = []
    for ds, me, lr, seed in itertools.product(["eurosat", "pets"], ["full", "lora"], [1e-6, 1e-5, 5e-5], [7, 11, 19]):
        if drop_cell and (ds, me, lr) == ("pets", "lora", 5e-5):
            continue
        dent = (-2.0 if me == "full" else 0.5) * np.log10(lr / 1e-7) + rng.normal(0, 0.5)
        layers = dent + np.array([0.5, 0.0, -0.5]) * abs(dent) + rng.normal(0, 0.1, 3)
        row = {"run_id": f"{ds}-{me}-{lr:g}-s{seed}", "dataset": ds, "method": me, "lr": lr, "seed": seed,
               "model": "m", "status": "done", "entropy_delta_pct": float(dent),
               "erf_delta_pct": float(1.5 * dent + rng.normal(0, 1)), "best_acc": float(0.9 + rng.normal(0, 0.02)),
               "zeroshot_acc": float(0.5 + 0.03 * dent + rng.normal(0, 0.02))}
        if with_structure:
            cka = np.clip(0.9 + 0.02 * (layers - layers.mean()) + rng.normal(0, 0.01, 3), 0, 1)
            row.update({"cka_final": float(cka.mean()), "cka_layers": " ".join(repr(float(c)) for c in cka),
                        "rollout_entropy_delta_pct": float(0.7 * dent + rng.normal(0, 0.3)),
                        "patch_entropy_delta_pct": float(0.4 * dent + rng.normal(0, 0.3))})
        final = {"delta_pct_layers": {"entropy": [float(v) for v in layers]}}
        runs.append(table.Run(row["run_id"], row["run_id"].rsplit("-s", 1)[0], tmp_path / row["run_id"], row, final))
    base = {"eurosat": {"model": "m", "zeroshot": {"cifar100": {"acc": 0.6}}}}
    for r in runs:
        r.final["zeroshot"] = {"cifar100": {"acc": r.row["zeroshot_acc"]}}
    return table.Matrix(tmp_path, runs, base, {}, {"name": "syn", "design": "controlled"}, [])


def _ols(y: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, int]:
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    df = len(y) - X.shape[1]
    se = np.sqrt(np.diag(np.linalg.inv(X.T @ X)) * (resid @ resid) / df)
    r2 = 1 - (resid @ resid) / ((y - y.mean()) ** 2).sum()
    return beta, se, r2, df


def test_statistics_use_the_structure_columns_when_present(tmp_path):
    m = _synthetic_matrix(tmp_path, with_structure=True)
    st = controlled.analyze_matrix(m)
    assert st["measured"] == {"rollout": True, "patch_entropy": True, "cka": True, "map_drift": False}
    assert set(st["absent"]) == {"map_drift"} and "CKA not measured" not in json.dumps(st)
    assert {"cka_final", "rollout_entropy_delta_pct", "patch_entropy_delta_pct"} <= set(st["responses"])
    rows = [r.row for r in m.runs]
    # ANOVA of CKA on eurosat against the textbook sums of squares
    cells: dict = {}
    for r in rows:
        if r["dataset"] == "eurosat":
            cells.setdefault((r["method"], r["lr"]), []).append(r["cka_final"])
    ref = hand_anova(cells)
    got = st["datasets"]["eurosat"]["anova"]["cka_final"]
    for term in ("method", "lr", "method:lr"):
        assert got["terms"][term]["F"] == pytest.approx(ref[term][2], rel=1e-6)
        assert got["terms"][term]["p"] == pytest.approx(ref[term][3], rel=1e-6)
    # CKA vs Δentropy: run level and per layer, against scipy
    ck = st["cka_vs_entropy"]
    assert ck["run_level"]["pearson_r"] == pytest.approx(
        sp.pearsonr([r["cka_final"] for r in rows], [r["entropy_delta_pct"] for r in rows]).statistic)
    per = [sp.pearsonr([float(r["cka_layers"].split()[i]) for r in rows],
                       [run.final["delta_pct_layers"]["entropy"][i] for run in m.runs]).statistic for i in range(3)]
    assert [e["pearson_r"] for e in ck["per_layer"]] == pytest.approx(per)
    assert ck["strongest_layer"] == int(np.argmax(np.abs(per))) + 1
    # retention model: z-scored structure incl. CKA, method, log10 lr, dataset — by least squares
    y = np.array([100 * r["zeroshot_acc"] / 0.6 for r in rows])
    z = lambda k: (np.array([r[k] for r in rows]) - np.mean([r[k] for r in rows])) / np.std([r[k] for r in rows], ddof=1)  # noqa: E731
    X = np.column_stack([np.ones(len(rows)), [r["method"] == "lora" for r in rows],
                         [r["dataset"] == "pets" for r in rows], z("entropy_delta_pct"), z("erf_delta_pct"),
                         z("cka_final"), np.log10([r["lr"] for r in rows])]).astype(float)
    beta, se, r2, df = _ols(y, X)
    rm = st["retention_model"]
    names = ["Intercept", "C(method)[T.lora]", "C(dataset)[T.pets]", "z_entropy_delta_pct", "z_erf_delta_pct",
             "z_cka_final", "log10_lr"]
    coefs = {c["term"]: c for c in rm["coefficients"]}
    assert sorted(coefs) == sorted(names)
    t = sp.t.ppf(0.975, df)
    for i, n in enumerate(names):
        assert coefs[n]["coef"] == pytest.approx(beta[i], rel=1e-6, abs=1e-9)
        assert coefs[n]["ci_low"] == pytest.approx(beta[i] - t * se[i], rel=1e-6, abs=1e-9)
        assert coefs[n]["ci_high"] == pytest.approx(beta[i] + t * se[i], rel=1e-6, abs=1e-9)
    assert rm["r2"] == pytest.approx(r2) and rm["n"] == len(rows)
    # the figures draw what is measured: CKA scatter + per-layer bars, CKA in the interaction panels
    from attncollapse.analysis.figures import controlled as cfig

    ctx = cfig.CCtx(m, factorial(m), st)
    for name in ("controlled_cka", "controlled_interaction", "controlled_retention"):
        path = cfig.FIGURES[name](ctx, tmp_path / f"{name}.png")
        assert isinstance(path, Path) and path.stat().st_size > 0, path


def test_statistics_say_what_is_absent_and_skip_what_cannot_run(tmp_path):
    m = _synthetic_matrix(tmp_path, with_structure=False, drop_cell=True)
    st = controlled.analyze_matrix(m)
    assert st["cka_vs_entropy"] == {"skipped": True, "reason": "CKA not measured in this study "
                                                               "(results.csv has no cka_final values)"}
    assert "CKA not measured in this study (results.csv has no cka_final values): the model omits it" \
        in st["retention_model"]["notes"]
    assert "z_cka_final" not in {c["term"] for c in st["retention_model"]["coefficients"]}
    from attncollapse.analysis.figures import controlled as cfig

    ctx = cfig.CCtx(m, factorial(m), st)
    assert cfig.cka(ctx, tmp_path / "cka.png") == st["cka_vs_entropy"]["reason"]
    assert not (tmp_path / "cka.png").exists()
    pets = st["datasets"]["pets"]
    assert pets["empty_cells"] == [{"method": "lora", "lr": 5e-5}]
    assert pets["anova"]["entropy_delta_pct"]["skipped"] and "not a full factorial" in pets["anova"]["entropy_delta_pct"]["reason"]
    assert not st["datasets"]["eurosat"]["anova"]["entropy_delta_pct"].get("skipped")
    lone = [e for e in pets["simple_effects"]["entropy_delta_pct"]["entries"] if e["lr"] == 5e-5]
    assert lone[0]["skipped"] and pets["simple_effects"]["entropy_delta_pct"]["m"] == 2


# ----------------------------------------------------------------------------- end to end

def test_controlled_demo_through_the_real_runner(tmp_path, capsys):
    out = tmp_path / "cd"
    # The packaged demo, trimmed to one short epoch per run to stay fast on a busy CI machine
    # (the whole design — 2 datasets × 2 methods × 2 lrs × 2 seeds — is kept).
    small = ["optim.epochs=1", "runs.digits.optim.epochs=1", "data.max_train_images=64", "zeroshot.max_images=60",
             "data.eval_subset_size=20"]
    assert main(["run", "controlled-demo", "--out", str(out), *sum([["--set", s] for s in small], [])]) == 0, \
        capsys.readouterr().out
    rows = read_results(out)
    assert {"dataset", "method", "lr", "seed", "entropy_delta_pct"} <= set(rows[0])
    st = json.loads((out / "stats.json").read_text())
    assert st["design"] == "controlled" and st["runs_done"] == len(rows) == 16
    assert st["factors"]["datasets"] == list(dict.fromkeys(r["dataset"] for r in rows))
    assert st["factors"]["lrs"] == sorted({float(r["lr"]) for r in rows})
    base_zs = json.loads((out / "baseline" / "digits.json").read_text())["zeroshot"]["digits"]["acc"]
    md = (out / "report.md").read_text()
    assert md.startswith("# Controlled study: controlled-demo")
    for ds in st["factors"]["datasets"]:
        mine = [r for r in rows if r["dataset"] == ds]
        for key in RESPONSES:  # ANOVA: by hand
            cells: dict = {}
            for r in mine:
                cells.setdefault((r["method"], float(r["lr"])), []).append(val(r, key))
            ref, got = hand_anova(cells), st["datasets"][ds]["anova"][key]
            if np.var([v for vs in cells.values() for v in vs]) == 0 or ref["residual"][0] == 0:
                assert got["skipped"]
                continue
            for term in ("method", "lr", "method:lr"):
                assert got["terms"][term]["sum_sq"] == pytest.approx(ref[term][0], rel=1e-6, abs=1e-9)
                assert got["terms"][term]["F"] == pytest.approx(ref[term][2], rel=1e-6)
                assert got["terms"][term]["p"] == pytest.approx(ref[term][3], rel=1e-6, abs=1e-12)
            assert got["residual"]["df"] == ref["residual"][1]
        # simple effects: scipy's Welch per lr, statsmodels' Holm across lrs
        from statsmodels.stats.multitest import multipletests

        for key in ("entropy_delta_pct", "zeroshot_acc"):
            ps, entries = [], st["datasets"][ds]["simple_effects"][key]["entries"]
            for lr, e in zip(st["factors"]["lrs"], entries):
                a = [val(r, key) for r in mine if r["method"] == "full" and float(r["lr"]) == lr]
                b = [val(r, key) for r in mine if r["method"] == "lora" and float(r["lr"]) == lr]
                if np.ptp(a) == 0 and np.ptp(b) == 0:  # both constant: Welch's t undefined, not a p of 0
                    assert e["skipped"] and "not testable" in e["reason"]
                    continue
                ps.append(sp.ttest_ind(a, b, equal_var=False).pvalue)
                assert e["welch_p"] == pytest.approx(ps[-1])
            tested = [e["welch_p_holm"] for e in entries if not e.get("skipped")]
            assert tested == pytest.approx(list(multipletests(ps, method="holm")[1]) if ps else [])
        # the report prints the matched-LR cells and the ANOVA F that stats.json holds
        F = st["datasets"][ds]["anova"]["entropy_delta_pct"]["terms"]["lr"]["F"]
        assert f"On {ds}: learning rate F(1, 4) = {F:.2f}" in md
        cell = [r for r in mine if r["method"] == "full" and float(r["lr"]) == st["factors"]["lrs"][0]]
        v = [float(r["entropy_delta_pct"]) for r in cell]
        assert f"| {np.mean(v):.2f} ± {np.std(v, ddof=1):.2f} |" in md
    # retention model: numpy least squares on the same columns
    y = np.array([100 * float(r["zeroshot_acc"]) / base_zs for r in rows])
    z = lambda k: (np.array([float(r[k]) for r in rows]) - np.mean([float(r[k]) for r in rows])) / np.std([float(r[k]) for r in rows], ddof=1)  # noqa: E731
    X = np.column_stack([np.ones(len(rows)), [r["method"] == "lora" for r in rows],
                         [r["dataset"] == "synthetic" for r in rows], z("entropy_delta_pct"), z("erf_delta_pct"),
                         z("cka_final"), np.log10([float(r["lr"]) for r in rows])]).astype(float)
    beta, se, r2, df = _ols(y, X)
    rm = st["retention_model"]
    coefs = {c["term"]: c["coef"] for c in rm["coefficients"]}
    names = ["Intercept", "C(method)[T.lora]", "C(dataset)[T.synthetic]", "z_entropy_delta_pct", "z_erf_delta_pct",
             "z_cka_final", "log10_lr"]
    assert [coefs[n] for n in names] == pytest.approx(list(beta), rel=1e-6, abs=1e-9)
    assert rm["r2"] == pytest.approx(r2)
    assert f"R² = {rm['r2']:.3f}" in md
    # the structure measures (eval.structure, on by default) reach the statistics and the report
    assert not st["cka_vs_entropy"].get("skipped") and "CKA not measured" not in md
    assert "attention rollout not measured" not in md
    figs = json.loads((out / "figures" / "figures.json").read_text())
    for name in ("controlled_interaction", "controlled_layer_heatmaps", "controlled_correlations", "controlled_retention",
                 "controlled_cka"):
        assert (out / figs[name]["file"]).stat().st_size > 0 and f"({figs[name]['file']})" in md
    assert "PIPELINE DEMONSTRATION" in (out / "report.html").read_text()
