"""The four metrics against brute-force numpy loops and hand-worked cases."""

import math

import numpy as np
import pytest
import torch

from attncollapse.measure import metrics


def _rows(shape, seed=0, alpha=0.3):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.dirichlet(np.full(shape[-1], alpha), size=shape[:-1])).float()


def _entropy_loop(a):
    return -sum(x * math.log(x) for x in a if x > 0)


def _erf_loop(a, q):
    total = 0.0
    for k, x in enumerate(sorted(a, reverse=True), start=1):
        total += x
        if total >= q - 1e-12:
            return k / len(a)
    return 1.0


def _gini_pairs(a):
    # Independent definition: mean absolute difference over all pairs / (2 · mean).
    n = len(a)
    return sum(abs(x - y) for x in a for y in a) / (2 * n * n * (sum(a) / n))


def _diversity_loop(h):
    H = len(h)
    sims = []
    for i in range(H):
        for j in range(i + 1, H):
            sims.append(np.dot(h[i], h[j]) / (np.linalg.norm(h[i]) * np.linalg.norm(h[j])))
    return 1 - np.mean(sims)


def test_entropy_erf_gini_match_loops_over_leading_dims():
    rows = _rows((3, 4, 49))
    H, E, G = metrics.entropy(rows), metrics.erf(rows, 0.95), metrics.gini(rows)
    assert H.shape == E.shape == G.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            a = rows[i, j].double().numpy().tolist()
            assert H[i, j].item() == pytest.approx(_entropy_loop(a), abs=1e-5)
            assert E[i, j].item() == pytest.approx(_erf_loop(a, 0.95), abs=1e-6)
            assert G[i, j].item() == pytest.approx(_gini_pairs(a), abs=1e-5)


@pytest.mark.parametrize("q", [0.5, 0.8, 0.95, 0.99])
def test_erf_other_masses(q):
    rows = _rows((20, 16), seed=3, alpha=1.0)
    got = metrics.erf(rows, q)
    want = [_erf_loop(r.double().numpy().tolist(), q) for r in rows]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_hand_worked_uniform_and_one_hot():
    P = 49
    uniform = torch.full((P,), 1 / P)
    one_hot = torch.zeros(P)
    one_hot[7] = 1.0
    assert metrics.entropy(uniform).item() == pytest.approx(math.log(P), abs=1e-5)
    assert metrics.erf(uniform).item() == pytest.approx(47 / 49)
    assert metrics.gini(uniform).item() == pytest.approx(0.0, abs=1e-6)
    assert metrics.entropy(one_hot).item() == 0.0
    assert metrics.erf(one_hot).item() == pytest.approx(1 / P)
    assert metrics.gini(one_hot).item() == pytest.approx((P - 1) / P, abs=1e-6)


def test_head_diversity_matches_loop_and_identical_heads_give_zero():
    rows = _rows((5, 12, 49), seed=1)
    got = metrics.head_diversity(rows)
    want = [_diversity_loop(r.double().numpy()) for r in rows]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    same = rows[0, :1].expand(12, 49)
    assert metrics.head_diversity(same).item() == pytest.approx(0.0, abs=1e-6)
    # Orthogonal one-hot heads are maximally diverse: cos = 0 everywhere.
    assert metrics.head_diversity(torch.eye(4)).item() == pytest.approx(1.0)


def test_patch_rows_drops_cls_and_renormalises():
    full = torch.tensor([[0.5, 0.25, 0.125, 0.125]])
    np.testing.assert_allclose(metrics.patch_rows(full).numpy(), [[0.5, 0.25, 0.25]])


def test_summarize_matches_manual_aggregation():
    L, N, H, T = 2, 70, 3, 10
    raw = _rows((L, N, H, T), seed=4)
    by_image = metrics.summarize(raw, diversity="batch_mean", diversity_batch=32, aggregate="per_image")
    by_batch = metrics.summarize(raw, diversity="batch_mean", diversity_batch=32, aggregate="per_batch")
    assert by_batch == metrics.summarize(raw)  # per_batch and batches of 32 are the defaults
    a = raw[..., 1:].double().numpy()
    a = a / a.sum(-1, keepdims=True)
    starts = (0, 32, 64)  # batches 0-31, 32-63 and the short 64-69
    for layer in range(L):
        ents = np.array([[_entropy_loop(a[layer, n, h]) for h in range(H)] for n in range(N)]).mean(1)
        assert by_image["entropy"][layer] == pytest.approx(ents.mean(), abs=1e-5)
        # per_batch: the 6 images of the last batch weigh as much as the 32 of a full one
        assert by_batch["entropy"][layer] == pytest.approx(np.mean([ents[s:s + 32].mean() for s in starts]), abs=1e-5)
        # mean rows per head over each batch, diversity, then over batches (unweighted) or
        # over images (each image counts its batch's value)
        divs = np.array([_diversity_loop(a[layer, s:s + 32].mean(0)) for s in starts])
        assert by_batch["head_diversity"][layer] == pytest.approx(divs.mean(), abs=1e-5)
        assert by_image["head_diversity"][layer] == pytest.approx((divs * [32, 32, 6]).sum() / N, abs=1e-5)
    assert by_batch["entropy"][0] != pytest.approx(by_image["entropy"][0], abs=1e-4)
    per_image = metrics.summarize(raw, diversity="per_image", aggregate="per_image")
    want = np.mean([_diversity_loop(a[0, n]) for n in range(N)])
    assert per_image["head_diversity"][0] == pytest.approx(want, abs=1e-5)
    assert per_image["head_diversity"][0] != pytest.approx(by_batch["head_diversity"][0], abs=1e-4)
    with pytest.raises(ValueError, match="aggregate 'images'"):
        metrics.summarize(raw, aggregate="images")


def test_delta_pct_and_layer_mean():
    assert metrics.delta_pct(3.683, 3.300) == pytest.approx(-10.40, abs=0.01)  # reports' A1 lr=1e-4
    means = metrics.layer_mean({"entropy": [1.0, 2.0, 6.0], "erf": [0.5, 0.5, 0.5],
                                "gini": [0, 0, 0.3], "head_diversity": [0.1, 0.2, 0.3]})
    assert means["entropy"] == pytest.approx(3.0)
    assert means["gini"] == pytest.approx(0.1)
