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

from attncollapse.analysis import future_work, links, table
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
    assert s["ok"] and s["counts"] == {"done": 7}, s["counts"]
    assert main(["report", str(out)]) == 0
    return out


def _rows(d: Path) -> list[dict]:
    return list(csv.DictReader((d / "results.csv").open()))


def test_per_family_summary_is_numpy_over_the_runs(study):
    t = json.loads((study / "stats.json").read_text())["tests"]["model_families"]
    rows = _rows(study)
    assert [f["family"] for f in t["families"]] == list(PRESETS.values()) and t["n_families"] == 3
    base = json.loads((study / "baseline" / "synthetic.json").read_text())
    assert base["model"] == "tiny"  # E1 is the default model's: only CLIP has a pretrained zero-shot reference
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
    # Transfer change written out: the score (transfer_acc, else zeroshot_acc) minus E1's zero-shot
    # when E1 ran this model, else the LoRA run's base-only zero-shot; runs with neither are out.
    for f in t["families"]:
        ch = []
        for r in (r for r in rows if r["model_family"] == f["family"]):
            score = r.get("transfer_acc") or r["zeroshot_acc"]
            ref = (base["zeroshot"]["synthetic"]["acc"] if r["model"] == base["model"]
                   else r["zeroshot_acc_base_only"])
            if score and ref not in ("", None):
                ch.append(100 * (float(score) - float(ref)))
        assert f["n_transfer"] == len(ch)
        assert f["transfer_change_pp"] == (pytest.approx(np.mean(ch)) if ch else None)
    assert t["families"][0]["n_transfer"] == 2 and t["families"][2]["n_transfer"] == 0  # ViT: vision-only
    have = sum(f["transfer_change_pp"] is not None for f in t["families"])
    assert t["across_families"]["skipped"] and f"≥ 3 families with both values, found {have}" in t["across_families"]["reason"]


def test_report_compares_the_families_with_the_stats_numbers(study):
    md = (study / "report.md").read_text()
    sec = md.split("Model families\n", 1)[1].split("\n## ", 1)[0]
    t = json.loads((study / "stats.json").read_text())["tests"]["model_families"]
    for f in t["families"]:
        row = next(ln for ln in sec.splitlines() if ln.startswith(f"| {f['family']} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == str(f["n_runs"]) and cells[3] == f"{f['entropy_delta_pct']:+.2f}%"
        assert cells[4] == f"{f['weight_drift_final']:.4f}"
    assert "Across families: not tested" in sec and "extra_model_families.png" in sec
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
