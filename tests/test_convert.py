"""`attncollapse convert`: OpenAI / OpenCLIP checkpoints → HF CLIPModel, checked by forward.

Two references, both independent of transformers:
- always: `OpenAIStyleCLIP` below, OpenAI's clip/model.py ViT CLIP rewritten in ~60 lines
  (same parameter names, nn.MultiheadAttention with the fused in_proj), saved as a real
  TorchScript archive; plus a hand-computed patch embedding, block and projection.
- when open_clip_torch is installed: open_clip's own `CLIP` and OpenAI-archive builder.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import math
import sys
import types
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPModel

from attncollapse.cli import main
from attncollapse.models.convert import convert

TOL = 1e-5  # fp32


class QuickGELU(nn.Module):
    """OpenAI's activation; the converter detects it by this class name in the archive."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, act: type):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=act(), c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x: (tokens, batch, width), sequence first as in OpenAI's code."""
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, act: type):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, act) for _ in range(layers)])

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, image: int, patch: int, width: int, layers: int, heads: int, embed: int, act: type):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        scale = width ** -0.5  # OpenAI's init scales, which keep features O(1)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((image // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, act)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, S, S) → (B, embed)."""
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B, grid², width)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.transformer(x.transpose(0, 1), None).transpose(0, 1)
        return self.ln_post(x[:, 0]) @ self.proj


class OpenAIStyleCLIP(nn.Module):
    """OpenAI's ViT CLIP (clip/model.py): the same state-dict names, shapes and forward."""

    def __init__(self, *, act: type = QuickGELU, image: int = 32, patch: int = 8, vision_width: int = 128,
                 vision_layers: int = 2, embed: int = 24, context: int = 12, vocab: int = 60,
                 text_width: int = 64, text_layers: int = 2):
        super().__init__()
        # OpenAI's rule: 64-wide heads; the converter infers the same from the widths.
        self.visual = VisionTransformer(image, patch, vision_width, vision_layers, vision_width // 64,
                                        embed, act)
        self.transformer = Transformer(text_width, text_layers, text_width // 64, act)
        self.token_embedding = nn.Embedding(vocab, text_width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context, text_width))
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(text_width ** -0.5 * torch.randn(text_width, embed))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        # Older OpenAI archives carry these non-weights; the converter must drop them.
        self.register_buffer("attn_mask", torch.full((context, context), float("-inf")).triu(1))
        self.register_buffer("context_length", torch.tensor(context))

    def encode_text(self, text: Tensor) -> Tensor:
        """text: (B, context) ids, end token = the largest id → (B, embed)."""
        x = self.token_embedding(text) + self.positional_embedding
        x = self.ln_final(self.transformer(x.transpose(0, 1), self.attn_mask).transpose(0, 1))
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        return self.visual(image), self.encode_text(text)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # model inits draw from the global generator


def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every weight off its init (LayerNorm 1/0, zero biases) so a swap shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = p.std() if p.numel() > 1 and p.std() > 0 else 1.0
            p.add_(0.2 * scale * torch.randn(p.shape, generator=gen))
    return model.eval()


def _inputs(image: int = 32, context: int = 12, vocab: int = 60) -> tuple[Tensor, Tensor]:
    """Images (3, 3, S, S) and OpenAI-style token rows: ids, end token (vocab - 1), zero padding."""
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, image, image, generator=gen)
    text = torch.randint(1, vocab - 2, (3, context), generator=gen)
    for row, end in enumerate([3, 7, context - 1]):
        text[row, end], text[row, end + 1:] = vocab - 1, 0
    return images, text


def _hf_features(hf: CLIPModel, images: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        return (hf.get_image_features(pixel_values=images).pooler_output,
                hf.get_text_features(input_ids=text).pooler_output)


def _max_diff(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("act, expected", [(QuickGELU, "quick_gelu"), (nn.GELU, "gelu")])
def test_torchscript_archive_matches_reference(tmp_path, act, expected):
    ref = _perturb(OpenAIStyleCLIP(act=act))
    # OpenAI ships fp16 archives: save fp16, compare against the fp16-rounded weights in fp32.
    scripted = torch.jit.script(ref.half())
    torch.jit.save(scripted, str(tmp_path / "ViT-T-8.pt"))
    ref.float()
    done = convert(tmp_path / "ViT-T-8.pt", tmp_path / "hf")
    assert done["act"] == expected  # read from the TorchScript module names
    assert done["vision"] == "2 layers, width 128, 2 heads" and done["text"] == "2 layers, width 64, 1 heads"
    hf = CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert hf.config.vision_config.image_size == 32 and hf.config.text_config.max_position_embeddings == 12
    assert hf.dtype == torch.float32
    images, text = _inputs()
    with torch.no_grad():
        want_img, want_txt = ref(images, text)
        got = hf(pixel_values=images, input_ids=text)
    got_img, got_txt = _hf_features(hf, images, text)
    assert _max_diff(got_img, want_img) < TOL and _max_diff(got_txt, want_txt) < TOL
    norm = lambda t: t / t.norm(dim=-1, keepdim=True)
    logits = ref.logit_scale.exp() * norm(want_img) @ norm(want_txt).T
    assert _max_diff(got.logits_per_image, logits) < 1e-4  # logits ~100× the features


def _hand_state_dict(gen: torch.Generator) -> dict[str, Tensor]:
    """An OpenAI-named ViT CLIP state dict of random tensors: 48-wide, 3 heads of 16."""
    r = lambda *shape: torch.randn(*shape, generator=gen)
    sd = {"visual.conv1.weight": r(48, 3, 8, 8), "visual.class_embedding": r(48),
          "visual.positional_embedding": r(17, 48), "visual.proj": r(48, 24),
          "token_embedding.weight": r(50, 32), "positional_embedding": r(10, 32),
          "ln_final.weight": r(32), "ln_final.bias": r(32), "text_projection": r(32, 24),
          "logit_scale": torch.tensor(2.5)}
    for ln in ("ln_pre", "ln_post"):
        sd |= {f"visual.{ln}.weight": 1 + 0.1 * r(48), f"visual.{ln}.bias": r(48)}
    for prefix, w in (("visual.transformer.resblocks.0.", 48), ("transformer.resblocks.0.", 32)):
        sd |= {prefix + k: v for k, v in {
            "attn.in_proj_weight": r(3 * w, w) / w ** 0.5, "attn.in_proj_bias": r(3 * w),
            "attn.out_proj.weight": r(w, w) / w ** 0.5, "attn.out_proj.bias": r(w),
            "ln_1.weight": 1 + 0.1 * r(w), "ln_1.bias": r(w), "ln_2.weight": 1 + 0.1 * r(w),
            "ln_2.bias": r(w), "mlp.c_fc.weight": r(4 * w, w) / w ** 0.5, "mlp.c_fc.bias": r(4 * w),
            "mlp.c_proj.weight": r(w, 4 * w) / (2 * w ** 0.5), "mlp.c_proj.bias": r(w)}.items()}
    return sd


def test_hand_built_state_dict_by_hand(tmp_path):
    """Patch embedding, one block (fused in_proj, 3 heads) and the projection, by hand."""
    sd = _hand_state_dict(torch.Generator().manual_seed(0))
    torch.save(sd, tmp_path / "hand.bin")
    convert(tmp_path / "hand.bin", tmp_path / "hf", act="quick_gelu", vision_heads=3, text_heads=2)
    hf = CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
    vm = hf.vision_model
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    v = lambda k: sd["visual." + k]
    # Patch embedding: conv (B, 48, 4, 4) → 16 tokens, [CLS] first, positions added.
    patches = F.conv2d(x, v("conv1.weight"), stride=8).flatten(2).transpose(1, 2)
    tokens = torch.cat([v("class_embedding").expand(2, 1, 48), patches], 1) + v("positional_embedding")
    with torch.no_grad():
        assert _max_diff(vm.embeddings(x), tokens) < TOL
        h = vm.pre_layrnorm(tokens)
        got = vm.encoder.layers[0](h, None)
        pooled = torch.randn(2, 48)
        assert _max_diff(hf.visual_projection(pooled), pooled @ v("proj")) < TOL
    # One block: MultiheadAttention's own math on the fused weights, QuickGELU MLP.
    b = lambda k: v("transformer.resblocks.0." + k)
    y = F.layer_norm(h, (48,), b("ln_1.weight"), b("ln_1.bias")).transpose(0, 1)
    attn, _ = F.multi_head_attention_forward(
        y, y, y, 48, 3, b("attn.in_proj_weight"), b("attn.in_proj_bias"), None, None, False, 0.0,
        b("attn.out_proj.weight"), b("attn.out_proj.bias"), need_weights=False)
    h1 = h + attn.transpose(0, 1)
    m = F.linear(F.layer_norm(h1, (48,), b("ln_2.weight"), b("ln_2.bias")),
                 b("mlp.c_fc.weight"), b("mlp.c_fc.bias"))
    want = h1 + F.linear(m * torch.sigmoid(1.702 * m), b("mlp.c_proj.weight"), b("mlp.c_proj.bias"))
    assert _max_diff(got, want) < TOL
    assert hf.logit_scale.item() == pytest.approx(2.5)


def test_wrapped_and_safetensors_inputs_give_the_same_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    sd = _hand_state_dict(torch.Generator().manual_seed(0))
    torch.save(sd, tmp_path / "plain.bin")
    # open_clip training checkpoints: {"epoch", "state_dict"} with DDP's "module." prefix.
    torch.save({"epoch": 3, "state_dict": {"module." + k: t for k, t in sd.items()}}, tmp_path / "epoch_3.pt")
    save_file(sd, str(tmp_path / "model.safetensors"))
    outs = []
    for name in ("plain.bin", "epoch_3.pt", "model.safetensors"):
        convert(tmp_path / name, tmp_path / name.replace(".", "_"), act="gelu", vision_heads=3, text_heads=2)
        outs.append(load_file(str(tmp_path / name.replace(".", "_") / "model.safetensors")))
    assert outs[0].keys() == outs[1].keys() == outs[2].keys()
    assert all(torch.equal(outs[0][k], o[k]) for o in outs[1:] for k in outs[0])
    config = json.loads((tmp_path / "plain_bin" / "config.json").read_text())
    assert config["text_config"]["hidden_act"] == "gelu"


def test_open_clip_config_json_sets_heads_activation_and_stats(tmp_path):
    torch.save(_hand_state_dict(torch.Generator().manual_seed(0)), tmp_path / "open_clip_pytorch_model.bin")
    vision = {"width": 48, "head_width": 16, "layers": 1, "patch_size": 8, "image_size": 32}
    text = {"width": 32, "heads": 2, "layers": 1, "context_length": 10, "vocab_size": 50}
    cfg = {"model_cfg": {"embed_dim": 24, "quick_gelu": True, "vision_cfg": vision, "text_cfg": text},
           "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    done = convert(tmp_path / "open_clip_pytorch_model.bin", tmp_path / "hf")
    assert done["act"] == "quick_gelu"
    assert done["vision"] == "1 layers, width 48, 3 heads" and done["text"] == "1 layers, width 32, 2 heads"
    assert json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())["image_mean"] == [0.5] * 3
    cfg["model_cfg"]["vision_cfg"]["pool_type"] = "avg"  # mean pooling: CLIPModel pools [CLS]
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"open_clip_pytorch_model\.bin: .*vision_cfg\.pool_type='avg'"):
        convert(tmp_path / "open_clip_pytorch_model.bin", tmp_path / "hf2")


def _meta_state_dict(vision: tuple[int, int, int, int], text: tuple[int, int, int], embed: int):
    """Shapes only (meta tensors) of an OpenAI-named ViT CLIP.

    Args:
        vision: (width, layers, patch, grid); text: (width, layers, context), vocab 49408.
    """
    (vw, vl, patch, grid), (tw, tl, ctx) = vision, text
    sd = {"visual.conv1.weight": (vw, 3, patch, patch), "visual.proj": (vw, embed),
          "visual.positional_embedding": (grid * grid + 1, vw), "token_embedding.weight": (49408, tw),
          "positional_embedding": (ctx, tw), "ln_final.weight": (tw,), "text_projection": (tw, embed)}
    for prefix, w, n in (("visual.transformer.resblocks.", vw, vl), ("transformer.resblocks.", tw, tl)):
        sd |= {f"{prefix}{i}.mlp.c_fc.weight": (4 * w, w) for i in range(n)}
    meta = {k: torch.zeros(shape, device="meta") for k, shape in sd.items()}
    return meta | {"logit_scale": torch.tensor(4.6)}


def test_infer_config_of_real_shapes():
    from transformers import CLIPConfig

    from attncollapse.models.convert import infer_config

    got = infer_config(_meta_state_dict((768, 12, 32, 7), (512, 12, 77), 512), act="quick_gelu")
    want = CLIPConfig()  # transformers' defaults are openai/clip-vit-base-patch32's architecture
    for tower in ("vision_config", "text_config"):
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "hidden_act", "projection_dim", "image_size", "patch_size", "vocab_size",
                    "max_position_embeddings"):
            mine, hubs = getattr(got, tower), getattr(want, tower)
            assert getattr(mine, key, None) == getattr(hubs, key, None), (tower, key)
    assert got.projection_dim == 512 and got.text_config.eos_token_id == 2  # argmax pooling
    vit_h = infer_config(_meta_state_dict((1280, 32, 14, 16), (1024, 24, 77), 1024), act="gelu")
    assert vit_h.vision_config.num_attention_heads == 16 and vit_h.text_config.num_attention_heads == 16
    assert vit_h.vision_config.image_size == 224


@pytest.mark.parametrize("extra, needle", [
    ({"visual.layer1.0.conv1.weight": torch.zeros(1)}, "ResNet vision tower"),
    ({"visual.trunk.patch_embed.proj.weight": torch.zeros(1)}, "timm vision tower"),
    ({"logit_bias": torch.zeros(())}, "SigLIP"),
    ({"visual.transformer.resblocks.0.ls_1.gamma": torch.zeros(48)}, "unexpected tensor"),
])
def test_unsupported_architectures_are_refused_in_one_line(tmp_path, extra, needle):
    sd = _hand_state_dict(torch.Generator().manual_seed(0)) | extra
    torch.save(sd, tmp_path / "ck.bin")
    with pytest.raises(ValueError, match=needle) as err:
        convert(tmp_path / "ck.bin", tmp_path / "hf", act="gelu", vision_heads=3, text_heads=2)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "ck.bin"))
    assert "convert a plain ViT" in message  # the fix
    assert not (tmp_path / "hf" / "model.safetensors").exists()


def test_missing_activation_or_bad_heads_say_the_flag(tmp_path):
    torch.save(_hand_state_dict(torch.Generator().manual_seed(0)), tmp_path / "ck.bin")
    with pytest.raises(ValueError, match=r"ck\.bin: .*--act gelu"):
        convert(tmp_path / "ck.bin", tmp_path / "hf")
    with pytest.raises(ValueError, match=r"ck\.bin: vision width 48 .* 5 heads; pass --vision-heads"):
        convert(tmp_path / "ck.bin", tmp_path / "hf", act="gelu", vision_heads=5)


def _saved_dtypes(out) -> set:
    from safetensors.torch import load_file

    return {t.dtype for t in load_file(str(out / "model.safetensors")).values()}


def test_cli_convert_then_load_clip(tmp_path, capsys):
    from attncollapse.models import load_clip

    torch.save(_hand_state_dict(torch.Generator().manual_seed(0)), tmp_path / "ck.bin")
    out = tmp_path / "hf"
    argv = ["convert", str(tmp_path / "ck.bin"), str(out), "--act", "quick_gelu", "--vision-heads", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "vision 1 layers, width 48, 3 heads" in printed and "no tokenizer written" in printed
    written = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= written
    assert "--bpe" in (out / "README.md").read_text()  # how to add the tokenizer
    clip = load_clip(str(out))
    capsys.readouterr()  # drop the loading progress bar
    vision = clip.config.vision_config
    assert vision.num_attention_heads == 3 and vision.hidden_act == "quick_gelu"
    assert main(argv[:2] + [str(tmp_path / "half")] + argv[3:] + ["--dtype", "float16"]) == 0
    assert _saved_dtypes(tmp_path / "half") == {torch.float16}
    siglip = _hand_state_dict(torch.Generator().manual_seed(0)) | {"logit_bias": torch.zeros(())}
    torch.save(siglip, tmp_path / "sig.bin")
    assert main(["convert", str(tmp_path / "sig.bin"), str(tmp_path / "sig"), "--act", "gelu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "SigLIP" in err and err.count("\n") == 1
    assert main(["convert", str(tmp_path / "none.pt"), str(tmp_path / "x")]) == 2
    assert main(argv + ["--bpe", str(tmp_path / "absent.txt.gz")]) == 2
    assert "absent.txt.gz: no such BPE" in capsys.readouterr().err


# --- against open_clip itself (runs where open_clip_torch is installed) ----------------------


def _open_clip():
    """Import open_clip, bridging its import-time-only use of torchvision.

    open_clip 3.x imports torchvision at module level (transform.py: the preprocessing
    transforms; utils.py: FrozenBatchNorm2d for ResNet towers) although the ViT CLIP forward
    never uses it, and torchvision's PyPI wheel cannot load beside CPU torch ("operator
    torchvision::nms does not exist"). When torchvision is absent, import open_clip with
    placeholder torchvision modules, then take them out of sys.modules again.
    """
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip_torch is not installed (pip install --no-deps open_clip_torch ftfy)")
    if importlib.util.find_spec("torchvision") is not None:
        import open_clip

        return open_clip

    class _Anything(type):
        def __getattr__(cls, name):  # InterpolationMode.BICUBIC in default arguments
            return name

    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional",
             "torchvision.ops", "torchvision.ops.misc"]
    stubs = {}
    for name in names:
        stubs[name] = types.ModuleType(name)
        stubs[name].__spec__ = importlib.machinery.ModuleSpec(name, None)
        stubs[name].__getattr__ = lambda attr: _Anything(attr, (), {})
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(stubs[parent], child, stubs[name])
    sys.modules.update(stubs)
    try:
        import open_clip
    finally:
        for name in names:
            sys.modules.pop(name, None)
    return open_clip


def _open_clip_model(oc, *, quick_gelu: bool, custom_text: bool = False):
    vision = oc.model.CLIPVisionCfg(layers=2, width=48, head_width=16, patch_size=8, image_size=32)
    text = oc.model.CLIPTextCfg(context_length=12, vocab_size=60, width=32, heads=4, layers=2)
    cls = oc.model.CustomTextCLIP if custom_text else oc.model.CLIP  # text tower under "text."
    return _perturb(cls(24, vision, text, quick_gelu=quick_gelu))


@pytest.mark.parametrize("quick_gelu, layout", [
    (False, "hub"), (True, "training"), (False, "safetensors"), (True, "custom_text")])
def test_matches_open_clip(tmp_path, quick_gelu, layout):
    """Features equal open_clip's own CLIP (3 heads of 16 and 4 of 8: not OpenAI's 64)."""
    from safetensors.torch import save_file

    oc = _open_clip()
    model = _open_clip_model(oc, quick_gelu=quick_gelu, custom_text=layout == "custom_text")
    sd = model.state_dict()
    if layout == "hub":  # open_clip_pytorch_model.bin + open_clip_config.json, as on the hub
        src = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(sd, src)
        (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
            "embed_dim": 24, "quick_gelu": quick_gelu,
            "vision_cfg": {"layers": 2, "width": 48, "head_width": 16, "patch_size": 8, "image_size": 32},
            "text_cfg": {"context_length": 12, "vocab_size": 60, "width": 32, "heads": 4, "layers": 2}}}))
        kwargs = {}
    else:
        src = tmp_path / ("model.safetensors" if layout == "safetensors" else "epoch_1.pt")
        if layout != "safetensors":
            torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in sd.items()}}, src)
        else:
            save_file({k: v.contiguous() for k, v in sd.items()}, str(src))
        kwargs = {"act": "quick_gelu" if quick_gelu else "gelu", "vision_heads": 3, "text_heads": 4}
    done = convert(src, tmp_path / "hf", **kwargs)
    assert done["act"] == ("quick_gelu" if quick_gelu else "gelu")
    hf = CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
    images, text = _inputs()
    with torch.no_grad():
        want_img, want_txt = model.encode_image(images), model.encode_text(text)
        _, _, scale = model(images, text)  # (normalised image, normalised text, logit_scale.exp())
    got_img, got_txt = _hf_features(hf, images, text)
    print(f"open_clip {oc.__version__} {layout} quick_gelu={quick_gelu}: max |Δ| image "
          f"{_max_diff(got_img, want_img):.2e} text {_max_diff(got_txt, want_txt):.2e}")
    assert _max_diff(got_img, want_img) < TOL and _max_diff(got_txt, want_txt) < TOL
    assert torch.allclose(hf.logit_scale.exp(), scale)


def test_torchscript_archive_matches_open_clip_openai_builder(tmp_path):
    """open_clip's reading of an OpenAI archive (build_model_from_openai_state_dict) agrees."""
    oc = _open_clip()
    # fp16 like OpenAI's archives: open_clip's builder rounds the weights to fp16 anyway.
    torch.jit.save(torch.jit.script(_perturb(OpenAIStyleCLIP()).half()), str(tmp_path / "ViT-T-8.pt"))
    convert(tmp_path / "ViT-T-8.pt", tmp_path / "hf")
    state = dict(torch.jit.load(str(tmp_path / "ViT-T-8.pt")).state_dict())
    state.pop("attn_mask")  # open_clip keeps its causal mask out of the state dict
    model = oc.model.build_model_from_openai_state_dict(state).float().eval()
    hf = CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
    images, text = _inputs()
    with torch.no_grad():
        want_img, want_txt = model.encode_image(images), model.encode_text(text)
    got_img, got_txt = _hf_features(hf, images, text)
    print(f"open_clip {oc.__version__} OpenAI builder: max |Δ| image {_max_diff(got_img, want_img):.2e} "
          f"text {_max_diff(got_txt, want_txt):.2e}")
    assert _max_diff(got_img, want_img) < TOL and _max_diff(got_txt, want_txt) < TOL


def test_tokenizer_from_bpe_matches_open_clip(tmp_path):
    """The tokenizer built from open_clip's BPE file tokenizes like open_clip.tokenize."""
    from transformers import CLIPTokenizer

    from attncollapse.models.convert import find_bpe, write_tokenizer

    oc = _open_clip()
    assert find_bpe() is not None  # the copy inside the installed open_clip
    assert write_tokenizer(tmp_path, bpe=None, vocab_size=49408, context_length=77) is None
    tok = CLIPTokenizer.from_pretrained(str(tmp_path))
    texts = ["a photo of a cat.", "A satellite image of Highway or Road!", "pneumonoultramicroscopic " * 30]
    want = oc.tokenize(texts)
    got = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    # open_clip pads with 0, HF with the end token; argmax pooling reads neither.
    assert torch.equal(torch.where(want == 0, 49407, want), got)


@pytest.mark.parametrize("vision, needle", [
    ({"layers": (1, 1, 1, 1), "width": 16, "image_size": 64}, "ResNet vision tower"),
    ({"ls_init_value": 0.1}, r"unexpected tensor '.*ls_1\.gamma'"),
    ({"qk_norm": True}, r"unexpected tensor '.*attn\.ln_q\.weight'"),
    ({"attentional_pool": True, "attn_pooler_heads": 4, "attn_pooler_queries": 4}, "attentional-pooling"),
])
def test_open_clip_variants_are_refused(tmp_path, vision, needle):
    """open_clip towers CLIPModel cannot express are refused, not silently mis-converted."""
    oc = _open_clip()
    vision = {"layers": 1, "width": 32, "head_width": 8, "patch_size": 8, "image_size": 32} | vision
    text = oc.model.CLIPTextCfg(context_length=12, vocab_size=60, width=32, heads=4, layers=1)
    torch.save(oc.model.CLIP(24, oc.model.CLIPVisionCfg(**vision), text).state_dict(), tmp_path / "ck.bin")
    with pytest.raises(ValueError, match=r"ck\.bin: .*" + needle):
        convert(tmp_path / "ck.bin", tmp_path / "hf", act="gelu")


def test_incomplete_checkpoint_is_refused(tmp_path):
    sd = _hand_state_dict(torch.Generator().manual_seed(0))
    del sd["ln_final.weight"]
    torch.save(sd, tmp_path / "ck.bin")
    with pytest.raises(ValueError, match=r"ck\.bin: missing tensor 'ln_final\.weight'"):
        convert(tmp_path / "ck.bin", tmp_path / "hf", act="gelu")
