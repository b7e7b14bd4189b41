"""Tracker logging: the same scalars and attention-map images into TensorBoard, W&B, MLflow or trackio.

A low-level stage both the study's loop (`train/loop.py`) and the integrations
(`integrations/monitor.py`) write through. `SINKS` maps a `report_to` name to its sink
class; each imports its library only when opened and, where it is missing, says in one line
which extra to install. `map_grid` draws [CLS]→patch maps over their images on one fixed
colour scale. Imports nothing of ours but `analysis.instability` (the Δ% rule, on first use).
"""

from .maps import MAP_SCALE, map_grid
from .names import delta_logs, metric_logs
from .sinks import EXTRAS, SINKS, MlflowSink, TensorBoardSink, Tracker, TrackioSink, WandbSink, check_report_to

__all__ = ["EXTRAS", "MAP_SCALE", "MlflowSink", "SINKS", "TensorBoardSink", "Tracker", "TrackioSink", "WandbSink",
           "check_report_to", "delta_logs", "map_grid", "metric_logs"]
