"""The image normalisation a model was trained with: (x / 255 - mean) / std per channel.

The data stage's `Feeder` normalises with whatever (mean, std) its caller passes (CLIP's
by default: the data stage knows no model). The callers that know the model take them
from here: the family's constants (`Family.mean`/`std`, the public checkpoints' image
processor values), or a local checkpoint directory's own `preprocessor_config.json` when
it has one (what `attncollapse convert` writes for an OpenCLIP checkpoint, whose
`preprocess_cfg` may differ from OpenAI's).
"""

from __future__ import annotations

import json
from pathlib import Path

from .clip import model_config
from .families import family_of

PREPROCESSOR_FILE = "preprocessor_config.json"


def normalization(model_or_spec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std), 3 floats each, of a model spec or a loaded model (or its config).

    Args:
        model_or_spec: a spec as `load_model` takes it (preset, local directory, hub id),
            or what `load_model` returned, or its `config`.

    Returns:
        ((mean_r, mean_g, mean_b), (std_r, std_g, std_b)): a local directory's
        `preprocessor_config.json` values when it has them, else the family's.
    """
    if isinstance(model_or_spec, (str, Path)):
        config, where = model_config(str(model_or_spec)), str(model_or_spec)
    else:
        config = getattr(model_or_spec, "config", model_or_spec)
        where = getattr(config, "_name_or_path", "")  # the directory (or hub id) it was loaded from
    own = _local_constants(Path(where).expanduser() / PREPROCESSOR_FILE) if where else None
    if own is not None:
        return own
    fam = family_of(config)
    return tuple(fam.mean), tuple(fam.std)


def _local_constants(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """`image_mean`/`image_std` of a preprocessor_config.json; None without the file or keys."""
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e}); fix or delete it to use the family's constants") from None
    if not isinstance(cfg, dict) or "image_mean" not in cfg or "image_std" not in cfg:
        return None
    # transformers also accepts one number for all channels
    mean, std = ([v] * 3 if isinstance(v, (int, float)) else v for v in (cfg["image_mean"], cfg["image_std"]))
    ok = all(isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v) for v in (mean, std))
    if not ok or min(std) <= 0:
        raise ValueError(f"{path}: image_mean and image_std must be lists of 3 numbers (std > 0), "
                         f"got {mean!r} and {std!r}")
    return tuple(float(x) for x in mean), tuple(float(x) for x in std)
