"""Small real image sets that build offline, for the demo and the tests.

The photos come from the `foolbox` wheel (installed with --no-deps by the README's set-up): 20 real
ImageNet validation photos, 512x512 but one, with the ImageNet class index in the file name. Beside
them, generators of the awkward files real data sets hold (CMYK, greyscale, PNG data in a .JPEG,
EXIF-rotated, truncated, empty, garbage).
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
from pathlib import Path

from PIL import Image


def photo_dir() -> Path:
    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        raise RuntimeError("the test photos come from the foolbox wheel: pip install --no-deps foolbox==3.3.4")
    return Path(spec.submodule_search_locations[0]) / "data"


def photos() -> list[Path]:
    """The 20 real ImageNet photos, sorted by name."""
    return sorted(photo_dir().glob("imagenet_*.jpg"))


def imagenet_class(photo: Path) -> int:
    return int(photo.stem.split("_")[2])


# --- generated bad or unusual inputs -------------------------------------------------------------

def write_cmyk_jpeg(src: Path, dst: Path) -> None:
    Image.open(src).convert("CMYK").save(dst, "JPEG", quality=90)


def write_grey_jpeg(src: Path, dst: Path) -> None:
    Image.open(src).convert("L").save(dst, "JPEG", quality=90)


def write_png_as_jpeg(src: Path, dst: Path) -> None:
    Image.open(src).save(dst, "PNG")


def write_exif_rotated(src: Path, dst: Path, orientation: int = 6) -> Image.Image:
    """Store a non-square crop with an EXIF orientation tag; returns the upright image it means."""
    im = Image.open(src).convert("RGB").crop((0, 0, 400, 240))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(dst, "JPEG", quality=95, exif=exif.tobytes())
    return im.transpose(Image.Transpose.ROTATE_270) if orientation == 6 else im


def write_truncated(src: Path, dst: Path, keep: float = 0.4) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])


def write_large(src: Path, dst: Path, size=(1024, 768)) -> None:
    Image.open(src).convert("RGB").resize(size).save(dst, "JPEG", quality=90)


# --- layouts ---------------------------------------------------------------------------------------

def imagenet_tree(root: Path, n_classes: int = 4, bad: bool = True) -> dict:
    """An ILSVRC-2012-shaped tree of real photos (+ bad files), flat val with LOC_val_solution.csv.

    Returns what the conversion should find: {'train': n_good, 'val': n_good, 'skipped': {...}}.
    """
    ph = photos()
    wnids = [f"n{1000000 + 7 * i:08d}" for i in range(n_classes + 1)]  # the last one stays empty
    for w in wnids:
        (root / "train" / w).mkdir(parents=True, exist_ok=True)
    train = ph[:16]
    for i, p in enumerate(train):
        shutil.copy(p, root / "train" / wnids[i % n_classes] / f"{wnids[i % n_classes]}_{i}.JPEG")
    n_train, skipped = len(train), {}
    if bad:
        d = root / "train" / wnids[0]
        write_cmyk_jpeg(ph[0], d / "cmyk.JPEG")
        write_grey_jpeg(ph[1], d / "grey.JPEG")
        write_png_as_jpeg(ph[2], d / "png.JPEG")
        write_exif_rotated(ph[3], d / "rotated.JPEG")
        write_large(ph[4], d / "large.JPEG")
        n_train += 5
        write_truncated(ph[5], d / "truncated.JPEG")
        (d / "empty.JPEG").write_bytes(b"")
        (d / "garbage.JPEG").write_bytes(os.urandom(3000))
        skipped = {"truncated.JPEG": "undecodable", "empty.JPEG": "zero-byte", "garbage.JPEG": "undecodable"}
    val = root / "val"
    val.mkdir()
    rows = ["ImageId,PredictionString"]
    for i, p in enumerate(ph[16:]):
        stem = f"ILSVRC2012_val_{i + 1:08d}"
        shutil.copy(p, val / f"{stem}.JPEG")
        rows.append(f"{stem},{wnids[i % n_classes]} 10 10 100 100")
    n_val = len(ph[16:])
    if bad:
        shutil.copy(ph[0], val / "ILSVRC2012_val_00000900.JPEG")  # no annotation
        rows.append(f"ILSVRC2012_val_00000901,{wnids[0]} 1 1 2 2")  # annotated, file missing
        skipped.update({"ILSVRC2012_val_00000900.JPEG": "no annotation", "ILSVRC2012_val_00000901.JPEG": "missing"})
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return {"train": n_train, "val": n_val, "skipped": skipped, "wnids": wnids}


def coco_doc(files: list[str], labels: list[int | None], categories: dict[int, str]) -> dict:
    """A COCO-style annotation document; a label of None leaves that image without annotation."""
    images = [{"id": 100 + i, "file_name": f, "width": 0, "height": 0} for i, f in enumerate(files)]
    anns = [{"id": i, "image_id": 100 + i, "category_id": c} for i, c in enumerate(labels) if c is not None]
    cats = [{"id": k, "name": v} for k, v in categories.items()]
    return {"images": images, "annotations": anns, "categories": cats}


def write_json(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
