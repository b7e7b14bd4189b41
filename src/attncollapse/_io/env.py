"""Environment records: what `env.json` holds beside every result."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def git_commit(start: str | os.PathLike | None = None) -> str | None:
    """The git commit of the checkout holding `start` (default: this package), or None."""
    where = Path(start) if start else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=where, capture_output=True, text=True, timeout=5,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def environment() -> dict[str, Any]:
    """Versions, device and git commit: what `env.json` records beside every result."""
    import importlib.metadata as md

    import torch

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    gpu = None
    if torch.cuda.is_available():
        gpu = {
            "name": torch.cuda.get_device_name(0),
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
        }
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "peft": version("peft"),
        "datasets": version("datasets"),
        "numpy": version("numpy"),
        "attncollapse": version("attncollapse"),
        "git_commit": git_commit(),
        "gpu": gpu,
        "cpu_count": os.cpu_count(),
    }
