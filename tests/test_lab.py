"""`attncollapse measure / compare / maps` through the real CLI entry point, in-process.

Every model form is saved the way a user has it (save_pretrained of each family, a
CLIPVisionModel, a PEFT adapter, a run directory, an OpenCLIP checkpoint file) and every
number is checked against an independent computation: transformers' eager attention
(`output_attentions=True`) on the model loaded by transformers itself, the four metrics
written out in numpy, and scipy's Jensen-Shannon distance for the map drift.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.distance import jensenshannon

from attncollapse.cli import main
from attncollapse.models import load_model

CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5,) * 3, (0.5,) * 3)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
METRICS = ("entropy", "erf", "gini", "head_diversity")


# ------------------------------------------------------------------ independent reference

def np_metrics(p: np.ndarray) -> np.ndarray:
    """(L, N, H, P) patch rows → (L, N, 4) by the formulas of docs/API.md and the English report §2, loops and numpy only."""
    L, N, H, P = p.shape
    out = np.zeros((L, N, 4))
    for l in range(L):
        for n in range(N):
            ent, erf, gini = [], [], []
            for h in range(H):
                a = p[l, n, h]
                ent.append(-sum(x * np.log(x) for x in a if x > 0))
                c = np.cumsum(np.sort(a)[::-1])
                erf.append((np.searchsorted(c, 0.95 - 1e-12) + 1) / P)
                x = np.sort(a)
                gini.append(2 * np.sum(np.arange(1, P + 1) * x) / (P * x.sum()) - (P + 1) / P)
            cos = [a @ b / np.linalg.norm(a) / np.linalg.norm(b)
                   for i, a in enumerate(p[l, n]) for b in p[l, n, i + 1:]]
            out[l, n] = [np.mean(ent), np.mean(erf), np.mean(gini), 1 - np.mean(cos)]
    return out


def eager_patch_rows(model_dir: Path, x: torch.Tensor, *, prefix: int, query: str = "first",
                     adapter: Path | None = None) -> np.ndarray:
    """(L, N, H, P) [CLS] (or mean-query) rows over patches from transformers' eager attention."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).eval().base_model.model
    tower = getattr(model, "vision_model", model)
    with torch.no_grad():
        att = tower(pixel_values=x, output_attentions=True).attentions
    rows = [(a[:, :, 0] if query == "first" else a.mean(2)).double().numpy() for a in att]
    p = np.stack(rows)[..., prefix:]
    return p / p.sum(-1, keepdims=True)


def pixels(folder: Path, names: list[str], norm) -> torch.Tensor:
    """The images as the model sees them: 32 px files need no resize or crop; normalised by hand."""
    arr = np.stack([np.asarray(Image.open(folder / n).convert("RGB")) for n in names]).astype(np.float64) / 255
    mean, std = (np.asarray(v).reshape(1, 1, 1, 3) for v in norm)
    return torch.from_numpy(((arr - mean) / std).transpose(0, 3, 1, 2)).float()


def check_measure(out: Path, ref: np.ndarray) -> None:
    """measure.json and measure.csv hold the reference's per-layer mean and SD over images."""
    got = json.loads((out / "measure.json").read_text())
    rows = list(csv.DictReader(open(out / "measure.csv")))
    for k, m in enumerate(METRICS):
        mean, sd = ref[:, :, k].mean(1), ref[:, :, k].std(1, ddof=1)
        np.testing.assert_allclose(got["layers"][m]["mean"], mean, atol=1e-4, err_msg=m)
        np.testing.assert_allclose(got["layers"][m]["sd"], sd, atol=1e-4, err_msg=m)
        np.testing.assert_allclose([float(r[f"{m}_mean"]) for r in rows], mean, atol=1e-4)


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Six 32×32 RGB PNGs (the tiny models' size: no resize), with structure the tiny towers see."""
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(6):
        a = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        a[: 8 * (i % 4 + 1), :16] = 250  # a bright block of varying size
        Image.fromarray(a).save(d / f"img{i}.png")
    return d


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Each family saved with save_pretrained, as a user's local directory."""
    from transformers import CLIPVisionModel

    root = tmp_path_factory.mktemp("models")
    out = {}
    for preset in ("tiny", "tiny-siglip", "tiny-dinov2-reg", "tiny-vit"):
        load_model(preset).save_pretrained(root / preset)
        out[preset] = root / preset
    vision = CLIPVisionModel(load_model("tiny").config.vision_config)
    vision.save_pretrained(root / "clip-vision")
    out["clip-vision"] = root / "clip-vision"
    return out


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# ------------------------------------------------------------------ measure

@pytest.mark.parametrize("kind, prefix, query, norm", [
    ("tiny", 1, "first", CLIP_NORM),              # CLIPModel
    ("clip-vision", 1, "first", CLIP_NORM),       # CLIPVisionModel
    ("tiny-siglip", 0, "mean", HALF),             # SigLIP: no [CLS], the mean query row
    ("tiny-dinov2-reg", 5, "first", IMAGENET),    # DINOv2 with 4 registers after [CLS]
    ("tiny-vit", 1, "first", HALF),               # ViT
])
def test_measure_a_saved_directory_matches_eager_attention_and_numpy(kind, prefix, query, norm, saved, folder,
                                                                      tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, _ = _run(["measure", str(saved[kind]), str(folder), "--out", str(out)], capsys)
    assert rc == 0
    names = _names(folder)
    ref = np_metrics(eager_patch_rows(saved[kind], pixels(folder, names, norm), prefix=prefix, query=query))
    check_measure(out, ref)
    got = json.loads((out / "measure.json").read_text())
    assert got["images"]["names"] == names and got["images"]["count"] == 6 and got["images"]["sample"] is None
    assert got["settings"]["mean"] == pytest.approx(norm[0]) and got["settings"]["geometry"] == "original"
    assert got["env"]["torch"] and got["model"]["grid"] == [4, 4]
    assert (out / "measure.png").stat().st_size > 0
    # the printed table carries the same means
    assert f"{ref[0, :, 0].mean():.4f}" in stdout


def test_measure_a_peft_adapter_directory_applies_the_adapter(saved, folder, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    base = load_model("tiny")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=r".*vision_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    peft_model = get_peft_model(base, cfg)
    peft_model.peft_config["default"].base_model_name_or_path = str(saved["tiny"])
    peft_model.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "out"
    assert _run(["measure", str(tmp_path / "adapter"), str(folder), "--out", str(out)], capsys)[0] == 0
    x = pixels(folder, _names(folder), CLIP_NORM)
    ref = np_metrics(eager_patch_rows(saved["tiny"], x, prefix=1, adapter=tmp_path / "adapter"))
    check_measure(out, ref)
    plain = np_metrics(eager_patch_rows(saved["tiny"], x, prefix=1))
    assert np.abs(ref - plain).max() > 1e-3  # the adapter moved the numbers: it was applied
    got = json.loads((out / "measure.json").read_text())
    assert got["model"]["kind"] == "peft-adapter" and got["model"]["base_model"] == str(saved["tiny"])


def test_measure_a_run_directory_uses_its_trained_tower(folder, tmp_path, capsys):
    from conftest import tiny_run_config

    from attncollapse.measure import cls_rows, patch_rows
    from attncollapse.train import load_trained, run

    run(tiny_run_config(**{"optim.epochs": 1, "data.synthetic_train": 64}), tmp_path / "E2")
    out = tmp_path / "out"
    assert _run(["measure", str(tmp_path / "E2"), str(folder), "--out", str(out)], capsys)[0] == 0
    _, clf, _ = load_trained(tmp_path / "E2", device="cpu")
    with torch.no_grad():
        rows = cls_rows(clf.vision, pixels(folder, _names(folder), CLIP_NORM))
    check_measure(out, np_metrics(patch_rows(rows).double().numpy()))
    assert json.loads((out / "measure.json").read_text())["model"]["run_id"] == "t"


def test_measure_an_openclip_checkpoint_file_converts_it(folder, tmp_path, capsys):
    from attncollapse.models.convert import convert

    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    sd = {"visual.conv1.weight": r(48, 3, 8, 8), "visual.class_embedding": r(48),
          "visual.positional_embedding": r(17, 48), "visual.proj": r(48, 24),
          "token_embedding.weight": r(50, 32), "positional_embedding": r(10, 32), "ln_final.weight": r(32),
          "ln_final.bias": r(32), "text_projection": r(32, 24), "logit_scale": torch.tensor(2.5)}
    for ln in ("ln_pre", "ln_post"):
        sd |= {f"visual.{ln}.weight": 1 + 0.1 * r(48), f"visual.{ln}.bias": r(48)}
    for prefix, w in (("visual.transformer.resblocks.0.", 48), ("transformer.resblocks.0.", 32)):
        sd |= {prefix + k: v for k, v in {
            "attn.in_proj_weight": r(3 * w, w), "attn.in_proj_bias": r(3 * w), "attn.out_proj.weight": r(w, w),
            "attn.out_proj.bias": r(w), "ln_1.weight": 1 + 0.1 * r(w), "ln_1.bias": r(w),
            "ln_2.weight": 1 + 0.1 * r(w), "ln_2.bias": r(w), "mlp.c_fc.weight": r(4 * w, w),
            "mlp.c_fc.bias": r(4 * w), "mlp.c_proj.weight": r(w, 4 * w), "mlp.c_proj.bias": r(w)}.items()}
    ckpt = tmp_path / "ck" / "open_clip_pytorch_model.bin"
    ckpt.parent.mkdir()
    torch.save(sd, ckpt)
    cfg = {"model_cfg": {"embed_dim": 24, "quick_gelu": True,
                         "vision_cfg": {"width": 48, "head_width": 16, "layers": 1, "patch_size": 8, "image_size": 32},
                         "text_cfg": {"width": 32, "heads": 2, "layers": 1, "context_length": 10, "vocab_size": 50}},
           "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    (ckpt.parent / "open_clip_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    assert _run(["measure", str(ckpt), str(folder), "--out", str(out)], capsys)[0] == 0
    convert(ckpt, tmp_path / "hf")  # the reference reads the converted model with transformers alone
    check_measure(out, np_metrics(eager_patch_rows(tmp_path / "hf", pixels(folder, _names(folder), HALF), prefix=1)))
    assert json.loads((out / "measure.json").read_text())["settings"]["mean"] == [0.5] * 3


def test_image_arguments_list_file_class_folders_and_a_seeded_source_sample(folder, tmp_path, capsys):
    from attncollapse.lab import load_images

    tree = tmp_path / "tree"
    for i, n in enumerate(_names(folder)):
        (tree / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        (tree / f"class{i % 2}" / n).write_bytes((folder / n).read_bytes())
    imgs = load_images(str(tree))
    assert imgs.kind == "class-folders" and imgs.classes == ["class0", "class1"] and len(imgs) == 6
    listing = tmp_path / "list.txt"
    listing.write_text("# two images\n" + f"{folder / 'img3.png'}\n\n" + "tree/class0/img0.png\n")
    imgs = load_images(str(listing))
    assert imgs.kind == "list" and imgs.names == [str(folder / "img3.png"), "tree/class0/img0.png"]
    want = np.asarray(Image.open(folder / "img0.png")).transpose(2, 0, 1)
    np.testing.assert_array_equal(imgs.read(1, 2, 32)[0], want)
    # a dataset source, sampled: the stated seed draws exactly these images
    out = tmp_path / "out"
    rc, stdout, err = _run(["measure", "tiny", "digits", "--limit", "20", "--seed", "3", "--out", str(out)], capsys)
    assert rc == 0 and "seeded sample of 1797" in stdout and "--limit 20 --seed 3" in stdout
    assert "measure tiny: image 20/20 (100%)" in err  # stderr not a terminal: plain progress lines
    got = json.loads((out / "measure.json").read_text())["images"]
    from attncollapse.config import DataConfig
    from attncollapse.data import resolve

    src = resolve("digits", DataConfig(), image_size=32)
    items = [(s, i) for s in ("train", "test") for i in range(len(src.splits[s]))]
    pick = np.sort(np.random.default_rng(3).choice(len(items), 20, replace=False))
    assert got["names"] == [f"{items[k][0]}/{items[k][1]}" for k in pick]
    assert got["sample"]["seed"] == 3 and got["count"] == 20 and got["total"] == 1797


# ------------------------------------------------------------------ compare and maps

def test_compare_values_deltas_and_js_drift(saved, folder, tmp_path, capsys):
    out = tmp_path / "cmp"
    rc, stdout, _ = _run(["compare", str(saved["tiny"]), str(saved["tiny-vit"]), str(folder), "--out", str(out)],
                         capsys)
    assert rc == 0
    names = _names(folder)
    pa = eager_patch_rows(saved["tiny"], pixels(folder, names, CLIP_NORM), prefix=1)
    pb = eager_patch_rows(saved["tiny-vit"], pixels(folder, names, HALF), prefix=1)
    ra, rb = np_metrics(pa).mean(1), np_metrics(pb).mean(1)
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert rows[-1]["layer"] == "all"  # the overall row (tests/test_lab_stats.py checks it)
    rows = rows[:-1]
    assert [c for c in rows[0] if c.startswith("entropy")] == [
        "entropy_a", "entropy_b", "entropy_delta", "entropy_delta_ci_low", "entropy_delta_ci_high", "entropy_p_t",
        "entropy_p_wilcoxon", "entropy_delta_pct", "entropy_delta_pct_unstable"]
    for k, m in enumerate(METRICS):
        np.testing.assert_allclose([float(r[f"{m}_a"]) for r in rows], ra[:, k], atol=1e-4)
        np.testing.assert_allclose([float(r[f"{m}_b"]) for r in rows], rb[:, k], atol=1e-4)
        np.testing.assert_allclose([float(r[f"{m}_delta"]) for r in rows], rb[:, k] - ra[:, k], atol=1e-4)
        np.testing.assert_allclose([float(r[f"{m}_delta_pct"]) for r in rows],
                                   100 * (rb[:, k] - ra[:, k]) / ra[:, k], rtol=1e-3)
    # map drift: scipy's JS distance squared (natural log) of the head-averaged maps, per image
    js = np.array([[jensenshannon(pa[l, n].mean(0), pb[l, n].mean(0)) ** 2 for n in range(len(names))]
                   for l in range(pa.shape[0])])
    np.testing.assert_allclose([float(r["map_js_mean"]) for r in rows], js.mean(1), atol=1e-6)
    np.testing.assert_allclose([float(r["map_js_sd"]) for r in rows], js.std(1, ddof=1), atol=1e-6)
    got = json.loads((out / "compare.json").read_text())
    assert got["a"]["spec"] == str(saved["tiny"]) and got["images"]["count"] == 6
    assert rows[0]["model_b"] == str(saved["tiny-vit"]) and rows[0]["n_images"] == "6"
    assert (out / "compare.png").exists() and "map JS" in stdout


def test_compare_refuses_different_patch_grids_in_one_line(saved, folder, tmp_path, capsys):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=16, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=3, num_attention_heads=4)).save_pretrained(tmp_path / "p16")
    out = tmp_path / "cmp"
    rc, _, err = _run(["compare", str(saved["tiny"]), str(tmp_path / "p16"), str(folder), "--out", str(out)], capsys)
    line = _one_error_line(err)
    assert rc == 2 and "4×4 patch grid" in line and "2×2" in line
    assert not out.exists()


def test_maps_side_by_side_on_one_scale(saved, folder, tmp_path, capsys):
    out = tmp_path / "maps"
    rc, _, _ = _run(["maps", str(saved["tiny"]), str(saved["tiny-siglip"]), str(folder), "--layers", "1", "3",
                     "--limit", "6", "--out", str(out)], capsys)
    assert rc == 0
    z = np.load(out / "maps.npz")
    names = _names(folder)
    pa = eager_patch_rows(saved["tiny"], pixels(folder, names, CLIP_NORM), prefix=1)
    pb = eager_patch_rows(saved["tiny-siglip"], pixels(folder, names, HALF), prefix=0, query="mean")
    want = np.stack([pa[0].mean(1), pb[0].mean(1), pa[2].mean(1), pb[2].mean(1)], 1).reshape(6, 4, 4, 4)
    np.testing.assert_allclose(z["maps"], want, atol=1e-5)
    assert list(z["columns"]) == ["L1 mean A", "L1 mean B", "L3 mean A", "L3 mean B"]
    # --vs and per-head panels, drawn on one colour scale with a colour bar
    from attncollapse.lab import attention_maps
    from attncollapse.lab.plots import maps_figure

    res = attention_maps(str(saved["tiny"]), str(folder), vs=str(saved["tiny-vit"]), layers=[2], heads=[1, 4],
                         limit=2)
    assert res["columns"] == ["L2 h1 A", "L2 h1 B", "L2 h4 A", "L2 h4 B"]
    fig = maps_figure(np.zeros((2, 3, 32, 32), np.uint8), res["maps"], row_labels=res["names"],
                      col_labels=res["columns"])
    heat = [im for ax in fig.axes for im in ax.images  # not the RGB pictures, nor their grey copies under the maps
            if im.get_array().ndim == 2 and im.get_cmap().name != "gray"]
    assert len(heat) == 8 and {im.get_clim() for im in heat} == {(0.0, res["maps"].max())}
    assert any(ax.get_ylabel().startswith("[CLS]") for ax in fig.axes)  # the colour bar


# ------------------------------------------------------------------ bad input: one line, exit 2, nothing written

def _one_error_line(err: str) -> str:
    """The one "error: ..." line, and nothing like a traceback (transformers' own loading bars aside)."""
    errors = [x for x in err.splitlines() if x.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in err and err.rstrip().endswith(errors[0]), err
    return errors[0]


def _bad(argv, capsys, tmp_path, needle: str) -> str:
    out = tmp_path / "never"
    rc, stdout, err = _run(argv + ["--out", str(out)], capsys)
    assert rc == 2, err
    line = _one_error_line(err)
    assert needle in line, err
    assert not out.exists()
    return line


def test_bad_inputs_are_one_line_exit_2_and_write_nothing(saved, folder, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for n in _names(folder)[:2]:
        (broken / n).write_bytes((folder / n).read_bytes())
    (broken / "zz.png").write_bytes(b"not an image at all")
    line = _bad(["measure", "tiny", str(broken)], capsys, tmp_path, str(broken / "zz.png"))
    assert "remove it" in line
    (tmp_path / "empty").mkdir()
    _bad(["measure", "tiny", str(tmp_path / "empty")], capsys, tmp_path, "no image files")
    unknown = tmp_path / "bert"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "bert"}))
    _bad(["measure", str(unknown), str(folder)], capsys, tmp_path, "model_type 'bert'")
    (tmp_path / "nothing").mkdir()
    _bad(["compare", "tiny", str(tmp_path / "nothing"), str(folder)], capsys, tmp_path, "not a model directory")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone"),
                                                             "peft_type": "LORA"}))
    line = _bad(["maps", str(adapter), str(folder)], capsys, tmp_path, "adapter_config.json")
    assert str(tmp_path / "gone") in line and "base_model_name_or_path" in line
    listing = tmp_path / "l.txt"
    listing.write_text("img0.png\nmissing.png\n")
    _bad(["measure", "tiny", str(listing)], capsys, tmp_path, "line 1")
    _bad(["maps", "tiny", str(folder), "--layers", "9"], capsys, tmp_path, "--layers 9")


def test_an_uncached_hub_model_fails_fast_naming_it(folder, tmp_path, capsys):
    from attncollapse.study.preflight import is_cached

    if is_cached("model", "openai/clip-vit-base-patch32"):
        pytest.skip("the hub model is cached here")
    rc, _, err = _run(["measure", "openai/clip-vit-base-patch32", str(folder), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "model openai/clip-vit-base-patch32  (needed by MODEL)" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["--help"], ["measure", "--help"], ["compare", "--help"], ["maps", "--help"]])
def test_help_of_the_lab_commands(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "usage: attncollapse" in out and "Traceback" not in out
    if argv == ["--help"]:
        assert "metrics, Δ, Δ% and map drift" in out


def test_python_dash_m_runs_the_command():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "attncollapse", "measure", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("usage: attncollapse measure")
