"""Audit corpus of issue 29 (items 1, 2, 4, 5): files that run code, NaN from a collapsed head,
images clipped instead of read, weights that do not fit their config.

Each case is built here from the real formats (a TorchScript archive made with
`torch.jit.script`, torch-saved pickles, PNG/TIFF written with PIL, `save_pretrained`
directories with an edited config.json) and driven through the CLI in-process or the
loader the study itself calls.
"""

from __future__ import annotations

import builtins
import json
import math
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from transformers import CLIPModel, CLIPVisionModel

from attncollapse import _io, models
from attncollapse.cli import main
from attncollapse.config import DataConfig
from attncollapse.data import preprocess, resolve
from attncollapse.integrations.losses import AttentionPriorLoss, EntropyFloorLoss, watch
from attncollapse.models.convert import read_checkpoint
from attncollapse.models.torchscript import read_torchscript
from attncollapse.train.regularizers import apr, entropy_floor
from test_convert import TOL, OpenAIStyleCLIP, _hf_features, _inputs, _max_diff, _perturb


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.err.strip()


def _one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    line = err.splitlines()[-1]
    assert line.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in line, (needle, line)


@pytest.fixture
def folder(tmp_path) -> Path:
    """Two 40×48 RGB PNGs."""
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return d


# --- 1. a checkpoint file must not run code ------------------------------------------------------

class WritesAFile(nn.Module):
    """QuickGELU's forward; its `__setstate__`, run by `torch.jit.load`, writes "AAAAAA" to `target`."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.mark = torch.zeros(1)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.target = state[0]
        self.training = state[1]
        # Kept in an attribute: TorchScript drops an unused call as dead code.
        self.mark = torch.from_file(state[0], shared=True, size=6, dtype=torch.uint8).fill_(65).float().sum().view(1)


def _evil_clip(tmp_path: Path, target: Path) -> tuple[Path, nn.Module]:
    """A working OpenAI-style CLIP archive with the payload as one MLP's activation."""
    torch.manual_seed(0)
    ref = _perturb(OpenAIStyleCLIP())
    ref.visual.transformer.resblocks[0].mlp.gelu = WritesAFile(str(target))
    path = tmp_path / "ViT-T-8.pt"
    torch.jit.save(torch.jit.script(ref.half()), str(path))
    return path, ref.float()


def test_the_payload_runs_under_torch_jit_load(tmp_path):
    # The premise: this archive is a program that writes a file when torch.jit.load reads it.
    target = tmp_path / "written"
    path, _ = _evil_clip(tmp_path, target)
    torch.jit.load(str(path))
    assert target.read_bytes() == b"AAAAAA"


def test_a_malicious_clip_archive_converts_and_measures_without_running(tmp_path, folder, capsys):
    target = tmp_path / "written"
    path, ref = _evil_clip(tmp_path, target)
    sd, act = read_checkpoint(path)
    want = {k: v.half().float() for k, v in ref.state_dict().items()}
    assert set(sd) == set(want) and all(torch.equal(sd[k].float(), want[k]) for k in want)
    assert act == "quick_gelu"
    rc, err = _cli(["convert", path, tmp_path / "hf"], capsys)
    assert rc == 0, err
    hf = CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
    images, text = _inputs()
    with torch.no_grad():
        want_img, want_txt = ref(images, text)
    got_img, got_txt = _hf_features(hf, images, text)
    assert _max_diff(got_img, want_img) < TOL and _max_diff(got_txt, want_txt) < TOL
    for argv in (["measure", path, folder], ["compare", path, path, folder], ["maps", path, folder]):
        rc, err = _cli([*argv, "--out", tmp_path / argv[0]], capsys)
        assert rc == 0, err
    assert not target.exists()


def test_a_malicious_non_clip_archive_is_refused_before_any_code_runs(tmp_path, folder, capsys):
    target = tmp_path / "written"
    module = nn.Sequential(nn.Linear(4, 4), WritesAFile(str(target)))
    torch.jit.save(torch.jit.script(module), str(tmp_path / "model.pt"))
    for argv in (["convert", tmp_path / "model.pt", tmp_path / "hf"],
                 ["measure", tmp_path / "model.pt", folder, "--out", tmp_path / "m"],
                 ["maps", tmp_path / "model.pt", folder, "--out", tmp_path / "maps"]):
        _one_line_error(*_cli(argv, capsys), "no ViT CLIP weights")
    assert not target.exists()


class Payload:
    """A pickle whose loading creates `target` (pickle calls open(target, "w"))."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (builtins.open, (str(self.target), "w"))


def test_pickle_payloads_are_refused_everywhere_a_file_is_read(tmp_path, folder, capsys):
    target = tmp_path / "written"
    sd = {"visual.conv1.weight": torch.zeros(2), "x": Payload(target)}
    torch.save(sd, tmp_path / "open_clip_pytorch_model.bin")
    # A zip that looks like a TorchScript archive (constants.pkl) with the payload as data.pkl.
    with zipfile.ZipFile(tmp_path / "ViT-X.pt", "w") as zf:
        zf.writestr("x/data.pkl", pickle.dumps(Payload(target), protocol=2))
        zf.writestr("x/constants.pkl", pickle.dumps((), protocol=2))
    models.load_model("tiny").save_pretrained(tmp_path / "dir")
    (tmp_path / "dir" / "model.safetensors").unlink()
    torch.save(sd, tmp_path / "dir" / "pytorch_model.bin")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "tiny", "peft_type": "LORA", "target_modules": ["q_proj"], "r": 2}))
    torch.save(sd, tmp_path / "adapter" / "adapter_model.bin")
    named = "pickled objects besides tensors (io.open"  # pickle writes builtins.open as io.open
    cases = [(["convert", tmp_path / "open_clip_pytorch_model.bin", tmp_path / "o1"], named),
             (["convert", tmp_path / "ViT-X.pt", tmp_path / "o2"], named),
             (["measure", tmp_path / "ViT-X.pt", folder, "--out", tmp_path / "o3"], "pickled objects"),
             (["measure", tmp_path / "dir", folder, "--out", tmp_path / "o4"], "pickled objects"),
             (["measure", tmp_path / "adapter", folder, "--out", tmp_path / "o5"], "pickled objects")]
    for argv, needle in cases:
        _one_line_error(*_cli(argv, capsys), needle)
    with pytest.raises(_io.DamagedFile, match="pickled objects"):
        models.load_model(str(tmp_path / "dir"))
    assert not target.exists()


def test_tensor_reader_equals_torch_jit_load_on_scripted_and_traced_archives(tmp_path):
    # OpenAI's archives are traced; the converter's tests script. Same state dict either way.
    torch.manual_seed(0)
    ref = _perturb(OpenAIStyleCLIP())
    torch.jit.save(torch.jit.trace(ref, _inputs()), str(tmp_path / "t.pt"))
    torch.jit.save(torch.jit.script(ref.half()), str(tmp_path / "s.pt"))
    for name in ("s.pt", "t.pt"):
        got, classes = read_torchscript(tmp_path / name)
        want = dict(torch.jit.load(str(tmp_path / name)).state_dict())
        assert list(got) == list(want) and "QuickGELU" in classes
        for k, w in want.items():
            assert got[k].dtype == w.dtype and torch.equal(got[k], w), k


# --- 2. a collapsed head must not NaN the regularizers -------------------------------------------

L, B, H, T = 2, 3, 2, 10
FLOOR = torch.full((L,), math.log(T - 1))  # above every entropy: the floor is active everywhere


def _logits(*, cls_only: bool) -> Tensor:
    """(L, B, H, T) float64 logits; one patch 150 below the rest (fp32 softmax: exactly 0)."""
    z = 3 * torch.randn(L, B, H, T, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z[0, 0, 0, 3] -= 150
    if cls_only:
        z[1, 1, 1, 0] += 200  # all of this row's mass on [CLS]: its patch mass underflows to 0
    return z


def _ref_entropy(z: Tensor) -> Tensor:
    """(L, B, H) entropy of the renormalised patch rows, in float64 from the logits (no underflow)."""
    p = torch.softmax(z, -1)[..., 1:]
    p = p / p.sum(-1, keepdim=True)
    return -(p * p.log()).sum(-1)


def _ref_floor(entropy: Tensor, lam: float) -> Tensor:
    return lam * torch.relu(FLOOR.double().view(-1, 1, 1) - entropy).mean((1, 2)).sum()


def _ref_kl(z: Tensor, q_rows: Tensor) -> Tensor:
    """(L, B, H) KL(p ‖ q) with ln(q + 1e-8), p in float64 from the logits."""
    p = torch.softmax(z, -1)[..., 1:]
    p = p / p.sum(-1, keepdim=True)
    q = q_rows[..., 1:].double()
    q = q / q.sum(-1, keepdim=True).clamp_min(1e-300)  # a target row with no patch mass: all 0
    return (p * (p.log() - (q + 1e-8).log())).sum(-1)


def _loss_and_grad(fn, z: Tensor) -> tuple[Tensor, Tensor]:
    z = z.detach().clone().requires_grad_()
    loss = fn(torch.softmax(z, -1))
    loss.backward()
    return loss.detach(), z.grad


def test_regularizers_at_exact_zeros_equal_a_float64_reference():
    z = _logits(cls_only=False)
    assert (torch.softmax(z.float(), -1) == 0).sum() == 1  # the premise: one fp32 underflow
    q_rows = torch.softmax(torch.randn(L, B, H, T, generator=torch.Generator().manual_seed(1)), -1)
    q_rows[1, 0, 0, 5] = 0.0  # a target zero too
    floor_ref = lambda z: _ref_floor(_ref_entropy(z), 0.1)  # noqa: E731
    cases = [(lambda r: entropy_floor(r, FLOOR, 0.1), floor_ref),
             (lambda r: EntropyFloorLoss(FLOOR / 0.7, ratio=0.7, lam=0.1)(r), floor_ref),
             (lambda r: apr(r, q_rows, 0.1), lambda z: 0.1 * _ref_kl(z, q_rows).mean()),
             (lambda r: AttentionPriorLoss(0.1)(r, q_rows), lambda z: 0.1 * _ref_kl(z, q_rows).mean())]
    for ours, ref in cases:
        loss, grad = _loss_and_grad(ours, z.float())
        z64 = z.clone().requires_grad_()
        want = ref(z64)
        want_grad, = torch.autograd.grad(want, z64)
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(loss.double(), want.detach(), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(grad.double(), want_grad, atol=1e-6, rtol=1e-4)


def test_regularizers_on_an_all_cls_row_are_finite_and_count_it_collapsed():
    z = _logits(cls_only=True)
    assert (torch.softmax(z.float(), -1)[1, 1, 1, 1:] == 0).all()  # the premise: no patch mass left
    q_logits = _logits(cls_only=False)
    q_logits[0, 2, 1, 0] += 200  # a target row with no patch mass
    q_rows = torch.softmax(q_logits.float(), -1)
    floor_loss, floor_grad = _loss_and_grad(lambda r: entropy_floor(r, FLOOR, 1.0), z.float())
    apr_loss, apr_grad = _loss_and_grad(lambda r: apr(r, q_rows, 1.0), z.float())
    assert all(torch.isfinite(t).all() for t in (floor_loss, floor_grad, apr_loss, apr_grad))
    # The row with no patch mass counts as entropy 0 (the full penalty τ) and KL 0: the
    # original's `+1e-10` values. Every other row: the float64 reference.
    entropy, kl = _ref_entropy(z), _ref_kl(z, q_rows)
    entropy[1, 1, 1], kl[1, 1, 1] = 0.0, 0.0
    torch.testing.assert_close(floor_loss.double(), _ref_floor(entropy, 1.0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(apr_loss.double(), kl.mean(), atol=1e-6, rtol=1e-6)


def test_regularizers_gradcheck_on_positive_rows():
    rows = torch.softmax(torch.randn(L, 1, H, 6, dtype=torch.float64), -1).requires_grad_()
    q_rows = torch.softmax(torch.randn(L, 1, H, 6, dtype=torch.float64), -1)
    assert torch.autograd.gradcheck(lambda r: entropy_floor(r, FLOOR.double(), 0.5), (rows,))
    assert torch.autograd.gradcheck(lambda r: apr(r, q_rows, 0.5), (rows,))


def test_a_sharply_collapsed_tiny_clip_trains_the_floor_without_nan():
    torch.manual_seed(0)
    model = models.load_model("tiny").train()
    with torch.no_grad():  # scale q and k: logits ×1600, the fp32 softmax underflows
        for name, p in models.vision_tower(model).named_parameters():
            if "q_proj.weight" in name or "k_proj.weight" in name:
                p.mul_(40)
    floor = EntropyFloorLoss(torch.full((3,), math.log(16)), ratio=0.7, lam=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(4, 3, 32, 32)
    zeros = []
    for _ in range(3):
        with watch(model) as w:
            feats = model.get_image_features(pixel_values=x)
            feats = getattr(feats, "pooler_output", feats)
            rows = w.rows
        zeros.append(int((rows == 0).sum()))
        loss = feats.pow(2).mean() + floor(rows)
        loss.backward()
        opt.step()
        opt.zero_grad()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert min(zeros) > 0  # the premise held at every step


# --- 4. images of more than 8 bits are scaled, not clipped ---------------------------------------

def _grey_versions(d: Path, seed: int, per_class: int) -> None:
    """The same random grey images as 8-bit PNG (u8), 16-bit PNG (u16) and float TIFF (f32), in classes a and b."""
    rng = np.random.default_rng(seed)
    for cls in ("a", "b"):
        for i in range(per_class):
            a8 = rng.integers(0, 256, (40, 48), dtype=np.uint8)
            for sub, img, ext in (("u8", Image.fromarray(a8), "png"),
                                  ("u16", Image.fromarray(a8.astype(np.uint16) * 257), "png"),
                                  ("f32", Image.fromarray((a8 / 255).astype(np.float32)), "tif")):
                (d / sub / cls).mkdir(parents=True, exist_ok=True)
                img.save(d / sub / cls / f"{i}.{ext}")


def test_sixteen_bit_and_float_images_measure_as_their_8_bit_version(tmp_path, capsys):
    _grey_versions(tmp_path, 0, 1)
    assert Image.open(tmp_path / "u16" / "a" / "0.png").mode == "I;16"  # the premise
    assert (np.asarray(Image.open(tmp_path / "u16" / "a" / "0.png").convert("RGB")) == 255).mean() > 0.9  # PIL clips
    got = {}
    for sub in ("u8", "u16", "f32"):
        rc, err = _cli(["measure", "tiny", tmp_path / sub, "--out", tmp_path / f"m-{sub}"], capsys)
        assert rc == 0, err
        got[sub] = json.loads((tmp_path / f"m-{sub}" / "measure.json").read_text())["layers"]
    assert got["u16"] == got["u8"] and got["f32"] == got["u8"]


def test_the_study_data_stage_reads_16_bit_and_float_images_as_8_bit(tmp_path):
    _grey_versions(tmp_path, 1, 5)
    arrays = {}
    for sub in ("u8", "u16", "f32"):
        splits = resolve(f"imagefolder:{tmp_path / sub}", DataConfig(), image_size=32).splits
        arrays[sub] = [preprocess(img, 32) for name in sorted(splits)
                       for img in splits[name].reader.images(0, len(splits[name]))]
    assert np.array_equal(arrays["u16"], arrays["u8"]) and np.array_equal(arrays["f32"], arrays["u8"])


def test_images_without_a_known_white_level_are_refused_in_one_line(tmp_path, capsys):
    cases = [(np.linspace(0, 255, 40 * 48, dtype=np.float32).reshape(40, 48), "tif", "not in [0, 1]"),
             (np.arange(40 * 48, dtype=np.int32).reshape(40, 48) * 1000, "tif", "no known white level")]
    for i, (a, ext, needle) in enumerate(cases):
        (tmp_path / f"d{i}").mkdir()
        Image.fromarray(a).save(tmp_path / f"d{i}" / f"x.{ext}")
        _one_line_error(*_cli(["measure", "tiny", tmp_path / f"d{i}", "--out", tmp_path / f"m{i}"], capsys),
                        needle, "x.tif")


# --- 5. weights that do not fit their config are an error ----------------------------------------

def _look_alike(tmp_path: Path, layers: int, *, vision_only: bool = False) -> Path:
    """The tiny CLIP (3 layers) saved with save_pretrained, config.json edited to `layers`."""
    d = tmp_path / f"{'vision' if vision_only else 'clip'}-{layers}"
    model = models.load_model("tiny")
    if vision_only:
        model = CLIPVisionModel(model.config.vision_config)
    model.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    (cfg if vision_only else cfg["vision_config"])["num_hidden_layers"] = layers
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("vision_only", [False, True])
def test_a_config_that_does_not_fit_the_weights_is_refused(tmp_path, folder, capsys, vision_only):
    prefix = "" if vision_only else "vision_model."
    for layers, needle in ((6, f"48 missing weights ({prefix}encoder.layers.3."),
                           (2, f"16 unexpected weights ({prefix}encoder.layers.2.")):
        d = _look_alike(tmp_path, layers, vision_only=vision_only)
        _one_line_error(*_cli(["measure", d, folder, "--out", tmp_path / "m"], capsys), needle, str(d))
        if not vision_only:
            with pytest.raises(_io.DamagedFile, match=re.escape(needle)):
                models.load_model(str(d))


def test_an_adapter_whose_config_targets_more_than_its_weights_is_refused(tmp_path, folder, capsys):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(models.load_model("tiny"), LoraConfig(
        r=2, target_modules=r".*vision_model.*\.(q_proj|v_proj)", init_lora_weights=False))
    peft_model.peft_config["default"].base_model_name_or_path = "tiny"
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg_path = tmp_path / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["target_modules"] = r".*vision_model.*\.(q_proj|k_proj|v_proj)"  # k_proj: LoRA B = 0, no effect
    cfg_path.write_text(json.dumps(cfg))
    _one_line_error(*_cli(["measure", tmp_path / "adapter", folder, "--out", tmp_path / "m"], capsys),
                    "6 missing weights (base_model.model.vision_model.encoder.layers.0.self_attn.k_proj.lora_A")


def test_a_run_whose_model_no_longer_fits_its_weights_is_refused(tmp_path, folder, capsys):
    from conftest import tiny_run_config

    from attncollapse.train import load_trained, run
    from attncollapse.train.checkpoints import load_weights

    d = tmp_path / "model"
    models.load_model("tiny").save_pretrained(d)
    run(tiny_run_config(**{"model": str(d), "optim.epochs": 1, "data.synthetic_train": 64}), tmp_path / "E2")
    _, clf, _ = load_trained(tmp_path / "E2", device="cpu")  # fits: loads
    tensors = {n: p.detach().clone() for n, p in clf.named_parameters() if p.requires_grad}
    del tensors["vision.encoder.layers.2.mlp.fc1.weight"]
    with pytest.raises(_io.DamagedFile, match=r"1 trainable weights missing \(vision\.encoder\.layers\.2\.mlp"):
        load_weights(clf, tensors, "ck")
    cfg = json.loads((d / "config.json").read_text())
    cfg["vision_config"]["num_hidden_layers"] = 6
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(_io.DamagedFile, match=r"48 missing weights"):
        load_trained(tmp_path / "E2", device="cpu")
    _one_line_error(*_cli(["measure", tmp_path / "E2", folder, "--out", tmp_path / "m"], capsys), "48 missing weights")


def test_convert_names_and_counts_missing_layers(tmp_path, capsys):
    torch.manual_seed(0)
    sd = OpenAIStyleCLIP(vision_layers=3).state_dict()
    sd = {k.replace("visual.transformer.resblocks.2.", "visual.transformer.resblocks.5."): v for k, v in sd.items()}
    torch.save(sd, tmp_path / "ck.bin")
    _one_line_error(*_cli(["convert", tmp_path / "ck.bin", tmp_path / "hf", "--act", "quick_gelu"], capsys),
                    "16 tensors (vision_model.encoder.layers.2.")
