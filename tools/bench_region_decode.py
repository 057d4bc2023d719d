"""Decode time per image of the ffcv backend's region decoding against FFCV's whole-image decode, side by side.

For each mode x resolution, the ffcv decoder's boxes are drawn for every JPEG record of a ``.beton``; then the
same records are decoded, single-threaded, (a) by FFCV's ``imdecode`` (TurboJPEG, the whole image at the box's
DCT scale 1/s: what the backend did before) and (b) by ``kernels.decode_region`` (libjpeg, only the rows and
columns the resampling reads, at the same s). Best of ``--rounds``; prints ms per image and the ratio.

    python tools/bench_region_decode.py OUT --split train
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from ffcv.libffcv import imdecode  # noqa: E402

from fixres_fast.convert.beton import BetonReader  # noqa: E402
from fixres_fast.loaders import kernels  # noqa: E402
from fixres_fast.loaders.ffcv import box_function  # noqa: E402
from fixres_fast.spec import make_spec  # noqa: E402


def regions(spec, sizes):
    """Per record: the DCT scale and the region (top, left, height, width) at that scale that the ffcv decoder decodes."""
    box, k, out = box_function(spec), spec.size, []
    for h, w in sizes:
        s, _, _, region = kernels.reduced_box(h, w, k, True, box(np.int64(h), np.int64(w)))
        out.append((s, *region))
    return out


def best_ms(fn, n, rounds):
    fn()
    best = math.inf
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best / n * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="a conversion's OUT folder with a JPEG .beton")
    p.add_argument("--split", default="train")
    p.add_argument("--cells", default="train:160,train:224,test:224", help="mode:resolution, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    reader = BetonReader(os.path.join(a.out, f"{a.split}.beton"))
    datas = [np.frombuffer(reader.read(i), np.uint8) for i in range(len(reader))]
    sizes = [(int(reader.image["height"][i]), int(reader.image["width"][i])) for i in range(len(reader))]
    buf, held = np.empty(max(h * w for h, w in sizes) * 3, np.uint8), np.zeros(4, np.int32)
    print(f"{len(datas)} records, 1 thread, best of {a.rounds}; ms per image")
    print(f"{'mode':<6}{'res':>5}{'imdecode':>10}{'region':>9}{'ratio':>7}")
    for cell in a.cells.split(","):
        mode, res = cell.split(":")
        jobs = regions(make_spec(mode, int(res)), sizes)

        def whole():
            for d, (h, w), (s, *_) in zip(datas, sizes, jobs):
                imdecode(d, buf, h, w, h, w, 0, 0, 1, s, False, False)

        def region():
            for d, (s, top, left, h, w) in zip(datas, jobs):
                kernels.decode_region(d, s, top, left, h, w, buf, held)

        t_whole, t_region = best_ms(whole, len(datas), a.rounds), best_ms(region, len(datas), a.rounds)
        print(f"{mode:<6}{res:>5}{t_whole:>10.3f}{t_region:>9.3f}{t_whole / t_region:>6.2f}x")


if __name__ == "__main__":
    main()
