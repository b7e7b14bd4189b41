"""attncollapse.integrations: the Trainer and Lightning callbacks, `watch`, the loss objects,
and the runnable examples of docs/INTEGRATIONS.md."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import lightning
import pytest
import torch
from torch import nn
from transformers import (CLIPVisionConfig, CLIPVisionModel, Trainer, TrainerCallback, TrainingArguments,
                          ViTConfig, ViTForImageClassification)

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from attncollapse import cls_rows, load_model, summarize
from attncollapse.integrations import (AttentionPriorLoss, CollapseCallback, CollapseMonitor, EntropyFloorLoss,
                                       LightningCollapseCallback, find_tower, fixed_set_table, watch)
from attncollapse.measure import cka_per_block, embedding_drift, encoder_weights, representations, weight_drift_rel


DOC = Path(__file__).resolve().parent.parent / "docs" / "INTEGRATIONS.md"
TINY = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=64)


def _doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(4))
def test_docs_integrations_examples_run(index):
    # Each example asserts its logged numbers equal a direct summarize(cls_rows(...)).
    blocks = _doc_blocks()
    assert len(blocks) == 4
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


def _trainer(model, tmp_path, *, epochs=1, callbacks=None, eval_strategy="epoch", report_to="none", max_steps=-1):
    images = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    data = [{"pixel_values": x, "labels": i % 3} for i, x in enumerate(images)]
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=8,
                             learning_rate=1e-3, eval_strategy=eval_strategy, save_strategy="no", report_to=report_to,
                             use_cpu=True, disable_tqdm=True, logging_steps=1, max_steps=max_steps)
    return Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:8], callbacks=callbacks)


def _events(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in (acc.Images(tag) if tag in acc.Tags()["images"] else acc.Scalars(tag))]


def _drift_direct(tower0, tower1, pixels) -> dict[str, float]:
    """CKA mean, embedding drift and weight change by measure/drift.py on two saved towers."""
    s0, e0 = representations(tower0, pixels)
    s1, e1 = representations(tower1, pixels)
    cka = cka_per_block(s0, s1)
    return {"collapse/drift/cka_mean": sum(cka) / len(cka), "collapse/drift/embedding": embedding_drift(e0, e1),
            "collapse/drift/weights": weight_drift_rel(encoder_weights(tower0), encoder_weights(tower1))}


def test_trainer_run_writes_collapse_names_at_increasing_steps_into_tensorboard(tmp_path):
    model = _vit_classifier()
    model.save_pretrained(tmp_path / "w0")  # the weights before the first step
    fixed = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    reporter = _Reporter()
    callback = CollapseCallback(fixed, every_n_steps=2, map_images=2)
    trainer = _trainer(model, tmp_path / "out", epochs=2, callbacks=[reporter, callback], report_to="tensorboard")
    trainer.train()  # 3 steps an epoch: every 2 steps, and evaluations at 3 and 6 (6 once)
    acc = _events(tmp_path / "out" / "collapse")
    for tag in ("collapse/entropy/layer_1", "collapse/gini/delta/mean", "collapse/drift/cka_mean", "collapse/maps"):
        assert _steps(acc, tag) == [0, 2, 3, 4, 6], tag  # strictly increasing, step 0 included, no duplicate
    assert not [t for t in acc.Tags()["scalars"] if t.startswith("train/")]
    assert acc.Scalars("collapse/erf/delta/layer_2")[0].value == 0.0
    assert acc.Scalars("collapse/drift/weights")[0].value == 0.0
    # the Trainer's own TensorBoard callback saw none of it (it would have renamed them train/collapse/...)
    assert not [k for seen in reporter.seen for k in seen if "collapse" in k]
    hf_tags = [t for run in (tmp_path / "out" / "runs").iterdir() for t in _events(run).Tags()["scalars"]]
    assert hf_tags and not [t for t in hf_tags if "collapse" in t]
    # the logged numbers: the metrics by cls_rows, the drifts by measure/drift.py on the saved weights
    last = {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}
    want = _direct(model.vit, fixed)
    assert last["collapse/entropy/layer_3"] == pytest.approx(want["entropy"][2], abs=1e-5)
    for name, value in _drift_direct(ViTForImageClassification.from_pretrained(tmp_path / "w0").vit,
                                     model.vit, fixed).items():
        assert last[name] == pytest.approx(value, abs=1e-5), name
    assert last["collapse/drift/weights"] > 0
    history = [h["step"] for h in trainer.state.log_history if "collapse/entropy/mean" in h]
    assert history == [0, 2, 3, 4, 6]
    metrics = trainer.evaluate()  # the same step again: the numbers come back, nothing is logged twice
    assert metrics["collapse/entropy/layer_3"] == pytest.approx(last["collapse/entropy/layer_3"], abs=1e-6)
    assert [h["step"] for h in trainer.state.log_history if "collapse/entropy/mean" in h] == history


def test_trainer_evaluate_without_training_measures_the_model_as_it_is(tmp_path):
    model = _vit_classifier()
    fixed = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    trainer = _trainer(model, tmp_path, callbacks=[CollapseCallback(fixed, report_to=[])], eval_strategy="no")
    metrics = trainer.evaluate()
    want = _direct(model.vit, fixed)
    assert metrics["collapse/entropy/layer_2"] == pytest.approx(want["entropy"][1], abs=1e-6)
    assert metrics["collapse/entropy/delta/layer_2"] == 0.0
    assert trainer.state.log_history[-1]["collapse/entropy/layer_2"] == metrics["collapse/entropy/layer_2"]


def test_trainer_without_evaluation_warns_once_that_nothing_is_measured(tmp_path):
    fixed = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    trainer = _trainer(_vit_classifier(), tmp_path, callbacks=[CollapseCallback(fixed, report_to=[])],
                       eval_strategy="no", max_steps=1)
    with pytest.warns(UserWarning, match=r"^CollapseCallback: eval_strategy is 'no' and every_n_steps is None") as w:
        trainer.train()
    said = [str(x.message) for x in w if "CollapseCallback" in str(x.message)]
    assert len(said) == 1 and "\n" not in said[0]


class _Lit(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = _vit_classifier()

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self.net(pixel_values=x).logits, y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _LitVal(_Lit):
    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(pixel_values=x).logits, y))


def _fit(module, callback, root, *, max_epochs=2, max_steps=-1, val=True):
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(12)
    data = TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.arange(16) % 3)
    trainer = lightning.Trainer(max_epochs=max_epochs, max_steps=max_steps, accelerator="cpu",
                                logger=TensorBoardLogger(str(root)), log_every_n_steps=1, callbacks=[callback],
                                enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                                num_sanity_val_steps=0)
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=8) if val else None)
    return trainer


def test_lightning_run_writes_increasing_steps_into_the_loggers_directory(tmp_path):
    fixed = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    lit = _LitVal()
    tower0 = copy.deepcopy(lit.net.vit)
    callback = LightningCollapseCallback(fixed, every_n_steps=3, map_images=2)
    trainer = _fit(lit, callback, tmp_path)  # 4 steps an epoch: every 3 steps and validation at 4 and 8
    assert callback.monitor.log_dir == Path(trainer.log_dir)
    acc = _events(trainer.log_dir)
    for tag in ("collapse/entropy/layer_1", "collapse/head_diversity/delta/layer_2", "collapse/maps"):
        assert _steps(acc, tag) == [0, 3, 4, 6, 8], tag
    assert acc.Scalars("collapse/entropy/delta/mean")[0].value == 0.0
    last = {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"] if tag.startswith("collapse/")}
    assert last["collapse/gini/layer_2"] == pytest.approx(_direct(lit.net.vit, fixed)["gini"][1], abs=1e-5)
    for name, value in _drift_direct(tower0, lit.net.vit, fixed).items():
        assert last[name] == pytest.approx(value, abs=1e-5), name
    assert trainer.callback_metrics["collapse/gini/layer_2"].item() == pytest.approx(last["collapse/gini/layer_2"])


def test_lightning_without_validation_warns_that_nothing_is_measured(tmp_path):
    fixed = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(13))
    with pytest.warns(UserWarning, match=r"^LightningCollapseCallback: the trainer runs no validation"):
        _fit(_Lit(), LightningCollapseCallback(fixed, report_to=[]), tmp_path, max_steps=1, val=False)


def _direct(tower, pixels) -> dict[str, list[float]]:
    was = tower.training
    tower.eval()
    with torch.no_grad():
        out = summarize(cls_rows(tower, pixels))
    tower.train(was)
    return out


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
    with pytest.raises(ValueError, match="pass tower="):
        CollapseMonitor(fixed, report_to=[]).start(model)
    got = CollapseMonitor(fixed, tower=tower, report_to=[]).start(model)
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


def test_integrations_import_lightning_only_when_its_callback_is_asked_for():
    import subprocess
    import sys

    code = ("import sys, attncollapse.integrations as i; assert 'lightning' not in sys.modules; "
            "i.LightningCollapseCallback; assert 'lightning' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
