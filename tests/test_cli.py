"""The `attncollapse` command driven in-process (open_clip's `main([...])` habit)."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import pytest

from attncollapse.cli import main
from attncollapse.analysis.table import RESULTS_COLUMNS

# Three real runs of the tiny preset, a baseline and zero-shot: the whole code path in seconds.
SMALL = """\
name: small
baseline: [synthetic]
defaults:
  model: tiny
  dataset: synthetic
  optim: {lr: 1.0e-3, batch_size: 32, epochs: 1, precision: fp32}
  data: {synthetic_train: 64, synthetic_test: 48, eval_subset_size: 20}
  eval: {points_per_epoch: 2, batch_size: 10}
  zeroshot: {datasets: [synthetic], max_images: 24}
runs:
  E2: {}
  E4: {method: lora, lora: {rank: 4, alpha: 8}, optim: {lr: 1.0e-2}}
  R1:
    regularizer: {kind: apr}
    sweep: {regularizer.lam: {label: apr, values: [0.1]}}
"""


def _file(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_validate_shipped_and_bad(tmp_path, capsys):
    assert main(["validate", "paper"]) == 0
    assert "21 runs" in capsys.readouterr().out
    bad = _file(tmp_path, SMALL.replace("rank: 4,", "rank: 0,").replace("epochs: 1,", "epochs: -1,")
                .replace("E2: {}", "E2: {lora: {rnak: 2}}"))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "3 problems" in err and "Traceback" not in err
    for where in ("defaults.optim.epochs:", "runs.E4.lora.rank:", "runs.E2.lora.rnak:"):
        assert where in err


def test_run_with_bad_config_writes_nothing(tmp_path, capsys):
    bad = _file(tmp_path, SMALL.replace("dataset: synthetic", "dataset: eurosatt").replace("lr: 1.0e-2", "lr: 0"))
    out = tmp_path / "out"
    assert main(["run", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "runs.E4.optim.lr:" in err and "defaults.dataset:" in err and "eurosatt" in err
    assert "Traceback" not in err and not out.exists()
    assert main(["run", str(_file(tmp_path, SMALL)), "--out", str(out), "--set", "optim.lrr=1"]) == 2
    assert "--set optim.lrr" in capsys.readouterr().err and not out.exists()
    assert main(["run", str(_file(tmp_path, SMALL)), "--out", str(out), "--only", "Q7"]) == 2
    assert not out.exists()


def test_small_matrix_end_to_end_with_real_training(tmp_path, capsys):
    out = tmp_path / "small"
    matrix = _file(tmp_path, SMALL)
    assert main(["run", str(matrix), "--out", str(out)]) == 0, capsys.readouterr().out
    printed = capsys.readouterr().out
    assert "4 done" in printed
    for f in ("matrix.yaml", "env.json", "baseline/synthetic.json", "results.csv"):
        assert (out / f).is_file(), f
    for rid in ("E2", "E4", "R1-apr0.1"):
        for f in ("config.yaml", "env.json", "history.json", "final.json"):
            assert (out / rid / f).is_file(), (rid, f)
        assert not (out / rid / "lock.json").exists() and not (out / rid / "error.txt").exists()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert list(rows[0])[:len(RESULTS_COLUMNS)] == RESULTS_COLUMNS
    assert [r["run_id"] for r in rows] == ["E2", "E4", "R1-apr0.1"]
    assert all(r["status"] == "done" and r["entropy_initial"] and r["zeroshot_synthetic"] for r in rows)
    for made in ("stats.json", "report.md", "report.html"):
        assert (out / made).is_file(), made

    # A second invocation trains nothing.
    stamps = {rid: (out / rid / "final.json").stat().st_mtime_ns for rid in ("E2", "E4", "R1-apr0.1")}
    assert main(["run", str(matrix), "--out", str(out), "--no-analysis"]) == 0
    assert "4 skipped" in capsys.readouterr().out
    assert stamps == {rid: (out / rid / "final.json").stat().st_mtime_ns for rid in stamps}

    assert main(["status", str(out)]) == 0
    status_out = capsys.readouterr().out
    assert "R1-apr0.1" in status_out and "4 done" in status_out


def test_baseline_command_prints_the_layer_table(tmp_path, capsys):
    out = tmp_path / "e1"
    assert main(["baseline", "--model", "tiny", "--data", "synthetic", "--out", str(out),
                 "--eval-images", "20"]) == 0
    printed = capsys.readouterr().out
    assert "entropy" in printed and "head_diversity" in printed and "mean" in printed
    assert len([line for line in printed.splitlines() if line.strip()[:1].isdigit()]) >= 3  # 3 layers
    assert (out / "baseline.json").is_file() and (out / "fig2_baseline_structure.png").is_file()


def test_help_is_cheap(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "run" in capsys.readouterr().out
