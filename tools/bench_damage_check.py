"""What the damaged-record check costs a first pass: images/s with no check, the CRC-32 check, the decode check.

Every loader checks each record once (its verdict is kept), so a loader's first pass over the data pays the
check: a single-pass job (evaluate, adapt's trunk cache) pays it whole, a training run in its first epoch only.
This tool makes every timed pass a first pass (the verdicts are reset before it) and times, side by side in one
run, on the same records:

- ``none``: verdicts preset to sound, so nothing is checked (what the loaders did before the check existed);
- ``crc``: the CRC-32 of each record's bytes against the conversion's ``NAME.crc32`` (the default);
- ``decode``: a copy of the conversion without its ``.crc32`` files (as an earlier version wrote it), where each
  record is decoded at 1/8 scale to its end marker (``kernels.check_jpeg``).

    python tools/bench_damage_check.py OUT --backends ffcv,torch,dali --workers 2

It prints images/s (best of ``--passes``) and the ratios crc/none and decode/none.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fixres_fast.convert.outputs import CRC_SUFFIX  # noqa: E402
from fixres_fast.loaders import make_loader  # noqa: E402
from fixres_fast.spec import make_spec  # noqa: E402

CELLS = (("test", 224, "val"), ("train", 160, "train"))


def without_crcs(out: Path, dst: Path) -> Path:
    """A copy of the conversion ``out`` as an earlier version wrote it: no ``.crc32`` files in it or its manifest."""
    shutil.copytree(out, dst, ignore=shutil.ignore_patterns("*" + CRC_SUFFIX))
    manifest = json.loads((dst / "manifest.json").read_text())
    for split in manifest["splits"].values():
        split["files"] = [f for f in split["files"] if not f["name"].endswith(CRC_SUFFIX)]
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dst


def first_pass_rate(loader, passes: int, verdict: int) -> float:
    """Best images/s of ``passes`` passes, the verdicts set to ``verdict`` (0 unchecked, 1 sound) before each."""
    for _ in loader:  # FFCV compiles, workers start, the page cache warms
        pass
    best = 0.0
    for p in range(passes):
        loader.damaged.verdict[:] = verdict
        loader.set_epoch(p + 1)
        t, n = time.perf_counter(), 0
        for _, labels in loader:
            n += labels.shape[0]
        best = max(best, n / (time.perf_counter() - t))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="a conversion's OUT folder (JPEG records, with .crc32 files)")
    ap.add_argument("--backends", default="ffcv,torch,dali")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--passes", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = without_crcs(Path(args.out), Path(tmp) / "old")
        for backend in args.backends.split(","):
            for mode, k, split in CELLS:
                rates = {}
                for name, data, verdict in (("none", args.out, 1), ("crc", args.out, 0), ("decode", old, 0)):
                    loader = make_loader(backend, make_spec(mode, k), data, split, batch_size=args.batch,
                                         workers=args.workers, device="cpu")
                    rates[name] = first_pass_rate(loader, args.passes, verdict)
                    del loader
                print(f"{backend:5s} {mode:5s} {k}: none {rates['none']:6.0f} img/s, crc {rates['crc']:6.0f} "
                      f"({rates['crc'] / rates['none']:.2f}x), decode {rates['decode']:6.0f} "
                      f"({rates['decode'] / rates['none']:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
