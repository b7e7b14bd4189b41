"""Shared fixtures: the tiny CLIP and tiny run configs (offline, seconds each)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test must never reach the hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def tiny_clip():
    from attncollapse.models import load_clip

    return load_clip("tiny")


def tiny_run_config(**overrides):
    """A RunConfig for the tiny model on synthetic data: ~1 s of CPU training."""
    from attncollapse.config import RunConfig

    base = {
        "id": "t", "model": "tiny", "dataset": "synthetic", "device": "cpu",
        "optim": {"lr": 1e-3, "epochs": 2, "batch_size": 32, "precision": "fp32"},
        "data": {"synthetic_train": 256, "synthetic_test": 128, "eval_subset_size": 40},
        "eval": {"points_per_epoch": 2},
        "zeroshot": {"enabled": False},
    }
    for key, value in overrides.items():
        node = base
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return RunConfig.model_validate(base)


def pytest_configure(config):
    # `make test` runs every test, slow ones included; `-m "not slow"` skips them locally.
    config.addinivalue_line("markers", "slow: over ~30 s on two CPU cores (still run by `make test`)")
    # Tiny models on a small shared CPU: one intra-op thread avoids oversubscription
    # (measured: a tiny forward went from 5 ms to 0.4 s with two busy threads).
    import torch

    torch.set_num_threads(1)
