"""The data stage: sources, the uint8 image cache, split protocols, the eval subset, the feed.

Imports nothing else of attncollapse but `_io`.
"""

from .base import (CLIP_MEAN, CLIP_STD, FLOWERS102_NAMES, DataError, ImageSet, RawSplit, Source, Splits, cache_root,
                   humanize, readable_names)
from .cache import PREPROCESS_VERSION, preprocess
from .carve import balanced_indices, carve_indices, take_per_class
from .feed import Feeder
from .sources import HF_SHORTCUTS, SOURCES, known_sources, resolve
from .splits import eval_subset_indices, load_named_split, load_splits, load_test_split
from .synthetic import synthetic

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "DataError", "FLOWERS102_NAMES", "Feeder", "HF_SHORTCUTS", "ImageSet", "PREPROCESS_VERSION",
    "RawSplit", "SOURCES", "Source", "Splits", "cache_root", "eval_subset_indices", "humanize",
    "known_sources", "readable_names", "load_splits", "load_test_split", "load_named_split", "balanced_indices",
    "carve_indices", "take_per_class", "preprocess", "resolve", "synthetic",
]
