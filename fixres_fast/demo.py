"""``fixres-fast demo``: the method end to end on a small data set that builds offline.

What runs today: an ImageNet-shaped tree of 20 real photos plus the awkward files real data sets
hold (CMYK, greyscale, PNG data, EXIF rotation, truncated, empty, garbage) is converted to .beton
and RecordIO, and every record is read back through FFCV and DALI. Training and adaptation join
this command as they land.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .convert import ConvertConfig, convert, verify
from .sampledata import imagenet_tree


def demo(out: str | Path = "runs/demo", workers: int = 0, log=print) -> dict:
    out = Path(out)
    src = out / "imagenet-sample"
    if src.exists():
        shutil.rmtree(src)
    expected = imagenet_tree(src)
    log(f"built {src}: {expected['train']} train + {expected['val']} val usable images, "
        f"{len(expected['skipped'])} bad or unannotated files")
    manifest = convert(ConvertConfig(layout="imagenet", src=str(src), out=str(out / "records"), workers=workers,
                                     shards=2, overwrite=True), log=log)
    report = verify(out / "records", workers=workers, log=log)
    return {"manifest": manifest, "verify": report}
