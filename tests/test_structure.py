"""Structure measures (measure/structure.py): each against brute-force numpy loops, CKA's
properties, a hand-worked rollout, the probe's full maps against eager attention, and an
eval point's values against a numpy computation on eager attention of the same weights."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from attncollapse import measure, models, train
from attncollapse.data import Feeder, load_splits
from attncollapse.measure import (StructureReference, eval_rows, eval_rows_structure, js_divergence, linear_cka,
                                  patch_entropy, probing, rollout_rows, structure_table)

from conftest import tiny_run_config

# ------------------------------------------------------------------ numpy references (loops)


def np_entropy(p):
    return -sum(x * math.log(x) for x in p if x > 0)


def np_erf(p, q=0.95):
    total, k = 0.0, 0
    for x in sorted(p, reverse=True):
        total, k = total + x, k + 1
        if total >= q - 1e-12:
            break
    return k / len(p)


def np_gini(p):
    x, n = sorted(p), len(p)
    return 2 * sum((i + 1) * v for i, v in enumerate(x)) / (n * sum(x)) - (n + 1) / n


def np_rollout(layers, upto, prefix=1):
    """[CLS] rollout row of one image through layers[0..upto]: each layer (H, T, T)."""
    T = layers[0].shape[-1]
    r = np.eye(T)
    for a in layers[:upto + 1]:
        mean = sum(a[h] for h in range(a.shape[0])) / a.shape[0]
        r = (0.5 * mean + 0.5 * np.eye(T)) @ r
    row = r[0, prefix:]
    return row / (row.sum() + 1e-10)


def np_patch_entropy(a, prefix=1):
    """One image's layer map (H, T, T): mean over heads and patch queries of the patch-row entropy."""
    vals = []
    for h in range(a.shape[0]):
        for i in range(prefix, a.shape[1]):
            row = a[h, i, prefix:]
            vals.append(np_entropy(row / (row.sum() + 1e-10)))
    return sum(vals) / len(vals)


def np_cka(x, y):
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def np_jsd(p, q):
    kl = lambda a, b: sum(ai * math.log(ai / bi) for ai, bi in zip(a, b) if ai > 0)  # noqa: E731
    m = [(a + b) / 2 for a, b in zip(p, q)]
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def np_cls_map(a, prefix=1):
    """Head-averaged [CLS]→patch map of one image's layer (H, T, T), each head renormalised."""
    rows = [a[h, 0, prefix:] / a[h, 0, prefix:].sum() for h in range(a.shape[0])]
    return sum(rows) / len(rows)


def _random_maps(L=3, B=5, H=4, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(L, B, H, T, T, generator=g) * 3).softmax(-1)


# ------------------------------------------------------------------ pure functions


def test_rollout_equals_numpy_loop_at_every_depth():
    maps = _random_maps()
    got = rollout_rows(maps.mean(2))
    for b in range(maps.shape[1]):
        layers = [maps[l, b].double().numpy() for l in range(maps.shape[0])]
        for l in range(maps.shape[0]):
            np.testing.assert_allclose(got[l, b].numpy(), np_rollout(layers, l), atol=1e-6)


def test_rollout_on_a_hand_worked_two_layer_case():
    # Tokens [CLS], p1, p2; two heads. Layer 1: the heads' [CLS] rows are [0,1,0] and [0,0,1]
    # (mean [0, ½, ½]), other rows identity → M1 row 0 = [½, ¼, ¼] → rollout [½, ½].
    # Layer 2: every row [0,0,1] in both heads → M2 row 0 = [½, 0, ½] → R2 row 0 =
    # ½·[½, ¼, ¼] + ½·[0, 0, 1] = [¼, ⅛, ⅝] → rollout [⅛, ⅝]/¾ = [⅙, ⅚].
    eye = torch.eye(3)
    l1 = torch.stack([eye.clone(), eye.clone()])
    l1[0, 0] = torch.tensor([0.0, 1.0, 0.0])
    l1[1, 0] = torch.tensor([0.0, 0.0, 1.0])
    l2 = torch.zeros(2, 3, 3)
    l2[..., 2] = 1.0
    got = rollout_rows(torch.stack([l1, l2]).mean(1)[:, None])  # (L=2, B=1, T, T) head means
    np.testing.assert_allclose(got[:, 0].numpy(), [[0.5, 0.5], [1 / 6, 5 / 6]], atol=1e-7)


def test_patch_entropy_equals_numpy_loop():
    maps = _random_maps(L=1, B=4, H=3, T=6)[0]
    got = patch_entropy(maps)
    for b in range(4):
        assert got[b].item() == pytest.approx(np_patch_entropy(maps[b].double().numpy()), abs=1e-6)
    # registers: more prefix tokens dropped
    got5 = patch_entropy(maps, prefix_tokens=3)
    assert got5[1].item() == pytest.approx(np_patch_entropy(maps[1].double().numpy(), prefix=3), abs=1e-6)


@pytest.mark.parametrize("n, d", [(20, 8), (6, 30)])  # feature form (N > D) and Gram form (N ≤ D)
def test_cka_equals_numpy_and_has_its_properties(n, d):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=(d, d)) + 0.5 * rng.normal(size=(n, d))
    assert linear_cka(torch.tensor(x), torch.tensor(y)) == pytest.approx(np_cka(x, y), rel=1e-9)
    assert linear_cka(torch.tensor(x), torch.tensor(x)) == pytest.approx(1.0, abs=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # orthogonal
    base = linear_cka(torch.tensor(x), torch.tensor(y))
    assert linear_cka(torch.tensor(x @ q), torch.tensor(y)) == pytest.approx(base, rel=1e-9)
    assert linear_cka(torch.tensor(7.5 * x), torch.tensor(y)) == pytest.approx(base, rel=1e-9)
    assert linear_cka(torch.tensor(x), torch.tensor(rng.normal(size=(n, d)))) < 0.99 * base


def test_js_divergence_equals_numpy_loop():
    g = torch.Generator().manual_seed(3)
    p = (torch.randn(4, 9, generator=g) * 2).softmax(-1)
    q = (torch.randn(4, 9, generator=g) * 2).softmax(-1)
    p[0, 3] = 0.0
    p[0] /= p[0].sum()  # a zero entry: 0 ln 0 = 0
    got = js_divergence(p, q)
    for i in range(4):
        assert got[i].item() == pytest.approx(np_jsd(p[i].double().tolist(), q[i].double().tolist()), abs=1e-12)
    assert js_divergence(p, p).abs().max().item() < 1e-15
    onehot = torch.eye(9)
    assert js_divergence(onehot[0], onehot[1]).item() == pytest.approx(math.log(2))


# ------------------------------------------------------------------ the probe's full maps


@pytest.mark.parametrize("preset", ["tiny", "tiny-dinov2-reg", "tiny-siglip"])
def test_probe_full_maps_equal_eager_and_leave_rows_unchanged(preset):
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    tower = models.vision_tower(models.load_model(preset)).eval()
    eager = models.vision_tower(models.load_model(preset, attn_implementation="eager")).eval()
    with torch.no_grad():
        want = eager(pixel_values=x, output_attentions=True).attentions
        plain = measure.cls_rows(tower, x)
        with probing(tower) as outer:  # nested, as an eval point inside a regularized loop
            with probing(tower, maps=True) as rows:
                got_rows = measure.probed_forward(tower, rows, x, len(want))
                maps = rows.maps()
            measure.probed_forward(tower, outer, x, len(want))
            assert outer.maps() == []  # the outer block records no maps again
    assert len(maps) == len(want)
    for m, w in zip(maps, want):
        assert m.dtype == torch.float32 and m.shape == w.shape
        torch.testing.assert_close(m, w, atol=1e-5, rtol=0)
    assert torch.equal(got_rows, plain)


# ------------------------------------------------------------------ an eval point vs eager + numpy


def _np_structure(eager_out, ref_out, group, prefix=1):
    """The structure table computed in numpy loops from eager attentions and hidden states."""
    att = [a.double().numpy() for a in eager_out.attentions]
    ref_att = [a.double().numpy() for a in ref_out.attentions]
    L, N = len(att), att[0].shape[0]
    out = {k: [] for k in measure.STRUCTURE}
    for l in range(L):
        per = {"rollout_entropy": [], "rollout_erf": [], "rollout_gini": [], "patch_entropy": []}
        for b in range(N):
            row = np_rollout([a[b] for a in att], l, prefix)
            per["rollout_entropy"].append(np_entropy(row))
            per["rollout_erf"].append(np_erf(row))
            per["rollout_gini"].append(np_gini(row))
            per["patch_entropy"].append(np_patch_entropy(att[l][b], prefix))
        for k, v in per.items():  # the original's per-batch means, then their mean
            out[k].append(np.mean([np.mean(v[i:i + group]) for i in range(0, N, group)]))
        h = eager_out.hidden_states[l + 1][:, 0].double().numpy()
        h0 = ref_out.hidden_states[l + 1][:, 0].double().numpy()
        out["cka"].append(np_cka(h, h0))
        out["map_drift"].append(np.mean([np_jsd(np_cls_map(att[l][b], prefix).tolist(),
                                                np_cls_map(ref_att[l][b], prefix).tolist()) for b in range(N)]))
    return out


def test_eval_point_structure_equals_numpy_on_eager_attention(tmp_path):
    cfg = tiny_run_config(**{"data.eval_subset_size": 40})  # groups of 32 and 8
    train.run(cfg, tmp_path / "r")
    points = json.loads((tmp_path / "r" / "history.json").read_text())["points"]
    assert all(set(p["structure"]) == set(measure.STRUCTURE) for p in points)

    splits = load_splits(cfg.dataset, cfg.data, image_size=models.image_size(cfg.model))
    mean, std = models.normalization(cfg.model)
    x = torch.cat([b for b, _ in Feeder(splits.eval_set, "cpu", mean=mean, std=std).batches(1000)])
    _, trained, _ = train.load_trained(tmp_path / "r", which="last", device="cpu")
    _, pretrained = train.build(cfg, splits.train.num_classes, torch.device("cpu"))
    with torch.no_grad():
        outs = {}
        for name, clf in (("final", trained), ("initial", pretrained)):
            tower = clf.vision.eval()
            tower.set_attn_implementation("eager")
            outs[name] = tower(pixel_values=x, output_attentions=True, output_hidden_states=True)
    want_final = _np_structure(outs["final"], outs["initial"], group=32)
    want_initial = _np_structure(outs["initial"], outs["initial"], group=32)
    for k in measure.STRUCTURE:
        np.testing.assert_allclose(points[-1]["structure"][k], want_final[k], atol=2e-5, rtol=0, err_msg=k)
        np.testing.assert_allclose(points[0]["structure"][k], want_initial[k], atol=2e-5, rtol=0, err_msg=k)
    assert min(want_final["cka"]) < 0.999 and max(want_final["map_drift"]) > 1e-5  # training moved them


def test_structure_rows_equal_plain_rows_and_switch_off_writes_none(tmp_path):
    cfg = tiny_run_config()
    splits = load_splits(cfg.dataset, cfg.data, image_size=32)
    feeder = Feeder(splits.eval_set, "cpu")
    _, clf = train.build(cfg, splits.train.num_classes, torch.device("cpu"))
    plain = eval_rows(clf.vision, feeder, batch_size=16, precision="fp32")
    rows, obs = eval_rows_structure(clf.vision, feeder, batch_size=16, precision="fp32")
    assert torch.equal(rows, plain)  # the four metrics do not move when the switch is on
    table = structure_table(obs, StructureReference.of(obs))
    np.testing.assert_allclose(table["cka"], 1.0, atol=1e-9)
    assert table["map_drift"] == [0.0] * 3

    off = train.run(tiny_run_config(**{"eval.structure": False}), tmp_path / "off")
    assert off["structure_initial"] is None and off["structure_summary"] is None
    hist = json.loads((tmp_path / "off" / "history.json").read_text())
    assert all("structure" not in p for p in hist["points"])


@pytest.mark.parametrize("preset", ["tiny", "tiny-dinov2-reg", "tiny-siglip", "tiny-vit"])
def test_layer_tokens_equal_hidden_states_and_leave_no_hooks(preset):
    # The eval pass reads each layer's output with its own hooks (not output_hidden_states,
    # whose hooks transformers keeps on the layers for good).
    torch.manual_seed(1)
    x = torch.randn(4, 3, 32, 32)
    tower = models.vision_tower(models.load_model(preset)).eval()
    query = measure.spec_of(tower).query
    before = {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for n, m in tower.named_modules()}
    _, obs = eval_rows_structure(tower, _Batches(x), batch_size=3, precision="fp32")
    assert before == {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for n, m in tower.named_modules()}
    with torch.no_grad():
        hidden = tower(pixel_values=x, output_hidden_states=True).hidden_states[1:]
    want = torch.stack([h[:, 0] if query == "first" else h.mean(1) for h in hidden])
    torch.testing.assert_close(obs.hidden, want, atol=1e-5, rtol=0)


class _Batches:
    """What an eval pass asks of a Feeder: `device` and `batches(n)`."""

    def __init__(self, x):
        self.x, self.device = x, x.device

    def batches(self, n):
        for i in range(0, len(self.x), n):
            yield self.x[i:i + n], None
