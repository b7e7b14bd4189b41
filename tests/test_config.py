"""Matrix configs: the shipped studies expand as the reports say; bad configs say everything."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from attncollapse.config import RunConfig
from attncollapse.config import (ConfigError, format_value, load_matrix, load_run_config, matrix_from_dict,
                                 packaged_configs)

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    p = tmp_path / name
    head = TINY if text.startswith(TINY) else ""
    p.write_text(head + textwrap.dedent(text[len(head):]))
    return p


def _errors(tmp_path: Path, text: str, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_matrix(_write(tmp_path, text), overrides=list(overrides))
    return info.value.errors


TINY = """\
name: t
defaults: {model: tiny, dataset: synthetic}
"""


@pytest.mark.parametrize("name", ["paper", "demo", "paper-shapes"])
def test_shipped_configs_validate_with_the_same_ids(name):
    runs = load_matrix(name).expand()
    paper_ids = [r.id for r in load_matrix("paper").expand()]
    assert len(runs) == 21
    groups = [r.group for r in runs]
    assert groups == [i.split("-")[0] for i in paper_ids]
    if name != "demo":  # the demo keeps ids by group; its swept values are rescaled
        assert [r.id for r in runs] == paper_ids


def test_repo_configs_are_the_packaged_ones():
    for name, path in packaged_configs().items():
        assert (REPO / "configs" / f"{name}.yaml").read_text() == path.read_text()


def test_paper_matrix_matches_the_reports():
    m = load_matrix("paper")
    assert m.seeds == [42] and m.baseline == ["eurosat", "pets"]
    runs = {r.id: r.config for r in m.expand()}
    assert list(runs) == ["E2", "E3", "E4", "E5", "E6", "E7", "A1-lr1e-06", "A1-lr5e-06", "A1-lr5e-05",
                          "A1-lr1e-04", "A2", "A3-freeze3", "A3-freeze6", "A3-freeze9", "R1-apr0.01",
                          "R1-apr0.1", "R1-apr1.0", "R2-ent0.01", "R2-ent0.1", "R3-wd0.0", "R3-wd0.1"]
    for cfg in runs.values():  # §2.3 for every run
        assert cfg.model == "openai/clip-vit-base-patch32"
        assert (cfg.optim.batch_size, cfg.optim.warmup_frac, cfg.optim.grad_clip) == (64, 0.05, 1.0)
        assert cfg.optim.precision == "fp16" and cfg.seed == 42
        assert (cfg.eval.points_per_epoch, cfg.data.eval_subset_size) == (5, 200)
        assert cfg.zeroshot.datasets == ["cifar100", "flowers102"] and cfg.zeroshot.enabled  # fig15
        assert (cfg.eval.timing, cfg.eval.train_loss, cfg.freeze_embeddings) == ("original", "last", False)
        assert cfg.optim.epochs == (30 if cfg.dataset == "pets" else 20)
    e2, e3, e5 = runs["E2"], runs["E3"], runs["E5"]
    assert (e2.method, e2.dataset, e2.optim.lr, e2.optim.weight_decay) == ("full", "eurosat", 1e-5, 0.01)
    assert (e3.dataset, e3.optim.epochs, e3.method) == ("pets", 30, "full")
    assert (e5.method, e5.lora.rank, e5.lora.alpha, e5.optim.lr) == ("lora", 8, 16, 1e-4)
    assert (e5.lora.dropout, e5.lora.targets) == (0.05, "qv")
    assert [runs[i].lora.rank for i in ("E4", "E5", "E6")] == [4, 8, 16]
    assert (runs["E7"].dataset, runs["E7"].lora.rank, runs["E7"].optim.epochs) == ("pets", 8, 30)
    assert runs["A2"].lora.targets == "qkvo"
    assert runs["A1-lr5e-05"].optim.lr == 5e-5 and runs["A1-lr5e-05"].method == "full"
    assert runs["A3-freeze6"].freeze_layers == 6
    assert (runs["R1-apr1.0"].regularizer.kind, runs["R1-apr1.0"].regularizer.lam) == ("apr", 1.0)
    assert (runs["R2-ent0.1"].regularizer.kind, runs["R2-ent0.1"].regularizer.lam) == ("entropy_floor", 0.1)
    assert runs["R3-wd0.1"].optim.weight_decay == 0.1 and runs["R3-wd0.0"].optim.weight_decay == 0.0
    assert runs["A1-lr5e-05"].id == "A1-lr5e-05"  # the RunConfig carries its id


def test_paper_shapes_keeps_the_matrix_on_random_weights():
    paper = {r.id: r.config for r in load_matrix("paper").expand()}
    shapes = {r.id: r.config for r in load_matrix("paper-shapes").expand()}
    for rid, cfg in shapes.items():
        p = paper[rid]
        assert cfg.model == "vit-b-32-random" and cfg.dataset == "synthetic"
        assert (cfg.optim.epochs, cfg.optim.batch_size, cfg.eval.points_per_epoch) == \
               (p.optim.epochs, p.optim.batch_size, p.eval.points_per_epoch)
        assert (cfg.method, cfg.lora, cfg.optim.lr, cfg.freeze_layers, cfg.regularizer) == \
               (p.method, p.lora, p.optim.lr, p.freeze_layers, p.regularizer)
        assert cfg.data.synthetic_classes == (37 if p.dataset == "pets" else 10)
    assert (shapes["E2"].data.synthetic_train, shapes["E2"].data.synthetic_test) == (21600, 2700)
    assert (shapes["E3"].data.synthetic_train, shapes["E3"].data.synthetic_test) == (3680, 3669)


def test_demo_is_small_and_offline():
    steps = 0
    for r in load_matrix("demo").expand():
        c = r.config
        assert c.model == "tiny-6l" and c.dataset in ("synthetic", "digits")
        assert c.optim.batch_size == 32 and c.optim.precision == "fp32"
        assert c.zeroshot.datasets == ["digits"]
        assert c.data.max_train_images is not None and c.data.max_train_images <= 256
        steps += c.optim.epochs * -(-c.data.max_train_images // c.optim.batch_size)
    assert steps <= 800  # the whole demo trains ~520 tiny steps: well under a minute of CPU


def test_seeds_suffix_and_sweep_ids(tmp_path):
    m = load_matrix(_write(tmp_path, TINY + """\
        seeds: [1, 2]
        runs:
          E2: {}
          A3: {sweep: {freeze_layers: [1, 3]}}
          X: {sweep: {optim.lr: [1e-4, 0.5], lora.rank: {label: rk, values: [2]}}}
        """))
    runs = m.expand()
    assert [r.id for r in runs] == ["E2-s1", "E2-s2", "A3-freeze1-s1", "A3-freeze1-s2", "A3-freeze3-s1",
                                    "A3-freeze3-s2", "X-lr1e-04-rk2-s1", "X-lr1e-04-rk2-s2",
                                    "X-lr0.5-rk2-s1", "X-lr0.5-rk2-s2"]
    assert [r.config.seed for r in runs[:2]] == [1, 2]
    assert runs[0].config.id == "E2" and runs[2].group == "A3"
    assert [format_value(v) for v in (1e-6, 5e-5, 1e-4, 0.1, 1.0, 0.0, 3, "qkvo")] == \
           ["1e-06", "5e-05", "1e-04", "0.1", "1.0", "0.0", "3", "qkvo"]


def test_overrides_go_to_defaults_runs_or_matrix(tmp_path):
    path = _write(tmp_path, TINY + "runs:\n  E2: {}\n  E3: {optim: {epochs: 3}}\n")
    m = load_matrix(path, overrides=["optim.epochs=0.5", "optim.lr=1e-4", "runs.E3.optim.epochs=2",
                                     "seeds=[7]", "lora.targets=qkvo"])
    runs = {r.id: r.config for r in m.expand()}
    assert runs["E2"].optim.epochs == 0.5 and runs["E2"].optim.lr == 1e-4
    assert runs["E3"].optim.epochs == 2 and runs["E3"].seed == 7 and runs["E3"].lora.targets == "qkvo"


def test_three_errors_reported_at_once(tmp_path):
    errs = _errors(tmp_path, TINY + """\
        runs:
          E2: {optim: {lr: 0}}
          E4: {method: lora, lora: {rank: 0}}
          A3: {freeze_layers: 5}
        """)
    assert len(errs) == 3, errs
    assert errs[0].startswith("runs.E2.optim.lr:") and "greater than 0" in errs[0]
    assert errs[1].startswith("runs.E4.lora.rank:") and "greater than or equal to 1" in errs[1]
    assert errs[2].startswith("runs.A3.freeze_layers:") and "tiny has 3" in errs[2]


@pytest.mark.parametrize("body, where, words", [
    ("runs:\n  E4: {lora: {rnak: 4}}\n", "runs.E4.lora.rnak", "valid keys: rank, alpha, dropout, targets"),
    ("runs:\n  E2: {optim: {lr: fast}}\n", "runs.E2.optim.lr", "valid number"),
    ("runs:\n  E2: {optim: {epochs: [1]}}\n", "runs.E2.optim.epochs", "valid number"),
    ("runs:\n  E2: {dataset: imagenot}\n", "runs.E2.dataset", "unknown dataset source 'imagenot'"),
    ("runs:\n  R9: {regularizer: {kind: dropout, lam: 0.1}}\n", "runs.R9.regularizer.kind", "'apr'"),
    ("runs:\n  R1: {regularizer: {kind: apr}}\n", "runs.R1", "needs lam > 0"),
    ("runs:\n  E2: {model: tnyi}\n", "runs.E2.model", "unknown model 'tnyi'"),
    ("runs:\n  E2: {zeroshot: {datasets: [cifar1000]}}\n", "runs.E2.zeroshot.datasets[0]", "cifar1000"),
    ("runs:\n  A1: {sweep: {optim.lr: [1e-5, -1]}}\n", "runs.A1.sweep.optim.lr[1]", "greater than 0"),
    ("runs:\n  A1: {sweep: {optim.lrr: [1e-5]}}\n", "runs.A1.sweep.optim.lrr", "valid keys: lr,"),
    ("runs:\n  A3: {sweep: {freeze_layers: [1, 4]}}\n", "runs.A3.sweep.freeze_layers[1]", "tiny has 3"),
    ("runs:\n  E2: {}\n  E2: {optim: {lr: 1e-4}}\n", "runs.E2", "duplicate key"),
    ("runs:\n  A1-lr0.1: {}\n  A1: {sweep: {optim.lr: [0.1]}}\n", "runs.A1", "duplicate run id 'A1-lr0.1'"),
    ("runs:\n  - {id: E2}\n  - {id: E3, lora: {rank: -1}}\n", "runs[1].lora.rank", "greater than or equal"),
    ("runs:\n  E2: {seed: 1}\n", "runs.E2.seed", "seeds:"),
    ("baseline: [eurosta]\nruns:\n  E2: {}\n", "baseline[0]", "eurosta"),
    ("runs:\n  E2: {}\nrnus: {}\n", "rnus", "valid keys: name, description, seeds"),
    ("runs: {}\n", "runs", "no runs"),
])
def test_bad_config_names_the_field(tmp_path, body, where, words):
    errs = _errors(tmp_path, TINY + body)
    hits = [e for e in errs if e.startswith(where + ":") and words in e]
    assert hits, errs


def test_freeze_checked_against_hub_and_directory_depth(tmp_path):
    errs = _errors(tmp_path, """\
        name: t
        defaults: {model: openai/clip-vit-base-patch32, dataset: eurosat}
        runs:
          A3: {sweep: {freeze_layers: [9, 13]}}
        """)
    assert errs == ["runs.A3.sweep.freeze_layers[1]: cannot freeze 13 layers; openai/clip-vit-base-patch32 has 12"]
    unknown = tmp_path / "some-model"
    unknown.mkdir()
    (unknown / "config.json").write_text("{}")  # a model directory whose depth is not written down
    (unknown / "model.safetensors").write_bytes(b"")
    m = matrix_from_dict({"name": "t", "defaults": {"model": str(unknown), "dataset": "eurosat"},
                          "runs": {"A3": {"freeze_layers": 40}}})
    assert m.expand()[0].config.freeze_layers == 40  # unknown depth: not checked


def test_defaults_errors_reported_once(tmp_path):
    errs = _errors(tmp_path, TINY.replace("dataset: synthetic", "dataset: synthetic, optim: {lr: -1}")
                   + "runs:\n  E2: {}\n  E3: {}\n  E4: {optim: {lr: -2}}\n")
    assert errs[0].startswith("defaults.optim.lr:")
    assert sum(e.startswith("runs.E4.optim.lr:") for e in errs) == 1
    assert not any(e.startswith(("runs.E2", "runs.E3")) for e in errs)


def test_set_errors_and_run_config_files(tmp_path):
    errs = _errors(tmp_path, TINY + "runs:\n  E2: {}\n", overrides=["optim.lrr=1", "optim.lr=-1"])
    assert any(e.startswith("--set optim.lrr:") for e in errs)
    assert any(e.startswith("defaults.optim.lr:") for e in errs)
    good = _write(tmp_path, "id: E2\nmodel: tiny\ndataset: synthetic\n", "run.yaml")
    assert isinstance(load_run_config(good), RunConfig)
    bad = _write(tmp_path, "model: tiny\ndataset: nope\nlora: {rank: 0}\n", "bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_run_config(bad)
    assert len(info.value.errors) == 2


def test_set_without_equals_is_an_error_for_matrices_run_configs_and_executor_options(tmp_path, capsys):
    # One parser for every KEY=VALUE flag: `--set foo` must not silently set foo=None.
    errs = _errors(tmp_path, TINY + "runs:\n  E2: {}\n", overrides=["optim.lr"])
    assert errs == ["--set optim.lr: expected KEY=VALUE"]
    run_file = _write(tmp_path, "id: E2\nmodel: tiny\ndataset: synthetic\n", "run.yaml")
    with pytest.raises(ConfigError) as info:
        load_run_config(run_file, overrides=["seed"])
    assert info.value.errors == ["--set seed: expected KEY=VALUE"]
    assert load_run_config(run_file, overrides=["seed=7"]).seed == 7
    from attncollapse.cli import main
    matrix = _write(tmp_path, TINY + "runs:\n  E2: {}\n", "m.yaml")
    assert main(["run", str(matrix), "--out", str(tmp_path / "o"), "--executor-opt", "timeout_min"]) == 2
    assert "--executor-opt timeout_min: expected KEY=VALUE" in capsys.readouterr().err


def test_config_change_names_the_keys_that_change_the_numbers():
    from attncollapse.config import config_change, fingerprint_fields

    a = RunConfig.model_validate({"model": "tiny", "dataset": "synthetic"})
    b = RunConfig.model_validate({"model": "tiny", "dataset": "synthetic", "optim": {"lr": 0.5, "weight_decay": 0.3}})
    c = RunConfig.model_validate({"model": "tiny", "dataset": "synthetic", "device": "cpu"})  # not fingerprinted
    assert config_change(fingerprint_fields(a), a) is None
    assert config_change(fingerprint_fields(a), c) is None
    assert config_change(fingerprint_fields(a), b) == "differing keys: optim.lr, optim.weight_decay"
    assert config_change(fingerprint_fields(a), b, limit=1) == "differing keys: optim.lr"

