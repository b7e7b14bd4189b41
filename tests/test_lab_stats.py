"""`compare` / `measure` uncertainty and per-image files, through the real CLI.

The paired statistics compare.json and compare.csv report are recomputed here, independently,
from the per-image CSV the command wrote (numpy for the t interval, scipy for the tests), and
the per-image values must reproduce the per-layer means of the summary table.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import stats

from attncollapse.analysis.instability import UNSTABLE_MARK, unstable
from attncollapse.cli import main

METRICS = ("entropy", "erf", "gini", "head_diversity")


def _rows(path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    assert main(["compare", "tiny", "tiny-vit", "synthetic", "--limit", "12", "--out", str(out), "--per-head"]) == 0
    return out


def test_compare_ci_and_tests_match_an_independent_computation_on_the_per_image_csv(compared):
    res = json.loads((compared / "compare.json").read_text())
    per = _rows(compared / "compare_images.csv")
    summary = {r["layer"]: r for r in _rows(compared / "compare.csv")}
    n_layers = len(res["map_js"]["mean"])
    assert len(per) == 12 * n_layers and {r["image"] for r in per} == set(res["images"]["names"])
    for m in METRICS:
        for layer in [*range(1, n_layers + 1), "all"]:
            if layer == "all":  # overall: each image's mean over layers
                by = {}
                for r in per:
                    by.setdefault(r["index"], []).append((float(r[f"{m}_a"]), float(r[f"{m}_b"])))
                a = np.array([np.mean([x for x, _ in v]) for v in by.values()])
                b = np.array([np.mean([y for _, y in v]) for v in by.values()])
                got = res["paired"][m]["overall"]
            else:
                sel = [r for r in per if int(r["layer"]) == layer]
                a = np.array([float(r[f"{m}_a"]) for r in sel])
                b = np.array([float(r[f"{m}_b"]) for r in sel])
                got = res["paired"][m]["layers"][layer - 1]
                assert a.mean() == pytest.approx(res["layers"][m]["a"][layer - 1], rel=1e-9)
            d = b - a
            half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
            assert got["delta"] == pytest.approx(d.mean(), abs=1e-12)
            assert got["ci"] == pytest.approx([d.mean() - half, d.mean() + half], abs=1e-10)
            assert got["p_t"] == pytest.approx(stats.ttest_rel(b, a).pvalue, rel=1e-9)
            nz = d[d != 0]  # exact null for distinct non-zero differences, else the normal approximation
            method = "exact" if len(nz) == len(d) and len(np.unique(np.abs(nz))) == len(nz) else "approx"
            assert got["p_wilcoxon"] == pytest.approx(stats.wilcoxon(d, method=method).pvalue, rel=1e-9)
            row = summary[str(layer)]
            assert float(row[f"{m}_delta_ci_low"]) == pytest.approx(d.mean() - half, abs=1e-10)
            assert row[f"{m}_delta_pct_unstable"] == str(unstable(m, float(a.mean())))
        # Holm over the layers of one metric: the largest adjusted p is at least the largest raw p
        lay = res["paired"][m]["layers"]
        ordered = sorted(r["p_t"] for r in lay)
        holm = np.maximum.accumulate([min(1.0, (len(ordered) - i) * p) for i, p in enumerate(ordered)])
        assert sorted(r["p_t_holm"] for r in lay) == pytest.approx(holm, rel=1e-9)


def test_unstable_delta_pct_is_flagged_in_table_json_and_csv(compared, capsys):
    res = json.loads((compared / "compare.json").read_text())
    flagged = [(m, i) for m in METRICS for i, a in enumerate(res["layers"][m]["a"]) if unstable(m, a)]
    assert flagged, "the tiny presets' head diversity starts near zero: the case the flag exists for"
    for m, i in flagged:
        assert res["layers"][m]["delta_pct_unstable"][i] is True
    main(["compare", "tiny", "tiny-vit", "synthetic", "--limit", "12", "--out", str(compared)])
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("1 ")]
    assert UNSTABLE_MARK in lines[0] and "read the absolute Δ instead" in text


def test_per_head_values_average_to_the_per_image_values(compared):
    heads = _rows(compared / "compare_heads.csv")
    per = {(r["index"], r["layer"]): r for r in _rows(compared / "compare_images.csv")}
    groups: dict = {}
    for r in heads:
        groups.setdefault((r["index"], r["layer"]), []).append(r)
    assert len(groups) == len(per)
    for key, rs in groups.items():
        for m in ("entropy", "erf", "gini"):
            for t in ("a", "b"):
                assert np.mean([float(r[f"{m}_{t}"]) for r in rs]) == pytest.approx(float(per[key][f"{m}_{t}"]))


def test_measure_writes_per_image_values_whose_means_are_the_table(tmp_path):
    assert main(["measure", "tiny", "synthetic", "--limit", "6", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "measure.json").read_text())
    per = _rows(tmp_path / "measure_images.csv")
    assert not (tmp_path / "measure_heads.csv").exists()
    for m in METRICS:
        for i, want in enumerate(res["layers"][m]["mean"]):
            vals = [float(r[m]) for r in per if int(r["layer"]) == i + 1]
            assert len(vals) == 6 and np.mean(vals) == pytest.approx(want, rel=1e-9)
            assert np.std(vals, ddof=1) == pytest.approx(res["layers"][m]["sd"][i], rel=1e-6)
