"""Training throughput against resolution, fed by each loader and by synthetic tensors in one run.

For each resolution, the same model trains for --steps timed steps (after --warmup) fed by
synthetic tensors already on the device (the network's own speed) and by each loader backend
reading the same records with train DA. A loader whose img/s falls clearly below the synthetic
figure is what limits training. The cost ratios between resolutions check the paper's claim that
halving the resolution makes network evaluation about 3x cheaper (Sec. 1, Table 7).

    .venv/bin/python tools/bench_train.py --data OUT --arch resnet18 --res 128,160,224,288 --batch-size 32
    PYTHONPATH=. python3 tools/bench_train.py --data OUT --device cuda --amp bf16 --backends synthetic,torch
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import time

import torch
from torch import nn

from fixres_fast.models import build_model
from fixres_fast.runtime import amp_dtype
from fixres_fast.spec import Recipe, TrainDA
from fixres_fast.engine import train_step
from fixres_fast.train import make_optimizer


def synthetic(batch: int, res: int, device: torch.device, classes: int):
    x = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    return itertools.repeat((x, y))


def loader_feed(backend: str, data: str, batch: int, res: int, device: torch.device, workers: int):
    from fixres_fast.loaders import LoaderConfig, make_loader

    loader = make_loader(backend, TrainDA(k_train=res), data, "train",
                         LoaderConfig(batch_size=batch, device=str(device), repeats=1, training=True, workers=workers))

    def forever():
        for epoch in itertools.count():
            loader.set_epoch(epoch)
            yield from loader
    return forever()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model, feed, steps: int, warmup: int, dtype, device) -> float:
    """img/s over ``steps`` training steps after ``warmup`` steps."""
    opt = make_optimizer(model, Recipe(), device)  # as `fixres-fast train` makes it
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    loss_fn = nn.CrossEntropyLoss()
    seen = 0
    for i, (x, y) in enumerate(feed):
        if i == warmup:
            sync(device)
            t0, seen = time.perf_counter(), 0
        train_step(model, x, y, opt, loss_fn, dtype, scaler)
        seen += y.shape[0]
        if i + 1 == warmup + steps:
            break
    sync(device)
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="a conversion's OUT folder (needed for loader backends)")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--res", default="128,160,224,288")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--backends", default="synthetic,torch,ffcv,dali")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (as `train --compile`)")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    device = torch.device(args.device)
    dtype = amp_dtype(args.amp, device)
    resolutions = [int(r) for r in args.res.split(",")]
    feeds = [b for b in args.backends.split(",") if b]
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = True
    rows = {}
    for res in resolutions:
        model = build_model(args.arch, 1000).to(device, memory_format=torch.channels_last)
        if args.compile:
            model = torch.compile(model, dynamic=False)  # as `train --compile`
        for feed_name in feeds:
            if feed_name == "synthetic":
                feed = synthetic(args.batch_size, res, device, 1000)
            else:
                feed = loader_feed(feed_name, args.data, args.batch_size, res, device, args.workers)
            rows[(res, feed_name)] = measure(model, feed, args.steps, args.warmup, dtype, device)
            print(f"res {res:4d}  {feed_name:10s} {rows[(res, feed_name)]:9.1f} img/s", flush=True)
    report(rows, resolutions, feeds, args, device, dtype)


def report(rows, resolutions, feeds, args, device, dtype) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"\n{args.arch}{' (compiled)' * args.compile}, batch {args.batch_size}, channels_last, amp {dtype}, {name}; img/s "
          f"(ratio to synthetic: below ~0.9 means the loader limits training)")
    print("res  " + "".join(f"{f:>20s}" for f in feeds))
    for res in resolutions:
        cells = []
        for f in feeds:
            v = rows[(res, f)]
            ratio = v / rows[(res, "synthetic")] if "synthetic" in feeds else float("nan")
            cells.append(f"{v:10.0f} ({ratio:4.2f}x)" if f != "synthetic" else f"{v:18.0f}  ")
        print(f"{res:<5d}" + "".join(f"{c:>20s}" for c in cells))
    if "synthetic" in feeds and len(resolutions) > 1:
        top = max(resolutions)
        for res in resolutions:
            if res != top:
                speedup = rows[(res, "synthetic")] / rows[(top, "synthetic")]
                print(f"network cost at {top} / at {res}: {speedup:.2f}x (pixel ratio {(top / res) ** 2:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "arch": args.arch, "batch": args.batch_size, "amp": str(dtype), "compile": args.compile,
                       "img_s": {f"{r}/{b}": v for (r, b), v in rows.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
