"""Loader throughput: images/s of each backend x mode x resolution on the same records, side by side.

In the same run it measures a torchvision/PIL baseline (ImageFolder-style: PIL decode + transforms v2 +
ToTensor-style float conversion, in DataLoader workers) and a decode-only reference (a full libjpeg-turbo
decode of the same JPEGs by PIL, no augmentation, in the same number of processes), and prints each
backend's ratio to both. It also prints the decode floor: the same decode at libjpeg's smallest DCT
scaling (1/8), which bounds what any reduced-size decode can gain on these files (entropy decoding is
not scaled). Backend ``torch-full`` is the torch backend with ``reduced_decode=False`` (full decode).
Quote the ratios: the machines are shared.

    python tools/bench_loaders.py OUT --split train --images 256 --backends dali,ffcv,torch
    python tools/bench_loaders.py OUT --device cuda --backends torch   # nvJPEG path; imports no DALI/FFCV
    python tools/bench_loaders.py RAW --backends ffcv,torch   # a `convert --format beton --write-mode raw` OUT

On raw records (a .beton of pixels), every loader, the baseline included, reads the same pixels and
skips decoding; the reference is then the read alone.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from fixres_fast.loaders import make_loader  # noqa: E402
from fixres_fast.loaders.source import open_source  # noqa: E402
from fixres_fast.spec import make_spec  # noqa: E402


def images_per_s(loader, epochs: int, device: str) -> float:
    """Best of ``epochs`` timed epochs after one warm-up epoch (FFCV compiles, workers start)."""
    for _ in loader:
        pass
    best = 0.0
    for e in range(epochs):
        loader.set_epoch(e + 1)
        t, n = time.perf_counter(), 0
        for images, labels in loader:
            n += len(labels)
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, n / (time.perf_counter() - t))
    return best


def baseline_loader(spec, out, split, batch, workers):
    """The plain torchvision/PIL recipe, reading the same records; float CHW from ToImage + ToDtype + Normalize."""
    from torchvision.transforms import v2

    from fixres_fast.loaders.torch import pil_transform
    from fixres_fast.spec import IMAGENET_MEAN, IMAGENET_STD

    class Baseline(torch.utils.data.Dataset):
        def __init__(self):
            self.source = open_source(out, split)
            self.tf = v2.Compose([pil_transform(spec), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                  v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

        def __len__(self):
            return len(self.source)

        def __getitem__(self, i):
            return self.tf(self.source.open_image(i).convert("RGB")), int(self.source.labels[i])

    dl = torch.utils.data.DataLoader(Baseline(), batch_size=batch, shuffle=True, num_workers=workers,
                                     persistent_workers=True, drop_last=False)
    dl.set_epoch = lambda e: None
    return dl


def _decode_chunk(args):
    out, split, indices, scale = args
    src = open_source(out, split)
    for i in indices:
        im = src.open_image(i)
        if scale > 1:
            im.draft(im.mode, (im.width // scale, im.height // scale))
        im.convert("RGB").load()
    return len(indices)


def decode_only(out, split, workers: int, repeats: int = 2, scale: int = 1) -> float:
    """Images/s of a PIL decode of every record in ``workers`` processes, at 1/``scale`` size (libjpeg DCT scaling)."""
    n = len(open_source(out, split))
    chunks = [(out, split, range(w, n, workers), scale) for w in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_decode_chunk, chunks))  # warm-up
        best = 0.0
        for _ in range(repeats):
            t = time.perf_counter()
            done = sum(pool.map(_decode_chunk, chunks))
            best = max(best, done / (time.perf_counter() - t))
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="a conversion's OUT folder")
    p.add_argument("--split", default="train")
    p.add_argument("--backends", default="dali,ffcv,torch")
    p.add_argument("--modes", default="train,test")
    p.add_argument("--res", default="128,160,224,288")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per cell (best is kept)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    ref = decode_only(a.out, a.split, a.workers)
    if open_source(a.out, a.split).raw:
        print(f"records hold raw pixels: no decode; read-only reference (PIL image of each record, "
              f"{a.workers} processes): {ref:.0f} img/s")
    else:
        print(f"decode-only reference (PIL/libjpeg-turbo, full decode, {a.workers} processes): {ref:.0f} img/s")
        floor = decode_only(a.out, a.split, a.workers, scale=8)
        print(f"decode floor (the same at 1/8 size, libjpeg's smallest DCT scaling): {floor:.0f} img/s "
              f"({floor / ref:.2f} x the full decode)")
    print(f"{'mode':<6}{'res':>5} {'backend':<12}{'img/s':>8} {'x torchvision':>14} {'x decode-only':>14}")
    for mode in a.modes.split(","):
        for res in map(int, a.res.split(",")):
            spec = make_spec(mode, res)
            base = images_per_s(baseline_loader(spec, a.out, a.split, a.batch, a.workers), a.epochs, "cpu")
            print(f"{mode:<6}{res:>5} {'torchvision':<12}{base:>8.0f} {1.0:>14.2f} {base / ref:>14.2f}", flush=True)
            for backend in a.backends.split(","):
                loader = make_loader(backend.removesuffix("-full"), spec, a.out, a.split, batch_size=a.batch,
                                     device=a.device, workers=a.workers, training=True,
                                     reduced_decode=not backend.endswith("-full"))
                ips = images_per_s(loader, a.epochs, a.device)
                print(f"{mode:<6}{res:>5} {backend:<12}{ips:>8.0f} {ips / base:>14.2f} {ips / ref:>14.2f}", flush=True)
                del loader
                gc.collect()  # a DALI pipeline left for a forked DataLoader worker to collect aborts that worker


if __name__ == "__main__":
    main()
