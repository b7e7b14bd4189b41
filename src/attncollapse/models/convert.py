"""Convert OpenAI and OpenCLIP ViT checkpoints into a Hugging Face `CLIPModel` directory.

Reads OpenAI's TorchScript `ViT-*.pt` archives (their tensors only, running none of their
code: torchscript.py) and `open_clip_torch` state dicts (`.bin`, `.pt`, `.pth`,
`.safetensors`, a `{"state_dict": ...}` training checkpoint), remaps the keys
and writes `config.json`, `model.safetensors` and `preprocessor_config.json` (plus the
tokenizer files when CLIP's BPE merges file is at hand), so `load_clip(OUT)` and
`CLIPModel.from_pretrained(OUT)` load it. Plain torch: open_clip is not needed.

The architecture is read from tensor shapes as OpenAI's `clip.model.build_model` does. Two
things are not in the weights: the number of heads (OpenAI uses width / 64; OpenCLIP's big
towers do not) and the MLP activation (QuickGELU for OpenAI-trained models, GELU for most
LAION ones). Both come from, in order: the arguments, the `open_clip_config.json` beside
the checkpoint (as the hub ships it), the TorchScript code (activation only), defaults.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import re
import zipfile
from pathlib import Path

import torch
from torch import Tensor
from transformers import CLIPConfig, CLIPModel

from .. import _io
from .clip import pickled_code
from .torchscript import read_torchscript

ACTS = ("quick_gelu", "gelu")
HEAD_WIDTH = 64  # OpenAI: heads = width // 64 (clip/model.py build_model)
# OpenCLIP's ViT-H, ViT-g, ViT-bigG and ViT-e vision towers use head widths 80, 88, 104, 112
# (open_clip model_configs): 16 heads, not width // 64.
_VISION_HEADS_BY_WIDTH = {1280: 16, 1408: 16, 1664: 16, 1792: 16}
# Entries of OpenAI's archives that are not weights (clip/model.py build_model drops them).
_NOT_WEIGHTS = {"input_resolution", "context_length", "vocab_size", "attn_mask"}

_TOP = {  # OpenAI/OpenCLIP name -> HF name, outside the transformer blocks
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "text_projection.weight": "text_projection.weight",  # OpenCLIP proj_type="linear" (no bias)
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1",
          "mlp.c_proj": "mlp.fc2", "attn.out_proj": "self_attn.out_proj"}
_TOWERS = {"visual.transformer.resblocks.": "vision_model.encoder.layers.",
           "transformer.resblocks.": "text_model.encoder.layers."}
# (key prefix, what it is) of towers HF CLIPModel has no equivalent for.
_UNSUPPORTED = [
    ("logit_bias", "a SigLIP model (sigmoid loss, logit_bias)"),
    ("visual.trunk.", "a timm vision tower (open_clip timm_model_name)"),
    ("visual.layer1.", "a ResNet vision tower (ModifiedResNet, OpenAI RN50/RN101/RN50x*)"),
    ("visual.attnpool.", "a ResNet vision tower (ModifiedResNet, OpenAI RN50/RN101/RN50x*)"),
    ("text.transformer.embeddings.", "a Hugging Face text tower (open_clip hf_model_name)"),
    ("text_decoder.", "a CoCa model (text decoder)"),
    ("visual.attn_pool", "an attentional-pooling vision tower (CoCa style)"),
]
# open_clip config fields that change the forward without changing any weight name:
# only their defaults are what HF CLIPModel computes.
_CFG_DEFAULTS = {
    "vision_cfg": {"pool_type": "tok", "final_ln_after_pool": False, "attentional_pool": False,
                   "no_ln_pre": False, "timm_model_name": None, "act_kwargs": None, "norm_kwargs": None},
    "text_cfg": {"pool_type": "argmax", "no_causal_mask": False, "final_ln_after_pool": False,
                 "embed_cls": False, "proj_bias": False, "hf_model_name": None,
                 "act_kwargs": None, "norm_kwargs": None},
}
_FIX = "convert a plain ViT CLIP (OpenAI ViT-B/32, ViT-B/16, ViT-L/14, OpenCLIP ViT-*)"


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], str | None]:
    """Read a checkpoint's tensors and, for TorchScript archives, the detected activation.

    Args:
        path: an OpenAI TorchScript `.pt`, a torch-saved state dict (optionally under
            `"state_dict"`, keys optionally prefixed `module.`) or a `.safetensors` file.

    Returns:
        (state dict name -> tensor, activation read from the TorchScript code or None).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path)), None
        if _is_torchscript(path):
            # Never torch.jit.load: it runs the archive's code (`__setstate__`) while loading.
            sd, classes = read_torchscript(path)
            return sd, _scripted_act(classes)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # garbage, truncated or pickled code: one line, not torch's essay
        first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:120]
        if pickled_code(exc):  # nothing of it was run
            found = re.search(r"(?:unsupported global: GLOBAL|refused global) ([\w.]+)", str(exc), re.I)
            what = f"{found.group(1)}, " if found else ""
            raise ValueError(f"{path}: holds pickled objects besides tensors ({what}which could run code): "
                             "refused unread; use a .safetensors copy, or re-save it from a source you trust") from None
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first}); pass an "
                         "OpenAI ViT-*.pt archive, an open_clip state dict (open_clip_pytorch_model.bin) "
                         "or a .safetensors file, re-downloaded if it may be truncated") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # open_clip training checkpoints: {"epoch", "state_dict", ...}
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict of tensors; pass an OpenAI ViT-*.pt archive "
                         "or an open_clip state dict (open_clip_pytorch_model.bin)")
    return {k.removeprefix("module."): v for k, v in obj.items()}, None


def _is_torchscript(path: Path) -> bool:
    # TorchScript archives are zips holding constants.pkl; torch.save zips hold data.pkl only.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") for n in zf.namelist())


def _scripted_act(names: set[str]) -> str:
    # Scripted and traced modules keep their Python class name: OpenAI's MLP holds a
    # `QuickGELU` module (clip/model.py), a GELU model an `nn.GELU`. TorchScript is
    # OpenAI's release format, and all OpenAI CLIPs use QuickGELU.
    return "gelu" if "GELU" in names and "QuickGELU" not in names else "quick_gelu"


def open_clip_config(path: str | Path) -> dict | None:
    """The `open_clip_config.json` beside `path` as `{"model_cfg", "preprocess_cfg"}`, or None."""
    cfg_path = Path(path).with_name("open_clip_config.json")
    if not cfg_path.is_file():
        return None
    data = json.loads(cfg_path.read_text())
    if "model_cfg" not in data:  # a bare model config, as in open_clip/model_configs/*.json
        data = {"model_cfg": data}
    return data


def _check_supported(sd: dict[str, Tensor], cfg: dict | None, path: Path) -> None:
    """Raise a one-line ValueError for towers and options HF CLIPModel cannot express."""
    for prefix, what in _UNSUPPORTED:
        if any(k.startswith(prefix) for k in sd):
            raise ValueError(f"{path}: {what} is not supported; {_FIX}")
    if "visual.conv1.weight" not in sd or "token_embedding.weight" not in sd:
        raise ValueError(f"{path}: no ViT CLIP weights (visual.conv1.weight, token_embedding.weight) "
                         f"found; {_FIX}")
    if cfg is None:
        return
    if "multimodal_cfg" in cfg or "init_logit_bias" in cfg:
        raise ValueError(f"{path}: open_clip_config.json describes a CoCa or SigLIP model; {_FIX}")
    for tower, defaults in _CFG_DEFAULTS.items():
        for key, default in defaults.items():
            value = cfg.get(tower, {}).get(key, default)
            if value != default:
                raise ValueError(f"{path}: open_clip_config.json sets {tower}.{key}={value!r}, which "
                                 f"CLIPModel cannot compute; {_FIX}")


def _layers(sd: dict[str, Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def _heads(width: int, given: int | None, what: str, path: Path) -> int:
    heads = given or (_VISION_HEADS_BY_WIDTH.get(width) if what == "vision" else None)
    heads = heads or max(width // HEAD_WIDTH, 1)
    if width % heads:
        raise ValueError(f"{path}: {what} width {width} is not divisible by {heads} heads; "
                         f"pass --{what}-heads with a divisor of {width}")
    return heads


def infer_config(sd: dict[str, Tensor], *, act: str, vision_heads: int | None = None,
                 text_heads: int | None = None, path: Path = Path("checkpoint")) -> CLIPConfig:
    """Build the HF config from tensor shapes (OpenAI's `build_model` rules).

    Args:
        sd: OpenAI-named state dict; `visual.conv1.weight` (width, 3, patch, patch),
            `visual.positional_embedding` (grid² + 1, width), `token_embedding.weight`
            (vocab, text_width), `positional_embedding` (context, text_width).
        act: "quick_gelu" or "gelu", for both towers.
        vision_heads, text_heads: head counts; None = width // 64 (OpenCLIP's ViT-H/g/
            bigG/e vision towers: 16).
        path: the checkpoint, for error messages.
    """
    conv = sd["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(sd["visual.positional_embedding"].shape[0] - 1)
    if conv.shape[-2] != patch or grid * grid + 1 != sd["visual.positional_embedding"].shape[0]:
        raise ValueError(f"{path}: non-square patches or image grid; CLIPModel needs square ones")
    text_width = sd["ln_final.weight"].shape[0]
    proj = sd["text_projection"].T if "text_projection" in sd else sd["text_projection.weight"]
    vision = dict(
        hidden_size=width, image_size=patch * grid, patch_size=patch,
        intermediate_size=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_layers(sd, "visual.transformer.resblocks."),
        num_attention_heads=_heads(width, vision_heads, "vision", path),
        hidden_act=act, projection_dim=sd["visual.proj"].shape[1],
    )
    # bos/eos/pad ids 0/2/1 as in the hub's openai/clip-vit-* configs: eos_token_id == 2
    # makes HF pool at input_ids.argmax(-1), exactly OpenAI's and OpenCLIP's text pooling
    # (the end token is the largest id), for any vocabulary.
    text = dict(
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
        hidden_size=text_width, vocab_size=sd["token_embedding.weight"].shape[0],
        max_position_embeddings=sd["positional_embedding"].shape[0],
        intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_layers(sd, "transformer.resblocks."),
        num_attention_heads=_heads(text_width, text_heads, "text", path),
        hidden_act=act, projection_dim=proj.shape[0],
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=proj.shape[0],
                      logit_scale_init_value=float(sd["logit_scale"]))


def remap(sd: dict[str, Tensor], *, path: Path = Path("checkpoint")) -> dict[str, Tensor]:
    """Rename OpenAI/OpenCLIP tensors to HF CLIPModel's, splitting fused q/k/v.

    `attn.in_proj_weight` (3·width, width) splits into q/k/v (width, width) each, in that
    order (nn.MultiheadAttention); `visual.proj` and `text_projection` (width, embed) are
    transposed into Linear weights (embed, width). Any other name is an error.
    """
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key in _TOP:
            out[_TOP[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.T
        else:
            out.update(_remap_block(key, value, path))
    return out


def _remap_block(key: str, value: Tensor, path: Path) -> dict[str, Tensor]:
    for src, dst in _TOWERS.items():
        # nn.MultiheadAttention names its fused input projection `in_proj_weight`.
        match = re.fullmatch(re.escape(src) + r"(\d+)\.(.+)[._](weight|bias)", key)
        if match:
            layer, name, kind = match.groups()
            base = f"{dst}{layer}."
            if name == "attn.in_proj":
                q, k, v = value.chunk(3, dim=0)
                return {f"{base}self_attn.{p}_proj.{kind}": t for p, t in zip("qkv", (q, k, v))}
            if name in _BLOCK:
                return {f"{base}{_BLOCK[name]}.{kind}": value}
    raise ValueError(f"{path}: unexpected tensor {key!r} (a layer-scale, custom-attention or other "
                     f"non-CLIP block); {_FIX}")


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]  # layer 10 after layer 9


def _named(keys: list[str]) -> str:
    """'5 tensors (a, b, c, ...)': the first few named, all counted."""
    return f"{len(keys)} tensor{'s' * (len(keys) != 1)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"


def _check_against(config: CLIPConfig, hf: dict[str, Tensor], path: Path) -> None:
    # Building on the meta device costs no memory, even for ViT-bigG.
    with torch.device("meta"):
        expected = {k: v.shape for k, v in CLIPModel(config).state_dict().items()}
    missing = sorted(set(expected) - set(hf), key=_natural)
    unexpected = sorted(set(hf) - set(expected), key=_natural)
    if missing:
        raise ValueError(f"{path}: {_named(missing)} missing; the checkpoint is incomplete")
    if unexpected:  # e.g. layers 0, 1, 3: layer 3 is not among the 3 layers counted
        raise ValueError(f"{path}: {_named(unexpected)} that a CLIP of this shape does not have (layers not "
                         f"numbered 0..N-1?); {_FIX}")
    for key, shape in expected.items():
        if hf[key].shape != shape:
            raise ValueError(f"{path}: {key} has shape {tuple(hf[key].shape)} but layer 0 implies "
                             f"{tuple(shape)} (layers of different sizes); {_FIX}")


def convert(src: str | Path, out: str | Path, *, act: str | None = None,
            vision_heads: int | None = None, text_heads: int | None = None,
            bpe: str | Path | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """Convert one checkpoint into an HF-format directory.

    Args:
        src: the checkpoint file (see `read_checkpoint`).
        out: the directory to write (created).
        act: "quick_gelu" or "gelu"; None = open_clip_config.json's `quick_gelu`, else
            what the TorchScript code holds; a plain state dict with neither is an error.
        vision_heads, text_heads: head counts (None: open_clip_config.json, else width // 64).
        bpe: CLIP's `bpe_simple_vocab_16e6.txt.gz`; None = the copy inside an installed
            open_clip or OpenAI clip package, if any.
        dtype: dtype of the saved weights (OpenAI's archives are fp16; default fp32).

    Returns:
        A summary: `out`, `act`, `vision` and `text` architectures, and `tokenizer`: None
        when the tokenizer files were written, else why not.
    """
    src, out = Path(src), Path(out)
    if bpe is not None and not Path(bpe).is_file():
        raise FileNotFoundError(f"{bpe}: no such BPE merges file (bpe_simple_vocab_16e6.txt.gz)")
    sd, scripted_act = read_checkpoint(src)
    sd = {k: v for k, v in sd.items() if k.removeprefix("text.") not in _NOT_WEIGHTS}
    if "text.token_embedding.weight" in sd:  # CustomTextCLIP with open_clip's own text tower
        sd = {k.removeprefix("text."): v for k, v in sd.items()}
    oc = open_clip_config(src) or {}
    cfg = oc.get("model_cfg")
    _check_supported(sd, cfg, src)
    act = _activation(act, cfg, scripted_act, src)
    if cfg is not None:  # open_clip's defaults: head_width 64, text heads 8
        vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        if vision_heads is None and "width" in vision:
            vision_heads = vision["width"] // vision.get("head_width", 64)
        text_heads = text_heads or text.get("heads", 8)
    try:
        config = infer_config(sd, act=act, vision_heads=vision_heads, text_heads=text_heads, path=src)
    except KeyError as exc:
        raise ValueError(f"{src}: missing tensor {exc}; the checkpoint is incomplete; {_FIX}") from None
    hf = remap(sd, path=src)
    _check_against(config, hf, src)
    _write_model(out, config, {k: v.to(dtype).contiguous() for k, v in hf.items()})
    tokenizer = write_tokenizer(out, bpe=bpe, vocab_size=config.text_config.vocab_size,
                                context_length=config.text_config.max_position_embeddings)
    _write_preprocessor(out, config.vision_config.image_size, oc.get("preprocess_cfg", {}))
    _write_readme(out, src, config, tokenizer)
    return {"out": str(out), "act": act, "tokenizer": tokenizer,
            "vision": _arch(config.vision_config), "text": _arch(config.text_config)}


def _activation(act: str | None, cfg: dict | None, scripted: str | None, path: Path) -> str:
    """The given activation, else open_clip_config.json's, else the TorchScript code's."""
    if act is None and cfg is not None:
        act = "quick_gelu" if cfg.get("quick_gelu", False) else "gelu"
    act = act or scripted
    if act is None:
        raise ValueError(f"{path}: the MLP activation is not recorded in a plain state dict; pass "
                         "--act gelu (most LAION models) or --act quick_gelu (OpenAI-trained, "
                         "*-quickgelu), or put its open_clip_config.json beside it")
    if act not in ACTS:
        raise ValueError(f"{path}: unknown activation {act!r}; pass --act gelu or --act quick_gelu")
    return act


def _arch(c) -> str:
    return f"{c.num_hidden_layers} layers, width {c.hidden_size}, {c.num_attention_heads} heads"


def _write_model(out: Path, config: CLIPConfig, weights: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    with _io.atomic_path(out / "config.json") as tmp:
        tmp.write_text(config.to_json_string())
    # Weights last: a directory with model.safetensors is a complete conversion.
    with _io.atomic_path(out / "model.safetensors") as tmp:
        save_file(weights, str(tmp), metadata={"format": "pt"})


def find_bpe() -> Path | None:
    """CLIP's BPE merges file shipped inside an installed open_clip or clip package.

    Only the package's location is looked up (find_spec runs no code of it).
    """
    for package in ("open_clip", "clip"):
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = Path(folder) / "bpe_simple_vocab_16e6.txt.gz"
            if path.is_file():
                return path
    return None


def write_tokenizer(out: Path, *, bpe: str | Path | None, vocab_size: int,
                    context_length: int) -> str | None:
    """Write CLIPTokenizer files built from CLIP's BPE merges (OpenAI's SimpleTokenizer).

    Returns:
        None when written; else why nothing was written (no merges file found, or its
        vocabulary differs from the model's): then copy the matching hub model's files.
    """
    path = Path(bpe) if bpe else find_bpe()
    if path is None:
        return ("CLIP's BPE merges file (bpe_simple_vocab_16e6.txt.gz, shipped in the "
                "open_clip_torch and OpenAI clip packages) was not found")
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # OpenAI clip/simple_tokenizer.py: 256 bytes, the same with </w>, 48894 merges, 2 specials.
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != vocab_size:
        return f"{path} makes {len(tokens)} tokens but the model has a vocabulary of {vocab_size}"
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                        model_max_length=context_length)
    tok.save_pretrained(str(out))
    return None


def _write_preprocessor(out: Path, size: int, preprocess: dict) -> None:
    # CLIPImageProcessor's settings for OpenAI's resize-centre-crop-normalise transform;
    # OpenCLIP models trained with other statistics say so in their preprocess_cfg.
    _io.write_json(out / "preprocessor_config.json", {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True,
        "size": {"shortest_edge": size}, "resample": 3, "do_center_crop": True,
        "crop_size": {"height": size, "width": size}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "image_mean": list(preprocess.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        "image_std": list(preprocess.get("std", (0.26862954, 0.26130258, 0.27577711))),
    })


def _write_readme(out: Path, src: Path, config: CLIPConfig, tokenizer: str | None) -> None:
    note = ("The tokenizer files were built from CLIP's BPE merges file." if tokenizer is None else
            f"No tokenizer was written: {tokenizer}. Rerun `attncollapse convert` with "
            "`--bpe PATH`, or copy tokenizer.json, tokenizer_config.json (and vocab.json, "
            "merges.txt if present) from the matching hub model (e.g. "
            "openai/clip-vit-base-patch32) into this directory.")
    _io.write_text(out / "README.md", (
        f"# {src.name} converted by `attncollapse convert`\n\n"
        f"Vision: {_arch(config.vision_config)}, patch {config.vision_config.patch_size}, "
        f"image {config.vision_config.image_size}; text: {_arch(config.text_config)}; "
        f"activation {config.vision_config.hidden_act}.\n\n{note}\n"))
