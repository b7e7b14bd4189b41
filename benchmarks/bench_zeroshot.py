"""CIFAR-100-shaped zero-shot evaluation, end to end, through `zeroshot.evaluate_dataset`.

10,000 images at 224 px, 100 classes, ViT-B/32 shapes with random weights. Each row
times one `zeroshot.evaluate_dataset` call from the uint8 `ImageSet` in host memory and the model
on the device to the accuracy numbers: text embeddings (no cache), the uint8 copy to the
device, the image pass(es) and the similarity argmax. A phase breakdown follows.

The random preset `vit-b-32-random` has no real tokenizer. Its text tower has CLIP's
49,408-token vocabulary, so the in-memory byte tokenizer (`tiny_tokenizer`, ids < 514;
what `load_tokenizer` gives every preset) is used as is, and the preset's text config gets
that tokenizer's BOS/EOS/PAD ids (0, 1, 1) so pooling reads the real end-of-text position. One token per
character makes prompts ~3× longer than CLIP's BPE would, so the text side here is
pessimistic. Image content does not affect timing: images are uniform random uint8,
class names are CIFAR-100's.

    python benchmarks/bench_zeroshot.py --device cuda
    python benchmarks/bench_zeroshot.py --device cpu --n 64 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPModel

sys.path.insert(0, str(Path(__file__).parent))
from _common import device_name, peak_memory_gib, print_table, reset_peak, sync  # noqa: E402

from attncollapse import data, models  # noqa: E402
from attncollapse.transfer import text as text_side  # noqa: E402
from attncollapse.transfer import zeroshot  # noqa: E402
from attncollapse.config import ZeroShotConfig  # noqa: E402

# CIFAR-100's fine label names (underscores as spaces, as the zero-shot prompts use them).
CIFAR100 = [n.replace("_", " ") for n in (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm").split()]


def _class_names(k: int) -> list[str]:
    """k distinct names: CIFAR-100's, numbered past 100."""
    return [CIFAR100[i % 100] + (f" {i // 100}" if i >= 100 else "") for i in range(k)]


def _model(device: torch.device) -> CLIPModel:
    config = models.PRESETS["vit-b-32-random"]()
    config.text_config.bos_token_id, config.text_config.eos_token_id, config.text_config.pad_token_id = 0, 1, 1
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return CLIPModel(config).eval().to(device)


def _images(n: int, classes: int, size: int) -> data.ImageSet:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    return data.ImageSet(images, np.arange(n, dtype=np.int64) % classes, _class_names(classes), "bench/test")


def _timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=10_000, help="images (CIFAR-100 test: 10,000)")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--precision", default=None, help="fp16 | bf16 | fp32 (default: fp16 on CUDA, fp32 on CPU)")
    ap.add_argument("--repeats", type=int, default=3, help="warm repeats per row (median reported)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    t_data = time.perf_counter()
    images = _images(args.n, args.classes, args.size)
    t_data = time.perf_counter() - t_data
    clip = _model(device)
    tok = models.tiny_tokenizer()
    torch.manual_seed(0)
    clf = models.build_classifier(clip, args.classes)
    clf_lora = models.apply_lora(models.build_classifier(_model(device), args.classes), rank=8).to(device)
    print(f"device: {device_name(device)}  precision: {precision}  images: {args.n} x {args.size}px, "
          f"{args.classes} classes  batch: {args.batch_size}  (synthetic data built in {t_data:.1f}s, untimed)")

    cases = [
        ("full, single prompt", clf, "full", "single", None),
        ("full, 18-prompt ensemble", clf, "full", "ensemble", None),
        ("full + frozen-projection variant", clf, "full", "single", clip.visual_projection),
        ("lora r8: active + base-only", clf_lora, "lora", "single", clip.visual_projection),
    ]
    rows = []
    for label, model, method, templates, proj in cases:
        zcfg = ZeroShotConfig(templates=templates)

        def run():
            return zeroshot.evaluate_dataset(model, clip, tok, images, zcfg, method=method, pretrained_projection=proj,
                                     device=device, precision=precision, batch_size=args.batch_size)

        reset_peak(device)
        cold, block = _timed(run, device)  # first call: kernel selection, allocator growth
        warm = [_timed(run, device)[0] for _ in range(args.repeats)]
        w = statistics.median(warm) if warm else cold
        rows.append({"case": label, "cold_s": cold, "warm_s": w, "images/s": args.n / w,
                     "peak_GiB": peak_memory_gib(device), "acc": block["acc"]})
    print_table(rows, ["case", "cold_s", "warm_s", "images/s", "peak_GiB", "acc"])

    # Where the time goes (single prompt, full FT), each phase on its own.
    text_s, _ = _timed(lambda: text_side.text_embeddings(clip, tok, images.class_names, "single", device=device), device)
    ens_s, _ = _timed(lambda: text_side.text_embeddings(clip, tok, images.class_names, "ensemble", device=device),
                      device)
    copy_s, feeder = _timed(lambda: data.Feeder(images, device), device)
    img_s, feats = _timed(lambda: zeroshot.image_features(clf, feeder, batch_size=args.batch_size, device=device,
                                                          precision=precision), device)
    text = text_side.text_embeddings(clip, tok, images.class_names, "single", device=device)
    acc_s, _ = _timed(lambda: zeroshot.zeroshot_accuracy(feats, feeder.labels, text), device)
    print()
    print_table([
        {"phase": f"text, single ({args.classes} prompts)", "s": text_s},
        {"phase": f"text, ensemble ({18 * args.classes} prompts)", "s": ens_s},
        {"phase": f"uint8 to device ({images.images.nbytes / 2**30:.2f} GiB)", "s": copy_s},
        {"phase": "image pass (tower + projection)", "s": img_s},
        {"phase": "similarity + top-1/top-5", "s": acc_s},
    ], ["phase", "s"])


if __name__ == "__main__":
    main()
