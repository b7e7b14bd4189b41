"""attncollapse.integrations: the Trainer and Lightning callbacks, `watch`, the loss objects,
and the runnable examples of docs/INTEGRATIONS.md."""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import (CLIPVisionConfig, CLIPVisionModel, Trainer, TrainerCallback, TrainingArguments,
                          ViTConfig, ViTForImageClassification)

from attncollapse import cls_rows, load_model, summarize
from attncollapse.integrations import (AttentionPriorLoss, CollapseCallback, EntropyFloorLoss, find_tower,
                                       fixed_set_table, watch)

DOC = Path(__file__).resolve().parent.parent / "docs" / "INTEGRATIONS.md"
TINY = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=64)


def _doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(3))
def test_docs_integrations_examples_run(index):
    # Each example asserts its logged numbers equal a direct summarize(cls_rows(...)).
    blocks = _doc_blocks()
    assert len(blocks) == 3
    exec(compile(blocks[index], f"INTEGRATIONS.md[{index}]", "exec"), {"__name__": "__doc_example__"})


def _vit_classifier():
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(**TINY, num_labels=3, initializer_range=0.2))


class _Reporter(TrainerCallback):
    """Stands for TensorBoard/W&B: a reporting callback placed before ours, keeping what on_log shows it."""

    def __init__(self):
        self.seen: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.seen.append(dict(logs))


def _trainer(model, tmp_path, *, epochs=1, callbacks=None, eval_strategy="epoch"):
    images = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    data = [{"pixel_values": x, "labels": i % 3} for i, x in enumerate(images)]
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=8,
                             learning_rate=1e-3, eval_strategy=eval_strategy, save_strategy="no", report_to="none",
                             use_cpu=True, disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:8], callbacks=callbacks)


def _direct(tower, pixels) -> dict[str, list[float]]:
    was = tower.training
    tower.eval()
    with torch.no_grad():
        out = summarize(cls_rows(tower, pixels))
    tower.train(was)
    return out


def test_trainer_callback_logs_through_trainer_log_so_reporters_see_it(tmp_path):
    model = _vit_classifier()
    fixed = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(4))  # > 32: two metric groups
    reporter = _Reporter()
    trainer = _trainer(model, tmp_path, callbacks=[reporter])
    CollapseCallback(fixed, batch_size=16).attach(trainer)
    trainer.train()
    seen = [s for s in reporter.seen if "collapse/gini/mean" in s]
    assert len(seen) == 1 and seen[0]["epoch"] == pytest.approx(1.0)
    # independent: per-group summaries of cls_rows, averaged by hand (groups of 32 then 8)
    groups = [_direct(model.vit, fixed[:32]), _direct(model.vit, fixed[32:])]
    for metric in ("entropy", "erf", "gini", "head_diversity"):
        for i in range(3):
            want = (groups[0][metric][i] + groups[1][metric][i]) / 2
            assert seen[0][f"collapse/{metric}/layer_{i + 1}"] == pytest.approx(want, abs=1e-6)
        layer_mean = sum(seen[0][f"collapse/{metric}/layer_{i + 1}"] for i in range(3)) / 3
        assert seen[0][f"collapse/{metric}/mean"] == pytest.approx(layer_mean, abs=1e-9)
    assert any("collapse/entropy/layer_1" in h for h in trainer.state.log_history)


def test_trainer_callback_without_attach_still_returns_and_records_metrics(tmp_path):
    model = _vit_classifier()
    fixed = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    trainer = _trainer(model, tmp_path, callbacks=[CollapseCallback(fixed)], eval_strategy="no")
    with pytest.warns(UserWarning, match="attach"):
        metrics = trainer.evaluate()
    want = _direct(model.vit, fixed)
    assert metrics["collapse/entropy/layer_2"] == pytest.approx(want["entropy"][1], abs=1e-6)
    assert trainer.state.log_history[-1]["collapse/entropy/layer_2"] == metrics["collapse/entropy/layer_2"]


def test_trainer_callback_every_n_steps(tmp_path):
    model = _vit_classifier()
    fixed = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    reporter = _Reporter()
    trainer = _trainer(model, tmp_path, epochs=2, callbacks=[reporter], eval_strategy="no")  # 3 steps an epoch
    CollapseCallback(fixed, every_n_steps=2).attach(trainer)
    trainer.train()
    steps = [h["step"] for h in trainer.state.log_history if "collapse/erf/mean" in h]
    assert steps == [2, 4, 6]
    assert len([s for s in reporter.seen if "collapse/erf/mean" in s]) == 3


def test_find_tower_in_the_models_people_train():
    from peft import LoraConfig, get_peft_model

    clip = load_model("tiny")
    assert find_tower(clip) is clip.vision_model                      # CLIPModel: not its text tower
    vis = CLIPVisionModel(CLIPVisionConfig(**TINY))
    assert find_tower(vis) is vis                                     # a tower on its own
    vit = _vit_classifier()
    assert find_tower(vit) is vit.vit                                 # ViTForImageClassification

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_model = CLIPVisionModel(CLIPVisionConfig(**TINY))
            self.head = nn.Linear(32, 2)

    custom = Custom()
    assert find_tower(custom) is custom.vision_model
    peft_vit = get_peft_model(_vit_classifier(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    tower = find_tower(peft_vit)
    assert type(tower).__name__ == "ViTModel" and any("lora_A" in n for n, _ in tower.named_parameters())
    peft_clip = get_peft_model(load_model("tiny"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert type(find_tower(peft_clip)).__name__ == "CLIPVisionModel"
    with pytest.raises(ValueError, match="pass tower="):
        find_tower(nn.Sequential(nn.Linear(2, 2)))


def test_tower_argument_wins(tmp_path):
    # A model whose tower sits where nothing looks: `tower=` names it.
    class Hidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone_in_a_list = nn.ModuleList([nn.ModuleList([CLIPVisionModel(CLIPVisionConfig(**TINY))])])

    model = Hidden()
    tower = model.backbone_in_a_list[0][0]
    fixed = torch.randn(4, 3, 32, 32)
    with pytest.raises(ValueError):
        CollapseCallback(fixed).measure(model)
    got = CollapseCallback(fixed, tower=tower).measure(model)
    assert got["collapse/gini/layer_3"] == pytest.approx(_direct(tower, fixed)["gini"][2], abs=1e-6)


def test_watch_rows_are_the_probe_rows_and_train():
    model = load_model("tiny").train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with watch(model) as w:
        model.vision_model(pixel_values=x)
        rows = w.rows
    with torch.no_grad():
        want = cls_rows(model.vision_model, x)
    torch.testing.assert_close(rows.detach(), want, atol=1e-6, rtol=0)
    assert rows.requires_grad


def test_entropy_floor_loss_matches_a_loop_over_layers_batches_and_heads():
    model = load_model("tiny")
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    loss = EntropyFloorLoss.from_tower(model, x, ratio=1.3, lam=0.5)  # ratio > 1: the floor binds
    h0 = fixed_set_table(model.vision_model, x)["entropy"]
    rows = cls_rows(model.vision_model, x)
    total = 0.0
    for layer in range(rows.shape[0]):  # brute force: renormalise patch entries, entropy, relu, mean
        short = []
        for b in range(rows.shape[1]):
            for h in range(rows.shape[2]):
                p = rows[layer, b, h, 1:].double()
                p = p / (p.sum() + 1e-10)
                ent = -sum(float(v) * math.log(float(v)) for v in p.detach() if v > 0)
                short.append(max(0.0, 1.3 * h0[layer] - ent))
        total += sum(short) / len(short)
    assert float(loss(rows).detach()) == pytest.approx(0.5 * total, rel=1e-4)


def test_attention_prior_loss_is_zero_at_the_reference_and_matches_kl():
    model = load_model("tiny")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    rows = cls_rows(model.vision_model, x)
    prior = AttentionPriorLoss(lam=2.0)
    assert float(prior(rows, rows.detach()).detach()) == pytest.approx(0.0, abs=1e-6)
    ref = torch.softmax(torch.randn(rows.shape, generator=torch.Generator().manual_seed(10)), -1)
    p = rows[..., 1:] / (rows[..., 1:].sum(-1, keepdim=True) + 1e-10)
    q = ref[..., 1:] / (ref[..., 1:].sum(-1, keepdim=True) + 1e-10)
    want = 2.0 * float((p * (p / q).log()).sum(-1).mean().detach())  # scipy-free: KL by its definition
    assert float(prior(rows, ref).detach()) == pytest.approx(want, rel=1e-4)


def test_lightning_callback_every_n_steps_reaches_the_logger():
    import lightning
    from lightning.pytorch.loggers import Logger
    from torch.utils.data import DataLoader, TensorDataset

    from attncollapse.integrations import LightningCollapseCallback

    class Recorder(Logger):
        name, version = "rec", 0
        seen: list = []

        def log_metrics(self, metrics, step=None):
            self.seen.append((step, dict(metrics)))

        def log_hyperparams(self, params, *a, **k):
            pass

    class Lit(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _vit_classifier()

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self.net(pixel_values=x).logits, y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    fixed = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    lit, rec = Lit(), Recorder()
    trainer = lightning.Trainer(max_steps=4, accelerator="cpu", logger=rec, log_every_n_steps=1,
                                callbacks=[LightningCollapseCallback(fixed, every_n_steps=2)],
                                enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                                default_root_dir=tempfile.mkdtemp())
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.arange(16) % 3)
    trainer.fit(lit, DataLoader(data, batch_size=4))
    logged = [m for _, m in rec.seen if "collapse/entropy/mean" in m]
    assert [s for s, m in rec.seen if "collapse/entropy/mean" in m] == [2, 4]
    assert logged[-1]["collapse/entropy/layer_1"] == pytest.approx(_direct(lit.net.vit, fixed)["entropy"][0], abs=1e-6)


def test_integrations_import_lightning_only_when_its_callback_is_asked_for():
    import subprocess
    import sys

    code = ("import sys, attncollapse.integrations as i; assert 'lightning' not in sys.modules; "
            "i.LightningCollapseCallback; assert 'lightning' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
