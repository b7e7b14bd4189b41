"""The original study's code, reproduced: eval subset, metric loop, preprocessing, inputs.

Each test writes an independent reference of what the original code
(xiaruize0911/Attention_Collapse_in_CLIP_Fine-tuning_repo at commit 0aed578: `src/dataset.py`,
`src/metrics.py`, `run_all_experiments.py` `compute_metrics_on_eval`) computes, in this
file's own code, and checks the package against it on look-alikes of the hub datasets
(the hub datasets' schemas), written with `datasets` and `save_to_disk`: offline throughout.
"""

from __future__ import annotations

import io
import math
from itertools import combinations

import numpy as np
import pytest
import torch
from PIL import Image

from attncollapse import data
from attncollapse.config import DataConfig, EvalConfig, ZeroShotConfig
from attncollapse.data import Feeder, eval_subset_indices, humanize, load_splits, load_test_split
from attncollapse.measure import attention_table, summarize_rows
from attncollapse.models import load_clip
from attncollapse.transfer.zeroshot import capped

S = 32  # the tiny model's resolution

# uoft-cs/cifar100 `fine_label` names as the hub spells them ('cra' at 26)
CIFAR100 = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch cra crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm").split()


def _cfg(tmp_path, **kw) -> DataConfig:
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("cache_workers", 1)
    return DataConfig(**kw)


# ---------------------------------------------------------------- references (own code)

def original_eval_subset(labels, num_samples=200, seed=42) -> list[int]:
    """`create_fixed_eval_subset`: per class in label order, then the top-up, in draw order."""
    rng = np.random.RandomState(seed)
    by_class: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(int(lab), []).append(i)
    per_class = num_samples // len(by_class)
    picked: list[int] = []
    for c in sorted(by_class):
        picked += rng.choice(by_class[c], size=min(per_class, len(by_class[c])), replace=False).tolist()
    if len(picked) < num_samples:
        left = list(set(range(len(labels))) - set(picked))
        picked += rng.choice(left, size=num_samples - len(picked), replace=False).tolist()
    return picked[:num_samples]


def centre_offset(excess: int) -> int:
    """torchvision's `int(round(excess / 2))` found by search: the most central start,
    a tie (odd excess) going to the even one, as Python's round does."""
    return min(range(excess + 1), key=lambda t: (abs(2 * t - excess), t % 2))


def original_pixels(img: Image.Image, size: int) -> np.ndarray:
    """`HFImageDataset` + `Resize(size)` + `CenterCrop(size)` on a PIL image, by hand."""
    if img.mode != "RGB":
        img = img.convert("RGB")  # alpha dropped
    w, h = img.size
    short, long = min(w, h), max(w, h)
    long_new = math.floor(size * long / short)
    nw, nh = (size, long_new) if w <= h else (long_new, size)
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    top, left = centre_offset(nh - size), centre_offset(nw - size)
    return np.asarray(img.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


def original_metric_loop(vision, batches) -> dict[str, list[float]]:
    """`compute_metrics_on_eval`: per batch `compute_all_metrics`, then a plain mean over batches."""
    per_batch = []
    with torch.no_grad():
        for x in batches:
            attentions = vision(pixel_values=x, output_attentions=True).attentions
            table = {"entropy": [], "erf": [], "gini": [], "head_diversity": []}
            for attn in attentions:
                p = attn[:, :, 0, 1:]
                p = p / (p.sum(-1, keepdim=True) + 1e-10)
                table["entropy"].append((-(p * torch.log(p + 1e-10)).sum(-1)).mean().item())
                srt = p.sort(-1, descending=True).values
                k = (srt.cumsum(-1) >= 0.95).float().argmax(-1) + 1
                table["erf"].append((k.float() / p.shape[-1]).mean().item())
                B, H, N = p.shape
                asc = p.reshape(B * H, N).sort(-1).values
                i = torch.arange(1, N + 1, dtype=torch.float32)
                g = (2 * i * asc).sum(-1) / (N * asc.sum(-1) + 1e-10) - (N + 1) / N
                table["gini"].append(g.mean().item())
                m = p.mean(0)
                cos = [torch.nn.functional.cosine_similarity(m[a:a + 1], m[b:b + 1]).item()
                       for a, b in combinations(range(H), 2)]
                table["head_diversity"].append(1.0 - float(np.mean(cos)))
            per_batch.append(table)
    return {k: np.mean([t[k] for t in per_batch], axis=0).tolist() for k in per_batch[0]}


# ---------------------------------------------------------------- eval subset

@pytest.mark.parametrize("counts, n", [
    ([270] * 10, 200),                                # EuroSAT test: 20 per class, no top-up
    ([99, 100, 101] * 12 + [102], 200),               # Pets test (3,669, 37 classes): 5 each + 15
    ([12, 9, 2, 27], 40),                             # a short class, small set: top-up order not sorted
])
def test_eval_subset_is_the_originals_draw_order(counts, n):
    labels = np.random.RandomState(7).permutation(np.repeat(np.arange(len(counts)), counts))
    want = original_eval_subset(labels, n, 42)
    got = eval_subset_indices(labels, n, 42)
    assert got.tolist() == want
    assert got.tolist() != sorted(want)  # the order is the original's, not ascending


def test_sorting_the_eval_subset_changes_the_numbers():
    # the order decides the metric batches: the reason it is kept and recorded
    torch.manual_seed(0)
    rows = torch.rand(2, 70, 4, 17) ** 8
    order = torch.randperm(70)
    a = summarize_rows(rows[:, order], group_size=32)
    b = summarize_rows(rows[:, order.sort().values], group_size=32)
    assert abs(a["head_diversity"][0] - b["head_diversity"][0]) > 1e-3
    assert abs(a["entropy"][0] - b["entropy"][0]) > 1e-4  # the short last batch holds other images


# ---------------------------------------------------------------- metric loop

def test_per_batch_summary_equals_the_original_metric_loop(tmp_path):
    cfg = _cfg(tmp_path, synthetic_train=64, synthetic_test=128, eval_subset_size=100)
    sp = load_splits("synthetic", cfg, image_size=S)
    assert sp.eval_idx.tolist() == original_eval_subset(sp.test.labels, 100, 42)
    feeder = Feeder(sp.eval_set, "cpu")
    ours = attention_table(load_clip("tiny").vision_model, feeder, forward_batch_size=256,
                           **EvalConfig(batch_size=32, aggregate="per_batch").metric_options())
    # the original: eager attention, batches of 32 in draw order (32, 32, 32, 4)
    eager = load_clip("tiny", attn_implementation="eager").vision_model.eval()
    ref = original_metric_loop(eager, (x for x, _ in feeder.batches(32)))
    for m in ref:
        np.testing.assert_allclose(ours[m], ref[m], atol=1e-4, rtol=0, err_msg=m)
    per_image = attention_table(load_clip("tiny").vision_model, feeder,
                                **EvalConfig(batch_size=32, aggregate="per_image").metric_options())
    gap = max(abs(a - b) for m in ref for a, b in zip(per_image[m], ref[m]))
    assert gap > 1e-4  # the test tells the two aggregations apart ...
    ascending = Feeder(sp.test.subset(np.sort(sp.eval_idx)), "cpu")
    resorted = attention_table(load_clip("tiny").vision_model, ascending, **EvalConfig().metric_options())
    assert max(abs(a - b) for m in ref for a, b in zip(resorted[m], ref[m])) > 1e-4  # ... and the orders


# ---------------------------------------------------------------- preprocessing

@pytest.mark.parametrize("w, h, mode", [
    (64, 64, "RGB"),      # EuroSAT: upscaled
    (500, 375, "RGB"),    # a Pets photo: downscaled, landscape
    (375, 500, "L"),      # portrait, grey
    (33, 47, "RGBA"),     # odd excess: torchvision rounds the offset to even
    (40, 37, "P"),
    (37, 40, "CMYK"),
])
def test_original_preprocessing_equals_torchvision_recipe_by_hand(w, h, mode):
    rng = np.random.default_rng(w * h)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 4 if mode == "RGBA" else 3), dtype=np.uint8))
    img = img if img.mode == mode else img.convert(mode)
    got = data.preprocess(img, S, "original", "drop")
    np.testing.assert_array_equal(got, original_pixels(img, S))
    if mode in ("RGB", "L"):  # torch's antialiased bilinear agrees up to rounding
        x = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)[None].float()
        nw, nh = (S, int(S * h / w)) if w <= h else (int(S * w / h), S)
        y = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = round((nh - S) / 2), round((nw - S) / 2)
        crop = y[0, :, top:top + S, left:left + S].round().clamp(0, 255).numpy()
        assert np.abs(crop - got).max() <= 2 and np.abs(crop - got).mean() < 0.5


def test_original_crop_offset_rounds_half_to_even():
    # 32 wide: no resize. 35 high (excess 3): the crop starts at row 2, the CLIP processor's
    # at row 1; 37 high (excess 5): at row 2, not 3 as `int((excess + 1) * 0.5)` (torchvision
    # before 0.9) would
    rng = np.random.default_rng(0)
    for h, top in ((35, 2), (37, 2), (33, 0)):
        arr = rng.integers(0, 256, (h, 32, 3), dtype=np.uint8)
        got = data.preprocess(Image.fromarray(arr), S, "original")
        np.testing.assert_array_equal(got, arr[top:top + S].transpose(2, 0, 1), err_msg=f"height {h}")
        assert centre_offset(h - S) == top
    arr = rng.integers(0, 256, (35, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(data.preprocess(Image.fromarray(arr), S, "clip", "white"),
                                  arr[1:33].transpose(2, 0, 1))


def test_alpha_dropped_or_composited_on_white():
    rgba = np.zeros((S, S, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)  # stored colour of fully transparent pixels
    img = Image.fromarray(rgba)
    assert data.preprocess(img, S, "original", "drop")[:, 5, 5].tolist() == [10, 20, 30]
    assert data.preprocess(img, S, "original", "white")[:, 5, 5].tolist() == [255, 255, 255]
    with pytest.raises(data.DataError, match="data.alpha one of drop, white"):
        data.preprocess(img, S, "original", "black")


def _with_orientation(arr: np.ndarray, orientation: int) -> bytes:
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif)
    return buf.getvalue()


def test_exif_orientation_applied_as_datasets_decodes(tmp_path):
    import datasets as hfd

    rng = np.random.default_rng(3)
    arrs = [rng.integers(0, 256, (24, 40, 3), dtype=np.uint8) for _ in range(4)]
    cells = [{"bytes": _with_orientation(a, o), "path": None} for a, o in zip(arrs, (1, 6, 3, 8))]
    feats = hfd.Features({"image": hfd.Image(), "label": hfd.ClassLabel(names=["a", "b"])})
    ds = hfd.Dataset.from_dict({"image": cells, "label": [0, 1, 0, 1]}, features=feats)
    hfd.DatasetDict(train=ds, test=ds).save_to_disk(str(tmp_path / "exif"))
    test = load_test_split(f"hf:{tmp_path / 'exif'}", _cfg(tmp_path), image_size=S)
    decoded = [hfd.Image().decode_example(c) for c in cells]  # `datasets`' own decoding
    assert [d.size for d in decoded] == [(40, 24), (24, 40), (40, 24), (24, 40)]  # 6 and 8 turn it
    np.testing.assert_array_equal(test.images, np.stack([original_pixels(d, S) for d in decoded]))


# ---------------------------------------------------------------- hub look-alikes

def test_eurosat_like_source_takes_test_not_a_corrupted_copy(tmp_path):
    """tanganke/eurosat's schema: 64×64 RGB, 10 descriptive names, corrupted test copies."""
    import datasets as hfd

    rng = np.random.default_rng(8)
    names = ["annual crop land", "forest", "brushland or shrubland", "highway or road",
             "industrial buildings", "pasture land", "permanent crop land", "residential buildings",
             "river", "lake or sea"]
    feats = hfd.Features({"image": hfd.Image(), "label": hfd.ClassLabel(names=names)})

    def make(n, shift=0):
        imgs = [Image.fromarray(np.clip(rng.integers(0, 200, (64, 64, 3)) + shift, 0, 255).astype(np.uint8))
                for _ in range(n)]
        return hfd.Dataset.from_dict({"image": imgs, "label": [i % 10 for i in range(n)]}, features=feats)

    parts = {"train": make(30), "test": make(40)}
    parts.update({k: make(40, 55) for k in ("contrast", "gaussian_noise", "impulse_noise", "jpeg_compression",
                                            "motion_blur", "pixelate", "spatter")})
    hfd.DatasetDict(parts).save_to_disk(str(tmp_path / "eurosat"))
    sp = load_splits(f"hf:{tmp_path / 'eurosat'}", _cfg(tmp_path, eval_subset_size=20), image_size=S)
    test = parts["test"]
    assert (len(sp.train), len(sp.test)) == (30, 40) and sp.test.class_names == names
    assert sp.eval_idx.tolist() == original_eval_subset(test["label"], 20, 42)
    np.testing.assert_array_equal(sp.test.images, np.stack([original_pixels(r["image"], S) for r in test]))


def _pets_like(tmp_path):
    """timm/oxford-iiit-pet's schema: mixed modes, 37 breeds, image_id, label_cat_dog."""
    import datasets as hfd

    rng = np.random.default_rng(5)
    breeds = [f"breed_{i}" if i % 3 else f"Breed{i}" for i in range(37)]
    feats = hfd.Features({"image": hfd.Image(), "label": hfd.ClassLabel(names=breeds),
                          "image_id": hfd.Value("string"),
                          "label_cat_dog": hfd.ClassLabel(names=["cat", "dog"])})
    modes = ["RGB", "L", "CMYK", "RGBA", "P"]
    parts = {}
    for split, per in (("train", 1), ("test", 2)):
        labels = rng.permutation(np.repeat(np.arange(37), per)).tolist()
        images = []
        for i in range(len(labels)):
            w, h = int(rng.integers(20, 60)), int(rng.integers(20, 60))
            im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            images.append(im.convert(modes[i % len(modes)]))
        parts[split] = hfd.Dataset.from_dict(
            {"image": images, "label": labels, "image_id": [f"{split}_{i}" for i in range(len(labels))],
             "label_cat_dog": [c % 2 for c in labels]}, features=feats)
    hfd.DatasetDict(parts).save_to_disk(str(tmp_path / "pets"))
    return tmp_path / "pets", parts


def test_pets_like_source_reproduces_the_originals_eval_images(tmp_path):
    path, parts = _pets_like(tmp_path)
    sp = load_splits(f"hf:{path}", _cfg(tmp_path, eval_subset_size=40), image_size=S)
    test = parts["test"]
    # 37 classes: 1 each, then 3 topped up; in draw order, pixels as the original made them
    assert sp.eval_idx.tolist() == original_eval_subset(test["label"], 40, 42)
    want = np.stack([original_pixels(test[int(i)]["image"], S) for i in sp.eval_idx])
    np.testing.assert_array_equal(sp.eval_set.images, want)
    assert sp.eval_set.labels.tolist() == [test[int(i)]["label"] for i in sp.eval_idx]
    assert sp.info["preprocess"] == "original-drop"
    clip_way = load_splits(f"hf:{path}", _cfg(tmp_path, eval_subset_size=40, preprocess="clip"), image_size=S)
    assert not np.array_equal(clip_way.test.images, sp.test.images)  # its own cache entry
    assert len(list((tmp_path / "cache" / "images").glob("*-test-*"))) == 2


def test_cifar100_like_prompts_use_raw_names_by_default(tmp_path):
    import datasets as hfd

    rng = np.random.default_rng(6)
    feats = hfd.Features({"img": hfd.Image(), "fine_label": hfd.ClassLabel(names=CIFAR100),
                          "coarse_label": hfd.ClassLabel(names=[f"super{i}" for i in range(20)])})
    ds = hfd.Dataset.from_dict({"img": [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
                                        for _ in range(10)],
                                "fine_label": list(range(0, 100, 10)), "coarse_label": [0] * 10}, features=feats)
    hfd.DatasetDict(train=ds, test=ds).save_to_disk(str(tmp_path / "cifar"))
    test = load_test_split(f"hf:{tmp_path / 'cifar'}", _cfg(tmp_path, label_column="fine_label"), image_size=S)
    assert test.class_names == [humanize(n) for n in CIFAR100]
    raw = capped(test, ZeroShotConfig())  # the default: the original's raw names
    assert raw.class_names == CIFAR100 and raw.class_names[26] == "cra"
    assert capped(test, ZeroShotConfig(class_names="humanized")).class_names == test.class_names
    changed = [a for a, b in zip(CIFAR100, test.class_names) if a != b]
    assert changed == ["aquarium_fish", "lawn_mower", "maple_tree", "oak_tree", "palm_tree", "pickup_truck",
                       "pine_tree", "sweet_pepper", "willow_tree"]
    assert raw.images is test.images  # a view: no pixels copied
    assert capped(raw, ZeroShotConfig(max_images=4)).class_names == CIFAR100


# ---------------------------------------------------------------- Flowers-102

def _flowers_like(tmp_path, n_test=12):
    """nelorth/oxford-flowers' schema: `image` (Image), `label` (ClassLabel named by the image
    folders' numbers, in string order: '1', '10', '100', '101', '102', '11', ...), train/test."""
    import datasets as hfd

    names = sorted(str(k) for k in range(1, 103))
    rng = np.random.default_rng(11)
    feats = hfd.Features({"image": hfd.Image(), "label": hfd.ClassLabel(names=names)})

    def part(labels):
        return hfd.Dataset.from_dict({"image": [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
                                                for _ in labels], "label": labels}, features=feats)

    labels = [0, 1, 4, 14, 101, 50, 2, 3, 14, 0, 7, 9][:n_test]
    hfd.DatasetDict(train=part([5, 6, 7, 8]), test=part(labels)).save_to_disk(str(tmp_path / "flowers"))
    return tmp_path / "flowers", names, labels


def test_flowers102_like_local_copy_prompts_as_the_original(tmp_path):
    from attncollapse.data import FLOWERS102_NAMES

    path, names, labels = _flowers_like(tmp_path)
    test = load_test_split(f"hf:{path}", _cfg(tmp_path), image_size=S)
    assert test.labels.tolist() == labels and len(test) == 12  # the test split, in row order
    raw = capped(test, ZeroShotConfig())  # the original's `load_flowers102` names: folder numbers
    assert raw.class_names == names and raw.class_names[:5] == ["1", "10", "100", "101", "102"]
    human = capped(test, ZeroShotConfig(class_names="humanized")).class_names
    # label i is folder names[i], flower number int(names[i]) of the official list (101 is "99")
    assert (human[0], human[1], human[4], human[14], human[101]) == (
        "pink primrose", "globe thistle", "blackberry lily", "hard-leaved pocket orchid", "bromelia")
    assert sorted(human) == sorted(FLOWERS102_NAMES) and len(set(human)) == 102
    assert capped(raw, ZeroShotConfig(class_names="humanized")).class_names == human  # raw → readable again


def test_flowers102_shortcut_loads_the_hub_id(tmp_path, monkeypatch):
    import datasets as hfd

    from attncollapse.config import RunConfig, hub_dataset_id
    from attncollapse.study import hub_needs

    path, names, labels = _flowers_like(tmp_path)
    asked = []

    def fake_load_dataset(repo, *a, **k):  # the hub's answer, offline: the look-alike
        asked.append(repo)
        return hfd.load_from_disk(str(path))

    monkeypatch.setattr(hfd, "load_dataset", fake_load_dataset)
    test = load_test_split("flowers102", _cfg(tmp_path), image_size=S)
    assert asked == ["nelorth/oxford-flowers"]
    assert test.labels.tolist() == labels and test.raw_class_names == names
    assert test.class_names[0] == "pink primrose"
    assert hub_dataset_id("flowers102") == "nelorth/oxford-flowers"
    need = hub_needs([("E2", RunConfig(zeroshot=ZeroShotConfig(datasets=["cifar100", "flowers102"])))])
    assert need[("dataset", "nelorth/oxford-flowers")] == ["E2"]  # the preflight knows it
