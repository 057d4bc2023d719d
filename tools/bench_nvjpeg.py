"""Where the torch backend's GPU path (nvJPEG) spends its time: each stage alone, then the whole loader.

    PYTHONPATH=. python3 tools/bench_nvjpeg.py OUT --mode train --res 160 --batch 256
    PYTHONPATH=. python3 tools/bench_nvjpeg.py OUT --also fixres_fast.loaders.torch_old   # a revision beside it

Stages, in images/s on the same records (needs a CUDA GPU):
  read     the DataLoader workers alone: bytes, JPEG header, the random draws, one buffer per batch
  decode   nvJPEG alone (``torchvision.io.decode_jpeg(device='cuda')``, one call per batch held in memory)
  augment  decode + cut + one roi_align + flip + jitter + normalise (``decode_batch``) on batches in memory
  loader   the whole loader, which runs the stages at once (workers, and decoding a batch ahead in threads)
The slowest stage bounds the loader. ``--also MODULE`` times MODULE's ``build_torch_loader`` on the same
records in the same run (e.g. an earlier revision of fixres_fast/loaders/torch.py copied beside it).
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench_loaders import images_per_s  # noqa: E402
from fixres_fast.loaders import LoaderConfig  # noqa: E402
from fixres_fast.loaders.source import open_source  # noqa: E402
from fixres_fast.loaders.torch import build_torch_loader, decode_batch  # noqa: E402
from fixres_fast.spec import make_spec  # noqa: E402


def rate(fn, batches, rounds: int) -> float:
    """Images/s of ``fn`` over ``batches``, best of ``rounds`` passes after one warm-up pass."""
    best = 0.0
    for r in range(rounds + 1):
        torch.cuda.synchronize()
        t, n = time.perf_counter(), 0
        for b in batches:
            fn(b)
            n += len(b.sizes)
        torch.cuda.synchronize()
        if r:
            best = max(best, n / (time.perf_counter() - t))
    return best


def read_rate(dataloader, epochs: int) -> float:
    for _ in dataloader:  # warm-up: workers start
        pass
    best = 0.0
    for _ in range(epochs):
        t, n = time.perf_counter(), 0
        for b in dataloader:
            n += len(b.sizes)
        best = max(best, n / (time.perf_counter() - t))
    return best


def main(argv=None):
    from torchvision.io import ImageReadMode, decode_jpeg

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="a conversion's OUT folder (JPEG records)")
    p.add_argument("--split", default="train")
    p.add_argument("--mode", default="train", choices=["train", "test", "test2"])
    p.add_argument("--res", type=int, default=160)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (best is kept)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--also", action="append", default=[], help="another module with build_torch_loader to time")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_nvjpeg needs a CUDA GPU")
    device = torch.device("cuda", torch.cuda.current_device())
    spec, source = make_spec(a.mode, a.res), open_source(a.out, a.split)
    config = LoaderConfig(batch_size=a.batch, device="cuda", workers=a.workers, training=True)
    loader = build_torch_loader(spec, source, config)
    held = list(itertools.islice(loader.loader, 4))
    print(f"{torch.cuda.get_device_name(device)}, {a.workers} workers, {len(source)} records, {a.mode} DA at "
          f"{a.res}, batch {a.batch}; img/s", flush=True)
    rows = {
        "read": read_rate(loader.loader, a.epochs),
        "decode": rate(lambda b: decode_jpeg(b.images(), mode=ImageReadMode.RGB, device=device), held, a.epochs),
        "augment": rate(lambda b: decode_batch(b, spec, source, device), held, a.epochs),
        "loader": images_per_s(loader, a.epochs, "cuda"),
    }
    for name in a.also:
        other = importlib.import_module(name).build_torch_loader(spec, source, config)
        rows[f"loader ({name})"] = images_per_s(other, a.epochs, "cuda")
    for name, v in rows.items():
        print(f"  {name:<40s}{v:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
