"""The background checkpoint writer: state copied at the step, files identical to a
synchronous write, errors surfaced, in-flight writes never visible as checkpoints."""

import threading

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from attncollapse import _io
from attncollapse.train.checkpoints import CheckpointWriter, load_newest

from conftest import tiny_run_config


def _model_and_opt(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return model, opt, scaler


def _train_step(model, opt):
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _save(writer, model, opt, scaler, step):
    writer.save_checkpoint(model, opt, scaler, {"step": step}, {"note": f"step {step}"})


def _ckpt(root, step):
    d = root / _io.checkpoint_name(step)
    assert _io.verify_checkpoint(d) is None
    return load_file(d / "model.safetensors"), torch.load(d / "state.pt", weights_only=True)


def test_each_checkpoint_holds_the_state_of_its_own_step(tmp_path):
    cfg = tiny_run_config(keep_checkpoints=5)
    model, opt, scaler = _model_and_opt()
    writer = CheckpointWriter(tmp_path, cfg)
    expected = {}
    for step in (1, 2, 3):
        _train_step(model, opt)
        expected[step] = ({n: p.detach().clone() for n, p in model.named_parameters()},
                          opt.state_dict()["state"][0]["exp_avg"].clone())
        _save(writer, model, opt, scaler, step)
        with torch.no_grad():  # the live tensors change right after save returns
            for p in model.parameters():
                p.add_(1.0)
    writer.wait()
    writer.close()
    for step, (params, exp_avg) in expected.items():
        tensors, blob = _ckpt(tmp_path, step)
        assert tensors.keys() == params.keys()
        for n in params:
            assert torch.equal(tensors[n], params[n]), (step, n)
        assert torch.equal(blob["optimizer"]["state"][0]["exp_avg"], exp_avg)
        assert blob["train_state"] == {"step": step} and blob["note"] == f"step {step}"


def test_background_and_synchronous_writes_give_the_same_files(tmp_path):
    cfg = tiny_run_config()
    for mode in ("sync", "async"):
        model, opt, scaler = _model_and_opt(seed=3)
        _train_step(model, opt)
        writer = CheckpointWriter(tmp_path / mode, cfg, synchronous=mode == "sync")
        _save(writer, model, opt, scaler, 7)
        writer.save_best(model, 7)
        writer.wait()
        writer.close()
    ta, ba = _ckpt(tmp_path / "sync", 7)
    tb, bb = _ckpt(tmp_path / "async", 7)
    assert (tmp_path / "sync" / "step-000000007" / "model.safetensors").read_bytes() == \
        (tmp_path / "async" / "step-000000007" / "model.safetensors").read_bytes()
    assert (tmp_path / "sync" / "best.safetensors").read_bytes() == \
        (tmp_path / "async" / "best.safetensors").read_bytes()
    sa, sb = ba["optimizer"]["state"], bb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[k][name], sb[k][name])
    assert torch.equal(ba["rng_cpu"], bb["rng_cpu"]) and ba["fingerprint"] == bb["fingerprint"]


def test_a_write_error_is_raised_in_the_training_thread(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the checkpoint directory should go")
    model, opt, scaler = _model_and_opt()
    writer = CheckpointWriter(blocker / "checkpoints", tiny_run_config())
    _save(writer, model, opt, scaler, 1)  # returns: the failure happens in the thread
    with pytest.raises(RuntimeError, match="writing a checkpoint .* failed"):
        writer.wait()
    with pytest.raises(RuntimeError, match="failed"):  # and again at the next save
        _save(writer, model, opt, scaler, 2)
    writer.close()


def test_a_write_in_flight_is_not_a_checkpoint_yet(tmp_path, monkeypatch):
    cfg = tiny_run_config(keep_checkpoints=5)
    model, opt, scaler = _model_and_opt()
    writer = CheckpointWriter(tmp_path, cfg)
    _save(writer, model, opt, scaler, 1)
    writer.wait()
    gate, started = threading.Event(), threading.Event()
    real = torch.save

    def slow_save(obj, path, *a, **k):
        started.set()
        gate.wait(10)
        return real(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", slow_save)
    _train_step(model, opt)
    _save(writer, model, opt, scaler, 2)
    assert started.wait(10)
    # Mid-write (as if the process died now): step 1 is still the newest checkpoint.
    path, _, blob = load_newest(tmp_path, cfg)
    assert path.name == _io.checkpoint_name(1) and blob["train_state"]["step"] == 1
    gate.set()
    writer.wait()
    writer.close()
    assert load_newest(tmp_path, cfg)[0].name == _io.checkpoint_name(2)
