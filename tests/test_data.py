"""The data stage on files the tests write: sources, CLIP preprocessing, cache, splits, errors.

Offline throughout: `hf:` datasets are written with `datasets` + `save_to_disk`, image
folders with PIL. The slow path (PIL per image, the transformers processor) is compared
against the cached fast path value by value.
"""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from attncollapse.data import cache as cache_mod
from attncollapse import data
from attncollapse.config import DataConfig
from attncollapse.data import DataError, Feeder, eval_subset_indices, load_splits, load_test_split

S = 32  # the tiny model's resolution


def _cfg(tmp_path, **kw) -> DataConfig:
    # these tests check the CLIP processor's preprocessing against `_slow`; the original
    # study's (the default) is checked in test_original.py
    kw.setdefault("preprocess", "clip")
    kw.setdefault("alpha", "white")
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("cache_workers", 1)
    kw.setdefault("eval_subset_size", 10)
    return DataConfig(**kw)


def _rand_image(rng, w, h, mode="RGB") -> Image.Image:
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return img if mode == "RGB" else img.convert(mode)


def _slow(img: Image.Image, size: int) -> np.ndarray:
    """Reference: CLIP preprocessing written directly with PIL, independently of cache.py."""
    if img.mode in ("RGBA", "LA") or "transparency" in img.info:
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img.convert("RGBA"))
    img = img.convert("RGB")
    w, h = img.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


# Sizes and modes that exercise portrait, landscape, square, odd crops, grey, palette, alpha.
_SHAPES = [(40, 30, "RGB"), (30, 47, "RGB"), (33, 33, "L"), (64, 37, "P"), (25, 60, "RGBA"),
           (8, 8, "RGB"), (100, 51, "RGB"), (51, 100, "LA")]


@pytest.fixture
def folder(tmp_path):
    """imagefolder with train/ and test/; class names with underscores; varied images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    truth = {}
    for split, n in (("train", 6), ("test", 4)):
        for cls in ("golden_retriever", "tabby_cat", "zebra"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                w, h, mode = _SHAPES[(i + len(cls)) % len(_SHAPES)]
                img = _rand_image(rng, w, h, mode)
                img.save(d / f"{i:02d}.png")
                truth[str(d / f"{i:02d}.png")] = img
    return root, truth


@pytest.fixture
def hf_dir(tmp_path):
    """A DatasetDict (train 30 / test 15, 3 classes) with Image + ClassLabel features."""
    import datasets as hfd

    rng = np.random.default_rng(1)
    feats = hfd.Features({"image": hfd.Image(), "label": hfd.ClassLabel(names=["sea_lake", "forest", "river"]),
                          "is_water": hfd.ClassLabel(names=["no", "yes"]), "note": hfd.Value("string")})
    parts, imgs = {}, {}
    for split, n in (("train", 30), ("test", 15)):
        images = [_rand_image(rng, *_SHAPES[i % len(_SHAPES)][:2]) for i in range(n)]
        labels = [i % 3 for i in range(n)]
        parts[split] = hfd.Dataset.from_dict(
            {"image": images, "label": labels, "is_water": [int(c != 1) for c in labels],
             "note": ["x"] * n}, features=feats)
        imgs[split] = (images, labels)
    path = tmp_path / "hfds"
    hfd.DatasetDict(parts).save_to_disk(str(path))
    return path, imgs


# ---------------------------------------------------------------- preprocessing equivalence

def test_preprocess_matches_direct_pil_for_every_shape_and_mode():
    rng = np.random.default_rng(2)
    for w, h, mode in _SHAPES:
        img = _rand_image(rng, w, h, mode)
        got = data.preprocess(img, S, "clip", "white")
        assert got.shape == (3, S, S) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, _slow(img, S), err_msg=f"{w}x{h} {mode}")


def test_cache_then_feeder_matches_transformers_clip_processor(folder, tmp_path):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    root, truth = folder
    test = load_test_split(f"imagefolder:{root}", _cfg(tmp_path), image_size=S)
    proc = CLIPImageProcessorPil(size={"shortest_edge": S}, crop_size={"height": S, "width": S})
    files = sorted(p for p in truth if "/test/" in p)
    ref = proc([Image.open(p) for p in files], return_tensors="pt")["pixel_values"]
    x, y = Feeder(test, "cpu").get(torch.arange(len(test)))
    assert x.shape == ref.shape == (12, 3, S, S)
    torch.testing.assert_close(x, ref.float(), atol=2e-6, rtol=0)
    assert y.tolist() == [0] * 4 + [1] * 4 + [2] * 4


# ---------------------------------------------------------------- sources

def test_hf_from_disk_auto_columns_classes_and_pixels(hf_dir, tmp_path):
    path, imgs = hf_dir
    sp = load_splits(f"hf:{path}", _cfg(tmp_path), image_size=S)
    # two ClassLabel columns: "label" is preferred; names are made readable for prompts
    assert sp.train.class_names == ["sea lake", "forest", "river"]
    assert len(sp.train) == 30 and len(sp.test) == 15 and sp.val is sp.test
    for split, iset in (("train", sp.train), ("test", sp.test)):
        images, labels = imgs[split]
        assert iset.labels.tolist() == labels
        np.testing.assert_array_equal(iset.images, np.stack([_slow(im, S) for im in images]))
    assert isinstance(sp.train.images, np.memmap) and not sp.train.images.flags.writeable
    assert sp.info["source"] == f"hf:{path.resolve()}"


def test_hf_named_columns_and_single_split(tmp_path):
    import datasets as hfd

    rng = np.random.default_rng(3)
    n = 40
    # "image", not CIFAR-100's "img": that layout is recognised (test_offline.py)
    feats = hfd.Features({"image": hfd.Image(), "coarse_label": hfd.ClassLabel(names=["a", "b"]),
                          "fine_label": hfd.ClassLabel(names=["c0", "c1", "c2", "c3"])})
    ds = hfd.Dataset.from_dict({"image": [_rand_image(rng, 12, 12) for _ in range(n)],
                                "coarse_label": [i % 2 for i in range(n)],
                                "fine_label": [i % 4 for i in range(n)]}, features=feats)
    ds.save_to_disk(str(tmp_path / "one"))
    src = f"hf:{tmp_path / 'one'}"
    with pytest.raises(DataError, match="ClassLabel columns .*coarse_label, fine_label.*label_column"):
        load_test_split(src, _cfg(tmp_path), image_size=S)
    cfg = _cfg(tmp_path, image_column="image", label_column="fine_label", eval_subset_size=8)
    sp = load_splits(src, cfg, image_size=S)
    # no test split on disk: the fixed stratified 80/20 of `sources.SOURCE_SPLIT_SEED`
    assert (len(sp.train), len(sp.test)) == (32, 8)
    assert np.bincount(sp.test.labels).tolist() == [2, 2, 2, 2]
    assert sp.test.class_names == ["c0", "c1", "c2", "c3"]


def test_named_shortcuts_are_the_original_ids_and_columns(monkeypatch, tmp_path):
    import datasets as hfd

    from attncollapse.data import sources

    assert sources.HF_SHORTCUTS["eurosat"]["id"] == "tanganke/eurosat"
    assert sources.HF_SHORTCUTS["pets"]["id"] == "timm/oxford-iiit-pet"
    rng = np.random.default_rng(4)
    feats = hfd.Features({"img": hfd.Image(), "fine_label": hfd.ClassLabel(names=["aquarium_fish", "apple"]),
                          "coarse_label": hfd.ClassLabel(names=["x", "y"])})

    def fake_hub(name, *a, **k):  # stands in for the hub: nothing leaves this machine
        assert name == "uoft-cs/cifar100"
        make = lambda n: hfd.Dataset.from_dict(  # noqa: E731
            {"img": [_rand_image(rng, 8, 8) for _ in range(n)], "fine_label": [i % 2 for i in range(n)],
             "coarse_label": [0] * n}, features=feats)
        return hfd.DatasetDict(train=make(20), test=make(12))

    monkeypatch.setattr(hfd, "load_dataset", fake_hub)
    test = load_test_split("cifar100", _cfg(tmp_path), image_size=S)
    assert test.name == "hf:uoft-cs/cifar100/test" and len(test) == 12
    assert test.class_names == ["aquarium fish", "apple"] and test.labels.tolist() == [0, 1] * 6


def test_imagefolder_with_split_folders(folder, tmp_path):
    root, truth = folder
    sp = load_splits(f"imagefolder:{root}", _cfg(tmp_path, eval_subset_size=6), image_size=S)
    assert sp.train.class_names == ["golden retriever", "tabby cat", "zebra"]
    assert np.bincount(sp.train.labels).tolist() == [6, 6, 6]
    files = sorted(p for p in truth if "/train/" in p)
    np.testing.assert_array_equal(sp.train.images, np.stack([_slow(truth[p], S) for p in files]))
    assert np.bincount(sp.test.labels[sp.eval_idx]).tolist() == [2, 2, 2]


def test_imagefolder_without_split_folders_is_stratified(tmp_path):
    rng = np.random.default_rng(5)
    for c, n in (("a", 10), ("b", 20)):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(n):
            _rand_image(rng, 9, 9).save(tmp_path / "f" / c / f"{i}.jpg")
    cfg = _cfg(tmp_path, eval_subset_size=6)
    sp = load_splits(f"imagefolder:{tmp_path / 'f'}", cfg, image_size=S)
    assert np.bincount(sp.train.labels).tolist() == [8, 16]
    assert np.bincount(sp.test.labels).tolist() == [2, 4]
    train_rows = {r.tobytes() for r in sp.train.images}
    assert not any(r.tobytes() in train_rows for r in sp.test.images)


def test_digits(tmp_path):
    from sklearn.datasets import load_digits

    sp = load_splits("digits", _cfg(tmp_path), image_size=S)
    assert (len(sp.train), len(sp.test)) == (1437, 360)
    assert sp.test.class_names[:3] == ["zero", "one", "two"]
    counts = np.bincount(sp.test.labels)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified 20% of ~180 per class
    im = sp.test.images
    assert im.shape == (360, 3, S, S)
    np.testing.assert_array_equal(im[:, 0], im[:, 2])  # grey → 3 equal channels
    # values: 8×8 digit scaled to 0..255 then CLIP-resized; find image 0 among the originals
    d = load_digits()
    raw = np.round(d.images * (255 / 16)).astype(np.uint8)
    ref = np.stack([_slow(Image.fromarray(r), S) for r in raw])
    keys = {r.tobytes(): lab for r, lab in zip(ref, d.target)}
    assert all(keys[r.tobytes()] == lab for r, lab in zip(im, sp.test.labels))
    again = load_splits("digits", _cfg(tmp_path), image_size=S)
    np.testing.assert_array_equal(again.test.labels, sp.test.labels)


def test_synthetic_api_unchanged(tmp_path):
    cfg = _cfg(tmp_path, synthetic_train=60, synthetic_test=40, max_train_images=30)
    sp = load_splits("synthetic", cfg, image_size=S)
    assert (len(sp.train), len(sp.test)) == (30, 40) and sp.protocol == "hub"
    assert np.bincount(sp.train.labels).tolist() == [3] * 10  # the cap is stratified
    np.testing.assert_array_equal(sp.test.images, data.synthetic(40, 10, S, seed=42, split="test").images)
    assert not (tmp_path / "cache").exists()  # procedural: never cached


# ---------------------------------------------------------------- splits, eval subset, feeder

def _rows(iset):
    return [r.tobytes() for r in iset.images]


def test_pooled_and_holdout_protocols_are_stratified_and_disjoint(tmp_path):
    base = _cfg(tmp_path, synthetic_train=200, synthetic_test=100, synthetic_classes=5)
    hub = load_splits("synthetic", base, image_size=8)
    everything = set(_rows(hub.train)) | set(_rows(hub.test))
    assert len(everything) == 300  # noise makes every image unique: rows identify images

    pooled = load_splits("synthetic", base.model_copy(update={"split": "pooled_80_20"}), image_size=8)
    tr, te = _rows(pooled.train), _rows(pooled.test)
    assert (len(tr), len(te)) == (240, 60) and pooled.val is pooled.test
    assert not set(tr) & set(te) and set(tr) | set(te) == everything
    assert np.bincount(pooled.test.labels).tolist() == [12] * 5

    ho = load_splits("synthetic", base.model_copy(update={"split": "holdout_val", "val_frac": 0.2}), image_size=8)
    assert (len(ho.train), len(ho.val), len(ho.test)) == (160, 40, 100)
    assert not set(_rows(ho.train)) & set(_rows(ho.val))
    assert set(_rows(ho.train)) | set(_rows(ho.val)) == set(_rows(hub.train))
    assert _rows(ho.test) == _rows(hub.test)
    assert np.bincount(ho.val.labels).tolist() == [8] * 5


def test_eval_subset_balanced_deterministic_and_by_hand():
    labels = np.repeat(np.arange(4), [30, 25, 40, 5])  # class 3 too small: topped up
    idx = eval_subset_indices(labels, 40, 42)
    rng = np.random.RandomState(42)
    want = []
    for c in range(4):
        pool = np.flatnonzero(labels == c)
        want += rng.choice(pool, min(10, len(pool)), replace=False).tolist()
    rest = np.setdiff1d(np.arange(len(labels)), want)
    want += rng.choice(rest, 40 - len(want), replace=False).tolist()
    assert idx.tolist() == want  # draw order, as the original: it decides the metric batches
    np.testing.assert_array_equal(idx, eval_subset_indices(labels, 40, 42))
    assert len(set(idx.tolist())) == 40
    bal = eval_subset_indices(np.arange(200) % 10, 20, 42)
    assert np.bincount((np.arange(200) % 10)[bal]).tolist() == [2] * 10


def test_feeder_equals_normalising_by_hand():
    iset = data.synthetic(12, 3, 16, seed=3)
    f = Feeder(iset, "cpu")
    idx = torch.tensor([5, 0, 11])
    flip = torch.tensor([True, False, True])
    x, y = f.get(idx, flip=flip)
    mean = np.asarray(data.CLIP_MEAN, np.float32)[:, None, None]
    std = np.asarray(data.CLIP_STD, np.float32)[:, None, None]
    for k, i in enumerate(idx.tolist()):
        ref = (iset.images[i].astype(np.float32) / 255.0 - mean) / std
        ref = ref[..., ::-1] if flip[k] else ref
        np.testing.assert_allclose(x[k].numpy(), ref, atol=1e-6, rtol=0)
    assert y.tolist() == iset.labels[[5, 0, 11]].tolist() and x.dtype == torch.float32
    assert sum(len(b[1]) for b in f.batches(5)) == 12


# ---------------------------------------------------------------- cache

def _entry(tmp_path, split):
    (d,) = (tmp_path / "cache" / "images").glob(f"*-{split}-{S}px-*")
    return d


def test_warm_cache_is_reused_silently_and_test_only_builds_test(folder, tmp_path):
    root, _ = folder
    cfg = _cfg(tmp_path)
    first = load_test_split(f"imagefolder:{root}", cfg, image_size=S)
    assert [p.name.split("-")[1] for p in (tmp_path / "cache" / "images").iterdir()] == ["test"]
    man = json.loads((_entry(tmp_path, "test") / "manifest.json").read_text())
    assert man["count"] == 12 and man["shape"] == [12, 3, S, S] and man["version"] == data.PREPROCESS_VERSION
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load_test_split(f"imagefolder:{root}", cfg, image_size=S)
    np.testing.assert_array_equal(first.images, again.images)


@pytest.mark.parametrize("damage, reason", [
    ("pixels", "corrupt"), ("truncate", "corrupt"), ("manifest", "partial"),
    ("version", "stale"), ("new_file", "stale"),
])
def test_damaged_cache_is_rebuilt_with_a_warning(folder, tmp_path, damage, reason):
    root, truth = folder
    cfg = _cfg(tmp_path)
    good = np.array(load_test_split(f"imagefolder:{root}", cfg, image_size=S).images)
    d = _entry(tmp_path, "test")
    if damage == "pixels":  # image 0 is always in the sampled checksum
        arr = np.load(d / "images.npy", mmap_mode="r+")
        arr[0, 0, 0, :4] ^= 0xFF
        arr.flush()
        del arr
    elif damage == "truncate":
        raw = (d / "images.npy").read_bytes()
        (d / "images.npy").write_bytes(raw[: len(raw) // 2])
    elif damage == "manifest":
        (d / "manifest.json").unlink()
    elif damage == "version":
        m = json.loads((d / "manifest.json").read_text())
        m["version"] = -1
        (d / "manifest.json").write_text(json.dumps(m))
    else:
        _rand_image(np.random.default_rng(9), 20, 20).save(root / "test" / "zebra" / "99.png")
    with pytest.warns(UserWarning, match=reason):
        rebuilt = load_test_split(f"imagefolder:{root}", cfg, image_size=S)
    if damage == "new_file":
        assert len(rebuilt) == 13 and rebuilt.labels[-1] == 2
    else:
        np.testing.assert_array_equal(rebuilt.images, good)
    assert cache_mod.check_entry(d, _raw_test(root, cfg), S, "clip-white") is None


def _raw_test(root, cfg):
    from attncollapse.data import resolve

    return resolve(f"imagefolder:{root}", cfg, image_size=S).splits["test"]


def test_parallel_build_equals_in_process_build(folder, hf_dir, tmp_path, monkeypatch):
    root, _ = folder
    path, _ = hf_dir
    one = load_splits(f"imagefolder:{root}", _cfg(tmp_path, cache_dir=str(tmp_path / "c1"), eval_subset_size=6),
                      image_size=S)
    hf_one = load_test_split(f"hf:{path}", _cfg(tmp_path, cache_dir=str(tmp_path / "c1")), image_size=S)
    monkeypatch.setattr(cache_mod, "_INPROCESS_BELOW", 0)  # force worker processes on tiny sets
    two = load_splits(f"imagefolder:{root}",
                      _cfg(tmp_path, cache_dir=str(tmp_path / "c2"), cache_workers=2, eval_subset_size=6),
                      image_size=S)
    hf_two = load_test_split(f"hf:{path}", _cfg(tmp_path, cache_dir=str(tmp_path / "c2"), cache_workers=2),
                             image_size=S)
    np.testing.assert_array_equal(one.train.images, two.train.images)
    np.testing.assert_array_equal(hf_one.images, hf_two.images)
    # readers must also survive pickling (spawn platforms send them to the workers)
    from attncollapse.data import resolve

    for src in (f"imagefolder:{root}", f"hf:{path}", "digits"):
        raw = resolve(src, _cfg(tmp_path), image_size=S).splits["test"]
        back = pickle.loads(pickle.dumps(raw.reader))
        a, b = next(raw.reader.images(1, 2)), next(back.images(1, 2))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------- bad input

def test_bad_inputs_give_one_line_data_errors(folder, hf_dir, tmp_path, monkeypatch):
    root, _ = folder
    path, _ = hf_dir
    cfg = _cfg(tmp_path)

    def err(source, cfg=cfg, match=None):
        with pytest.raises(DataError, match=match) as e:
            load_splits(source, cfg, image_size=S)
        assert "\n" not in str(e.value)
        return str(e.value)

    msg = err("imagenet", match="unknown data source 'imagenet'")
    assert all(k in msg for k in ("eurosat", "pets", "cifar100", "digits", "synthetic", "hf:", "imagefolder:"))
    err("digits:x", match="unknown data source")
    err(f"imagefolder:{tmp_path / 'nope'}", match="does not exist")
    err(f"hf:{tmp_path / 'nope'}", match="does not exist")
    err(f"hf:{path}", cfg=_cfg(tmp_path, label_column="species"),
        match=r"label column 'species' does not exist; available columns: image, label, is_water, note")
    err(f"hf:{path}", cfg=_cfg(tmp_path, image_column="photo"),
        match=r"image column 'photo' does not exist; available columns: image, label")
    err("synthetic", cfg=_cfg(tmp_path, synthetic_test=20, eval_subset_size=50),
        match="eval subset needs 50 images, the test split has only 20")

    (root / "train" / "yak").mkdir()
    err(f"imagefolder:{root}", match=r"empty class folder .*train/yak")
    (root / "train" / "yak").rmdir()

    bad = root / "test" / "zebra" / "broken.png"
    bad.write_bytes(b"not a png")
    err(f"imagefolder:{root}", match=r"unreadable image .*test/zebra/broken\.png")
    monkeypatch.setattr(cache_mod, "_INPROCESS_BELOW", 0)  # the same error from a worker process
    err(f"imagefolder:{root}", cfg=_cfg(tmp_path, cache_workers=2), match=r"unreadable image .*broken\.png")
    assert not list((tmp_path / "cache" / "images").glob(".*build*"))  # no half-built entry left

    try:
        import torchvision  # noqa: F401
    except ImportError:
        err("torchvision:CIFAR10", match="needs torchvision, which is not installed")


def test_large_synthetic_sets_are_shared_through_the_disk_cache(tmp_path):
    from attncollapse.data import sources
    from attncollapse.config import DataConfig

    n = sources.SYNTHETIC_DISK_MIN
    cfg = DataConfig(cache_dir=str(tmp_path), synthetic_train=n, synthetic_test=300, eval_subset_size=200)
    first = data.load_splits("synthetic", cfg, image_size=8)
    again = data.load_splits("synthetic", cfg, image_size=8)
    direct = data.synthetic(n, 10, 8, seed=42, split="train")
    assert isinstance(again.train.images, np.memmap)  # read back from disk, not regenerated
    np.testing.assert_array_equal(np.asarray(again.train.images), direct.images)
    np.testing.assert_array_equal(first.train.labels, direct.labels)
    # A damaged file is made again, not used.
    entry = next(p for p in (tmp_path / "synthetic").iterdir() if p.name.endswith("-train"))
    (entry / "images.npy").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="synthetic set .* is incomplete or damaged .*; making it again"):
        third = data.load_splits("synthetic", cfg, image_size=8)
    np.testing.assert_array_equal(np.asarray(third.train.images), direct.images)
    # Every image inverted (a valid .npy of the right shape): only the checksum can tell.
    arr = np.load(entry / "images.npy", mmap_mode="r+")
    arr[:] = 255 - arr
    arr.flush()
    del arr
    with pytest.warns(UserWarning, match="synthetic set .* is damaged \\(checksum mismatch"):
        fourth = data.load_splits("synthetic", cfg, image_size=8)
    np.testing.assert_array_equal(np.asarray(fourth.train.images), direct.images)
