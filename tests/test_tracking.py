"""CollapseMonitor's checks, fp32 and zero-shot retention; what each tracker (attncollapse.track)
wrote, read back with its own reader; the study loop's per-layer curves and map pictures."""

from __future__ import annotations

import importlib.util
import struct
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from attncollapse import load_model
from attncollapse.integrations import CollapseMonitor, TrackingSet, find_tower, fixed_set_table
from attncollapse.measure import embedding_drift, representations
from attncollapse.track import map_grid

PIXELS = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(21))


def _perturb(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in find_tower(model).parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("pixels, arg, message", [
    ((PIXELS * 50 + 128).clamp(0, 255).to(torch.uint8), {}, "pixel_values is uint8 (raw pixels); pass float images"),
    ((PIXELS * 50 + 128).clamp(0, 255), {}, "looks like unnormalised 0-255 pixels"),
    (torch.rand(4, 3, 32, 32), {}, "looks like unnormalised 0-1 pixels"),
    (torch.randn(4, 32, 32), {}, "must be a (N, 3, S, S) tensor"),
    (PIXELS, {"report_to": ["neptune"]}, "report_to: unknown tracker 'neptune'; choose from tensorboard, wandb"),
    (PIXELS, {"every_n_steps": 0}, "every_n_steps must be an integer >= 1"),
    (PIXELS, {"tracking_set": TrackingSet(PIXELS, torch.zeros(6, dtype=torch.long))}, "exactly one of text_embeddings"),
])
def test_each_input_mistake_is_one_line_naming_the_argument(pixels, arg, message):
    with pytest.raises(ValueError) as err:
        CollapseMonitor(pixels, **arg)
    text = str(err.value)
    assert message in text and "\n" not in text and text.startswith("CollapseMonitor: ")


def test_images_of_the_wrong_size_are_refused_at_start_not_at_the_first_measurement():
    monitor = CollapseMonitor(torch.randn(2, 3, 48, 48), report_to=[])
    with pytest.raises(ValueError, match=r"^CollapseMonitor: pixel_values are 48×48 pixels but the vision tower "
                                         r"takes 32×32 \(its config's image_size\); resize the images to 32×32$"):
        monitor.start(load_model("tiny"))
    with pytest.raises(ValueError, match="call start"):
        monitor.measure(load_model("tiny"), 1)


def test_bf16_autocast_around_the_call_changes_nothing_and_zero_shot_retention_is_direct():
    model = load_model("tiny")
    dim = model.visual_projection.out_features
    text = nn.functional.normalize(torch.randn(3, dim, generator=torch.Generator().manual_seed(2)), dim=-1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    plain = CollapseMonitor(PIXELS, report_to=[], tracking_set=TrackingSet(PIXELS, labels, text_embeddings=text),
                            batch_size=4)  # two forwards (4 + 2 images), each giving rows and representations
    under_bf16 = CollapseMonitor(PIXELS, report_to=[], tracking_set=TrackingSet(PIXELS, labels, text_embeddings=text),
                                 batch_size=4)
    start = plain.start(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert under_bf16.start(model) == start
    assert start["collapse/zeroshot/retention"] == 1.0 and start["collapse/drift/cka_mean"] == pytest.approx(1.0)
    _, e_start = representations(model.vision_model, PIXELS, projection=model.visual_projection)
    _perturb(model)
    now = plain.measure(model, 5)
    table = fixed_set_table(model.vision_model, PIXELS)  # the probe's own forward, all images at once
    assert [now[f"collapse/gini/layer_{i + 1}"] for i in range(3)] == pytest.approx(table["gini"], abs=1e-6)
    _, e_now = representations(model.vision_model, PIXELS, projection=model.visual_projection)
    assert now["collapse/drift/embedding"] == pytest.approx(embedding_drift(e_start, e_now), abs=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert under_bf16.measure(model, 5) == now  # identical numbers, every one of them
    # zero-shot by hand: projected pooled output, cosine against the class rows
    with torch.no_grad():
        model.eval()
        feats = model.visual_projection(model.vision_model(pixel_values=PIXELS).pooler_output)
    acc = float(((nn.functional.normalize(feats, dim=-1) @ text.T).argmax(-1) == labels).float().mean())
    assert now["collapse/zeroshot/acc"] == pytest.approx(acc)
    assert now["collapse/zeroshot/retention"] == pytest.approx(acc / start["collapse/zeroshot/acc"])
    assert plain.measure(model, 5) is now and len(plain.history) == 2  # one measurement per step
    # Δ% is logged only where the initial value is not near zero (analysis.instability)
    assert "collapse/head_diversity/delta/layer_1" in now and "collapse/head_diversity/delta_pct/layer_1" not in now
    assert now["collapse/entropy/delta_pct/mean"] == pytest.approx(
        100 * now["collapse/entropy/delta/mean"] / start["collapse/entropy/mean"])


def test_class_names_are_embedded_by_the_models_own_text_tower():
    from attncollapse.models import load_tokenizer
    from attncollapse.transfer import text_embeddings

    model = load_model("tiny")
    names = ["cat", "dog", "car"]
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    ts = TrackingSet(PIXELS, labels, class_names=names, tokenizer=load_tokenizer("tiny"))
    by_names = CollapseMonitor(PIXELS, report_to=[], tracking_set=ts).start(model)
    rows = text_embeddings(model, load_tokenizer("tiny"), names, "single", device="cpu")
    by_rows = CollapseMonitor(PIXELS, report_to=[], tracking_set=TrackingSet(PIXELS, labels, text_embeddings=rows))
    assert by_names["collapse/zeroshot/acc"] == by_rows.start(model)["collapse/zeroshot/acc"]


def test_map_picture_keeps_one_colour_scale_and_the_image_underneath():
    p = 16
    pictures = np.full((1, 32, 32, 3), 0.5)
    uniform, peaked = np.full((1, 1, p), 1.0 / p), np.full((1, 1, p), 1e-6)
    peaked[0, 0, 5] = 1.0
    flat, sharp = map_grid(pictures, uniform), map_grid(pictures, peaked)
    assert flat.shape == sharp.shape and flat.dtype == np.uint8
    changed = np.argwhere(np.abs(flat.astype(int) - sharp.astype(int)).sum(-1) > 0)
    # only one patch (1/16 of one panel) differs: a uniform map is transparent, the peak opaque-ish
    (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
    assert 0 < (y1 - y0 + 1) * (x1 - x0 + 1) < flat.shape[0] * flat.shape[1] / 20


def _run_monitor(report_to: str, log_dir) -> tuple[dict, dict]:
    model = load_model("tiny")
    monitor = CollapseMonitor(PIXELS, report_to=[report_to], log_dir=log_dir, map_images=2, run_name="t")
    start = monitor.start(model)
    _perturb(model)
    later = monitor.measure(model, 2)
    monitor.close()
    return start, later


def _wandb_history(path) -> tuple[list[dict], bool]:
    """History rows of a W&B offline run file (LevelDB-log records of wandb_internal_pb2.Record),
    and whether its exit record is there (wandb-core may still be writing after `finish()` returns)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, buf, rows, done = path.read_bytes(), 7, b"", [], False
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
            done = done or record.WhichOneof("record_type") == "exit"
    return rows, done


def _skip_without(module: str):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install 'attncollapse[{module}]')")


def test_wandb_offline_run_holds_the_names_steps_and_map_pictures(tmp_path, monkeypatch):
    _skip_without("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    start, later = _run_monitor("wandb", tmp_path)
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    for _ in range(300):
        rows, done = _wandb_history(run_file)
        if done:
            break
        time.sleep(0.1)
    assert [int(r["_step"]) for r in rows] == [0, 2]
    for row, logs in zip(rows, (start, later)):
        assert float(row["collapse/gini/layer_2"]) == pytest.approx(logs["collapse/gini/layer_2"])
        assert float(row["collapse/drift/weights"]) == pytest.approx(logs["collapse/drift/weights"])
        assert row["collapse/maps/_type"] == '"image-file"'
    assert len(list(run_file.parent.glob("files/media/images/collapse/maps_*.png"))) == 2


def test_mlflow_file_store_holds_the_names_steps_and_map_pictures(tmp_path, monkeypatch):
    _skip_without("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    start, later = _run_monitor("mlflow", tmp_path)
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("attncollapse").experiment_id])
    assert run.info.run_name == "t" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "collapse/entropy/delta/layer_3")
    assert [m.step for m in history] == [0, 2]
    assert [m.value for m in history] == pytest.approx([0.0, later["collapse/entropy/delta/layer_3"]])
    assert client.get_metric_history(run.info.run_id, "collapse/drift/cka_mean")[-1].value == pytest.approx(
        later["collapse/drift/cka_mean"])
    images = [f.path for f in client.list_artifacts(run.info.run_id, "images") if f.path.endswith(".png")]
    assert len(images) == 2 and all("collapse~maps" in p for p in images)


def test_trackio_local_store_holds_the_names_steps_and_map_pictures(tmp_path, monkeypatch):
    _skip_without("trackio")
    if "trackio" in sys.modules:  # its store directory is read once, at import
        pytest.skip("trackio was imported earlier in this process; its store cannot move to tmp_path")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    start, later = _run_monitor("trackio", tmp_path)
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs("attncollapse", "t")
    assert [row["step"] for row in logs] == [0, 2]
    assert logs[1]["collapse/erf/layer_1"] == pytest.approx(later["collapse/erf/layer_1"])
    assert logs[1]["collapse/drift/embedding"] == pytest.approx(later["collapse/drift/embedding"])
    pictures = [row["collapse/maps"]["file_path"] for row in logs]
    assert all((tmp_path / "trackio" / "media" / p).is_file() for p in pictures)


def test_study_loop_logs_every_layer_and_map_pictures_to_its_trackers(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from attncollapse import train
    from conftest import tiny_run_config

    cfg = tiny_run_config(**{"optim.epochs": 1, "data.synthetic_train": 64, "data.eval_subset_size": 8,
                             "eval.structure": False})
    assert cfg.eval.report_to == ["tensorboard"]
    train.run(cfg, tmp_path / "r")
    acc = EventAccumulator(str(tmp_path / "r" / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    points = __import__("json").loads((tmp_path / "r" / "history.json").read_text())["points"]
    steps = [p["step"] for p in points]
    for i in range(3):
        events = acc.Scalars(f"collapse/entropy/layer_{i + 1}")
        assert [e.step for e in events] == steps
        assert [e.value for e in events] == pytest.approx([p["layers"]["entropy"][i] for p in points])
    assert [e.step for e in acc.Images("collapse/maps")] == steps
    assert "collapse/weight_drift/layer_3" in acc.Tags()["scalars"]
