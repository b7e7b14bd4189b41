"""The cross-family part of the report: a tiny matrix over CLIP, SigLIP and ViT trained by the real
runner, then `attncollapse report`. stats.json's per-family summary is checked against numpy
over results.csv and final.json, the report's section against those numbers, and the figure
against figures.json."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from attncollapse.analysis import table
from attncollapse.analysis.report import future_work
from attncollapse.analysis.statistics import links
from attncollapse.cli import main
from attncollapse.config import matrix_from_dict
from attncollapse.study import run_matrix

PRESETS = {"tiny": "clip", "tiny-siglip": "siglip", "tiny-vit": "vit"}
MATRIX = {
    "name": "families", "seeds": [42], "baseline": ["synthetic"],
    "defaults": {"model": "tiny", "dataset": "synthetic",
                 "optim": {"lr": 1e-2, "batch_size": 32, "epochs": 1, "precision": "fp32"},
                 "data": {"synthetic_train": 32, "synthetic_test": 32, "eval_subset_size": 16},
                 "eval": {"points_per_epoch": 2, "batch_size": 16},
                 "zeroshot": {"datasets": ["synthetic"], "max_images": 16}},
    "runs": {"E2": {"sweep": {"model": {"label": "", "values": list(PRESETS)}}},
             "E4": {"method": "lora", "lora": {"rank": 4, "alpha": 8}, "optim": {"lr": 3e-2},
                    "sweep": {"model": {"label": "", "values": list(PRESETS)}}}},
}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("families") / "m"
    s = run_matrix(matrix_from_dict(MATRIX), out, analyze=False, log=lambda _m: None)
    assert s["ok"] and s["counts"] == {"done": 9}, s["counts"]  # 6 runs + E1 for each of the 3 models
    assert main(["report", str(out)]) == 0
    return out


def _rows(d: Path) -> list[dict]:
    return list(csv.DictReader((d / "results.csv").open()))


def test_per_family_summary_is_numpy_over_the_runs(study):
    t = json.loads((study / "stats.json").read_text())["tests"]["model_families"]
    rows = _rows(study)
    assert [f["family"] for f in t["families"]] == list(PRESETS.values()) and t["n_families"] == 3
    bases = {m: json.loads((study / "baseline" / f"{m}_synthetic.json").read_text()) for m in PRESETS}
    assert all(b["model"] == m and b["transfer_acc"] is not None for m, b in bases.items())  # E1 per model
    for f in t["families"]:
        mine = [r for r in rows if r["model_family"] == f["family"]]
        assert f["runs"] == [r["run_id"] for r in mine] and f["models"] == [mine[0]["model"]]
        assert f["entropy_delta_pct"] == pytest.approx(np.mean([float(r["entropy_delta_pct"]) for r in mine]))
        assert f["weight_drift_final"] == pytest.approx(np.mean([float(r["weight_drift_final"]) for r in mine]))
        layers = [json.loads((study / r["run_id"] / "final.json").read_text())["delta_pct_layers"]["entropy"]
                  for r in mine]
        assert f["entropy_delta_pct_layers"] == pytest.approx(np.mean(layers, 0).tolist())
        assert set(f["by_group"]) == {"E2", "E4"}
        e2 = next(r for r in mine if r["group"] == "E2")
        assert f["by_group"]["E2"]["entropy_delta_pct"] == pytest.approx(float(e2["entropy_delta_pct"]))
    # Transfer change written out: the run's transfer score (zero-shot for CLIP/SigLIP, k-NN for
    # vision-only ViT) minus the same model's E1 transfer score.
    for f in t["families"]:
        ch = [100 * (float(r["transfer_acc"]) - bases[r["model"]]["transfer_acc"])
              for r in rows if r["model_family"] == f["family"]]
        assert f["n_transfer"] == len(ch) == 2
        assert f["transfer_change_pp"] == pytest.approx(np.mean(ch))
    across = t["across_families"]
    x = [f["entropy_delta_pct"] for f in t["families"]]
    y = [f["transfer_change_pp"] for f in t["families"]]
    assert not across.get("skipped") and across["n"] == 3 and across["unit"] == "families"
    assert across["pearson_r"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert across["spearman_rho"] == pytest.approx(stats.spearmanr(x, y).statistic)


def test_report_compares_the_families_with_the_stats_numbers(study):
    md = (study / "report.md").read_text()
    sec = md.split("Model families\n", 1)[1].split("\n## ", 1)[0]
    t = json.loads((study / "stats.json").read_text())["tests"]["model_families"]
    for f in t["families"]:
        row = next(ln for ln in sec.splitlines() if ln.startswith(f"| {f['family']} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == str(f["n_runs"]) and cells[3] == f"{f['entropy_delta_pct']:+.2f}%"
        assert cells[4] == f"{f['weight_drift_final']:.4f}"
    assert "Across families: mean entropy Δ% vs mean transfer change" in sec and "n = 3 families" in sec
    assert "extra_model_families.png" in sec
    for title in ("Early warning", "Weight-drift control"):
        assert re.search(rf"## \d+\. {title}\n", md), title
    figs = json.loads((study / "figures" / "figures.json").read_text())
    assert (study / figs["extra_model_families"]["file"]).exists()


def test_one_family_gets_no_family_section_numbers(study, tmp_path):
    m = table.load(study)
    clip_only = [r for r in m.done if r.get("model_family") == "clip"]
    e = links.families(clip_only, m.baseline)
    assert e["skipped"] and "clip" in e["reason"]
    assert future_work.families({"model_families": e}, 0.05) == [("p", f"*Not a cross-family matrix: {e['reason']}.*")]
    heads = [b[2] for b in future_work.blocks({"tests": {"model_families": e}}) if b[0] == "h"]
    assert heads == ["Early warning", "Weight-drift control"]  # no family section for one family


def test_zero_shot_is_judged_against_each_models_own_e1(study):
    # With one E1 per model, a run's zero-shot change is relative to its own pretrained model,
    # never to whichever baseline file comes first.
    from attncollapse.analysis.report.render import pct

    md = (study / "report.md").read_text()
    sec = md.split("Zero-shot transfer (three protocols)\n", 1)[1].split("\n## ", 1)[0]
    for model in ("tiny", "tiny-siglip"):
        acc = json.loads((study / "baseline" / f"{model}_synthetic.json").read_text())["zeroshot"]["synthetic"]["acc"]
        assert f"| E1 (pretrained {model}) | baseline | — | {pct(acc)} |" in sec
        for r in _rows(study):
            if r["model"] == model and r["zeroshot_acc"]:
                row = next(ln for ln in sec.splitlines() if ln.startswith(f"| {r['run_id']} |"))
                rel = 100 * (float(r["zeroshot_acc"]) - acc) / acc
                assert f"({rel:+.1f}%)" in row, (row, rel)


def test_zero_shot_reference_is_never_another_models_e1(study):
    # The real pretrained accuracies tie at chance here, so give CLIP's E1 another value and
    # put its file first: SigLIP's rows must still be relative to SigLIP's own E1.
    from attncollapse.analysis.report import runtables
    from attncollapse.analysis.report.render import pct

    m = table.load(study)
    clip = json.loads(json.dumps(m.baseline["tiny_synthetic"]))
    clip["zeroshot"]["synthetic"]["acc"] = 0.5
    base = {"tiny_synthetic": clip, **{k: v for k, v in m.baseline.items() if k != "tiny_synthetic"}}
    siglip_acc = base["tiny-siglip_synthetic"]["zeroshot"]["synthetic"]["acc"]
    assert siglip_acc != 0.5
    rows = next(b[2] for b in runtables.zeroshot_table(m.done, base) if b[0] == "table")
    assert ["E1 (pretrained tiny)", "baseline", "—", pct(0.5), "—", "—"] in rows
    siglip_runs = [r for r in m.done if r.get("model") == "tiny-siglip"]
    assert siglip_runs
    for r in siglip_runs:
        row = next(x for x in rows if x[0] == r.config_id)
        rel = 100 * (r.get("zeroshot_acc") - siglip_acc) / siglip_acc
        assert row[3].endswith(f"({rel:+.1f}%)"), (row, rel)
