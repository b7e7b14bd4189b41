"""Each family's own image normalisation: the Feeder takes it, the stages that know the
model pass it (train, E1 baseline, zero-shot/WiSE-FT), and CLIP's numbers stay as they were."""

import json

import numpy as np
import pytest
import torch
from transformers import image_utils

from attncollapse import data, models, train
from attncollapse.config import ZeroShotConfig
from attncollapse.data import Feeder, load_splits
from attncollapse.transfer import evaluate_pretrained

from conftest import tiny_run_config

# The image processors' own defaults, read from transformers (image_processing_*.py), not
# from our families: CLIP → OPENAI_CLIP_*, SigLIP and ViT → IMAGENET_STANDARD_* (0.5),
# DINOv2 (BitImageProcessor with the hub's preprocessor_config.json values) → IMAGENET_DEFAULT_*.
CLIP = (image_utils.OPENAI_CLIP_MEAN, image_utils.OPENAI_CLIP_STD)
HALF = (image_utils.IMAGENET_STANDARD_MEAN, image_utils.IMAGENET_STANDARD_STD)
IMAGENET = (image_utils.IMAGENET_DEFAULT_MEAN, image_utils.IMAGENET_DEFAULT_STD)
EXPECTED = {"tiny": CLIP, "tiny-siglip": HALF, "tiny-dinov2": IMAGENET, "tiny-dinov2-reg": IMAGENET,
            "tiny-vit": HALF}


def _as_tuples(norm):
    return tuple(float(x) for x in norm[0]), tuple(float(x) for x in norm[1])


def test_transformers_constants_are_the_published_numbers():
    # Independent of transformers' names: the numbers the reports and model cards print.
    assert _as_tuples(IMAGENET) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert _as_tuples(HALF) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert _as_tuples(CLIP) == ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def test_processor_classes_default_to_the_family_constants():
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil, ViTImageProcessorPil

    for cls, preset in ((CLIPImageProcessorPil, "tiny"), (SiglipImageProcessorPil, "tiny-siglip"),
                        (ViTImageProcessorPil, "tiny-vit")):
        proc = cls()
        assert models.normalization(preset) == _as_tuples((proc.image_mean, proc.image_std)), cls.__name__


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_normalization_of_each_family(preset):
    want = _as_tuples(EXPECTED[preset])
    assert models.normalization(preset) == want  # from the spec
    assert models.normalization(models.load_model(preset)) == want  # from the loaded model


def test_feeder_default_is_clip_and_normalises_with_what_it_is_given():
    s = load_splits("synthetic", tiny_run_config().data, image_size=32).eval_set
    raw = s.images.astype(np.float64) / 255.0  # (N, 3, S, S) uint8 → [0, 1]
    default = Feeder(s, "cpu")
    assert default.norm == _as_tuples(CLIP) and data.CLIP_MEAN == models.FAMILIES["clip"].mean
    x_clip, _ = default.get(torch.arange(len(s)))
    # bit-identical to passing CLIP's constants explicitly: the CLIP runs do not change
    assert torch.equal(x_clip, Feeder(s, "cpu", mean=CLIP[0], std=CLIP[1]).get(torch.arange(len(s)))[0])
    for mean, std in (IMAGENET, HALF):
        x, y = Feeder(s, "cpu", mean=mean, std=std).get(torch.arange(len(s)))
        want = (raw - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))  # by hand, float64
        np.testing.assert_allclose(x.numpy(), want, atol=1e-5)
        assert not torch.allclose(x, x_clip)
    with pytest.raises(ValueError, match="3 means and 3 positive stds"):
        Feeder(s, "cpu", mean=(0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture
def feeders_built(monkeypatch):
    """Records the (mean, std) of every Feeder built while the test runs."""
    seen = []
    init = Feeder.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen.append(self.norm)

    monkeypatch.setattr(Feeder, "__init__", spy)
    return seen


@pytest.mark.parametrize("preset", ["tiny-dinov2", "tiny-siglip"])
def test_a_run_feeds_its_family_constants(tmp_path, feeders_built, preset, monkeypatch):
    threads, before = [], torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", threads.append)  # the run's cpu_threads
    cfg = tiny_run_config(model=preset, cpu_threads=1, **{"optim.epochs": 1, "eval.points_per_epoch": 1})
    train.run(cfg, tmp_path / "r")
    # train, val, eval and the overlays' feeder: all with the family's constants
    assert len(feeders_built) >= 4 and set(feeders_built) == {_as_tuples(EXPECTED[preset])}
    assert threads == [1, before]  # set for the run, then the process's own setting restored


def test_baseline_feeds_its_family_constants(tmp_path, feeders_built):
    out = train.baseline("tiny-dinov2", "synthetic", data_cfg=tiny_run_config().data, out_dir=tmp_path)
    assert out["family"] == "dinov2" and feeders_built == [_as_tuples(IMAGENET)]


def _clip_dir(tmp_path, preprocessor):
    path = tmp_path / "clip"
    models.load_model("tiny").save_pretrained(path)
    models.tiny_tokenizer().save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return path


def test_local_checkpoint_constants_reach_every_stage(tmp_path, feeders_built):
    # A converted OpenCLIP checkpoint may ship other constants in its preprocessor_config.json.
    path = _clip_dir(tmp_path, {"image_mean": [0.5, 0.5, 0.5], "image_std": 0.25})
    want = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert models.normalization(str(path)) == models.normalization(models.load_model(str(path))) == want
    cfg = tiny_run_config(model=str(path), **{
        "optim.epochs": 1, "eval.points_per_epoch": 1, "zeroshot.enabled": True,
        "zeroshot.datasets": ["digits"], "zeroshot.max_images": 30, "zeroshot.wise_alphas": [0.5]})
    final = train.run(cfg, tmp_path / "r")
    assert final["zeroshot"]["digits"]["images"] == 30 and len(final["wise"]) == 1
    # train, val, eval, overlays, zero-shot and WiSE-FT's three feeders
    assert len(feeders_built) >= 8 and set(feeders_built) == {want}
    feeders_built.clear()
    zcfg = ZeroShotConfig(datasets=["digits"], max_images=30)
    evaluate_pretrained(models.load_model("tiny"), "tiny", zcfg, data_cfg=tiny_run_config().data, device="cpu")
    assert feeders_built == [_as_tuples(CLIP)]


def test_damaged_preprocessor_config_is_named(tmp_path):
    path = _clip_dir(tmp_path, {"image_mean": [0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    with pytest.raises(ValueError, match=r"preprocessor_config.json: image_mean and image_std must be lists of 3"):
        models.normalization(str(path))
    (path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        models.normalization(str(path))
    (path / "preprocessor_config.json").write_text(json.dumps({"crop_size": 32}))  # no constants: the family's
    assert models.normalization(str(path)) == _as_tuples(CLIP)


# ------------------------------------------------------------------ E1 per model

TINY = ["tiny", "tiny-siglip", "tiny-siglip2", "tiny-dinov2", "tiny-dinov2-reg", "tiny-vit"]


def test_families_demo_measures_e1_on_every_model(tmp_path):
    from attncollapse.config import load_matrix
    from attncollapse.study import plan

    m = load_matrix("configs/families-demo.yaml")
    base = [t for t in plan(m, tmp_path) if t.kind == "baseline"]
    assert [t.id for t in base] == [f"E1:{p}:synthetic" for p in TINY]
    assert [t.path for t in base] == [tmp_path / "baseline" / f"{p}_synthetic.json" for p in TINY]
    by_id = {r.id: r.config for r in m.expand()}
    for t, preset in zip(base, TINY):
        # the model's own first run gives the data/eval/zero-shot settings
        assert t.config.model == preset and t.config.dataset == "synthetic"
        assert t.config == by_id[f"E2-{preset}"]
    assert [t.id for t in plan(m, tmp_path, only="E1")] == [t.id for t in base]


def test_single_model_matrix_keeps_its_e1_names(tmp_path):
    from attncollapse.config import load_matrix
    from attncollapse.study import plan

    base = [t for t in plan(load_matrix("demo"), tmp_path) if t.kind == "baseline"]
    assert [t.id for t in base] == ["E1:synthetic", "E1:digits"]
    assert [t.path.name for t in base] == ["synthetic.json", "digits.json"]
    assert [t.config.dataset for t in base] == ["synthetic", "digits"]


def test_two_model_matrix_runs_each_models_e1(tmp_path):
    from attncollapse.config import matrix_from_dict
    from attncollapse.study import plan, run_matrix

    m = matrix_from_dict({
        "name": "two", "baseline": ["synthetic"],
        "defaults": {"device": "cpu", "data": {"synthetic_train": 64, "synthetic_test": 32, "eval_subset_size": 8},
                     "zeroshot": {"enabled": False}},
        # the second model trains only on digits: its E1 on synthetic falls back to the defaults
        "runs": {"A": {"model": "tiny-vit"}, "B": {"model": "tiny-siglip", "dataset": "digits"}}})
    tasks = [t for t in plan(m, tmp_path) if t.kind == "baseline"]
    assert [t.id for t in tasks] == ["E1:tiny-vit:synthetic", "E1:tiny-siglip:synthetic"]
    assert tasks[1].config.model == "tiny-siglip" and tasks[1].config.dataset == "synthetic"
    run_matrix(m, tmp_path, only="E1", analyze=False, check_hub=False, log=lambda _: None)
    for preset, family in (("tiny-vit", "vit"), ("tiny-siglip", "siglip")):
        got = json.loads((tmp_path / "baseline" / f"{preset}_synthetic.json").read_text())
        assert (got["model"], got["family"], got["dataset"], got["images"]) == (preset, family, "synthetic", 8)


# ------------------------------------------------------------------ the real families matrix

HUB = {"clip": "openai/clip-vit-base-patch32", "siglip": "google/siglip-base-patch16-224",
       "dinov2": "facebook/dinov2-base", "dinov2-reg": "facebook/dinov2-with-registers-base",
       "vit": "google/vit-base-patch16-224", "siglip2": "google/siglip2-base-patch16-224"}


def test_families_matrix_is_the_papers_e2_e4_r1_per_family():
    from pathlib import Path

    from attncollapse.config import load_matrix, packaged_configs

    # configs/families.yaml is the packaged copy (a symlink, as the other configs)
    assert Path("configs/families.yaml").resolve() == packaged_configs()["families"].resolve()
    fam = {r.id: r.config for r in load_matrix("configs/families.yaml").expand()}  # offline: no hub
    paper = {r.id: r.config for r in load_matrix("paper").expand()}

    def same(cfg):  # everything but the run id and the model
        return cfg.model_dump(exclude={"id", "model"})

    assert len(fam) == len(HUB) * (1 + 1 + 3)
    for name, hub in HUB.items():
        assert same(fam[f"E2-{name}"]) == same(paper["E2"]) and fam[f"E2-{name}"].model == hub
        assert same(fam[f"E4-{name}"]) == same(paper["E4"]) and fam[f"E4-{name}"].model == hub
        for lam in ("0.01", "0.1", "1.0"):
            r1 = fam[f"R1-{name}-apr{lam}"]
            assert same(r1) == same(paper[f"R1-apr{lam}"]) and r1.model == hub
    assert paper["E2"].dataset == "eurosat" and paper["E4"].lora.rank == 4
    assert paper["R1-apr0.1"].regularizer.kind == "apr"


def test_validate_says_e1_covers_every_model(capsys):
    from attncollapse.cli import main

    assert main(["validate", "configs/families.yaml"]) == 0
    assert "30 runs + E1 baseline on eurosat for each of its 6 models" in capsys.readouterr().out
    assert main(["validate", "demo"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("21 runs + E1 baseline on synthetic, digits")
