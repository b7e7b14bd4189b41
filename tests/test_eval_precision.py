"""Measurements in fp32 whatever the training precision (`eval.precision`), as the original
measured every metric, accuracy and zero-shot outside autocast: a run trained in bf16 starts
from exactly the numbers of the same run trained in fp32, and of E1."""

from __future__ import annotations

import json

import pytest

from attncollapse import train
from attncollapse.config import EvalConfig

from conftest import tiny_run_config


def _points(run_dir):
    return json.loads((run_dir / "history.json").read_text())["points"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same E2-like tiny run trained in fp32 and in bf16 (CPU autocast), measured in fp32;
    and once more measured in bf16 (what the training precision did to the eval points before)."""
    root = tmp_path_factory.mktemp("prec")
    over = {"optim.epochs": 1, "data.synthetic_train": 128, "data.eval_subset_size": 24}
    out = {}
    for name, prec, ev in (("fp32", "fp32", "fp32"), ("bf16", "bf16", "fp32"), ("bf16_eval", "bf16", "bf16")):
        cfg = tiny_run_config(**over, **{"optim.precision": prec, "eval.precision": ev})
        out[name] = (train.run(cfg, root / name), root / name, cfg)
    return out


def test_bf16_training_leaves_step_0_bitwise_equal(runs):
    f32, b16 = _points(runs["fp32"][1]), _points(runs["bf16"][1])
    assert runs["bf16"][0]["precision_used"] == "bf16" and runs["bf16"][0]["eval_precision_used"] == "fp32"
    assert f32[0]["step"] == b16[0]["step"] == 0
    assert f32[0]["layers"] == b16[0]["layers"] and f32[0]["mean"] == b16[0]["mean"]  # bitwise: JSON floats
    assert f32[0].get("structure") == b16[0].get("structure")
    # training did run in bf16: the later points move away from the fp32 run's
    assert f32[-1]["layers"] != b16[-1]["layers"]
    # measured at the training precision, step 0 is not the fp32 run's (the defect this setting removes)
    assert _points(runs["bf16_eval"][1])[0]["layers"] != f32[0]["layers"]


def test_e1_equals_every_runs_step_0(runs, tmp_path):
    """E1 (the pretrained model, measured at `eval.precision`) is each run's step-0 point."""
    _, d, cfg = runs["bf16"]
    b = train.baseline(cfg.model, cfg.dataset, data_cfg=cfg.data, eval_cfg=cfg.eval, out_dir=tmp_path,
                       device="cpu", precision=cfg.eval.precision)
    assert b["layers"] == _points(d)[0]["layers"]


def test_eval_precision_defaults_to_fp32():
    assert EvalConfig().precision == "fp32"
