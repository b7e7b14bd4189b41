"""The trackers a measurement is logged to: a dict registry of name → sink class.

Each sink takes one call per step, `log(step, scalars, images)`, with the names exactly as
given (no `train/` prefix is added) and pictures as (H, W, 3) uint8 arrays. Libraries are
imported when a sink opens; `check_report_to` tells, before any training, in one line, which
name is unknown or which extra to install.

Where each writes by default (`log_dir` is the run's directory):
    tensorboard  event files in `log_dir` (torch.utils.tensorboard)
    wandb        an offline run under `log_dir/wandb` (`WANDB_MODE=online` to upload)
    mlflow       `MLFLOW_TRACKING_URI`, else a file store in `log_dir/mlruns`; a run the
                 caller already started (`mlflow.active_run()`) is logged into
    trackio      trackio's local store (`TRACKIO_DIR`, default `~/.cache/huggingface/trackio`)
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

# report_to name → (module that must be importable, pip extra of attncollapse that installs it)
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
          "mlflow": ("mlflow", "mlflow"), "trackio": ("trackio", "trackio")}


def check_report_to(report_to: str | Sequence[str] | None, *, who: str = "report_to") -> list[str]:
    """The tracker names as a list, each known and installed.

    Raises:
        ValueError: one line naming the unknown tracker and the valid ones, or the extra to install.
    """
    names = [] if report_to in (None, "none") else [report_to] if isinstance(report_to, str) else list(report_to)
    for name in names:
        if name not in SINKS:
            raise ValueError(f"{who}: unknown tracker {name!r}; choose from {', '.join(SINKS)}")
        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            install = "tensorboard" if extra == "tensorboard" else f"'attncollapse[{extra}]'"
            raise ValueError(f"{who}: {name!r} needs the {module} package, which is not installed; pip install {install}")
    if len(set(names)) != len(names):
        raise ValueError(f"{who}: {names} names a tracker twice; name each once")
    return names


class TensorBoardSink:
    """Scalars and images in TensorBoard event files in `log_dir`."""

    def __init__(self, log_dir: Path, *, run_name: str, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops the events a crashed attempt wrote past its checkpoint
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def log(self, step: int, scalars: dict[str, float], images: dict[str, np.ndarray]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        for name, picture in images.items():
            self.writer.add_image(name, picture, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A Weights & Biases run of its own, offline unless `WANDB_MODE` says otherwise."""

    def __init__(self, log_dir: Path, *, run_name: str, purge_step: int | None = None):
        import wandb

        log_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(dir=str(log_dir), name=run_name, project=os.environ.get("WANDB_PROJECT", "attncollapse"),
                              mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new",
                              settings=wandb.Settings(console="off", x_disable_stats=True, silent=True))
        self._image = wandb.Image

    def log(self, step: int, scalars: dict[str, float], images: dict[str, np.ndarray]) -> None:
        self.run.log({**scalars, **{k: self._image(v) for k, v in images.items()}}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowSink:
    """An MLflow run: the caller's active run, else one of its own in `MLFLOW_TRACKING_URI` or `log_dir/mlruns`."""

    def __init__(self, log_dir: Path, *, run_name: str, purge_step: int | None = None):
        import mlflow
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        active = mlflow.active_run()
        if active is not None:  # e.g. transformers' MLflowCallback: one run holds everything
            self.client, self.run_id, self.own = MlflowClient(mlflow.get_tracking_uri()), active.info.run_id, False
            return
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (log_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked for; a local store needs no server
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "attncollapse")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
        self.run_id, self.own = self.client.create_run(exp_id, run_name=run_name).info.run_id, True

    def log(self, step: int, scalars: dict[str, float], images: dict[str, np.ndarray]) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(k, float(v), now, step) for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
        for name, picture in images.items():
            self.client.log_image(self.run_id, picture, key=name, step=step)

    def close(self) -> None:
        if self.own:
            self.client.set_terminated(self.run_id)


class TrackioSink:
    """A trackio run in its local store (`TRACKIO_DIR`); the caller's current run when one is open."""

    def __init__(self, log_dir: Path, *, run_name: str, purge_step: int | None = None):
        import trackio
        from trackio import context_vars

        self._image = trackio.Image
        self.run = context_vars.current_run.get()
        self.own = self.run is None
        if self.own:
            self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", "attncollapse"), name=run_name,
                                    embed=False, auto_log_cpu=False, auto_log_gpu=False)

    def log(self, step: int, scalars: dict[str, float], images: dict[str, np.ndarray]) -> None:
        self.run.log({**scalars, **{k: self._image(v) for k, v in images.items()}}, step=step)

    def close(self) -> None:
        if self.own:
            self.run.finish()


SINKS = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "mlflow": MlflowSink, "trackio": TrackioSink}


class Tracker:
    """Every sink of `report_to`, opened on `log_dir`; `log` goes to each.

    Args:
        report_to: tracker names (`SINKS`); [] or None = none.
        log_dir: the run's directory (TensorBoard writes its event files there).
        run_name: the run's name where a tracker shows one.
        purge_step: TensorBoard drops events at or past this step (a resumed run).
    """

    def __init__(self, report_to: str | Sequence[str] | None, log_dir: str | Path, *, run_name: str = "attncollapse",
                 purge_step: int | None = None):
        self.names = check_report_to(report_to)
        self.log_dir = Path(log_dir)
        self.sinks = [SINKS[n](self.log_dir, run_name=run_name, purge_step=purge_step) for n in self.names]

    def log(self, step: int, scalars: dict[str, float], images: dict[str, np.ndarray] | None = None) -> None:
        for sink in self.sinks:
            sink.log(step, scalars, images or {})

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []
