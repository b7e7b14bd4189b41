"""Representation transfer for every family: k-NN and a linear probe on frozen image features.

Zero-shot needs a text tower; DINOv2 and ViT have none. So that "collapse vs transfer" has
a number for every model, the (fine-tuned) vision tower is scored on the zero-shot
datasets by two classic frozen-feature protocols, each from the dataset's own train split
to the very test images zero-shot uses (`zeroshot.max_images` first test images):

- k-NN (`KNN_PROTOCOL`): DINO's weighted k-NN (Caron et al. 2021, `eval_knn.py`):
  cosine similarity to the k = 20 nearest training features, each neighbour voting for
  its class with weight exp(similarity / 0.07); the class with the largest vote wins
  (ties: the lowest class index).
- Linear probe (`LINEAR_PROBE_PROTOCOL`): scikit-learn `LogisticRegression` (L2, lbfgs,
  multinomial) with C fixed at 1.0 (its default) on the same features: no C search, so
  the number costs one fit and needs no validation split.

Features = the classifier's image feature (`Classifier.features`: the family's pooling,
[CLS] or pooler, then CLIP's projection where there is one), L2-normalised, with LoRA
adapters active. The headline transfer number of a run (`transfer_headline`) is zero-shot
accuracy where the model has one, else k-NN accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .._device import autocast, eval_mode
from ..data import Feeder, ImageSet, load_splits
from ..models import Classifier, build_classifier
from .zeroshot import as_feeder

KNN_K = 20
"""Neighbours of the k-NN vote (DINO's default)."""
KNN_TEMPERATURE = 0.07
"""Temperature of the exp(similarity / T) vote weights (DINO)."""
LINEAR_PROBE_C = 1.0
"""Inverse L2 strength of the linear probe (scikit-learn's default; fixed, no search)."""
LINEAR_PROBE_MAX_ITER = 1000
KNN_PROTOCOL = f"knn-cosine-k{KNN_K}-T{KNN_TEMPERATURE}"
LINEAR_PROBE_PROTOCOL = f"logreg-l2-C{LINEAR_PROBE_C}"


def wants_features(zcfg, zeroshot_problem: str | None) -> bool:
    """Whether k-NN and the linear probe run: `zeroshot.feature_transfer` "always", or
    "auto" (the default) for a model whose zero-shot cannot run (`models.zeroshot_problem`)."""
    mode = getattr(zcfg, "feature_transfer", "auto")
    return mode == "always" or (mode == "auto" and zeroshot_problem is not None)


def pretrained_classifier(model: nn.Module) -> Classifier:
    """The feature path of a loaded model as a `Classifier` (its 1-class head is unused).

    The head's random init runs under a forked RNG, so asking for features leaves the
    caller's random stream where it was.
    """
    with torch.random.fork_rng(devices=[]):
        return build_classifier(model, 1)


@torch.no_grad()
def frozen_features(clf: Classifier, images: ImageSet | Feeder, *, device: torch.device | str,
                    batch_size: int = 1024, precision: str = "fp32",
                    norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> Tensor:
    """L2-normalised image features of every image, in order.

    Args:
        clf: the classifier whose `features` (pooling + projection) are read; its head and
            `normalize_features` flag play no part.
        images: uint8 images (normalised on `device` by the Feeder).
        precision: autocast "fp16", "bf16" or "fp32" (off).
        norm: the model family's (mean, std) (`models.normalization`); None = CLIP's.

    Returns:
        (N, D) float32 unit rows on `device`.
    """
    feeder = images if isinstance(images, Feeder) else as_feeder(images, device, norm)
    out = []
    with eval_mode(clf), autocast(feeder.device, precision):
        for x, _ in feeder.batches(batch_size):
            out.append(clf.features(x).float())
    return nn.functional.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def knn_predict(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, *, num_classes: int,
                k: int = KNN_K, temperature: float = KNN_TEMPERATURE, chunk: int = 1024) -> Tensor:
    """DINO's weighted k-NN classifier on unit features.

    Args:
        train_feats: (M, D) unit rows; train_labels: (M,) int class indices.
        test_feats: (N, D) unit rows.
        num_classes: C (classes absent from the train part simply get no votes).
        k: neighbours (capped at M); temperature: vote weight exp(cos / temperature).
        chunk: test rows per similarity block ((chunk, M) floats in memory).

    Returns:
        (N,) int64 predicted classes (vote ties go to the lowest class index).
    """
    train_labels = torch.as_tensor(train_labels, device=train_feats.device).long()
    k = min(k, len(train_labels))
    preds = []
    for block in test_feats.split(chunk):
        sims, idx = (block.float() @ train_feats.float().T).topk(k, dim=1)  # (n, k)
        votes = torch.zeros(len(block), num_classes, device=block.device, dtype=torch.float64)
        votes.scatter_add_(1, train_labels[idx], (sims.double() / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def _ratio(pred: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> float:
    pred, labels = np.asarray(torch.as_tensor(pred).cpu()), np.asarray(torch.as_tensor(labels).cpu())
    return int((pred == labels).sum()) / len(labels)  # exact count ratio, as zeroshot_accuracy


def knn_accuracy(train_feats: Tensor, train_labels, test_feats: Tensor, test_labels, *, num_classes: int,
                 k: int = KNN_K, temperature: float = KNN_TEMPERATURE) -> float:
    """Top-1 accuracy of `knn_predict` on the test features."""
    return _ratio(knn_predict(train_feats, train_labels, test_feats, num_classes=num_classes, k=k,
                              temperature=temperature), test_labels)


def linear_probe_accuracy(train_feats: Tensor, train_labels, test_feats: Tensor, test_labels, *,
                          c: float = LINEAR_PROBE_C, max_iter: int = LINEAR_PROBE_MAX_ITER) -> float:
    """Top-1 accuracy of a scikit-learn logistic regression fitted on the train features.

    Args:
        train_feats: (M, D) features; test_feats: (N, D) features (any device).
        c: inverse L2 regularisation strength (fixed; `LINEAR_PROBE_C`).
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x_train = train_feats.double().cpu().numpy()
    y_train = np.asarray(torch.as_tensor(train_labels).cpu())
    if len(np.unique(y_train)) < 2:
        raise ValueError("the linear probe needs at least two classes in the train part")
    with warnings.catch_warnings():
        # A probe that stops at max_iter still gives a usable accuracy; say so once, no flood.
        warnings.simplefilter("once", ConvergenceWarning)
        probe = LogisticRegression(C=c, max_iter=max_iter).fit(x_train, y_train)
    return _ratio(probe.predict(test_feats.double().cpu().numpy()), test_labels)


def transfer_sets(name: str, data_cfg, zcfg, *, image_size: int) -> tuple[ImageSet, ImageSet]:
    """(train part, test part) of zero-shot dataset `name` for k-NN and the linear probe.

    The test part is the source's own test split capped to its first `zcfg.max_images`
    (the images zero-shot scores); the train part its own train split, capped seeded and
    stratified to `zcfg.max_train_images`, whatever the run's split protocol.

    Args:
        data_cfg: the run's `DataConfig` already stripped of the training set's columns
            (`zeroshot.zeroshot_data_cfg`).
    """
    own = data_cfg.model_copy(update={"split": "hub", "max_train_images": zcfg.max_train_images,
                                      "eval_subset_size": 2})  # the eval subset is not used here
    splits = load_splits(name, own, image_size=image_size)
    test = splits.test
    if zcfg.max_images is not None and zcfg.max_images < len(test):
        test = test.subset(np.arange(zcfg.max_images))
    return splits.train, test


def evaluate_features(clf: Classifier, train: ImageSet, test: ImageSet, *, device: torch.device | str,
                      precision: str = "fp32", batch_size: int = 1024,
                      norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> dict:
    """One dataset's k-NN and linear-probe fields (merged into final.json's zero-shot block).

    Returns:
        {"knn_acc", "knn_protocol", "linear_probe_acc", "linear_probe_protocol",
        "train_images", "images"}.
    """
    opts = dict(device=device, precision=precision, batch_size=batch_size, norm=norm)
    f_train, f_test = frozen_features(clf, train, **opts), frozen_features(clf, test, **opts)
    classes = max(train.num_classes, test.num_classes)
    return {
        "knn_acc": knn_accuracy(f_train, train.labels, f_test, test.labels, num_classes=classes),
        "knn_protocol": KNN_PROTOCOL,
        "linear_probe_acc": linear_probe_accuracy(f_train, train.labels, f_test, test.labels),
        "linear_probe_protocol": LINEAR_PROBE_PROTOCOL,
        "train_images": len(train), "images": len(test),
    }


def transfer_headline(blocks: dict, datasets) -> dict:
    """Run-level transfer fields from the per-dataset blocks of the headline dataset.

    The headline dataset is the first of `datasets` with a block (as `zeroshot_acc`).
    `transfer_acc` is its zero-shot accuracy ("acc") where there is one, else its k-NN
    accuracy: one transfer number for every family.

    Returns:
        {"transfer_acc", "transfer_protocol" ("zeroshot" | "knn" | None), "knn_acc",
        "linear_probe_acc"}.
    """
    head = next((d for d in datasets if d in blocks), next(iter(blocks), None))
    block = (blocks.get(head) if head is not None else None) or {}
    if block.get("acc") is not None:
        acc, protocol = block["acc"], "zeroshot"
    elif block.get("knn_acc") is not None:
        acc, protocol = block["knn_acc"], "knn"
    else:
        acc, protocol = None, None
    return {"transfer_acc": acc, "transfer_protocol": protocol, "knn_acc": block.get("knn_acc"),
            "linear_probe_acc": block.get("linear_probe_acc")}
