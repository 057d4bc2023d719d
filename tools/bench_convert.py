"""Conversion speed: fixres-fast's .beton and RecordIO writers beside FFCV's own DatasetWriter.

All writers get the same JPEG files and the same settings (long side <= --max-side, JPEG quality 90,
'jpg' mode, --workers processes). The image set is built from the 20 real foolbox photos at
ImageNet-like sizes: most 500x375 (stored as is when they qualify), a share at 1024x768 that must be
shrunk. Methods run interleaved, --rounds times each; the best time of each is kept and ratios to
FFCV's writer are printed.

    .venv/bin/python tools/bench_convert.py --images 600 --workers 2
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from fixres_fast.convert import ConvertConfig, convert
from fixres_fast.sampledata import photos


def build_images(root: Path, n: int, large_share: float, seed: int = 0) -> Path:
    rng = random.Random(seed)
    src = [Image.open(p).convert("RGB") for p in photos()]
    for i in range(n):
        size = (1024, 768) if rng.random() < large_share else (500, 375)
        im = src[i % len(src)].resize(size, Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        d = root / "train" / f"c{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        im.save(d / f"{i}.jpg", "JPEG", quality=90)
    return root


class PILFolder:
    """What FFCV's ImageNet example feeds its writer: PIL-decoded RGB images and labels."""

    def __init__(self, root: Path):
        self.items = [(p, i) for i, d in enumerate(sorted((root / "train").iterdir())) for p in sorted(d.iterdir())]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        return Image.open(path).convert("RGB"), label


def ffcv_writer(src: Path, out: Path, max_side: int, workers: int) -> None:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    fields = {"image": RGBImageField(write_mode="jpg", max_resolution=max_side, jpeg_quality=90), "label": IntField()}
    DatasetWriter(str(out / "ffcv.beton"), fields, num_workers=workers).from_indexed_dataset(PILFolder(src))


def ours(fmt: str):
    formats = ("beton", "recordio") if fmt == "all" else (fmt,)

    def run(src: Path, out: Path, max_side: int, workers: int) -> None:
        convert(ConvertConfig(layout="folder", src=str(src), out=str(out), formats=formats, max_side=max_side,
                              workers=workers, overwrite=True), log=lambda *_: None)

    return run


METHODS = {"ffcv DatasetWriter (.beton)": ffcv_writer, "fixres-fast .beton": ours("beton"),
           "fixres-fast RecordIO": ours("recordio"), "fixres-fast both": ours("all")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--large-share", type=float, default=0.15, help="share of 1024x768 images (must be shrunk)")
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_convert_"))
    try:
        src = build_images(tmp / "src", args.images, args.large_share)
        best = {name: float("inf") for name in METHODS}
        for _ in range(args.rounds):
            for name, fn in METHODS.items():
                out = tmp / "out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                t0 = time.perf_counter()
                fn(src, out, args.max_side, args.workers)
                best[name] = min(best[name], time.perf_counter() - t0)
        base = best["ffcv DatasetWriter (.beton)"]
        print(f"{args.images} JPEGs ({args.large_share:.0%} at 1024x768, the rest 500x375), --max-side "
              f"{args.max_side}, quality 90, {args.workers} workers, best of {args.rounds}; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        print(f"{'method':30s} {'img/s':>8s} {'img/s/core':>11s} {'vs FFCV':>8s}")
        for name, t in best.items():
            rate = args.images / t
            print(f"{name:30s} {rate:8.0f} {rate / args.workers:11.0f} {base / t:7.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
