"""Seeds as a unit: a two-seed matrix trained by the real runner, then `attncollapse report`.

The seed summaries (results_by_config.csv) are checked against numpy's mean / SD of the
per-seed rows of results.csv and a t-interval written out by hand; the tests' unit against
scipy's Welch t on the seeds' Δ%; fig. 7's pairing against history.json read here.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sp

from attncollapse.analysis import seeds, table
from attncollapse.cli import main
from attncollapse.config import matrix_from_dict
from attncollapse.study import run_matrix

T975_DF1, T975_DF3 = 12.706204736174707, 3.182446305284263  # Student t 0.975 quantiles (tables)

# E2 (full FT) and E4 (LoRA), two seeds each: one optimizer step per run, zero-shot on
# (64 test images, so the seeds' zero-shot and best accuracies differ and an SD is > 0).
MATRIX = {
    "name": "seeds", "seeds": [42, 43],
    "defaults": {"model": "tiny", "dataset": "synthetic",
                 "optim": {"lr": 1e-3, "batch_size": 32, "epochs": 1, "precision": "fp32"},
                 "data": {"synthetic_train": 32, "synthetic_test": 64, "eval_subset_size": 16},
                 "eval": {"points_per_epoch": 1, "batch_size": 16},
                 "zeroshot": {"datasets": ["synthetic"], "max_images": 64}},
    "runs": {"E2": {}, "E4": {"method": "lora", "lora": {"rank": 4, "alpha": 8}, "optim": {"lr": 1e-2}}},
}
RUN_IDS = ["E2-s42", "E2-s43", "E4-s42", "E4-s43"]


def _num(v: str) -> float | None:
    return float(v) if v not in ("", None) else None


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seeds") / "m"
    s = run_matrix(matrix_from_dict(MATRIX), out, analyze=False, log=lambda _m: None)
    assert s["ok"] and s["counts"] == {"done": 4}, s["counts"]
    assert main(["report", str(out)]) == 0
    return out


def test_results_csv_names_every_seed_and_the_frozen_projection(study):
    rows = list(csv.DictReader((study / "results.csv").open()))
    assert [r["run_id"] for r in rows] == RUN_IDS
    assert [int(r["seed"]) for r in rows] == [42, 43, 42, 43]
    for r in rows:
        block = json.loads((study / r["run_id"] / "final.json").read_text())["zeroshot"]["synthetic"]
        assert block["acc_frozen_projection"] is not None
        assert float(r["zeroshot_acc_frozen_projection"]) == pytest.approx(block["acc_frozen_projection"])
        assert (r["zeroshot_acc_base_only"] != "") == (r["method"] == "lora")


def test_results_by_config_is_numpy_over_the_seed_rows(study):
    rows = list(csv.DictReader((study / "results.csv").open()))
    agg = list(csv.DictReader((study / "results_by_config.csv").open()))
    assert [a["config_id"] for a in agg] == ["E2", "E4"]
    cols = ["best_acc", "final_acc", "entropy_initial", "entropy_final", "entropy_delta_pct", "erf_delta_pct",
            "gini_delta_pct", "head_diversity_delta_pct", "zeroshot_acc", "zeroshot_acc_frozen_projection",
            "zeroshot_synthetic"]
    for a in agg:
        assert (a["n_seeds"], a["seeds"], a["run_ids"]) == ("2", "42 43", f"{a['config_id']}-s42 {a['config_id']}-s43")
        mine = [r for r in rows if r["group"] == a["config_id"]]
        assert a["method"] == mine[0]["method"] and float(a["lr"]) == float(mine[0]["lr"])
        for c in cols:
            v = np.array([float(r[c]) for r in mine])
            mean, sd = v.mean(), v.std(ddof=1)
            half = T975_DF1 * sd / math.sqrt(2)
            assert float(a[f"{c}_mean"]) == pytest.approx(mean, rel=1e-12, abs=1e-15), c
            assert float(a[f"{c}_sd"]) == pytest.approx(sd, rel=1e-9, abs=1e-15), c
            assert float(a[f"{c}_ci_low"]) == pytest.approx(mean - half, rel=1e-9, abs=1e-12), c
            assert float(a[f"{c}_ci_high"]) == pytest.approx(mean + half, rel=1e-9, abs=1e-12), c
            assert a[f"{c}_n"] == "2"
    # Full FT has no base-only zero-shot: nothing to average, and it says so (n = 0).
    e2 = agg[0]
    assert e2["zeroshot_acc_base_only_mean"] == "" and e2["zeroshot_acc_base_only_n"] == "0"


def test_stats_use_the_seed_as_the_unit(study):
    st = json.loads((study / "stats.json").read_text())
    assert st["seeds_per_config"] == {"E2": 2, "E4": 2}
    (e,) = st["tests"]["fullft_vs_lora"]["entries"]
    assert (e["unit"], e["n_a"], e["n_b"], e["n"]) == ("runs", 2, 2, 4)
    assert e["runs_a"] == ["E2-s42", "E2-s43"] and e["runs_b"] == ["E4-s42", "E4-s43"]
    rows = {r["run_id"]: r for r in csv.DictReader((study / "results.csv").open())}
    a = [float(rows[i]["entropy_delta_pct"]) for i in ("E2-s42", "E2-s43")]
    b = [float(rows[i]["entropy_delta_pct"]) for i in ("E4-s42", "E4-s43")]
    ref = sp.ttest_ind(a, b, equal_var=False)
    assert e["welch_t"] == pytest.approx(ref.statistic) and e["welch_p"] == pytest.approx(ref.pvalue)
    assert e["mean_a"] == pytest.approx(np.mean(a)) and e["mean_b"] == pytest.approx(np.mean(b))
    # Every test entry that ran names its unit and its n.
    for name, t in st["tests"].items():
        for entry in t.get("entries", [t]):
            if not entry.get("skipped") and name != "convergence":
                assert entry.get("unit") in ("runs", "layers") and entry.get("n"), (name, entry.get("label"))


def test_zeroshot_pairs_with_the_delta_of_the_best_checkpoint(study):
    m = table.load(study)
    for r in m.done:
        h = json.loads((r.dir / "history.json").read_text())["points"]
        best = r.final["best_step"]
        at = next(p for p in h if p["step"] == best)
        want = 100 * (at["mean"]["entropy"] - h[0]["mean"]["entropy"]) / h[0]["mean"]["entropy"]
        assert r.zeroshot_delta() == (pytest.approx(want), "best")
    e = json.loads((study / "stats.json").read_text())["tests"]["collapse_vs_zeroshot_as_trained"]
    assert e["n"] == 4 and e["unit"] == "runs" and e["runs_at_final_step"] == []


def test_figures_draw_the_seeds_and_say_n(study):
    index = json.loads((study / "figures" / "figures.json").read_text())
    for name in ("fig5_fullft_vs_lora", "fig7_collapse_vs_zeroshot", "fig9_head_diversity", "fig3_triple_curve",
                 "fig15_zeroshot_extended", "fig16_dashboard", "fig10_per_layer_delta_heatmap"):
        assert "file" in index[name], (name, index[name])
        assert (study / index[name]["file"]).stat().st_size > 10_000
        assert "n=2 seeds" in index[name]["caption"], (name, index[name]["caption"])
    assert "same (best-accuracy) checkpoint" in index["fig7_collapse_vs_zeroshot"]["caption"]
    assert (study / "report.md").is_file()


def test_summarize_by_hand():
    s = seeds.summarize([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(5 / 3)  # squares of deviations 2.25 + 0.25 + 0.25 + 2.25 over n − 1 = 3
    assert s["mean"] == 2.5 and s["sd"] == pytest.approx(sd) and s["n"] == 4
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((2.5 - T975_DF3 * sd / 2, 2.5 + T975_DF3 * sd / 2))
    assert seeds.summarize([0.7, None, float("nan")]) == {"mean": 0.7, "sd": None, "ci_low": None,
                                                          "ci_high": None, "n": 1}
    assert seeds.summarize([]) == {"mean": None, "sd": None, "ci_low": None, "ci_high": None, "n": 0}
    assert seeds.summarize([2.0, 2.0]) == {"mean": 2.0, "sd": 0.0, "ci_low": 2.0, "ci_high": 2.0, "n": 2}


def test_best_step_before_the_end_moves_the_pairing(tmp_path):
    """A run whose best checkpoint is mid-training: fig. 7 and the test use Δ% there, not the last step's."""
    from analysis_fixture import build_matrix

    from attncollapse.analysis import stats

    d = build_matrix(tmp_path / "m", ["E2", "E4", "E5", "E6"], overlays=(), wise=())
    fin = json.loads((d / "E4" / "final.json").read_text())
    pts = json.loads((d / "E4" / "history.json").read_text())["points"]
    fin["best_step"] = pts[3]["step"]
    (d / "E4" / "final.json").write_text(json.dumps(fin))
    (d / "E5" / "history.json").unlink()  # no history: falls back to the final Δ%, and says so
    runs = {r.run_id: r for r in table.load(d).done}
    h0, h3 = pts[0]["mean"]["entropy"], pts[3]["mean"]["entropy"]
    assert runs["E4"].zeroshot_delta() == (pytest.approx(100 * (h3 - h0) / h0), "best")
    assert runs["E4"].zeroshot_delta()[0] != pytest.approx(runs["E4"].delta())
    assert runs["E5"].zeroshot_delta() == (runs["E5"].delta(), "final")
    e = stats.analyze(d, n_boot=200, write=False)["tests"]["collapse_vs_zeroshot_as_trained"]
    x = [runs[i].zeroshot_delta()[0] for i in e["runs"]]
    y = [runs[i].get("zeroshot_acc") for i in e["runs"]]
    assert e["runs_at_final_step"] == ["E5"] and e["pearson_r"] == pytest.approx(sp.pearsonr(x, y).statistic)


def _section(md: str, title: str) -> str:
    m = re.search(rf"^## \d+\. {re.escape(title)}.*?$(.*?)(?=^## |\Z)", md, flags=re.M | re.S)
    assert m, f"no section {title!r}"
    return m.group(1)


def _rows(section: str) -> dict[str, list[str]]:
    """A section's Markdown table body rows keyed by their first cell (header and rule left out)."""
    lines = section.splitlines() + [""]
    return {cells[0]: cells for cells in (
        [c.strip() for c in line.strip().strip("|").split(" | ")] for line, nxt in zip(lines, lines[1:])
        if line.startswith("| ") and not nxt.startswith("|---"))}


def _mean_sd_pct(values: list[float]) -> str:
    v = 100 * np.asarray(values)
    return f"{v.mean():.2f}% ± {v.std(ddof=1):.2f}%"


def test_report_tables_have_one_row_per_configuration(study):
    """Zero-shot, grand and LoRA-rank tables: E2 and E4 once each, as mean ± sd over the two
    seeds (numpy over final.json / results.csv), with n = 2; no per-seed run id left."""
    md = (study / "report.md").read_text()
    zs = _section(md, "Zero-shot transfer")
    assert "| Run | Configuration | Seeds | as trained | frozen pretrained projection | adapters off |" in zs
    rows = _rows(zs)
    assert set(rows) == {"E1 (pretrained)", "E2", "E4"}, rows
    zs_of = {cid: [json.loads((study / f"{cid}-s{s}" / "final.json").read_text())["zeroshot"]["synthetic"]
                   for s in (42, 43)] for cid in ("E2", "E4")}
    assert zs_of["E4"][0]["acc"] != zs_of["E4"][1]["acc"]  # else mean ± sd could not be told from one seed
    for cid, blocks in zs_of.items():
        cells = [c.split(" (")[0] for c in rows[cid]]  # "(+x%)" vs E1 only when the matrix has E1 zero-shot
        assert cells[2] == "2"
        assert cells[3] == _mean_sd_pct([b["acc"] for b in blocks])
        assert cells[4] == _mean_sd_pct([b["acc_frozen_projection"] for b in blocks])
    assert rows["E4"][5].split(" (")[0] == _mean_sd_pct([b["acc_base_only"] for b in zs_of["E4"]])
    assert rows["E2"][5] == "—"  # full FT has no adapters to switch off
    csv_rows = {r["run_id"]: r for r in csv.DictReader((study / "results.csv").open())}
    grand = _rows(_section(md, "Grand comparison").split("\n### ")[0])  # the accuracy table
    lora = _rows(_section(md, "LoRA rank"))
    assert "E4" in lora and not any(k.endswith(("-s42", "-s43")) for k in (*grand, *lora, *rows))
    best = {cid: [float(csv_rows[f"{cid}-s{s}"]["best_acc"]) for s in (42, 43)] for cid in ("E2", "E4")}
    assert best["E2"][0] != best["E2"][1]
    assert (lora["E4"][2], lora["E4"][3]) == ("2", _mean_sd_pct(best["E4"]))
    h = np.array([float(csv_rows[f"E4-s{s}"]["entropy_delta_pct"]) for s in (42, 43)])
    assert lora["E4"][4].rstrip("†") == f"{h.mean():+.2f}% ± {h.std(ddof=1):.2f}%"
    assert grand["E2"][2] == "2" and grand["E2"][3] == _mean_sd_pct(best["E2"])


def test_scorecard_judges_by_the_seed_spread(study):
    """Two seeds: the scorecard's number is the seed mean ± sd (numpy over results.csv) and its
    rule is "within mean ± 2 sd"; a random preset on synthetic data stays "not comparable"."""
    from attncollapse.analysis import stats
    from attncollapse.analysis.report import scorecard

    ours = scorecard.ours(table.load(study), stats.read(study))
    rows = {r["run_id"]: r for r in csv.DictReader((study / "results.csv").open())}
    acc = 100 * np.array([float(rows[f"E2-s{s}"]["best_acc"]) for s in (42, 43)])
    row = next(r for r in scorecard.compare(ours)["rows"] if (r["run"], r["quantity"]) == ("E2", "best_acc_pct"))
    published = row["published"]
    assert published == pytest.approx(99.3)  # English report table 6.1
    assert row["ours"] == pytest.approx(acc.mean()) and row["sd"] == pytest.approx(acc.std(ddof=1))
    assert (row["rule"], row["verdict"]) == ("mean ± 2 sd over 2 seeds", "not comparable")
    # The rule itself, were these pretrained runs on the paper's dataset:
    ours["random_init"] = False
    ours["runs"]["E2"]["dataset"] = "eurosat"
    row = next(r for r in scorecard.compare(ours)["rows"] if (r["run"], r["quantity"]) == ("E2", "best_acc_pct"))
    want = "within" if abs(acc.mean() - published) <= 2 * acc.std(ddof=1) else "outside"
    assert row["verdict"] == want and row["diff"] == pytest.approx(acc.mean() - published)
