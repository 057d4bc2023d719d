"""The test image sets live in the package (the demo uses them too); re-exported here for the tests."""
from fixres_fast.sampledata import *  # noqa: F401,F403
from fixres_fast.sampledata import coco_doc, imagenet_class, imagenet_tree, photo_dir, photos, write_json  # noqa: F401


# --- coordinate ramps: images whose pixels say where they are ------------------------------------

#: (height, width) of the ramp images: square, 2:1, 1:2 and 4:1 (where RandomResizedCrop often falls back).
RAMP_SHAPES = ((384, 384), (256, 512), (480, 240), (128, 512))


def write_ramp(dst: Path, height: int, width: int) -> None:
    """A JPEG whose red channel is the column ((x + 0.5) / W * 255) and green the row; blue is 128."""
    import numpy as np

    x = (np.arange(width) + 0.5) / width * 255
    y = (np.arange(height) + 0.5) / height * 255
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[..., 0] = np.round(x)[None, :]
    rgb[..., 1] = np.round(y)[:, None]
    rgb[..., 2] = 128
    Image.fromarray(rgb).save(dst, "JPEG", quality=98, subsampling=0)


def ramp_tree(root: Path, copies: int = 2) -> None:
    """An ImageFolder tree SRC/train/<shape k>/ of ramp images; the class index is the shape's index."""
    for k, (h, w) in enumerate(RAMP_SHAPES):
        d = root / "train" / f"shape{k}"
        d.mkdir(parents=True, exist_ok=True)
        for c in range(copies):
            write_ramp(d / f"ramp{c}.jpg", h, w)
