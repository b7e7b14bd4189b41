"""Offline: the hub preflight fails fast with one message, a filled HF cache or local
directories work without network, and a local CIFAR-100-like `hf:<dir>` is a zero-shot set.

The hub is made unreachable on purpose (HF_ENDPOINT on a closed local port), so these
tests are fast and never touch the network.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from attncollapse import _io
from attncollapse.cli import main
from attncollapse.config import DataConfig, load_matrix, matrix_from_dict
from attncollapse.study import HubUnavailable, check_hub, hub_needs, plan, run_matrix

MODEL = "openai/clip-vit-base-patch32"
PAPER_DATASETS = {"tanganke/eurosat", "timm/oxford-iiit-pet", "uoft-cs/cifar100", "nelorth/oxford-flowers"}


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """An empty HF home, offline variables unset, the hub endpoint on a closed port."""
    import huggingface_hub

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    return tmp_path / "hf"


def _needs(matrix):
    tasks = plan(matrix, "unused")
    return hub_needs([(t.id, t.config) for t in tasks if t.kind == "run"],
                     [(t.id, t.config) for t in tasks if t.kind == "baseline"])


def test_paper_needs_one_model_and_four_datasets():
    need = _needs(load_matrix("paper"))
    assert {repo for kind, repo in need if kind == "model"} == {MODEL}
    assert {repo for kind, repo in need if kind == "dataset"} == PAPER_DATASETS
    assert len(need[("model", MODEL)]) == 23  # 21 runs + 2 baselines
    assert need[("dataset", "timm/oxford-iiit-pet")] == ["E3", "E7", "E1:pets"]


def test_unreachable_and_not_cached_fails_fast_with_one_message(no_network):
    t0 = time.perf_counter()
    with pytest.raises(HubUnavailable) as info:
        check_hub(_needs(load_matrix("paper")), log=lambda m: None)
    assert time.perf_counter() - t0 < 5
    msg = str(info.value)
    assert "http://127.0.0.1:9 is unreachable" in msg
    for repo in [MODEL, *PAPER_DATASETS]:
        assert repo in msg
    for route in ("HF_HUB_OFFLINE=1", "local model directory", "hf:<dir>", "save_to_disk"):
        assert route in msg


def test_run_paper_offline_exits_quickly_writing_nothing(no_network, tmp_path, capsys):
    out = tmp_path / "paper"
    t0 = time.perf_counter()
    assert main(["run", "paper", "--out", str(out)]) == 2
    assert time.perf_counter() - t0 < 30
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err and MODEL in err
    assert not out.exists()


def test_offline_variable_without_cache_names_it(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailable, match="HF_HUB_OFFLINE is set"):
        check_hub(_needs(load_matrix("paper")), log=lambda m: None)


def _fill_cache(hf_home: Path) -> None:
    """The layout huggingface_hub and datasets leave after a first online run."""
    snap = hf_home / "hub" / f"models--{MODEL.replace('/', '--')}"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("abc123")
    files = snap / "snapshots" / "abc123"
    files.mkdir(parents=True)
    (files / "config.json").write_text("{}")
    (files / "model.safetensors").write_bytes(b"")
    for repo in PAPER_DATASETS:
        (hf_home / "datasets" / repo.replace("/", "___")).mkdir(parents=True)


def test_filled_cache_switches_to_offline_mode(no_network):
    import huggingface_hub

    _fill_cache(no_network)
    said = []
    check_hub(_needs(load_matrix("paper")), log=said.append)
    assert len(said) == 1 and "working offline" in said[0]
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.HF_HUB_OFFLINE is True


def test_partly_filled_cache_names_only_what_is_missing(no_network):
    _fill_cache(no_network)
    (no_network / "datasets" / "timm___oxford-iiit-pet").rmdir()
    with pytest.raises(HubUnavailable) as info:
        check_hub(_needs(load_matrix("paper")), log=lambda m: None)
    body = str(info.value).split("Work offline")[0]
    assert "timm/oxford-iiit-pet" in body and MODEL not in body and "eurosat" not in body


def _cifar_like(path: Path, n: int = 40) -> Path:
    """A local CIFAR-100 layout (img, fine_label, coarse_label) saved with save_to_disk."""
    import datasets as hfd
    from PIL import Image

    rng = np.random.default_rng(0)
    feats = hfd.Features({"img": hfd.Image(), "fine_label": hfd.ClassLabel(names=["apple", "bee", "cloud", "dog"]),
                          "coarse_label": hfd.ClassLabel(names=["food", "insect"])})

    def split(k):
        fine = rng.integers(0, 4, size=k)
        fine[:4] = np.arange(4)  # every class present
        imgs = [Image.fromarray(rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)) for _ in range(k)]
        return hfd.Dataset.from_dict({"img": imgs, "fine_label": fine.tolist(),
                                      "coarse_label": (fine // 2).tolist()}, features=feats)

    hfd.DatasetDict({"train": split(n), "test": split(n)}).save_to_disk(str(path))
    return path


def test_local_cifar100_is_a_zero_shot_set_with_its_own_columns(tmp_path):
    from attncollapse.data import load_test_split
    from attncollapse.transfer.zeroshot import zeroshot_data_cfg

    d = _cifar_like(tmp_path / "cifar100")
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"))
    fine = load_test_split(f"hf:{d}", cfg, image_size=8)
    assert fine.class_names == ["apple", "bee", "cloud", "dog"]  # CIFAR-100's layout: fine_label
    coarse = load_test_split(f"hf:{d}#label=coarse_label", cfg, image_size=8)
    assert coarse.class_names == ["food", "insect"]
    np.testing.assert_array_equal(coarse.labels, fine.labels // 2)
    # The training set's label_column does not leak into a zero-shot set.
    train_cfg = DataConfig(cache_dir=str(tmp_path / "cache"), label_column="label")
    zs = load_test_split(f"hf:{d}", zeroshot_data_cfg(train_cfg, f"hf:{d}", "synthetic"), image_size=8)
    assert zs.class_names == fine.class_names


def test_local_model_directory_and_hf_dirs_run_a_study(tmp_path):
    """The offline route end to end: a saved model directory, `hf:<dir>` training and
    zero-shot sets (CIFAR-100 layout), no hub id anywhere, HF_HUB_OFFLINE set (conftest)."""
    from attncollapse.models import load_clip, tiny_tokenizer

    model_dir = tmp_path / "clip"
    load_clip("tiny").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    cifar = _cifar_like(tmp_path / "cifar100")
    m = matrix_from_dict({"name": "local", "defaults": {
        "model": str(model_dir), "dataset": f"hf:{cifar}#label=coarse_label", "device": "cpu",
        "optim": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "precision": "fp32"},
        "data": {"eval_subset_size": 8, "cache_dir": str(tmp_path / "cache")},
        "eval": {"points_per_epoch": 1, "batch_size": 4},
        "zeroshot": {"datasets": [f"hf:{cifar}"], "wise_alphas": []}},
        "runs": {"E2": {}}})
    assert _needs(m) == {}
    s = run_matrix(m, tmp_path / "out", analyze=False, log=lambda msg: None)
    assert s["ok"], s["outcomes"]
    final = _io.read_json(tmp_path / "out" / "E2" / "final.json")
    (block,) = final["zeroshot"].values()
    assert 0.0 <= block["acc"] <= 1.0 and block["images"] == 40
