"""Before any task: is every hub model and dataset the tasks need reachable or cached?

Without this, a study on a machine without network spends ~10 minutes failing its tasks
one by one, each retrying the hub five times. Here each distinct hub model and dataset is
looked up in the local Hugging Face caches (no network), and only when one is missing is
the hub probed, once, with a short TCP connect. Missing and unreachable: one error naming
what is missing and the offline routes. All cached but the hub unreachable: offline mode
is switched on for this process and its workers, so loads use the cache at once instead
of retrying first.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..config import RunConfig, hub_dataset_id, hub_model_id

_TRUE = {"1", "ON", "YES", "TRUE"}

OFFLINE_ROUTES = """\
Work offline in one of these ways:
  - fill the Hugging Face cache where there is network (run the study there once, or
    `hf download <model id>`), copy ~/.cache/huggingface here and set HF_HUB_OFFLINE=1;
  - give a local model directory as `model:` (config.json + model.safetensors; save one with
    CLIPModel.from_pretrained(id).save_pretrained(dir), or `attncollapse convert` an
    OpenAI/OpenCLIP checkpoint);
  - give each dataset as `hf:<dir>`, a directory saved with
    datasets.load_dataset(id).save_to_disk(dir) (zero-shot sets too)."""


class HubUnavailable(RuntimeError):
    """Hub models or datasets the tasks need are neither cached nor reachable."""


def hub_needs(configs: list[tuple[str, RunConfig]], baselines: list[tuple[str, RunConfig]] = ()
              ) -> dict[tuple[str, str], list[str]]:
    """(kind, hub id) → the task ids needing it, for kind "model" or "dataset".

    Args:
        configs: (task id, RunConfig) of runs: their model, dataset and zero-shot sets.
        baselines: (task id, RunConfig) of E1 baselines: their model, dataset and zero-shot sets.
    """
    need: dict[tuple[str, str], list[str]] = {}

    def add(kind: str, repo: str | None, tid: str) -> None:
        if repo is not None:
            need.setdefault((kind, repo), []).append(tid)

    for tid, cfg in [*configs, *baselines]:
        add("model", hub_model_id(cfg.model), tid)
        sources = [cfg.dataset]  # a baseline's config trains on its dataset (MatrixConfig.baseline_config)
        if cfg.forgetting is not None:  # a forgetting run reads its own transfer sets, not zeroshot:
            sources += [s for s in (cfg.forgetting.transfer, cfg.forgetting.second_transfer) if s]
        elif cfg.zeroshot.enabled:
            sources += cfg.zeroshot.datasets
        for src in sources:
            add("dataset", hub_dataset_id(src), tid)
    return need


def hub_cache_dir() -> Path:
    """huggingface_hub's cache, from the environment as it is now (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    return home / "hub"


def datasets_cache_dir() -> Path:
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "datasets"


def is_cached(kind: str, repo: str) -> bool:
    """Whether the local caches hold `repo` (no network): a model's config.json and
    weights in the hub cache; a dataset's snapshot there or its prepared copy in `datasets`'."""
    from huggingface_hub import try_to_load_from_cache

    cache = str(hub_cache_dir())
    if kind == "model":
        def has(name: str) -> bool:
            return isinstance(try_to_load_from_cache(repo, name, cache_dir=cache), str)
        return has("config.json") and any(has(w) for w in ("model.safetensors", "pytorch_model.bin",
                                                            "model.safetensors.index.json"))
    snaps = hub_cache_dir() / f"datasets--{repo.replace('/', '--')}" / "snapshots"
    if snaps.is_dir() and any(snaps.iterdir()):
        return True
    return (datasets_cache_dir() / repo.replace("/", "___")).is_dir()


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub endpoint (no HTTP, no retries): seconds, not minutes."""
    url = urlparse(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_env() -> bool:
    return any(os.environ.get(k, "").upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def go_offline() -> None:
    """Offline mode for this process (libraries already imported included) and its workers."""
    import sys

    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        cfg = sys.modules["datasets"].config
        cfg.HF_HUB_OFFLINE = cfg.HF_DATASETS_OFFLINE = True


def check_hub(need: dict[tuple[str, str], list[str]], log=print, *, timeout: float = 3.0) -> None:
    """Fail fast when something the tasks need is neither cached nor reachable.

    Raises:
        HubUnavailable: one message naming each missing model/dataset (with the tasks that
            need it) and the offline routes.
    """
    if not need:
        return
    missing = {key: tids for key, tids in need.items() if not is_cached(*key)}
    offline = offline_env()
    if not missing:
        if not offline and not hub_reachable(timeout):
            go_offline()
            log(f"{hub_endpoint()} unreachable; every hub model and dataset is cached: working offline")
        return
    if not offline and hub_reachable(timeout):
        return  # downloaded on first use
    why = "HF_HUB_OFFLINE is set" if offline else f"{hub_endpoint()} is unreachable"
    lines = [f"{why}, and these are not in the Hugging Face cache ({hub_cache_dir()}):"]
    for (kind, repo), tids in missing.items():
        more = f" … ({len(tids)} tasks)" if len(tids) > 3 else ""
        lines.append(f"  {kind} {repo}  (needed by {', '.join(tids[:3])}{more})")
    raise HubUnavailable("\n".join(lines) + "\n" + OFFLINE_ROUTES)
