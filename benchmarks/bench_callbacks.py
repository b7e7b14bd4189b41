"""What `CollapseCallback` adds to a `transformers.Trainer` epoch when it measures every epoch.

The docs' tiny ViT classifier (image 32, patch 8, hidden 32, 3 layers) trained by a real
`Trainer` with an evaluation every epoch, with and without `CollapseCallback` on a fixed
set of `--fixed` images (the study's eval subset is 200): the reference at train start, then
at every evaluation the four metrics, Δ, CKA, embedding drift and weight change, written to
TensorBoard with a map picture of 3 images. Both trainers are built and run
in this one invocation, interleaved (without, with, without, with, ...) so that a busy
machine slows both alike; the table reports the median seconds per epoch and the ratio,
and the seconds spent inside the callback per epoch (timed around its measurement: the
part of the cost that a busy machine's noise does not blur).
Target (issue 21): at most 1.10.

    python benchmarks/bench_callbacks.py                 # 1024 training images, 200 fixed
    python benchmarks/bench_callbacks.py --train 512 --fixed 64 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import device_name, print_table  # noqa: E402

from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification  # noqa: E402

from attncollapse.integrations import CollapseCallback  # noqa: E402


class _Timed:
    """Seconds spent inside the callback's monitor (start and every measurement, trackers included):
    the noise-free part of the cost."""

    spent = 0.0

    @staticmethod
    def callback(fixed: torch.Tensor, log_dir: str) -> CollapseCallback:
        cb = CollapseCallback(fixed, log_dir=log_dir)  # TensorBoard and 3 map pictures, the defaults
        for name in ("start", "measure"):
            inner = getattr(cb.monitor, name)

            def timed(*args, _inner=inner, **kw):
                t0 = time.perf_counter()
                try:
                    return _inner(*args, **kw)
                finally:
                    _Timed.spent += time.perf_counter() - t0

            setattr(cb.monitor, name, timed)
        return cb


def _epoch_seconds(n_train: int, fixed: torch.Tensor | None, epochs: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3,
                                                num_attention_heads=4, intermediate_size=64, num_labels=10,
                                                initializer_range=0.2))
    images = torch.randn(n_train + 64, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    data = [{"pixel_values": x, "labels": i % 10} for i, x in enumerate(images)]
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), num_train_epochs=epochs, per_device_train_batch_size=32,
                             per_device_eval_batch_size=64, learning_rate=1e-3, eval_strategy="epoch",
                             save_strategy="no", logging_strategy="epoch", report_to="none", use_cpu=True,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data[:n_train], eval_dataset=data[n_train:])
    if fixed is not None:
        trainer.add_callback(_Timed.callback(fixed, tempfile.mkdtemp()))
    t0 = time.perf_counter()
    trainer.train()
    return (time.perf_counter() - t0) / epochs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=1024, help="training images per epoch")
    p.add_argument("--fixed", type=int, default=200, help="images the callback measures every epoch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="runs of each trainer, interleaved")
    a = p.parse_args()
    fixed = torch.randn(a.fixed, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    without, with_cb = [], []
    _epoch_seconds(64, fixed, 1, 0)  # warm-up: first-call costs (imports, allocator) outside the timing
    _Timed.spent = 0.0
    for r in range(a.repeats):
        without.append(_epoch_seconds(a.train, None, a.epochs, r))
        with_cb.append(_epoch_seconds(a.train, fixed, a.epochs, r))
    base, cb = statistics.median(without), statistics.median(with_cb)
    inside = _Timed.spent / (a.repeats * a.epochs)  # seconds in the callback per epoch
    print(f"# {device_name(torch.device('cpu'))}; {a.train} training images/epoch, eval every epoch, "
          f"{a.fixed} fixed images, median of {a.repeats} × {a.epochs} epochs")
    print_table([
        {"trainer": "Trainer (eval each epoch)", "s/epoch": base, "× baseline": 1.0},
        {"trainer": f"+ CollapseCallback ({a.fixed} images)", "s/epoch": cb, "× baseline": cb / base,
         "in callback s/epoch": inside, "(base + in callback) / base": (base + inside) / base},
    ], ["trainer", "s/epoch", "× baseline", "in callback s/epoch", "(base + in callback) / base"])


if __name__ == "__main__":
    main()
