"""The `attncollapse` command driven in-process (open_clip's `main([...])` habit)."""

from __future__ import annotations

import csv
import json
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
        for f in ("config.yaml", "env.json", "history.json", "final.json", "evalmaps.npz", "explore.html"):
            assert (out / rid / f).is_file(), (rid, f)
        assert not (out / rid / "lock.json").exists() and not (out / rid / "error.txt").exists()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert list(rows[0])[:len(RESULTS_COLUMNS)] == RESULTS_COLUMNS
    assert [r["run_id"] for r in rows] == ["E2", "E4", "R1-apr0.1"]
    assert all(r["status"] == "done" and r["entropy_initial"] and r["zeroshot_synthetic"] for r in rows)
    for r in rows:  # the structure measures, from history.json to results.csv
        pts = json.loads((out / r["run_id"] / "history.json").read_text())["points"]
        s0, s1 = pts[0]["structure"], pts[-1]["structure"]
        for k in ("rollout_entropy", "rollout_erf", "rollout_gini"):  # the full rollout: last layer
            assert float(r[f"{k}_initial"]) == s0[k][-1] and float(r[f"{k}_final"]) == s1[k][-1], k
            assert float(r[f"{k}_delta_pct"]) == pytest.approx(100 * (s1[k][-1] - s0[k][-1]) / s0[k][-1]), k
        assert float(r["patch_entropy_final"]) == pytest.approx(sum(s1["patch_entropy"]) / 3)
        assert float(r["cka_final"]) == pytest.approx(sum(s1["cka"]) / 3)
        assert float(r["map_drift_final"]) == pytest.approx(sum(s1["map_drift"]) / 3)
        assert [float(v) for v in r["cka_layers"].split()] == s1["cka"]
    e1 = json.loads((out / "baseline" / "synthetic.json").read_text())  # E1 = E2's model before its first step
    e2_0 = json.loads((out / "E2" / "history.json").read_text())["points"][0]["structure"]
    for k, v in e1["structure"].items():
        assert v == pytest.approx(e2_0[k], abs=1e-6), k
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
    e1 = json.loads((out / "baseline" / "synthetic.json").read_text())
    assert (f"baseline/synthetic.json: mean entropy {e1['mean']['entropy']:.3f} over {e1['images']} images"
            in status_out), status_out
    assert "report: " in printed and "report.md" in printed  # run says where its report is


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


# --- broken configs: `validate` and `run` refuse each with the same one-line-per-problem error
BASE = SMALL.replace("  zeroshot: {datasets: [synthetic], max_images: 24}\n", "")


def _broken(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    """name → (file content, what the error must say); `_make_paths` makes the paths it names."""
    sub = lambda a, b: BASE.replace(a, b).encode()  # noqa: E731
    return {
        "empty file": (b"", "empty file"),
        "only comments": (b"# nothing here\n", "empty file"),
        "no runs": (b"name: x\ndefaults: {model: tiny, dataset: synthetic}\n", "runs: Field required"),
        "batch_size true": (sub("batch_size: 32", "batch_size: true"), "defaults.optim.batch_size: Input should be a valid integer"),
        "batch_size 1e12": (sub("batch_size: 32", "batch_size: 1e12"), "defaults.optim.batch_size: Input should be a valid integer"),
        "epochs 1e12": (sub("epochs: 1,", "epochs: 1e12,"), "defaults.optim.epochs: Input should be less than or equal to 10000"),
        "points_per_epoch 1e6": (sub("points_per_epoch: 2", "points_per_epoch: 1e6"), "defaults.eval.points_per_epoch: Input should be a valid integer"),
        "seed a bool": (BASE.replace("name: small", "name: small\nseeds: [true]").encode(), "seeds.0: Input should be a valid integer"),
        "missing imagefolder": (sub("dataset: synthetic", f"dataset: imagefolder:{tmp_path}/nope"), "does not exist"),
        "imagefolder without images": (sub("dataset: synthetic", f"dataset: imagefolder:{tmp_path}/empty_folder"), "no image files"),
        "missing hf dir": (sub("dataset: synthetic", f"dataset: hf:{tmp_path}/nope"), "save_to_disk"),
        "missing model dir": (sub("model: tiny", f"model: {tmp_path}/nope"), f"model directory {tmp_path}/nope does not exist"),
        "model dir without weights": (sub("model: tiny", f"model: {tmp_path}/no_weights"), "has no weights"),
        "model .pt file": (sub("model: tiny", f"model: {tmp_path}/model.pt"), "attncollapse convert"),
        "bad hub id": (sub("model: tiny", "model: models/vit-b/32"), "neither an existing directory nor a hub id"),
        "cache_dir under a file": (sub("dataset: synthetic", f"dataset: synthetic\n  data: {{cache_dir: {tmp_path}/a_file/cache}}")
                                   .replace(b"  data: {synthetic_train", b"  data2: {synthetic_train"), "is a file"),
        "not UTF-8": ("name: caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
        "binary": (b"\x89PNG\r\n\x1a\n\0\0\0", "binary file"),
        "bad YAML": (b"name: x\nruns: {E2: [\n", "not valid YAML at line"),
        "a list": (b"- a\n- b\n", "expected a mapping"),
    }


BROKEN_NAMES = list(_broken(Path("/nonexistent")))


def _make_paths(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text("{}")
    (tmp_path / "empty_folder" / "cat").mkdir(parents=True)
    (tmp_path / "model.pt").write_bytes(b"\0")


@pytest.mark.parametrize("name", BROKEN_NAMES)
def test_broken_config_refused_alike_by_validate_and_run(tmp_path, capsys, name):
    _make_paths(tmp_path)
    content, expected = _broken(tmp_path)[name]
    path = tmp_path / "m.yaml"
    path.write_bytes(content)
    assert main(["validate", str(path)]) == 2
    v_err = capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2
    r_err = capsys.readouterr().err
    assert expected in v_err, v_err
    assert "Traceback" not in v_err + r_err
    assert v_err == r_err  # one code path: the same errors, word for word
    assert not out.exists()


WARNED = {
    "single image": ("data: {synthetic_train: 64", "data: {max_train_images: 1, synthetic_train: 64",
                     "a single training image"),
    "batch over dataset": ("batch_size: 32", "batch_size: 128", "optim.batch_size 128 > the 64 training images"),
    "eval points beyond steps": ("points_per_epoch: 2", "points_per_epoch: 50",
                                 "eval.points_per_epoch 50 > the 2 steps per epoch"),
    "a GPU-day": ("dataset: synthetic", "dataset: eurosat", None),
}


@pytest.mark.parametrize("name", list(WARNED))
def test_likely_typos_warned_alike_by_validate_and_run(tmp_path, capsys, name):
    old, new, expected = WARNED[name]
    text = BASE.replace(old, new)
    if expected is None:  # 21,600 images × 9,000 epochs ≈ 1.9e8 images > a GPU-day at 2,000/s
        text, expected = text.replace("epochs: 1,", "epochs: 9000,"), "GPU-days"
    path = tmp_path / "m.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 0
    v_err = capsys.readouterr().err
    assert f"warning: E2, E4, R1-apr0.1: {expected}" in v_err or (expected in v_err and "warning:" in v_err), v_err
    # run prints the same warnings before anything else (here it then stops at --only)
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--only", "Q7"]) == 2
    r_err = capsys.readouterr().err
    assert r_err.startswith(v_err), (v_err, r_err)


def test_clean_config_has_no_warnings(tmp_path, capsys):
    path = tmp_path / "m.yaml"
    path.write_text(BASE)
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().err == ""


def test_run_refuses_a_single_run_config_that_validate_accepts(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("model: tiny\ndataset: synthetic\n")
    assert main(["validate", str(path)]) == 0
    assert main(["run", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "not a matrix" in capsys.readouterr().err


def test_bug_gives_one_line_unless_debug(tmp_path, capsys, monkeypatch):
    import attncollapse.study as study

    def boom(*a, **k):
        raise ZeroDivisionError("a real bug")

    monkeypatch.setattr(study, "status", boom)
    (tmp_path / "matrix.yaml").write_text("x")
    assert main(["status", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: ZeroDivisionError: a real bug (rerun with --debug for the traceback)"
    with pytest.raises(ZeroDivisionError):
        main(["status", str(tmp_path), "--debug"])


def test_every_subcommand_has_a_description_and_every_argument_has_help():
    from attncollapse.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert p.description, name
        for a in p._actions:
            assert a.help, (name, a.dest)  # options too: `--help` explains every flag


# --- a lab's everyday mistakes on the command line: one "error: ..." line naming the file or
# field and the fix, exit 2, no traceback. name → (argv built from tmp_path, words the line must hold)
def _mistakes(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    return {
        "typo'd key": (["validate", str(tmp / "typo.yaml")], ["defaults.optim.lrr: unknown key", "valid keys: lr"]),
        "missing config file": (["run", str(tmp / "nope.yaml")], ["nope.yaml: no such file", "packaged config"]),
        "status of no directory": (["status", str(tmp / "nodir")], ["nodir: no such matrix directory", "--out"]),
        "report of no directory": (["report", str(tmp / "nodir")], ["nodir: no such matrix directory", "--out"]),
        "status of a non-matrix": (["status", str(tmp)], ["no matrix.yaml"]),
        "zeroshot of no directory": (["zeroshot", str(tmp / "nodir")], ["nodir: no such run directory", "status"]),
        "zeroshot of an unfinished run": (["zeroshot", str(tmp)], ["final.json missing"]),
        "--only matching nothing": (["run", str(tmp / "ok.yaml"), "--out", str(tmp / "o"), "--only", "Q7"],
                                    ["--only Q7: matches no run", "E2"]),
        "convert garbage": (["convert", str(tmp / "garbage.pt"), str(tmp / "conv")],
                            ["garbage.pt: not a readable checkpoint", "open_clip"]),
        "convert empty safetensors": (["convert", str(tmp / "empty.safetensors"), str(tmp / "conv")],
                                      ["empty.safetensors: not a readable checkpoint"]),
        "convert missing file": (["convert", str(tmp / "ViT-B-32.pt"), str(tmp / "conv")],
                                 ["ViT-B-32.pt: no such checkpoint file"]),
        "baseline unknown data": (["baseline", "--model", "tiny", "--data", "nope", "--out", str(tmp / "b")],
                                  ["unknown data source 'nope'", "synthetic"]),
        "config is a directory": (["validate", str(tmp)], ["is a directory", "packaged config"]),
        "--set unclosed list": (["validate", str(tmp / "ok.yaml"), "--set", "seeds=[1,2"],
                                ["--set seeds=[1,2: not a valid YAML value", "seeds=[1,2]"]),
    }


# argparse's own refusals (usage line + one error, exit 2): values that would otherwise run
# silently wrong (`--gpus abc` ran every task on the CPU) or fail deep inside with a traceback.
ARG_MISTAKES = {
    "--gpus not a count": (["run", "demo", "--gpus", "abc"], "argument --gpus: 'abc': expected a count"),
    "--runs-per-gpu 0": (["run", "demo", "--runs-per-gpu", "0"], "argument --runs-per-gpu: '0'"),
    "--eval-images 0": (["baseline", "--model", "tiny", "--data", "synthetic", "--out", "x", "--eval-images", "0"],
                        "argument --eval-images: '0': expected a whole number"),
    "no file": (["validate"], "the following arguments are required: file"),
}


@pytest.mark.parametrize("name", list(ARG_MISTAKES))
def test_argument_mistakes_are_refused_before_any_work(tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    argv, expected = ARG_MISTAKES[name]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("name", list(_mistakes(Path("/x"))))
def test_command_line_mistakes_give_one_line_and_exit_2(tmp_path, capsys, name):
    (tmp_path / "typo.yaml").write_text(BASE.replace("epochs: 1,", "epochs: 1, lrr: 1,"))
    (tmp_path / "ok.yaml").write_text(BASE)
    (tmp_path / "garbage.pt").write_bytes(bytes(range(256)) * 3)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    argv, words = _mistakes(tmp_path)[name]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 2, err  # the error, plus the list of problems at most
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "conv").exists() and not (tmp_path / "o").exists() and not (tmp_path / "b").exists()


def test_zeroshot_checks_the_hub_before_loading(tmp_path, capsys, monkeypatch):
    """A finished run asked for a hub set with the hub unreachable: the preflight's message
    naming the set and the offline routes, not ~30 s of retries."""
    from attncollapse.study import preflight

    out = tmp_path / "small"
    text = SMALL.replace("  R1:\n    regularizer: {kind: apr}\n    sweep: {regularizer.lam: {label: apr, values: [0.1]}}\n", "")
    assert main(["run", str(_file(tmp_path, text)), "--out", str(out), "--only", "E2", "--no-analysis"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(preflight, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(preflight, "is_cached", lambda kind, repo: False)
    assert main(["zeroshot", str(out / "E2"), "--datasets", "synthetic", "hf:someone/cifar10"]) == 2
    err = capsys.readouterr().err
    assert "dataset someone/cifar10  (needed by E2)" in err and "HF_HUB_OFFLINE=1" in err
    assert "synthetic" not in err.split("Work offline")[0]  # offline sources are never "missing"


@pytest.mark.parametrize("name", ["paper", "paper-shapes", "demo", "families-demo", "families", "controlled",
                                  "controlled-demo"])
def test_every_packaged_config_validates(capsys, name):
    assert main(["validate", name]) == 0
    out = capsys.readouterr()
    assert f"matrix '{name}'" in out.out and out.err == ""


def test_help_of_every_subcommand_shows_its_description(capsys):
    from attncollapse.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, p in sub.choices.items():
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert " ".join(p.description.split()[:4]) in " ".join(capsys.readouterr().out.split()), name
