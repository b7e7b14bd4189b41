"""The lab: measure, compare and map the attention of any model on any images.

`attncollapse measure`, `compare` and `maps` live here, between the command line and the
stages: a MODEL argument (preset, model / adapter / run directory, checkpoint file, hub id)
becomes a probed vision tower (`load`), an IMAGES argument (folder, class folders, list
file, dataset source) becomes uint8 batches (`images`), and one streamed forward per batch
(`per_image`) feeds the tables (`measuring`; paired tests `paired`, per-image files
`breakdown`), the maps (`maps`) and their figures (`plots`). `explore` builds the explorer
pages (`page`: one self-contained HTML file) of a run, of `compare` and of `maps`.

Imports `train`, `measure`, `models`, `data`, `config` and `analysis` (figure style) of attncollapse.
"""

from .images import Images, InputError, load_images
from .load import VISION_ONLY, Loaded, load_any
from .maps import attention_maps, default_layers
from .measuring import compare_models, format_compare, format_measure, measure_model
from .per_image import head_mean_maps, js_divergence, per_image_metrics

__all__ = [
    "Images", "InputError", "Loaded", "VISION_ONLY", "attention_maps", "compare_models", "default_layers",
    "format_compare", "format_measure", "head_mean_maps", "js_divergence", "load_any", "load_images",
    "measure_model", "per_image_metrics",
]
