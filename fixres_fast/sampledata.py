"""Small real image sets that build offline, for the demo and the tests.

The photos come from the `foolbox` wheel (installed with --no-deps by the README's set-up): 20 real
ImageNet validation photos, 512x512 but one, with the ImageNet class index in the file name. Beside
them, generators of the awkward files real data sets hold (CMYK, greyscale, PNG data in a .JPEG,
EXIF-rotated, truncated, empty, garbage).
"""
from __future__ import annotations

import importlib.util
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


def photos_by_wnid(root: Path, splits_of) -> None:
    """The 20 photos in ImageFolder trees named by ImageNet-1k's WordNet IDs: ``root/SPLIT/WNID/photo`` for each
    split in ``splits_of(i)`` of the i-th photo (sorted by name), so a 1000-class ImageNet model's classes map onto
    them by name (--classes-map)."""
    from .pretrained import imagenet_classes

    wnids = imagenet_classes()
    for i, p in enumerate(photos()):
        for split in splits_of(i):
            d = root / split / wnids[imagenet_class(p)]
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, d / p.name)


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


# --- real objects composited on real backgrounds ---------------------------------------------------
# A small set where objects vary in apparent size (the paper's imaging model, Sec. 3.1): Fashion-MNIST
# items (real photographs of clothing, 28x28 greyscale; Debian package `dataset-fashion-mnist`) pasted
# at a random size and position onto random crops of the 20 real foolbox photos. The objects and the
# backgrounds are real; the scenes are composites, not photographs.

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")


def fashion_mnist(split: str = "train", root: Path = FASHION_MNIST):
    """(items uint8 (N, 28, 28), labels uint8 (N,)) of Fashion-MNIST's 'train' (60k) or 'test' (10k) split."""
    import gzip

    import numpy as np

    stem = "train" if split == "train" else "t10k"
    files = root / f"{stem}-images-idx3-ubyte.gz", root / f"{stem}-labels-idx1-ubyte.gz"
    if not all(f.is_file() for f in files):
        raise RuntimeError(f"expected Fashion-MNIST in {root}: apt-get install dataset-fashion-mnist")
    with gzip.open(files[0]) as f:
        items = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(files[1]) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return items, labels


def composite(item, background, rng, size: int = 64, side_range=(0.3, 1.0)):
    """One ``size`` x ``size`` RGB scene: a random square crop of ``background`` (an RGB PIL image) with
    ``item`` (28x28 greyscale, bright on black) pasted on it at a side drawn log-uniformly from
    ``side_range`` (fractions of ``size``) and a random position; twice the item's brightness is its opacity."""
    import numpy as np

    w, h = background.size
    crop = int(rng.uniform(0.25, 1.0) * min(w, h))
    x0, y0 = rng.integers(0, w - crop + 1), rng.integers(0, h - crop + 1)
    canvas = np.asarray(background.crop((x0, y0, x0 + crop, y0 + crop)).resize((size, size), Image.BILINEAR), np.float32)
    canvas *= 0.5  # a dimmer background, so that the object stands out
    side = max(4, int(round(size * np.exp(rng.uniform(*np.log(side_range))))))
    obj = np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR), np.float32)[..., None] / 255
    alpha = np.minimum(1.0, 2 * obj)
    top, left = rng.integers(0, size - side + 1, size=2)
    tint = rng.uniform(0.6, 1.0, size=3) * 255  # a random light colour, so that colour does not give the class away
    patch = canvas[top:top + side, left:left + side]
    canvas[top:top + side, left:left + side] = obj * tint + (1 - alpha) * patch
    return Image.fromarray(canvas.round().astype(np.uint8))


def composite_tree(root: Path, n_train: int = 4000, n_val: int = 2000, size: int = 64, seed: int = 0,
                   side_range=(0.3, 1.0)) -> dict:
    """An ImageFolder tree ROOT/{train,val}/<class>/<i>.jpg of composite scenes (see :func:`composite`):
    train items from Fashion-MNIST's train split, val items from its test split, backgrounds from all
    20 foolbox photos. Returns {'train': n_train, 'val': n_val, 'classes': [...]}. About 4k images/s."""
    import numpy as np

    rng = np.random.default_rng(seed)
    backgrounds = [Image.open(p).convert("RGB") for p in photos()]
    for split, n in (("train", n_train), ("val", n_val)):
        items, labels = fashion_mnist("train" if split == "train" else "test")
        for c in FASHION_CLASSES:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i, k in enumerate(rng.choice(len(items), size=n, replace=False)):
            scene = composite(items[k], backgrounds[rng.integers(len(backgrounds))], rng, size, side_range)
            scene.save(root / split / FASHION_CLASSES[labels[k]] / f"{split}{i:06d}.jpg", "JPEG", quality=92)
    return {"train": n_train, "val": n_val, "classes": list(FASHION_CLASSES)}
