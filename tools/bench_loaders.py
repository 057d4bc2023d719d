"""Loader throughput: images/s of each backend x cell (mode, resolution) on the same records, side by side.

In the same run, on the same records, with the same batch size, workers and flip, it measures three peers:

* torchvision: the plain PIL recipe (PIL decode + transforms v2 + float conversion + Normalize, in
  DataLoader workers);
* stock FFCV: FFCV's ImageNet example pipeline over the ``.beton`` (``RandomResizedCropRGBImageDecoder`` or
  ``CenterCropRGBImageDecoder(ratio=K_test / K_test^image)``, ``RandomHorizontalFlip``, ``NormalizeImage``
  to float32 on the CPU, ``ToTensor``, ``ToTorchImage``);
* stock DALI: the CPU graph of DALI's ResNet-50 example (``readers.mxnet`` over the conversion's RecordIO
  shards, the same bytes its ``readers.file`` would read; ``decoders.image_random_crop`` + ``resize`` to K x K,
  or ``decoders.image`` + ``resize(mode="not_smaller")`` to K_test^image; ``crop_mirror_normalize`` to float
  CHW; triangular interpolation; ``num_threads`` = workers),

with the spec's area and aspect ranges everywhere (the DALI example's own are 0.1-1 and 0.8-1.25) and no
colour jitter (``--jitter`` sets it for our backends and torchvision; the peers have none), and a
decode-only reference (a full libjpeg-turbo decode of the same JPEGs by PIL, no augmentation, in the same number
of processes). It prints each backend's ratio to each peer and to the reference. Without OUT it first builds
ImageNet-shaped records (:func:`make_records`: the real test photos cut to 500x375 and 375x500, baseline JPEG at
quality 90, ``convert folder`` defaults) or reuses them. It also prints the decode floor: the same decode
at libjpeg's smallest DCT scaling (1/8), which bounds what any reduced-size decode can gain on these files
(entropy decoding is not scaled). Backend ``torch-full`` is the torch backend with ``reduced_decode=False`` (full decode).
Quote the ratios: the machines are shared.

    python tools/bench_loaders.py                      # ImageNet-shaped records, the issue's two cells, every column
    python tools/bench_loaders.py OUT --cells train:128,train:160,test:224,test:288 --backends dali,ffcv,torch
    python tools/bench_loaders.py OUT --device cuda --backends torch --peers torchvision  # nvJPEG; no DALI/FFCV
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
from fixres_fast.spec import TrainDA, make_spec  # noqa: E402


#: Where :func:`make_records` builds the records when no OUT is given (reused while its manifest is there).
RECORDS = "/tmp/fixres_bench_records"


def make_records(out: str, n: int = 640, seed: int = 0) -> str:
    """ImageNet-shaped records in ``out``: ``n`` train images cut from the 20 real photos (a random 60-100% of
    each, resized to 500x375, every fourth to 375x500), saved as baseline JPEG at quality 90 in 10 classes and
    converted with ``convert folder``'s defaults (RecordIO and .beton). Reused where ``out`` holds them."""
    import random
    import shutil
    import tempfile
    from pathlib import Path

    from PIL import Image

    from fixres_fast.convert import ConvertConfig, convert
    from fixres_fast.records import MANIFEST, Manifest
    from fixres_fast.sampledata import photos

    if (Path(out) / MANIFEST).is_file() and Manifest.read(Path(out)).splits["train"].count == n:
        return out
    rng = random.Random(seed)
    pics = [Image.open(p).convert("RGB") for p in photos()]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            im = pics[i % len(pics)]
            w, h = im.size
            s = rng.uniform(0.6, 1.0)
            x, y = rng.uniform(0, w * (1 - s)), rng.uniform(0, h * (1 - s))
            im = im.crop((x, y, x + w * s, y + h * s)).resize((375, 500) if i % 4 == 0 else (500, 375))
            d = Path(tmp) / "train" / f"c{i % 10}"
            d.mkdir(parents=True, exist_ok=True)
            im.save(d / f"{i}.jpg", "JPEG", quality=90)  # PIL writes baseline JPEG unless asked otherwise
        shutil.rmtree(out, ignore_errors=True)
        convert(ConvertConfig(layout="folder", src=tmp, out=out))
    return out


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

    class Baseline(torch.utils.data.Dataset):
        def __init__(self):
            self.source = open_source(out, split)
            self.tf = v2.Compose([pil_transform(spec), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                  v2.Normalize(spec.mean, spec.std)])

        def __len__(self):
            return len(self.source)

        def __getitem__(self, i):
            return self.tf(self.source.open_image(i).convert("RGB")), int(self.source.labels[i])

    dl = torch.utils.data.DataLoader(Baseline(), batch_size=batch, shuffle=True, num_workers=workers,
                                     persistent_workers=True, drop_last=False)
    dl.set_epoch = lambda e: None
    return dl


class _Epochs:
    """A peer's loader as :func:`images_per_s` drives it: iterable once per epoch, ``set_epoch`` a no-op."""

    def __init__(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        return self.epoch()

    def set_epoch(self, e):
        pass


def stock_ffcv_loader(spec, out, split, batch, workers):
    """FFCV's ImageNet example pipeline (ffcv-imagenet's train_imagenet.py) on the CPU, over ``split.beton``."""
    import numpy as np
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, ToTensor, ToTorchImage

    k = spec.size
    if isinstance(spec, TrainDA):
        steps = [RandomResizedCropRGBImageDecoder((k, k), scale=spec.area_range, ratio=spec.aspect_range)]
    else:
        steps = [CenterCropRGBImageDecoder((k, k), ratio=k / spec.resize_short)]
    if getattr(spec, "flip", False):
        steps.append(RandomHorizontalFlip())
    mean, std = np.array(spec.mean) * 255, np.array(spec.std) * 255
    steps += [NormalizeImage(mean, std, np.float32), ToTensor(), ToTorchImage()]  # on the CPU it runs on NHWC arrays
    source = open_source(out, split)
    training = isinstance(spec, TrainDA)
    loader = Loader(str(source.beton), batch_size=batch, num_workers=workers, drop_last=training,
                    order=OrderOption.RANDOM if training else OrderOption.SEQUENTIAL,
                    pipelines={"image": steps, "label": [IntDecoder(), ToTensor()]})
    return _Epochs(lambda: iter(loader))


def stock_dali_loader(spec, out, split, batch, workers):
    """The CPU graph of DALI's ResNet-50 example (docs/examples/use_cases/pytorch/resnet50/main.py), reading the
    conversion's RecordIO shards with ``readers.mxnet`` (the records ``readers.file`` reads in that example)."""
    from pathlib import Path

    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIClassificationIterator, LastBatchPolicy

    from fixres_fast.records import Manifest

    rio = Manifest.read(Path(out)).splits[split].recordio
    training, k = isinstance(spec, TrainDA), spec.size

    @pipeline_def
    def graph():
        jpegs, labels = fn.readers.mxnet(path=[str(Path(out) / r) for r in rio.rec], index_path=str(Path(out) / rio.idx),
                                         random_shuffle=training, pad_last_batch=True, name="Reader")
        if training:
            images = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB,
                                                   random_area=list(spec.area_range),
                                                   random_aspect_ratio=list(spec.aspect_range), num_attempts=100)
            images = fn.resize(images, resize_x=k, resize_y=k, interp_type=types.INTERP_TRIANGULAR)
        else:
            images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
            images = fn.resize(images, size=spec.resize_short, mode="not_smaller", interp_type=types.INTERP_TRIANGULAR)
        mirror = fn.random.coin_flip(probability=0.5) if getattr(spec, "flip", False) else False
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", crop=(k, k),
                                          mean=[m * 255 for m in spec.mean], std=[s * 255 for s in spec.std],
                                          mirror=mirror)
        return images, labels

    pipe = graph(batch_size=batch, num_threads=workers, device_id=None, seed=12)
    pipe.build()
    iterator = DALIClassificationIterator(pipe, reader_name="Reader", last_batch_policy=LastBatchPolicy.PARTIAL,
                                          auto_reset=True)

    def epoch():
        for out_ in iterator:
            yield out_[0]["data"], out_[0]["label"]
    return _Epochs(epoch)


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


PEERS = {"torchvision": baseline_loader, "stock-ffcv": stock_ffcv_loader, "stock-dali": stock_dali_loader}


def peers_for(out, split, names):
    """The peers of ``names`` that can read these records (stock DALI needs RecordIO, stock FFCV a .beton)."""
    from pathlib import Path

    from fixres_fast.records import MANIFEST, Manifest

    import importlib.util

    split_ = Manifest.read(Path(out)).splits[split] if (Path(out) / MANIFEST).is_file() else None
    usable = []
    for name in names:
        if name not in PEERS:
            raise SystemExit(f"unknown peer {name!r}; choose among {', '.join(PEERS)}")
        package = {"stock-ffcv": "ffcv", "stock-dali": "nvidia.dali"}.get(name)
        try:
            missing = package is not None and importlib.util.find_spec(package) is None
        except ModuleNotFoundError:  # nvidia.dali's parent is missing too
            missing = True
        if missing:
            print(f"{name}: {package} is not installed; column left out")
        elif name == "stock-ffcv" and open_source(out, split).beton is None:
            print(f"stock-ffcv: {out} has no {split}.beton; column left out")
        elif name == "stock-dali" and (split_ is None or split_.recordio is None):
            print(f"stock-dali: {out} has no RecordIO shards for {split}; column left out")
        else:
            usable.append(name)
    return usable


def parse_cells(text: str) -> list[tuple[str, int]]:
    """``train:160,test:224`` -> [("train", 160), ("test", 224)]."""
    try:
        return [(mode, int(res)) for mode, res in (cell.split(":") for cell in text.split(","))]
    except ValueError:
        raise SystemExit(f"--cells takes MODE:RES pairs separated by commas, e.g. train:160,test:224; got {text!r}")


def row(mode, res, name, ips, against) -> str:
    """One line of the table: img/s and the ratio to each of ``against`` (name -> img/s, None where not measured)."""
    ratios = "".join(f"{ips / v:>{len(k) + 2}.2f}" if v else f"{'-':>{len(k) + 2}}" for k, v in against.items())
    return f"{mode:<6}{res:>5} {name:<12}{ips:>8.0f}{ratios}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", help=f"a conversion's OUT folder (default: build ImageNet-shaped records in "
                                          f"{RECORDS}, or reuse them)")
    p.add_argument("--images", type=int, default=640, help="records to build when no OUT is given")
    p.add_argument("--split", default="train")
    p.add_argument("--backends", default="dali,ffcv,torch")
    p.add_argument("--peers", default=",".join(PEERS), help="the peer columns, among " + ", ".join(PEERS))
    p.add_argument("--cells", default="train:160,test:224", help="MODE:RES pairs (modes: train, test, test2)")
    p.add_argument("--modes", help="with --res, instead of --cells: every mode at every resolution (e.g. train,test)")
    p.add_argument("--res", help="resolutions for --modes (e.g. 128,160,224,288)")
    p.add_argument("--jitter", type=float, default=0.0,
                   help="colour jitter of train DA and test DA2 (default 0: the stock peers have none)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per cell (best is kept)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    out = a.out or make_records(RECORDS, a.images)
    peers = peers_for(out, a.split, [n for n in a.peers.split(",") if n])
    print(f"records: {out}, split {a.split} ({len(open_source(out, a.split))} records); batch {a.batch}, "
          f"{a.workers} workers, best of {a.epochs} epochs")
    raw = open_source(out, a.split).raw
    if not raw:
        ref, floor = decode_only(out, a.split, a.workers), decode_only(out, a.split, a.workers, scale=8)
        print(f"decode floor (PIL at 1/8 size, libjpeg's smallest DCT scaling): {floor:.0f} img/s "
              f"({floor / ref:.2f} x the full decode)")
    what = "read-only (records hold raw pixels: a PIL image of each)" if raw else "decode-only (PIL, full decode)"
    print(f"reference: {what}, {a.workers} processes, measured again in each cell, just before its loaders")
    names = [f"x {n}" for n in peers] + ["x decode-only"]
    print(f"{'mode':<6}{'res':>5} {'backend':<12}{'img/s':>8}" + "".join(f"{n:>{len(n) + 2}}" for n in names))
    cells = parse_cells(a.cells)
    if a.modes or a.res:
        cells = [(m, int(r)) for m in (a.modes or "train,test").split(",") for r in (a.res or "160,224").split(",")]
    for mode, res in cells:
        spec = make_spec(mode, res, **({"jitter": a.jitter} if mode in ("train", "test2") else {}))
        ref = decode_only(out, a.split, a.workers)
        print(f"{mode:<6}{res:>5} {'reference':<12}{ref:>8.0f}", flush=True)
        measured = {}
        for name in peers:
            loader = PEERS[name](spec, out, a.split, a.batch, a.workers)
            measured[name] = images_per_s(loader, a.epochs, "cpu")
            del loader
            gc.collect()
        against = {**{f"x {n}": measured[n] for n in peers}, "x decode-only": ref}
        for name in peers:
            print(row(mode, res, name, measured[name], against), flush=True)
        for backend in [b for b in a.backends.split(",") if b]:
            loader = make_loader(backend.removesuffix("-full"), spec, out, a.split, batch_size=a.batch,
                                 device=a.device, workers=a.workers, training=True,
                                 reduced_decode=not backend.endswith("-full"))
            ips = images_per_s(loader, a.epochs, a.device)
            print(row(mode, res, backend, ips, against), flush=True)
            del loader
            gc.collect()  # a DALI pipeline left for a forked DataLoader worker to collect aborts that worker


if __name__ == "__main__":
    main()
