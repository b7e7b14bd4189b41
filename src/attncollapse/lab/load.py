"""MODEL arguments of `measure`, `compare` and `maps`: whatever model a user has, as a probed tower.

One string names the model:

- a preset (`tiny`, `vit-b-32-random`, ...: random weights, no download);
- a local directory saved with `save_pretrained`: CLIPModel, SigLIP / SigLIP 2, DINOv2
  (with registers), ViT (a `*ForImageClassification` checkpoint too), or a vision-only
  CLIPVisionModel / SiglipVisionModel / Siglip2VisionModel;
- a PEFT adapter directory (`adapter_config.json`): its base model is loaded from
  `base_model_name_or_path` (any of these forms) and the adapter put on it;
- a finished (or checkpointed) run directory of `attncollapse run` (`train.load_trained`);
- an OpenAI TorchScript `ViT-*.pt` or an OpenCLIP checkpoint file, converted on the fly
  by `models.convert` into a temporary directory;
- a hub id (`openai/clip-vit-base-patch32`): the only form that needs the network (or a
  filled Hugging Face cache).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from torch import nn

from ..models import (FAMILIES, PICKLE_REFUSED, PRESETS, PROBE_SPEC_ATTR, family_for_type, from_pretrained_checked,
                      image_size, load_model, normalization, num_layers, pickled_code, prefix_tokens, vision_config,
                      vision_tower)
from ..models.naflex import accept_square_images
from .images import InputError

# Vision-only classes (`model_type` of their config) → the family whose tower they are.
VISION_ONLY = {"clip_vision_model": "clip", "siglip_vision_model": "siglip", "siglip2_vision_model": "siglip2"}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_FORMS = ("a preset (" + ", ".join(PRESETS) + "), a model directory (config.json), a PEFT adapter directory "
          "(adapter_config.json), a run directory (config.yaml + checkpoints/), an OpenAI/OpenCLIP "
          "checkpoint file, or a hub id")


@dataclass
class Loaded:
    """A model ready to probe.

    Attributes:
        spec: the MODEL argument as given.
        kind: "preset", "directory", "vision-only directory", "peft-adapter", "run",
            "checkpoint" or "hub".
        tower: the vision tower to probe (carries its probe spec; LoRA layers in place).
        family: the family name (`models.FAMILIES`).
        mean, std: the image normalisation the model was trained with.
        image_size: input resolution S.
        patch_size: pixels per patch side.
        layers: encoder layers.
        info: extra provenance (the adapter's base, the run's config id, ...).
        keep: objects the tower needs alive (the full model, the PEFT wrapper).
    """

    spec: str
    kind: str
    tower: nn.Module
    family: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    patch_size: int
    layers: int
    info: dict = field(default_factory=dict)
    keep: list = field(default_factory=list, repr=False)

    @property
    def grid(self) -> tuple[int, int]:
        """Patch rows and columns of one image."""
        g = self.image_size // self.patch_size
        return g, g

    def record(self) -> dict:
        """What measure.json / compare.json record about the model."""
        return {"spec": self.spec, "kind": self.kind, "family": self.family, "image_size": self.image_size,
                "patch_size": self.patch_size, "grid": list(self.grid), "layers": self.layers,
                "random_init": self.spec in PRESETS, **self.info}


def _full(spec: str, kind: str, model: nn.Module, info: dict | None = None) -> Loaded:
    """A model `load_model` returned (any family), its tower and constants."""
    family = FAMILIES[_family_name(model.config)]
    mean, std = normalization(model)
    vision = vision_config(model.config)
    return Loaded(spec, kind, vision_tower(model), family.name, mean, std, image_size(model),
                  int(vision.patch_size), num_layers(model), info or {}, [model])


def _family_name(config) -> str:
    model_type = getattr(config, "model_type", "")
    return VISION_ONLY.get(model_type) or family_for_type(model_type).name


def load_any(spec: str, *, device: str = "cpu") -> Loaded:
    """Load a MODEL argument (see the module docstring) in eval mode on `device`.

    Raises:
        InputError: an unknown model directory, an adapter whose base is missing, a
            checkpoint that cannot be converted, a hub id the hub cannot provide (one line,
            naming the file and the fix).
        FileNotFoundError: a path that does not exist.
    """
    loaded = _load(spec)
    for obj in loaded.keep:
        obj.to(device).eval()
    loaded.tower.to(device).eval()
    return loaded


def preset_typo(spec: str) -> str | None:
    """The preset `spec` is probably a typo of (`tinyy`, `tiyn` → `tiny`), or None.

    Only for a name that is no preset, no path here and no `owner/name` hub id: such a
    name would otherwise be asked of the hub, whose answer (offline: "not in the cache")
    says nothing about the typo.
    """
    import difflib

    if spec in PRESETS or "/" in spec or Path(spec).expanduser().exists():
        return None
    close = difflib.get_close_matches(spec, list(PRESETS), n=1, cutoff=0.7)
    return close[0] if close else None


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
"""What `save_pretrained` leaves in a model directory: one of these holds the weights."""


def check_safetensors(path: Path, fix: str) -> None:
    """InputError naming `path` when it is not a readable safetensors file (empty,
    truncated, garbage): read before the model is, so the file is named, not a header error."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            list(fh.keys())
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: the file is unreadable
        why = "empty" if path.stat().st_size == 0 else f"unreadable ({str(e).splitlines()[0][:80]})"
        raise InputError(f"{path}: {why} — truncated or damaged; {fix}") from None


def _check_weights(path: Path) -> None:
    fix = "save the model again with save_pretrained (or copy it again)"
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise InputError(f"{path}: config.json but no weights (model.safetensors or pytorch_model.bin); {fix}")
    if (path / "model.safetensors").is_file():
        check_safetensors(path / "model.safetensors", fix)


def _load(spec: str) -> Loaded:
    if spec in PRESETS:
        return _full(spec, "preset", load_model(spec))
    if (typo := preset_typo(spec)) is not None:
        raise InputError(f"MODEL {spec!r}: not a preset, file or directory; did you mean {typo}? "
                         f"(presets: {', '.join(PRESETS)})")
    path = Path(spec).expanduser()
    if path.is_file():
        return _checkpoint(spec, path)
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return _adapter(spec, path)
        if (path / "config.yaml").is_file():
            return _run(spec, path)
        if (path / "config.json").is_file():
            return _directory(spec, path)
        raise InputError(f"{spec}: not a model directory of a known type (no config.json, adapter_config.json "
                         f"or config.yaml in it); give {_FORMS}")
    if spec.startswith((".", "/", "~")) or path.suffix in CHECKPOINT_SUFFIXES:
        raise FileNotFoundError(f"MODEL {spec} does not exist; give {_FORMS}")
    return _hub(spec)


def _directory(spec: str, path: Path, kind: str = "directory") -> Loaded:
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError, AttributeError) as e:
        raise InputError(f"{path / 'config.json'}: not a readable JSON config ({type(e).__name__}); "
                         "save the model again with save_pretrained") from None
    if model_type not in VISION_ONLY:
        try:
            family_for_type(model_type)
        except ValueError:
            known = sorted({t for f in FAMILIES.values() for t in f.model_types} | set(VISION_ONLY))
            raise InputError(f"{path / 'config.json'}: model_type {model_type!r} is not a vision transformer this "
                             f"tool knows ({', '.join(known)}); give one of those") from None
    _check_weights(path)  # named here, not as transformers' "no file named ..." or a header error
    if model_type in VISION_ONLY:
        return _vision_only(spec, str(path), "vision-only " + kind)
    return _full(spec, kind, load_model(str(path)))


def _vision_only(spec: str, where: str, kind: str) -> Loaded:
    """A CLIPVisionModel / SiglipVisionModel / Siglip2VisionModel: the tower is the model (or its `vision_model`)."""
    from transformers import AutoModel

    model = from_pretrained_checked(AutoModel, where, attn_implementation="sdpa")
    fam = FAMILIES[VISION_ONLY[model.config.model_type]]
    tower = getattr(model, "vision_model", model)  # transformers 5: the vision model is the tower
    if fam.pixels == "naflex":
        accept_square_images(tower)
    # The probe spec `models.attach_probe_spec` writes for the family's full model.
    setattr(tower, PROBE_SPEC_ATTR, {"attention": fam.attention, "prefix_tokens": prefix_tokens(fam, model.config),
                                     "query": fam.query})
    # The family's constants, or the directory's own preprocessor_config.json.
    mean, std = normalization(SimpleNamespace(model_type=fam.model_types[0], _name_or_path=where))
    return Loaded(spec, kind, tower, fam.name, mean, std, image_size(model), int(model.config.patch_size),
                  num_layers(model), {}, [model])


def _hub(spec: str) -> Loaded:
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(spec).model_type
    except (OSError, ValueError) as e:
        raise InputError(f"MODEL {spec!r}: not a preset, file or directory here, and the Hugging Face hub "
                         f"could not provide it ({type(e).__name__}); offline, give a local directory "
                         f"saved with save_pretrained, or {_FORMS}") from None
    if model_type in VISION_ONLY:
        return _vision_only(spec, spec, "vision-only hub")
    try:
        family_for_type(model_type)
    except ValueError as e:
        raise InputError(f"MODEL {spec!r}: {e}") from None
    return _full(spec, "hub", load_model(spec))


def _checkpoint(spec: str, path: Path) -> Loaded:
    """An OpenAI/OpenCLIP checkpoint, converted into a temporary directory and loaded from it."""
    from ..models.convert import convert

    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise InputError(f"{spec}: a file that is not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}); give {_FORMS}")
    with tempfile.TemporaryDirectory(prefix="attncollapse-convert-") as tmp:
        try:
            convert(path, tmp)
        except ValueError as e:
            raise InputError(f"{e}; or convert it yourself (`attncollapse convert {spec} DIR --act ...`) "
                             "and give DIR") from None
        loaded = _full(spec, "checkpoint", load_model(tmp))  # normalisation read while the dir exists
    loaded.info["converted_by"] = "attncollapse.models.convert"
    return loaded


def _run(spec: str, path: Path) -> Loaded:
    """A run directory of `attncollapse run`: its selected (best) checkpoint."""
    from ..train import load_trained

    if not (path / "checkpoints").is_dir():
        raise InputError(f"{path}: a run directory without checkpoints/ (not started, or its checkpoints were "
                         "deleted); run it (`attncollapse run`) or give another model")
    clip, clf, cfg = load_trained(path, device="cpu")
    loaded = _full(spec, "run", clip, {"run_id": cfg.id, "base_model": cfg.model, "method": cfg.method,
                                       "checkpoint": _which_checkpoint(path)})
    loaded.tower = clf.vision  # the trained tower (PEFT-wrapped for a LoRA run)
    loaded.keep.append(clf)
    return loaded


def _which_checkpoint(path: Path) -> str:
    """Which weights `load_trained(which="best")` took, in words (an unfinished run's too)."""
    if (path / "final.json").is_file():
        return "best"
    best = path / "checkpoints" / "best.safetensors"
    if best.is_file():
        from safetensors import safe_open

        from .. import _io

        with safe_open(str(best), framework="pt") as fh:  # verified by load_trained already
            step = json.loads((fh.metadata() or {}).get(_io.TENSOR_META_KEY, "{}")).get("step")
        return f"best so far, step {step} (unfinished run: no final.json)"
    steps = sorted(path.glob("checkpoints/step-*"))
    newest = int(steps[-1].name.split("-")[1]) if steps else "?"
    return f"newest checkpoint, step {newest} (unfinished run: no final.json)"


def _adapter(spec: str, path: Path) -> Loaded:
    """A PEFT adapter directory: its base model (adapter_config.json) with the adapter on it."""
    from peft import PeftModel

    cfg_path = path / "adapter_config.json"
    try:
        base = json.loads(cfg_path.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as e:
        raise InputError(f"{cfg_path}: not a readable JSON adapter config ({type(e).__name__}); "
                         "save the adapter again with save_pretrained") from None
    if not base:
        raise InputError(f"{cfg_path}: no base_model_name_or_path; set it to the base model's directory, "
                         "preset or hub id")
    rel = path / base
    base_spec = str(rel) if not Path(base).expanduser().exists() and rel.exists() else base
    try:
        inner = _load(base_spec)
    except (InputError, FileNotFoundError) as e:
        raise InputError(f"{cfg_path}: its base model {base!r} (base_model_name_or_path) cannot be loaded "
                         f"({str(e).split(';')[0]}); put the base model there or set base_model_name_or_path "
                         "to where it is") from None
    wrapped = _adapter_root(inner, path)
    peft_model = PeftModel.from_pretrained(wrapped, str(path))  # LoRA layers go into `wrapped` in place
    _check_adapter_fits(peft_model, path)
    inner.keep.append(peft_model)
    inner.spec, inner.kind = spec, "peft-adapter"
    inner.info = {"base_model": base, **{k: v for k, v in inner.info.items() if k != "base_model"}}
    return inner


def _check_adapter_fits(peft_model, path: Path) -> None:
    """The adapter's file holds exactly the weights its adapter_config.json gives the model.

    PEFT only warns when they differ: a module targeted in the config but absent from the
    file keeps its fresh LoRA weights (B = 0: no change), silently measured as adapted.
    """
    from peft import get_peft_model_state_dict

    want, have = set(get_peft_model_state_dict(peft_model)), set(_adapter_file_keys(path))
    problems = [f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                for what, keys in (("missing weights", sorted(want - have)),
                                   ("unexpected weights", sorted(have - want))) if keys]
    if problems:
        raise InputError(f"{path}: the adapter's weights do not fit its adapter_config.json: {'; '.join(problems)}; "
                         "save the adapter again with save_pretrained, or restore the adapter_config.json it was "
                         "saved with")


def _adapter_keys(path: Path) -> list[str]:
    """Module paths the adapter's weights name (PEFT's `base_model.model.<path>.lora_A.weight`)."""
    out = []
    for k in _adapter_file_keys(path):
        k = k.removeprefix("base_model.model.")
        for marker in (".lora_", ".modules_to_save", ".weight", ".bias"):
            if marker in k:
                k = k.split(marker)[0]
                break
        out.append(k)
    return sorted(set(out))


def _adapter_file_keys(path: Path) -> list[str]:
    """The tensor names in the adapter's weights file."""
    st, binf = path / "adapter_model.safetensors", path / "adapter_model.bin"
    if st.is_file():
        from safetensors import safe_open

        check_safetensors(st, "save the adapter again with save_pretrained (or copy it again)")
        with safe_open(str(st), "pt") as fh:
            keys = list(fh.keys())
    elif binf.is_file():
        import torch

        try:
            keys = list(torch.load(binf, map_location="cpu", weights_only=True))
        except Exception as e:  # weights_only refused a pickled object (nothing of it ran), or garbage
            why = PICKLE_REFUSED if pickled_code(e) else f"not readable ({type(e).__name__})"
            raise InputError(f"{binf}: {why}; save the adapter again with save_pretrained") from None
    else:
        raise InputError(f"{path}: adapter_config.json but no adapter_model.safetensors or adapter_model.bin; "
                         "save the adapter again with save_pretrained")
    return keys


def _adapter_root(inner: Loaded, path: Path) -> nn.Module:
    """The module the adapter was trained on: the base's full model, or its vision tower."""
    wanted = _adapter_keys(path)
    for candidate in [*inner.keep[:1], inner.tower]:
        names = {n for n, _ in candidate.named_modules()}
        if wanted and all(w in names for w in wanted):
            return candidate
    raise InputError(f"{path}: the adapter's weights ({wanted[0] if wanted else 'none'}, ...) do not fit the "
                     f"base model {inner.spec!r} (neither its full model nor its vision tower has those modules); "
                     "set base_model_name_or_path in adapter_config.json to the model it was trained on")
