"""Adaptation time as a fraction of training time, both with the paper's recipes, measured in one run.

1. Composites of real objects on real photos (``sampledata.composite_tree``) are converted.
2. A small CNN trains at K_train with the paper's training recipe (Recipe's defaults: 120 epochs, SGD 0.9,
   weight decay 1e-4, lr 0.1 B/256 divided by 10 every 30 epochs, repeated augmentation with 3 repeats),
   with B = --batch-size because a small set cannot fill the paper's 512.
3. It is adapted at K_test (BN+fc, test DA): with `fixres-fast adapt`'s defaults (the frozen trunk run
   once and cached, the paper's 60 epochs and lr 0.008 B/512), as the paper does (the same, but every
   epoch streamed through the frozen trunk), and cached with 10 epochs (the quick default of streaming).

It prints each adaptation's seconds as a fraction of the training's (training alone: the per-epoch
evaluation is left out of the denominator, which makes the fraction larger, not smaller) and top-1 at
K_test before and after.

    .venv/bin/python tools/bench_adapt.py --out /tmp/bench-adapt --images 1000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fixres_fast.adapt import AdaptConfig, adapt  # noqa: E402
from fixres_fast.convert import ConvertConfig, convert  # noqa: E402
from fixres_fast.loaders.sampler import RASampler  # noqa: E402
from fixres_fast.sampledata import composite_tree  # noqa: E402
from fixres_fast.spec import ADAPT_EPOCHS_STREAMED, EPOCH_FRACTION, FINETUNE_EPOCHS, Recipe  # noqa: E402
from fixres_fast.train import TrainConfig, train  # noqa: E402


def quiet(*_):
    pass


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=1000, help="training images (half as many for validation)")
    p.add_argument("--k-train", type=int, default=32)
    p.add_argument("--k-test", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-paper", action="store_true", help="skip the paper's 60 streamed epochs (the slow part)")
    args = p.parse_args()

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    composite_tree(out / "src", args.images, args.images // 2, size=args.k_test, seed=0)
    data = out / "records"
    convert(ConvertConfig(layout="folder", src=str(out / "src"), out=str(data), workers=args.workers), log=quiet)
    common = dict(backend="torch", device="cpu", workers=args.workers)

    recipe = Recipe(batch_size=args.batch_size)  # the paper's, but for B
    t = time.perf_counter()
    final = train(TrainConfig(data=str(data), out=str(out / "train"), arch="fixres_cnn", k_train=args.k_train,
                              recipe=recipe, **common), log=quiet)
    wall = time.perf_counter() - t
    epochs = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    sampler = RASampler(args.images, repeats=recipe.repeats, epoch_fraction=EPOCH_FRACTION)
    per_epoch = len(sampler) // recipe.batch_size * recipe.batch_size  # images per epoch (whole batches)
    train_s = sum(per_epoch / e["train_img_s"] for e in epochs)
    print(f"training: {recipe.epochs} epochs, B={recipe.batch_size}, lr {recipe.base_lr:g}, step x0.1 every "
          f"{recipe.step_epochs}, {recipe.repeats} repeats: {train_s:.1f} s training alone ({wall:.1f} s with the "
          f"per-epoch evaluation); top-1 at K_train={args.k_train}: {final[f'top1@{args.k_train}']:.2f}%")

    runs = [(f"defaults (cached, {FINETUNE_EPOCHS} epochs)", {}),
            (f"cached, {ADAPT_EPOCHS_STREAMED} epochs", dict(epochs=ADAPT_EPOCHS_STREAMED))]
    if not args.no_paper:
        runs.append((f"paper (streamed, {FINETUNE_EPOCHS} epochs)", dict(epochs=FINETUNE_EPOCHS, cache=False)))
    rows = []
    for name, kw in runs:
        r = adapt(AdaptConfig(checkpoint=str(out / "train" / "last.pt"), k_test=args.k_test,
                              batch_size=args.batch_size, out=str(out / f"adapted-{len(rows)}.pt"), **kw, **common),
                  log=quiet)
        rows.append((name, r))
        print(f"adapt {name}: lr {r['lr']:g}, {r['seconds']:.1f} s = {100 * r['seconds'] / train_s:.2f}% of training; "
              f"top-1 at K_test={args.k_test}: {r['val_top1_before']:.2f}% -> {r['val_top1_after']:.2f}%")
    print("| adaptation | seconds | % of training | top-1 at K_test before -> after |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['seconds']:.1f} | {100 * r['seconds'] / train_s:.2f}% | "
              f"{r['val_top1_before']:.2f}% -> {r['val_top1_after']:.2f}% |")


if __name__ == "__main__":
    main()
