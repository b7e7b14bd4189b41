"""Early warning and the weight-drift control, on a tiny matrix trained by the real runner.

Four tiny-CLIP runs with zero-shot (E2, E4 LoRA, A1, R1) and one vision-only run (tiny ViT)
over two epochs with an E1 baseline. Every number stats.json reports is rebuilt here from
history.json, final.json and baseline/*.json alone, then checked against scipy's Pearson
and Spearman, and Spearman's exact p against a brute-force count over all n! pairings.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sp

from attncollapse.analysis import stats, table
from attncollapse.analysis.statistics import links
from attncollapse.cli import main
from attncollapse.config import matrix_from_dict
from attncollapse.study import run_matrix

MATRIX = {
    "name": "links", "seeds": [42], "baseline": ["synthetic"],
    "defaults": {"model": "tiny", "dataset": "synthetic",
                 "optim": {"lr": 1e-2, "batch_size": 32, "epochs": 2, "precision": "fp32"},
                 "data": {"synthetic_train": 64, "synthetic_test": 32, "eval_subset_size": 16},
                 "eval": {"points_per_epoch": 3, "batch_size": 16},
                 "zeroshot": {"datasets": ["synthetic"], "max_images": 16}},
    "runs": {"E2": {"sweep": {"model": {"label": "", "values": ["tiny", "tiny-vit"]}}},
             "E4": {"method": "lora", "lora": {"rank": 4, "alpha": 8}, "optim": {"lr": 3e-2}},
             "A1": {"optim": {"lr": 1e-3}},
             "R1": {"regularizer": {"kind": "apr", "lam": 0.1}}},
}
CLIP_RUNS = ["E2-tiny", "E4", "A1", "R1"]
RUNS = ["E2-tiny", "E2-tiny-vit", "E4", "A1", "R1"]  # matrix order; every run has a transfer score
OLD_KEYS = {"fullft_vs_lora", "fullft_vs_lora_pooled", "lr_sweep", "lr_vs_default", "regularizers", "weight_decay",
            "freezing", "layer_groups", "layer_groups_pooled", "metric_correlations", "entropy_vs_accuracy",
            "collapse_vs_zeroshot", "convergence"}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("links") / "m"
    s = run_matrix(matrix_from_dict(MATRIX), out, analyze=True, log=lambda _m: None)
    assert s["ok"], s
    return out


def _files(d: Path, rid: str) -> tuple[dict, dict]:
    return json.loads((d / rid / "history.json").read_text()), json.loads((d / rid / "final.json").read_text())


def _exact_spearman_p(x, y) -> float:
    """Share of all n! pairings whose |ρ| reaches the observed one (two-sided), by brute force."""
    rx, ry = sp.rankdata(x), sp.rankdata(y)
    obs = abs(np.corrcoef(rx, ry)[0, 1])
    perms = [abs(np.corrcoef(p, ry)[0, 1]) for p in permutations(rx)]
    return sum(v >= obs - 1e-12 for v in perms) / len(perms)


def _holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjustment written out: the i-th smallest p times (m − i), running max, cap 1."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adj, run = [0.0] * len(ps), 0.0
    for k, i in enumerate(order):
        run = max(run, (len(ps) - k) * ps[i])
        adj[i] = min(1.0, run)
    return adj


def _check(e: dict, x: list[float], y: list[float]) -> None:
    assert e["x_values"] == pytest.approx(x, rel=1e-12) and e["y_values"] == pytest.approx(y, rel=1e-12)
    assert e["pearson_r"] == pytest.approx(sp.pearsonr(x, y).statistic, rel=1e-9)
    assert e["pearson_p"] == pytest.approx(sp.pearsonr(x, y).pvalue, rel=1e-9)
    assert e["spearman_rho"] == pytest.approx(sp.spearmanr(x, y).statistic, rel=1e-9)
    assert e["spearman_p"] == pytest.approx(_exact_spearman_p(x, y), rel=1e-9)
    assert e["spearman_p_method"] == "exact"


def _pretrained_transfer(d: Path, final: dict) -> float:
    """E1's transfer score of the run's own model (E1 runs per model in a multi-model matrix):
    zero-shot accuracy for CLIP, k-NN accuracy for the vision-only ViT."""
    base = json.loads((d / "baseline" / f"{final['model']}_synthetic.json").read_text())
    assert base["model"] == final["model"] and base["transfer_protocol"] == final["transfer_protocol"]
    return base["transfer_acc"]


def test_final_json_and_results_csv_carry_the_last_points_drift_and_the_family(study):
    rows = {r["run_id"]: r for r in csv.DictReader((study / "results.csv").open())}
    for rid, fam in [*((r, "clip") for r in CLIP_RUNS), ("E2-tiny-vit", "vit")]:
        h, f = _files(study, rid)
        last = h["points"][-1]["weight_drift"]
        assert f["weight_drift"] == last and f["model_family"] == fam and rows[rid]["model_family"] == fam
        assert float(rows[rid]["weight_drift_final"]) == pytest.approx(np.mean(last), rel=1e-12)
        assert [float(v) for v in rows[rid]["weight_drift_layers"].split()] == pytest.approx(last, rel=1e-12)
        assert all(v > 0 for v in last) and h["points"][0]["weight_drift"] == [0.0] * len(last)
    assert rows["E2-tiny-vit"]["zeroshot_acc"] == ""  # vision-only: no zero-shot; its transfer score is k-NN
    assert rows["E2-tiny-vit"]["transfer_protocol"] == "knn" and rows["E2-tiny"]["transfer_protocol"] == "zeroshot"


def test_early_warning_is_scipy_on_the_epoch_one_point_against_the_pretrained_zero_shot(study):
    st = json.loads((study / "stats.json").read_text())
    assert OLD_KEYS <= set(st["tests"])  # the split of stats.py kept every entry
    t = st["tests"]["early_warning"]
    assert t["family"] == "predictor" and t["m"] == 5
    for e in t["entries"]:
        x, y = [], []
        for rid in RUNS:
            h, f = _files(study, rid)
            p1 = min(h["points"][1:], key=lambda p: abs(p["epoch"] - 1.0))
            assert p1["epoch"] == pytest.approx(1.0)  # 3 points per epoch: one falls on epoch 1
            if e["predictor"] == "weight_drift":
                x.append(float(np.mean(p1["weight_drift"])))
            else:
                v0 = h["points"][0]["mean"][e["predictor"]]
                x.append(100 * (p1["mean"][e["predictor"]] - v0) / v0)
            y.append(100 * (f["transfer_acc"] - _pretrained_transfer(study, f)))
        assert e["runs"] == RUNS and set(e["reference_source"].values()) == {"baseline"}
        _check(e, x, y)
    assert [e["spearman_p_holm"] for e in t["entries"]] == pytest.approx(_holm([e["spearman_p"] for e in t["entries"]]))


def test_weight_drift_pairs_drift_and_entropy_with_transfer_at_the_zero_shot_checkpoint(study):
    t = json.loads((study / "stats.json").read_text())["tests"]["weight_drift"]
    e = {x["label"]: x for x in t["entries"]}
    rows = {r["run_id"]: r for r in csv.DictReader((study / "results.csv").open())}
    ids = [r for r in rows if rows[r]["weight_drift_final"]]
    _check(e["weight drift vs entropy Δ%"], [float(rows[r]["weight_drift_final"]) for r in ids],
           [float(rows[r]["entropy_delta_pct"]) for r in ids])
    dx, hx, y = [], [], []
    for rid in RUNS:
        h, f = _files(study, rid)
        at = next(p for p in h["points"] if p["step"] == f["best_step"])  # zero-shot's checkpoint
        dx.append(float(np.mean(at["weight_drift"])))
        hx.append(100 * (at["mean"]["entropy"] - h["points"][0]["mean"]["entropy"]) / h["points"][0]["mean"]["entropy"])
        y.append(100 * (f["transfer_acc"] - _pretrained_transfer(study, f)))
    _check(e["weight drift vs transfer change"], dx, y)
    _check(e["entropy Δ% vs transfer change"], hx, y)
    assert [x["pearson_p_holm"] for x in t["entries"]] == pytest.approx(_holm([x["pearson_p"] for x in t["entries"]]))


def test_transfer_acc_is_preferred_and_old_runs_are_filled_from_their_files(study, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(study, d)
    (d / "results.csv").unlink()  # rows rebuilt from the run directories
    for rid in [*CLIP_RUNS, "E2-tiny-vit"]:  # a run written before drift and family were in final.json
        f = json.loads((d / rid / "final.json").read_text())
        del f["weight_drift"], f["model_family"], f["checksum"]  # nor a checksum (it would catch the edit)
        f["transfer_acc"] = 0.5 if rid == "E2-tiny-vit" else None
        (d / rid / "final.json").write_text(json.dumps(f))
    b = json.loads((d / "baseline" / "tiny_synthetic.json").read_text())
    (d / "baseline" / "tiny-vit.json").write_text(json.dumps({"model": "tiny-vit", "family": "vit",
                                                              "transfer_acc": 0.25, "dataset": "synthetic"}))
    m = table.load(d)
    vit = next(r for r in m.done if r.run_id == "E2-tiny-vit")
    h, _ = _files(d, "E2-tiny-vit")
    assert vit.get("weight_drift_final") == pytest.approx(np.mean(h["points"][-1]["weight_drift"]), rel=1e-12)
    assert vit.get("model_family") == "vit" and m.done[0].get("model_family") == b["family"] == "clip"
    assert links.transfer_change(vit, m.baseline) == {"pp": 25.0, "score": 0.5, "column": "transfer_acc",
                                                      "reference": 0.25, "source": "baseline"}
    e = stats.analyze(d, write=False)["tests"]["early_warning"]["entries"][0]
    assert sorted(e["runs"]) == sorted([*CLIP_RUNS, "E2-tiny-vit"])  # rows rebuilt in directory order
    assert e["transfer_column"]["E2-tiny-vit"] == "transfer_acc" and e["transfer_column"]["E4"] == "zeroshot_acc"


def test_a_damaged_drift_is_named_with_its_fix(study, tmp_path, capsys):
    d = tmp_path / "m"
    shutil.copytree(study, d)
    (d / "results.csv").unlink()
    h = json.loads((d / "E4" / "history.json").read_text())
    h["points"][-1]["weight_drift"] = ["x", None]
    del h["checksum"]  # files of a version before checksums (with one, the edit is caught as damage)
    (d / "E4" / "history.json").write_text(json.dumps(h))
    f = json.loads((d / "E4" / "final.json").read_text())
    del f["weight_drift"], f["checksum"]  # so the drift is read from history.json
    (d / "E4" / "final.json").write_text(json.dumps(f))
    assert main(["report", str(d)]) != 0
    cap = capsys.readouterr()
    lines = (cap.out + cap.err).strip().splitlines()
    assert any("stats: failed" in ln and "E4/history.json: points[].weight_drift" in ln and "rerun" in ln
               for ln in lines), lines
    assert not any("Traceback" in ln for ln in lines)


def test_figures_are_drawn_from_the_entries(study):
    figs = json.loads((study / "figures" / "figures.json").read_text())
    for name in ("extra_early_warning", "extra_weight_drift"):
        assert figs[name]["file"] == f"figures/{name}.png" and (study / figs[name]["file"]).stat().st_size > 10_000
        assert "transfer change" in figs[name]["caption"]


def test_too_few_runs_skip_with_a_reason():
    assert links.early_warning([], {})["skipped"]
    assert "weight drift" in links.weight_drift([], {})["reason"]
    assert math.isnan(stats.correlate([1, 2, 3], [1, 1, 1])["spearman_p"])
