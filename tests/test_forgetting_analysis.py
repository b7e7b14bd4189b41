"""The forgetting study's analysis (attncollapse.analysis.forgetting) on the authors' study2
records: `attncollapse reanalyse` in-process reproduces every number of their summary.json;
independent checks (scipy on the rows, Holm by hand, a brute-force AUC, the seeded bootstrap);
bad inputs give one line each; a `design: forgetting` matrix directory runs through `analyze`.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from attncollapse import _io
from attncollapse.analysis.forgetting import analyze, grid, predictors, records
from attncollapse.analysis.forgetting.decisions import temporal_ordering
from attncollapse.cli import main
from attncollapse.study.runner import design_stages

DATA = Path(__file__).parent / "data" / "study2"
SUMMARY = json.loads((DATA / "analysis" / "summary.json").read_text())


@pytest.fixture(scope="module")
def reanalysed(tmp_path_factory):
    out = tmp_path_factory.mktemp("reanalysis")
    assert main(["reanalyse", str(DATA), "--out", str(out)]) == 0
    return out, json.loads((out / "stats.json").read_text())


@pytest.fixture(scope="module")
def rows():
    got, problems = records.read_runs(sorted((DATA / "results").glob("*.json")))
    assert not problems
    return got


def _by(items, **want):
    return next(e for e in items if all(e.get(k) == v for k, v in want.items()))


def test_every_published_number_matches(reanalysed):
    out, stats = reanalysed
    with (out / "scorecard.csv").open() as fh:
        card = list(csv.DictReader(fh))
    assert len(card) > 1700 and stats["scorecard"]["compared"] == len(card)
    assert [r["stats_key"] for r in card if r["verdict"] != "match"] == []
    assert {"stats_key", "published", "ours", "rule", "verdict"} == set(card[0])
    for name in ("report.md", "report.html", "run_level.csv", "stats.json"):
        assert (out / name).stat().st_size > 0
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == [
        "dose_response.png", "frontier.png", "interpolation.png", "layer_heatmap.png", "predictor_bars.png"]


def test_headline_numbers_against_summary(reanalysed):
    _, s = reanalysed
    ours = _by(s["predictor_ranking_final"], predictor="delta_entropy_pct")
    theirs = _by(SUMMARY["predictor_ranking_final"], predictor="delta_entropy_pct")
    assert ours["abs_spearman_within_mean"] == pytest.approx(theirs["abs_spearman_within_mean"], abs=1e-12)
    assert round(ours["abs_spearman_within_mean"], 3) == 0.860 and round(ours["spearman_overall"], 3) == 0.361
    gap = _by(s["bootstrap_predictor_gap"], predictor="delta_entropy_pct")
    pub = _by(SUMMARY["bootstrap_predictor_gap"], predictor="delta_entropy_pct")
    for key in ("gap_vs_reference_mean", "gap_ci_low", "gap_ci_high", "ci_low", "ci_high", "reference_wins_fraction"):
        assert gap[key] == pytest.approx(pub[key], abs=1e-12), key
    pt = _by(s["paired_method_tests"], dataset="pets", metric="delta_entropy_pct")
    assert pt["t_p_holm"] == pytest.approx(_by(SUMMARY["paired_method_tests"], dataset="pets",
                                                metric="delta_entropy_pct")["t_p_holm"], rel=1e-9)
    assert s["temporal_ordering"]["cell_level"]["delta_entropy_pct"]["auc_oriented"] == pytest.approx(0.6833333, abs=1e-6)
    assert s["verdict"]["holds"] and s["verdict"]["stable_sign_signals"] == ["cka_mean", "embedding_drift", "weight_drift_rel"]
    assert s["notes"] == [] and s["record_problems"] == []


def test_run_level_csv_equals_theirs(reanalysed):
    out, _ = reanalysed
    with (out / "run_level.csv").open() as fh:
        ours = {r["run_id"]: r for r in csv.DictReader(fh)}
    with (DATA / "analysis" / "run_level.csv").open() as fh:
        theirs = list(csv.DictReader(fh))
    assert len(ours) == 84 and len(theirs) == 66 and list(theirs[0]) == list(records.CSV_COLUMNS[:-1])
    for t in theirs:
        o = ours[t["run_id"]]
        assert o["backbone"] == "primary"
        for key, value in t.items():
            if value in ("", "True", "False") or not value.replace(".", "").replace("-", "").replace("e", "").isdigit():
                assert o[key] == value, (t["run_id"], key)
            else:
                assert float(o[key]) == pytest.approx(float(value), rel=1e-12, abs=1e-15), (t["run_id"], key)


def test_within_group_spearman_recomputed_with_scipy(rows, reanalysed):
    _, s = reanalysed
    g = [r for r in rows if r["backbone"] == "primary" and r["dataset"] == "eurosat" and r["method"] == "full_ft"]
    rho = sps.spearmanr([r["delta_entropy_pct"] for r in g], [r["cifar100_retention"] for r in g]).statistic
    assert len(g) == 12 and rho == pytest.approx(0.944, abs=5e-4)
    assert _by(s["predictor_ranking_final"], predictor="delta_entropy_pct")["spearman_within_groups"][
        "eurosat/full_ft"] == pytest.approx(rho, abs=1e-12)


def test_holm_on_a_hand_worked_case():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    assert grid.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert grid.holm([0.5, 0.6]) == [1.0, 1.0]


def test_rowwise_spearman_equals_scipy_with_ties():
    rng = np.random.RandomState(3)
    x, y = rng.randint(0, 4, size=(50, 9)).astype(float), rng.randn(50, 9)
    x[0] = 1.0  # a constant row: NaN, as scipy
    got = predictors.rowwise_spearman(x, y)
    want = [sps.spearmanr(a, b).statistic if len(set(a)) > 1 else math.nan for a, b in zip(x, y)]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_bootstrap_is_seeded(rows):
    primary = [r for r in rows if r["backbone"] == "primary"]
    a = predictors.bootstrap_predictor_gap(primary, n_boot=300, seed=5)
    b = predictors.bootstrap_predictor_gap(primary, n_boot=300, seed=5)
    c = predictors.bootstrap_predictor_gap(primary, n_boot=300, seed=6)
    assert a == b and a != c and len(a) == 11


def test_auc_equals_a_brute_force_pair_count(rows):
    primary = [r for r in rows if r["backbone"] == "primary"]
    t = temporal_ordering(primary)
    core = [r for r in primary if r["method"] in grid.CORE_METHODS]
    hurt = [r["history"][0]["weight_drift_rel"] for r in core if r["cifar100_retention"] < 50]
    fine = [r["history"][0]["weight_drift_rel"] for r in core if r["cifar100_retention"] >= 50]
    raw = np.mean([(d < h) + 0.5 * (d == h) for d in hurt for h in fine])
    assert t["epoch1_weight_drift_rel_auc_for_damage"]["auc_oriented"] == pytest.approx(max(raw, 1 - raw), abs=1e-12)
    assert "chosen from the outcome" in t["orientation"]


def _subset(tmp_path: Path, keep, flat: bool = False) -> Path:
    """The authors' layout (records/results/*.json), or a flat folder of their JSONs."""
    d = tmp_path / "records"
    into = d if flat else d / "results"
    into.mkdir(parents=True)
    for p in (DATA / "results").glob("*.json"):
        if keep(p.name):
            shutil.copy(p, into / p.name)
    return d


def test_bad_records_are_one_line_each_and_the_rest_is_analysed(tmp_path, capsys):
    d = _subset(tmp_path, lambda n: "basep16" not in n)
    src = d / "results" / "S2_pets_lora_r8_lr1e-4_seed7.json"
    rec = json.loads(src.read_text())
    (d / "results" / "zz_other.json").write_text(json.dumps({**rec, "schema": "someone-else/2"}))
    (d / "results" / "zz_cut.json").write_text(src.read_text()[:500])
    del rec["final"]["cka_mean"]
    (d / "results" / "zz_nokey.json").write_text(json.dumps(rec))
    assert main(["reanalyse", str(d), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("warning:")]
    assert len(lines) == 3 and "Traceback" not in err
    assert "zz_other.json: schema 'someone-else/2'" in err and "zz_cut.json: not valid JSON" in err
    assert "zz_nokey.json: missing key final.cka_mean" in err
    s = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert s["n_runs"] == 66 and len(s["record_problems"]) == 3
    assert s["backbone_check"] == {"unsupported": "no secondary-backbone run; the second-backbone check needs one"}
    assert any(n.startswith("interpolation: no interpolation record") for n in s["notes"])
    assert "*interpolation: not computed — no interpolation record" in (tmp_path / "out" / "report.md").read_text()


def test_one_seed_and_a_missing_cell_say_what_cannot_be_computed(tmp_path):
    d = _subset(tmp_path, lambda n: "seed7" in n and "basep16" not in n and not n.startswith("S2_pets_lora_r8_lr3e-6"),
                flat=True)
    assert main(["reanalyse", str(d), "--out", str(tmp_path / "out")]) == 0
    s = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert s["n_runs"] == 21 and "scorecard" not in s  # a flat folder without summary.json: no scorecard
    assert s["design"]["seeds_per_cell_max"] == 1 and s["design"]["missing_cells"] == ["pets/lora_r8@3e-06"]
    assert all(c["test_acc_sd"] is None for c in s["cells"])
    assert all(e["wilcoxon_p_value"] is None for e in s["paired_method_tests"])  # 4 and 3 pairs < 6
    notes = "\n".join(s["notes"])
    assert "one seed per cell" in notes and "lacks 1 cell(s): pets/lora_r8@3e-06" in notes
    assert "candidate run(s) within 1 points" in notes
    assert "pets/lora_r8@3e-06" in (tmp_path / "out" / "report.md").read_text()


def test_a_forgetting_matrix_directory_runs_through_the_runner_stage(tmp_path):
    for p in sorted((DATA / "results").glob("S2_eurosat_*_lr1e-*_seed*.json")):
        rec = json.loads(p.read_text())
        rec["schema"] = records.SCHEMA
        rec["config"]["backbone"] = "secondary" if "basep16" in p.name else "primary"
        (tmp_path / rec["run_id"]).mkdir()
        _io.write_json(tmp_path / rec["run_id"] / "record.json", rec, checksum=True)  # as the runner writes it
    tampered = tmp_path / "S2_eurosat_full_ft_basep16_lr1e-4_seed7" / "record.json"
    tampered.write_text(tampered.read_text().replace('"seed": 7', '"seed": 8', 1))
    (tmp_path / "interpolation").mkdir()
    inter = json.loads((DATA / "intervention" / "INT_eurosat_lora_r8_lr1e-4_seed7.json").read_text())
    (tmp_path / "interpolation" / "INT__exact.json").write_text(json.dumps({**inter, "variant": "exact"}))
    assert design_stages("forgetting") == {"report": analyze}
    s = design_stages("forgetting")["report"](tmp_path)
    assert s["record_problems"] == [f"{tampered}: checksum mismatch — changed after it was written; "
                                    "rerun the run or remove the file"]
    assert (s["n_runs"], s["n_runs_all_backbones"]) == (27, 38) and s["interpolation"]["sweeps"][0]["variant"] == "exact"
    assert "paired_method_tests[pets]" not in " ".join(s["notes"])
    for name in ("stats.json", "report.md", "report.html", "figures/dose_response.png"):
        assert (tmp_path / name).exists()
    html = (tmp_path / "report.html").read_text()
    assert '<a href="#weight-interpolation">' in html and '<h2 id="weight-interpolation">' in html


def test_reanalyse_of_a_folder_without_readable_records_is_refused_in_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "S2_x.json").write_text("{not json")
    for folder, count in (("empty", 0), ("garbage", 1)):
        out = tmp_path / f"out-{folder}"
        assert main(["reanalyse", str(tmp_path / folder), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"no readable run record among {count} JSON file(s)" in err[0]
        assert not out.exists()
