"""published.yaml checked against the reports' own arithmetic; published.py stays torch-free."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sp

from attncollapse.analysis.published import load_published, published_runs, published_statistics

# 001 §2.4 Experiment Matrix, "Total: 21": E2–E7 (6), A1 at four lrs, A2, A3 freezing 3/6/9,
# R1 at three λ, R2 at two λ, R3 at two WD. E1 is the pretrained baseline, not a run.
REPORT_RUNS = [
    "E2", "E3", "E4", "E5", "E6", "E7",
    "A1-lr1e-06", "A1-lr5e-06", "A1-lr5e-05", "A1-lr1e-04", "A2",
    "A3-freeze3", "A3-freeze6", "A3-freeze9",
    "R1-apr0.01", "R1-apr0.1", "R1-apr1.0", "R2-ent0.01", "R2-ent0.1", "R3-wd0.0", "R3-wd0.1",
]
METRICS = ("entropy", "erf", "gini", "head_diversity")
TOL = 1e-9  # float noise on top of a printed rounding bound


def _half_unit(printed: str) -> float:
    """Half a unit of the last printed digit: how far the unrounded value may lie."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return 0.5 * 10.0 ** -decimals


def _delta_consistent(initial: str, final: str, delta_pct: str) -> bool:
    """Whether some unrounded initial and final behind the printed ones give the printed Δ%.

    Δ = 100·(f−i)/i is monotone in each argument (i > 0), so its range over the rounding
    box is spanned by the corners; the printed Δ% has its own rounding.
    """
    i, hi = float(initial), _half_unit(initial)
    f, hf = float(final), _half_unit(final)
    ends = [100 * (ff - ii) / ii for ii in (i - hi, i + hi) for ff in (f - hf, f + hf)]
    d, hd = float(delta_pct), _half_unit(delta_pct)
    return d - hd <= max(ends) + TOL and d + hd >= min(ends) - TOL


def _entries(data: dict):
    """(where, entry) for every entry that must name its table."""
    yield "definitions", data["definitions"]
    yield "defaults", data["defaults"]
    for section in ("baseline_E1", "runs", "statistics", "summaries", "claims"):
        for key, entry in data[section].items():
            yield f"{section}.{key}", entry
            if isinstance(entry.get("zeroshot_cifar100"), dict):
                yield f"{section}.{key}.zeroshot_cifar100", entry["zeroshot_cifar100"]


def test_every_entry_names_its_table():
    for where, entry in _entries(load_published()):
        assert re.match(r"(00[01]|original_report) (§\d|Abstract)", entry.get("table", "")), where


def test_the_original_reports_test_values_agree_with_their_degrees_of_freedom():
    """The exact values behind the seeds' headlines (original_report): each printed p follows
    from its printed statistic at the df the original's design implies, to printed precision."""
    S = published_statistics(as_printed=True)
    for name in ("anova_E2", "anova_E5"):  # 12 layers in 3 thirds: F(2, 9)
        assert round(float(sp.f.sf(float(S[name]["F"]), 2, 9)), 2) == pytest.approx(float(S[name]["p"]), abs=0.011)
    # 000's "p > 0.46" is E5's own p rounded, so a faithful reproduction meets it half the time
    assert float(S["anova_layer_groups"]["p_gt"]) == round(float(S["anova_E5"]["p"]), 2)
    for name in [n for n in S if n.startswith("regularizer_")]:  # 12 pairs: t(11)
        p = 2 * sp.t.sf(float(S[name]["t"]), 11)
        assert abs(p - float(S[name]["p"])) <= 0.003, name  # t printed to 2 decimals
    assert S["regularizer_R2-ent0.1"]["p"] == S["entropy_floor_0.1"]["p"]
    # U of 12 vs 36 values: within its range; the normal approximation gives the printed p
    u, n1, n2 = float(S["mannwhitney_full_vs_lora_entropy"]["U"]), 12, 36
    assert float(S["mannwhitney_full_vs_lora_entropy"]["u_max"]) == n1 * n2
    z = (u + 0.5 - n1 * n2 / 2) / np.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)  # continuity-corrected, no ties
    assert 2 * sp.norm.cdf(z) == pytest.approx(float(S["mannwhitney_full_vs_lora_entropy"]["p"]), abs=0.001)


def test_run_ids_are_the_reports_21_configurations_and_the_paper_matrix():
    from attncollapse.config import load_matrix

    runs = published_runs()
    assert list(runs) == REPORT_RUNS
    # The scorecard joins on run id: ours must be the ids configs/paper.yaml expands to.
    assert [r.id for r in load_matrix("paper").expand()] == REPORT_RUNS
    for rid, run in runs.items():
        assert run["dataset"] in ("eurosat", "pets") and run["method"] in ("full", "lora"), rid
        assert 0 < run["best_acc_pct"] <= 100, rid
        assert all({"initial", "final"} <= set(run[m]) for m in METRICS), rid


def test_numbers_load_as_numbers():
    # PyYAML reads "1e-5" (no dot) as a string; every number must be written as a number.
    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")
        elif isinstance(node, str):
            try:
                float(node)
            except ValueError:
                return
            pytest.fail(f"{where} = {node!r} is a number stored as text")

    walk(load_published(), "published")


def test_delta_check_rejects_a_wrong_transcription():
    assert _delta_consistent("3.683", "3.678", "-0.14")
    assert not _delta_consistent("3.683", "3.678", "-0.41")  # transposed digits
    assert not _delta_consistent("0.309", "0.279", "-9.16")


def test_published_deltas_match_initial_and_final():
    runs = published_runs(as_printed=True)
    checked = 0
    for rid, run in runs.items():
        for m in METRICS:
            if "delta_pct" in run[m]:
                assert _delta_consistent(run[m]["initial"], run[m]["final"], run[m]["delta_pct"]), (rid, m)
                checked += 1
        if "zeroshot_cifar100" in run:
            base = load_published(as_printed=True)["baseline_E1"]["zeroshot_cifar100"]["acc_pct"]
            zs = run["zeroshot_cifar100"]
            assert _delta_consistent(base, zs["acc_pct"], zs["change_pct"]), (rid, "zero-shot")
            checked += 1
    # 001 prints Δ% for all four metrics of E2–E7, three of A1, two of A2, entropy of the
    # ten others (48), plus three zero-shot changes.
    assert checked == 51


def test_baseline_per_layer_table_matches_its_summary():
    base = load_published(as_printed=True)["baseline_E1"]["eurosat"]
    for m in METRICS:
        layers = base["per_layer"][m]
        assert len(layers) == 12, m
        h = _half_unit(layers[0])
        values = [float(v) for v in layers]
        # Each side carries its own rounding: two half units apart at most.
        assert abs(np.mean(values) - float(base["mean"][m])) <= 2 * h + TOL, m
        lo, hi = (float(v) for v in base["range"][m])
        assert abs(min(values) - lo) <= 2 * h + TOL and abs(max(values) - hi) <= 2 * h + TOL, m


def test_lr_sweep_correlations_recompute_from_the_published_rows():
    runs, stat = published_runs(), published_statistics()
    printed = published_statistics(as_printed=True)["lr_sweep_pearson"]
    rows = stat["lr_sweep_pearson"]["rows"]
    lr = np.array([runs[r]["settings"]["lr"] for r in rows])
    dh = np.array([runs[r]["entropy"]["delta_pct"] for r in rows])
    r, p = sp.pearsonr(np.log10(lr), dh)
    assert abs(r - float(printed["r"])) <= _half_unit(printed["r"]) + TOL
    assert abs(p - float(printed["p"])) <= _half_unit(printed["p"]) + TOL
    assert sp.spearmanr(lr, dh)[0] == pytest.approx(stat["lr_sweep_spearman"]["rho"])


def test_module_does_not_import_torch():
    src = Path(load_published.__code__.co_filename).resolve().parents[1]
    code = ("import sys; from attncollapse.analysis.published import load_published; load_published(); "
            "sys.exit('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], check=False, env={"PYTHONPATH": str(src)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr or "attncollapse.analysis.published imported torch"
