"""Turn one source file into the bytes a record stores, or a reason to skip it.

Record images are RGB, at most ``max_side`` pixels on the long side, with any
EXIF rotation applied. A sequential (baseline) YCbCr JPEG that already satisfies
this (small enough, upright) is stored byte for byte after a check decode at 1/8
scale (libjpeg's DCT scaling still reads every entropy-coded byte, so truncation
is caught, at a fraction of a full decode's cost). A progressive one is rewritten
as a sequential JPEG of the same coefficients (:mod:`.transcode`: the same pixels,
decoded 2-2.7x faster; ``sequential=False`` keeps it as it is). Everything else
(PNG data in a .JPEG, CMYK, greyscale, 16-bit, rotated, too large, animated: its first
frame) is decoded, fixed and re-encoded once. An image of more than :data:`MAX_PIXELS`
is skipped on its header's size, before any decoding.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from . import transcode

#: Largest image accepted, in pixels; beyond it the file is skipped as a likely decompression bomb.
MAX_PIXELS = 30_000 * 30_000
EXIF_ORIENTATION = 0x0112
WRITE_MODES = ("jpg", "raw")
#: ``Prepared.fix`` of a progressive JPEG rewritten losslessly as a sequential one
SEQUENTIAL_FIX = "progressive"
#: ``Prepared.fix`` of an animated image (GIF, APNG, WebP, multi-page TIFF): its first frame is stored
FIRST_FRAME = "animated (first frame)"


@dataclass(frozen=True)
class Prepared:
    data: bytes  # JPEG bytes (write_mode 'jpg') or HWC uint8 RGB pixels ('raw')
    width: int
    height: int
    fix: str  # '' when stored as is, else why it was re-encoded


def prepare(path: str, max_side: int, jpeg_quality: int = 90, write_mode: str = "jpg",
            sequential: bool = True) -> Prepared | str:
    """Prepared record bytes for ``path``, or a one-line reason to skip it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"unreadable file: {e.strerror or e}"
    if not data:
        return "zero-byte file"
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        return _prepare(data, max_side, jpeg_quality, write_mode, sequential)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return f"image larger than {MAX_PIXELS} pixels (a likely decompression bomb)"
    except Image.UnidentifiedImageError:  # its message names a memory address: not the same twice
        return "undecodable image (UnidentifiedImageError: not a format PIL reads)"
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return f"undecodable image ({type(e).__name__}: {e})"


def _prepare(data: bytes, max_side: int, quality: int, write_mode: str, sequential: bool) -> Prepared:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(data))
    w, h = im.size
    if w * h > MAX_PIXELS:  # from the header: checked before anything is decoded
        raise Image.DecompressionBombError(f"{w} x {h}")
    fixes = _needed_fixes(im, max_side)
    if not fixes and write_mode == "jpg":
        if sequential and im.info.get("progressive") and transcode.available():
            try:
                return Prepared(transcode.to_sequential(data), w, h, SEQUENTIAL_FIX)  # reads every scan: a check too
            except ValueError:
                pass  # libjpeg warned (damaged data): kept as it is if PIL decodes it, like a damaged sequential file
        im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
        im.load()  # raises on truncated or corrupt entropy-coded data
        return Prepared(data, w, h, "")
    scale = min(1.0, max_side / max(w, h))
    target = (max(1, round(w * scale)), max(1, round(h * scale)))
    if im.format == "JPEG" and im.mode in ("RGB", "L", "CMYK"):
        im.draft(im.mode, target)  # decode straight to the smallest DCT scale >= target
    im.load()
    im = _to_rgb(ImageOps.exif_transpose(im))
    if max(im.size) > max_side:
        s = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.LANCZOS)
    if write_mode == "raw":
        return Prepared(np.asarray(im, dtype=np.uint8).tobytes(), im.width, im.height, ",".join(fixes) or "raw")
    out = io.BytesIO()
    im.save(out, "JPEG", quality=quality)
    return Prepared(out.getvalue(), im.width, im.height, ",".join(fixes))


def _needed_fixes(im: Image.Image, max_side: int) -> list[str]:
    fixes = []
    if im.format != "JPEG":
        fixes.append(f"{(im.format or 'unknown').lower()} data")
    if im.mode != "RGB":
        fixes.append(f"mode {im.mode}")
    if im.getexif().get(EXIF_ORIENTATION, 1) != 1:
        fixes.append("exif rotation")
    if max(im.size) > max_side:
        fixes.append("resized")
    if getattr(im, "n_frames", 1) > 1:
        fixes.append(FIRST_FRAME)
    return fixes


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode == "I" or im.mode.startswith("I;16"):  # 16-bit greyscale (PNG, TIFF): 0..65535 -> 0..255
        grey = np.asarray(im).astype(np.float64) / 257
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")
