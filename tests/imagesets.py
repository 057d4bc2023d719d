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


# --- hostile inputs: written byte by byte where PIL would not write them -------------------------

def write_png(dst: Path, width: int, height: int, bit_depth: int, color_type: int, rows) -> None:
    """A PNG from its filtered-out scanlines: ``rows`` yields each row's bytes (filter type 0 is prepended)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    idat = b"".join(z.compress(b"\0" + row) for row in rows) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    dst.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def write_png16(dst: Path, pixels) -> None:
    """A 16-bit PNG of ``pixels`` (uint16, HxW greyscale or HxWx3 RGB, i.e. 48-bit)."""
    import numpy as np

    big = np.asarray(pixels).astype(">u2")
    write_png(dst, big.shape[1], big.shape[0], 16, 2 if big.ndim == 3 else 0, (r.tobytes() for r in big))


def write_bomb_png(dst: Path, side: int = 31_000) -> None:
    """A side x side 1-bit black PNG: ~120 KB on disk, ~1 GB of pixels once decoded (as PIL holds them)."""
    row = bytes((side + 7) // 8)
    write_png(dst, side, side, 1, 0, (row for _ in range(side)))


#: colours of the frames of :func:`write_animated_gif`
GIF_FRAMES = ((200, 30, 30), (30, 200, 30), (30, 30, 200))


def write_animated_gif(dst: Path, size=(48, 32)) -> None:
    frames = [Image.new("RGB", size, c) for c in GIF_FRAMES]
    frames[0].save(dst, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
