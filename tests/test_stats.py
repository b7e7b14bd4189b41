"""stats.py against scipy, hand computations and the reports' numbers; analyze() on fixtures."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sp

from analysis_fixture import build_matrix
from attncollapse.analysis import stats, table


def test_correlate_reproduces_the_reports_lr_table():
    # Experiment report §3.4 / §6.4 and English report finding 3: r = −0.893, p = 0.041, ρ = −1.
    lr = [1e-6, 5e-6, 1e-5, 5e-5, 1e-4]
    dh = [1.45, 0.33, -0.14, -4.19, -10.40]
    c = stats.correlate(np.log10(lr), dh)
    assert round(c["pearson_r"], 3) == -0.893
    assert round(c["pearson_p"], 3) == 0.041
    assert c["spearman_rho"] == pytest.approx(-1.0)
    assert c["n"] == 5


def test_correlate_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=20)
    y = 0.5 * x + rng.normal(size=20)
    c = stats.correlate(x, y)
    assert c["pearson_r"] == pytest.approx(sp.pearsonr(x, y)[0])
    assert c["pearson_p"] == pytest.approx(sp.pearsonr(x, y)[1])
    assert c["spearman_rho"] == pytest.approx(sp.spearmanr(x, y)[0])
    assert c["spearman_p"] == pytest.approx(sp.spearmanr(x, y)[1])
    with pytest.raises(ValueError):
        stats.correlate([1, 2], [3, 4])


def test_compare_against_hand_computation_and_scipy():
    a, b = np.array([1.0, 2, 3, 4, 5]), np.array([2.0, 4, 6, 8, 10])
    r = stats.compare(a, b, n_boot=2000, seed=3)
    # by hand: means 3 and 6, variances 2.5 and 10
    assert r["diff"] == pytest.approx(-3.0)
    assert r["welch_t"] == pytest.approx(-3.0 / math.sqrt(2.5 / 5 + 10 / 5))
    df = (2.5 / 5 + 10 / 5) ** 2 / ((2.5 / 5) ** 2 / 4 + (10 / 5) ** 2 / 4)
    assert r["welch_p"] == pytest.approx(2 * sp.t.sf(abs(r["welch_t"]), df))
    assert r["cohens_d"] == pytest.approx(-3.0 / math.sqrt((4 * 2.5 + 4 * 10) / 8))  # pooled SD 2.5 → d = −1.2
    mw = sp.mannwhitneyu(a, b, alternative="two-sided")
    assert (r["mwu_u"], r["mwu_p"]) == pytest.approx((mw.statistic, mw.pvalue))
    assert r["ci_low"] <= r["diff"] <= r["ci_high"]


def test_bootstrap_ci_is_reproducible_by_seed():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 30), rng.normal(0.5, 1, 25)
    r1, r2 = stats.compare(a, b, seed=7), stats.compare(a, b, seed=7)
    r3 = stats.compare(a, b, seed=8)
    assert (r1["ci_low"], r1["ci_high"]) == (r2["ci_low"], r2["ci_high"])
    assert (r1["ci_low"], r1["ci_high"]) != (r3["ci_low"], r3["ci_high"])
    assert r1["n_boot"] == 10000  # the reports' resample count is the default
    # the percentile CI of a difference of means sits near ±1.96 standard errors
    se = math.sqrt(a.var(ddof=1) / 30 + b.var(ddof=1) / 25)
    assert r1["ci_high"] - r1["ci_low"] == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_anova_against_hand_computation():
    r = stats.anova([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert r["F"] == pytest.approx(27.0)  # SSB 3·(9 + 0 + 9) = 54 over 2 df; SSW 6 over 6 df
    assert r["p"] == pytest.approx(sp.f.sf(27.0, 2, 6))
    assert r["group_means"] == [2.0, 5.0, 8.0]
    with pytest.raises(ValueError):
        stats.anova([[1], [2, 3]])


def test_holm_against_hand_computation():
    # sorted p: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, max(0.04·1, 0.06) = 0.06
    adj = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert list(stats.holm([0.5, 0.9])) == [1.0, 1.0]  # 0.5·2 caps at 1, and stays monotone
    with_nan = stats.holm([0.01, float("nan"), 0.02])
    assert math.isnan(with_nan[1]) and with_nan[[0, 2]] == pytest.approx([0.02, 0.02])
    assert stats.holm([]).size == 0


def test_layer_thirds_generalise():
    assert [list(g + 1) for g in stats.layer_thirds(12)] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert [len(g) for g in stats.layer_thirds(7)] == [3, 2, 2]


def test_analysis_modules_do_not_import_torch():
    code = ("import sys, attncollapse.analysis; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def _family(st, name):
    return {e["label"].split(":")[0]: e for e in st["tests"][name]["entries"]}


def test_analyze_paper_matrix(tmp_path):
    d = build_matrix(tmp_path / "m")
    st = stats.analyze(d)
    assert json.loads((d / "stats.json").read_text())["tests"].keys() == st["tests"].keys()
    T = st["tests"]
    fl = _family(st, "fullft_vs_lora")
    assert fl["eurosat"]["runs_a"] == ["E2"] and fl["eurosat"]["runs_b"] == ["E4", "E5", "E6"]
    assert (fl["eurosat"]["unit"], fl["eurosat"]["n_a"], fl["eurosat"]["n_b"]) == ("layers", 12, 36)
    assert fl["pets"]["runs_a"] == ["E3"] and fl["pets"]["runs_b"] == ["E7"]
    # per-layer Δ straight from final.json delta_pct_layers
    e2 = json.loads((d / "E2" / "final.json").read_text())["delta_pct_layers"]["entropy"]
    e5 = [json.loads((d / r / "final.json").read_text())["delta_pct_layers"]["entropy"] for r in ("E4", "E5", "E6")]
    ref = sp.ttest_ind(e2, sum(e5, []), equal_var=False)
    assert fl["eurosat"]["welch_t"] == pytest.approx(ref.statistic)
    lr = T["lr_sweep"]
    assert sorted(lr["runs"]) == sorted(["A1-lr1e-06", "A1-lr5e-06", "E2", "A1-lr5e-05", "A1-lr0.0001"])
    assert lr["pearson_r"] == pytest.approx(-0.89, abs=0.01) and lr["spearman_rho"] == pytest.approx(-1)
    regs = _family(st, "regularizers")
    assert set(regs) == {"R1-apr0.01", "R1-apr0.1", "R1-apr1.0", "R2-entfloor0.01", "R2-entfloor0.1"}
    for e in regs.values():
        assert e["runs_b"] == ["E2"] and e["p_holm"] >= e["p"] and "mwu_p_holm" in e
    raw = [e["welch_p"] for e in T["regularizers"]["entries"]]
    assert [e["welch_p_holm"] for e in T["regularizers"]["entries"]] == pytest.approx(list(stats.holm(raw)))
    assert set(_family(st, "weight_decay")) == {"R3-wd0.0", "R3-wd0.1"}
    assert set(_family(st, "freezing")) == {"A3-freeze3", "A3-freeze6", "A3-freeze9"}
    assert len(_family(st, "lr_vs_default")) == 4
    lg = T["layer_groups"]["entries"]
    assert len(lg) == 21 and lg[0]["groups"] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert len(T["metric_correlations"]["entries"]) == 6
    assert T["collapse_vs_zeroshot"]["n"] == 21
    assert st["default_lr"] == pytest.approx(1e-5) and st["primary_dataset"] == "eurosat"


def test_analyze_with_seeds_uses_runs_as_samples(tmp_path):
    d = build_matrix(tmp_path / "m", ["E2", "E4", "E5", "R1-apr0.1"], seeds=(1, 2, 3), overlays=(), wise=())
    st = stats.analyze(d, n_boot=500)
    e = st["tests"]["fullft_vs_lora"]["entries"][0]
    assert (e["unit"], e["n_a"], e["n_b"]) == ("runs", 3, 6)
    assert e["runs_a"] == ["E2-s1", "E2-s2", "E2-s3"]
    r = st["tests"]["regularizers"]["entries"][0]
    assert (r["unit"], r["n_a"], r["n_b"]) == ("runs", 3, 3)
    assert st["tests"]["layer_groups"]["entries"][0]["seeds_averaged"] == 3


def test_missing_runs_are_skipped_with_a_reason(tmp_path):
    d = build_matrix(tmp_path / "m", ["E2", "E5"], overlays=(), wise=(), failed=["E5"])
    T = stats.analyze(d, n_boot=200)["tests"]
    assert T["lr_sweep"]["skipped"] and "learning rates" in T["lr_sweep"]["reason"]
    assert T["regularizers"]["skipped"] and "R1" in T["regularizers"]["reason"]
    e = T["fullft_vs_lora"]["entries"][0]  # the LoRA run failed: no sample on that side
    assert e["skipped"] and "missing runs" in e["reason"]
    assert T["metric_correlations"]["entries"][0]["skipped"]


def test_runs_are_found_by_config_not_by_id(tmp_path):
    rename = {rid: f"run{i:02d}" for i, rid in enumerate(["E2", "E3", "E4", "E5", "E6", "E7", "A1-lr1e-06",
                                                           "A1-lr5e-05", "R1-apr0.1", "R2-entfloor0.1"])}
    d = build_matrix(tmp_path / "m", list(rename), rename=rename, overlays=(), wise=())
    T = stats.analyze(d, n_boot=200)["tests"]
    e = _family({"tests": T}, "fullft_vs_lora")["eurosat"]
    assert e["runs_a"] == [rename["E2"]] and e["runs_b"] == [rename[x] for x in ("E4", "E5", "E6")]
    assert sorted(T["lr_sweep"]["runs"]) == sorted(rename[x] for x in ("E2", "A1-lr1e-06", "A1-lr5e-05"))
    assert len(T["regularizers"]["entries"]) == 2


def test_three_layer_model_skips_the_anova(tmp_path):
    d = build_matrix(tmp_path / "m", ["E2", "E5"], num_layers=3, model="tiny", overlays=(), wise=())
    lg = stats.analyze(d, n_boot=200)["tests"]["layer_groups"]["entries"]
    assert all(e["skipped"] and "needs ≥ 6" in e["reason"] for e in lg)


def test_results_csv_missing_rebuilds_rows(tmp_path):
    d = build_matrix(tmp_path / "m", ["E2", "E5", "R1-apr0.1"], overlays=(), wise=())
    (d / "results.csv").unlink()
    m = table.load(d)
    assert {r.run_id for r in m.done} == {"E2", "E5", "R1-apr0.1"} and m.notes
    st = stats.analyze(d, n_boot=200)
    assert st["tests"]["regularizers"]["entries"][0]["runs_b"] == ["E2"]
