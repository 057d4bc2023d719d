"""Pixel kernels in numba-compilable Python: the FFCV decoder's region decoding (:func:`decode_region`,
libjpeg through the ``_jpeg`` extension), resampling, flip and colour jitter, and :func:`normalise`, which
turns every CPU backend's uint8 batch into the batch contract's floats.

:func:`resample` is PIL's antialiased resize (``Image.resize(..., BILINEAR)`` or ``BICUBIC``, the
filters torchvision uses on PIL images; :data:`FILTERS`): a triangle (support 1) or Keys' cubic with
a = -0.5 (support 2), widened by the downscale factor, taps clipped to the region being resized, one
separable pass per axis. It resizes a region of
the source into an output window, so both of the spec's orders are exact: train DA's
crop-then-resize (region = the RoC, window offset 0) and test DA's resize-then-crop (region =
the whole image, window offset = the crop's place in the resized image). PIL's filter weights,
in float32 without rounding between the passes: within 1 grey level of PIL, and fast because
both passes run over contiguous rows (the vertical pass writes its result transposed, so the
horizontal pass is a vertical one too), which numba turns into SIMD loops. The cubic overshoots,
and PIL clips its first pass (the horizontal one) to 0..255: bicubic runs in that order
(:func:`_horizontal_first`).

:func:`trailing_keys` gives each sample of a batch its random key, so that the decoder's draws
follow the loader's seed whatever thread decodes it (see :func:`keyed_order`).
"""
from __future__ import annotations

import ctypes
import math
from typing import NamedTuple

import numpy as np
from numba import carray, njit, types
from numba.extending import intrinsic

from .dct import IDCT_BLUR_TAPS, dct_reduction
from . import _jpeg


#: The filters of :func:`filter_taps`, by :data:`fixres_fast.spec.INTERPOLATIONS` name: small integers, so that a
#: compiled decoder captures its filter as a plain value.
BILINEAR, BICUBIC = 0, 1
FILTERS = {"bilinear": BILINEAR, "bicubic": BICUBIC}
_IDCT_BLUR = tuple(IDCT_BLUR_TAPS[name] for name in sorted(FILTERS, key=FILTERS.get))  # indexed by filter


@njit(cache=True, inline="always")
def _bicubic(x):
    """PIL's bicubic filter: Keys' cubic convolution with a = -0.5, support 2."""
    x = abs(x)
    if x < 1.0:
        return (1.5 * x - 2.5) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5
    return 0.0


@njit(cache=True)
def filter_taps(n_out, region_size, scale, offset, filt=BILINEAR):
    """Per output pixel: first source tap (region-relative), tap count and weights (PIL's precompute_coeffs),
    of filter ``filt`` (:data:`FILTERS`)."""
    filterscale = max(scale, 1.0)
    support = filterscale * (2.0 if filt == BICUBIC else 1.0)  # the bilinear filter's support is 1, bicubic's 2
    ksize = int(math.ceil(support)) * 2 + 1
    first = np.zeros(n_out, np.int64)
    count = np.zeros(n_out, np.int64)
    weights = np.zeros((n_out, ksize), np.float32)
    taps = np.empty(ksize)  # one output pixel's weights in float64, normalised before they become float32
    for i in range(n_out):
        center = (i + offset + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), region_size)
        total = 0.0
        for x in range(lo, hi):
            u = (x - center + 0.5) / filterscale
            taps[x - lo] = _bicubic(u) if filt == BICUBIC else max(0.0, 1.0 - abs(u))
            total += taps[x - lo]
        n = max(hi - lo, 0)
        weights[i, :n] = taps[:n] / total if total != 0.0 else taps[:n]
        first[i], count[i] = lo, hi - lo
    return first, count, weights


@njit(cache=True)
def blur_taps(n_out, region_size, offset, filt=BILINEAR):
    """:func:`filter_taps` for a copy (scale 1, whole-pixel ``offset``) blurred by ``dct.IDCT_BLUR_TAPS`` of filter
    ``filt``; a pixel at the region's edge is copied, as PIL's 3 x 3 filters leave the border."""
    first = np.zeros(n_out, np.int64)
    count = np.zeros(n_out, np.int64)
    weights = np.zeros((n_out, 3), np.float32)
    for i in range(n_out):
        c = int(round(i + offset))
        if 0 < c < region_size - 1:
            first[i], count[i] = c - 1, 3
            for t in range(3):
                weights[i, t] = _IDCT_BLUR[filt][t]
        else:
            first[i], count[i], weights[i, 0] = c, 1, 1.0
    return first, count, weights


@njit(cache=True)
def tap_span(n_out, region_size, scale, offset, idct_blur, filt=BILINEAR):
    """The region's pixels ``[lo, hi)`` on one axis that :func:`resample` reads for ``n_out`` outputs (with filter
    ``filt``: bicubic's support is twice bilinear's)."""
    first, count, _ = (blur_taps(n_out, region_size, offset, filt) if idct_blur
                       else filter_taps(n_out, region_size, scale, offset, filt))
    return first[0], first[n_out - 1] + count[n_out - 1]


class Resampling(NamedTuple):
    """What :func:`resample` resizes into a K x K output: the region ``top, left, height, width`` of the source
    (px), at ``scale_y, scale_x`` source px per output px, and the output window's offset ``off_y, off_x`` in the
    resized region (output px, may be fractional: test DA's crop in the resized image; 0 for train DA)."""

    top: int
    left: int
    height: int
    width: int
    scale_y: float
    scale_x: float
    off_y: float
    off_x: float


class Region(NamedTuple):
    """A rectangle of pixels (px): what :func:`decode_region` decodes."""

    top: int
    left: int
    height: int
    width: int


class ReducedBox(NamedTuple):
    """Where to decode a box (:func:`reduced_box`): at 1/``scale``, the :class:`Resampling` in the image at that
    scale, whether the resampling is a copy to blur (``idct_blur``), and the :class:`Region` it reads."""

    scale: int
    resampling: Resampling
    idct_blur: bool
    decode: Region


@njit(cache=True)
def reduced_box(height, width, k, reduce, box, filt=BILINEAR):
    """Where to decode ``box`` (a :class:`Resampling` for a K x K output, drawn on the full-size ``height`` x
    ``width`` image), as a :class:`ReducedBox`: the DCT scale 1/s (with ``reduce``, the smallest that needs no
    upsampling, :func:`~fixres_fast.loaders.dct.dct_reduction`; else 1); the resampling in the image at 1/s (the
    box's whole-pixel hull, its fractional start as an output offset); the pixels it reads with filter ``filt``,
    the region to decode."""
    s = dct_reduction(box.scale_x * k, box.scale_y * k, k, k) if reduce else 1
    sy, sx, y0, x0 = box.scale_y / s, box.scale_x / s, box.top / s, box.left / s
    r_top, r_left = int(math.floor(y0)), int(math.floor(x0))
    r_h = min(int(math.ceil((box.top + box.height) / s)), (height + s - 1) // s) - r_top
    r_w = min(int(math.ceil((box.left + box.width) / s)), (width + s - 1) // s) - r_left
    o_y, o_x, blur = box.off_y + (y0 - r_top) / sy, box.off_x + (x0 - r_left) / sx, s > 1 and sy == 1.0 and sx == 1.0
    y_lo, y_hi = tap_span(k, r_h, sy, o_y, blur, filt)
    x_lo, x_hi = tap_span(k, r_w, sx, o_x, blur, filt)
    return ReducedBox(s, Resampling(r_top, r_left, r_h, r_w, sy, sx, o_y, o_x), blur,
                      Region(r_top + y_lo, r_left + x_lo, y_hi - y_lo, x_hi - x_lo))


@njit(cache=True, fastmath=True)
def resample(src, top, left, height, width, scale_y, scale_x, off_y, off_x, dst, idct_blur=False, filt=BILINEAR):
    """Resize src[top:top+height, left:left+width] by 1/scale and write the window starting at (off_y, off_x) to dst.

    ``src``: C-contiguous HWC uint8; ``dst``: (out_h, out_w, 3) uint8. Offsets are in output pixels and may
    be fractional. ``idct_blur``: the scale is 1 (a copy) because a reduced decode did the downscale; blur
    with :func:`blur_taps` instead. ``filt``: the filter (:data:`FILTERS`)."""
    out_h, out_w = dst.shape[0], dst.shape[1]
    if idct_blur:
        fy, ny, wy = blur_taps(out_h, height, off_y, filt)
        fx, nx, wx = blur_taps(out_w, width, off_x, filt)
    else:
        fy, ny, wy = filter_taps(out_h, height, scale_y, off_y, filt)
        fx, nx, wx = filter_taps(out_w, width, scale_x, off_x, filt)
        if filt == BICUBIC:
            _horizontal_first(src, top, left, fy, ny, wy, fx, nx, wx, dst)
            return
    col_lo = fx[0]
    ncol = fx[out_w - 1] + nx[out_w - 1] - col_lo  # the source columns any output pixel reads
    n = ncol * 3
    rows = src.reshape(src.shape[0], src.shape[1] * 3)
    base = (left + col_lo) * 3
    acc = np.empty(n, np.float32)
    tmp_t = np.empty((ncol, out_h * 3), np.float32)  # vertical pass result, transposed: [column, row * 3 + c]
    for i in range(out_h):
        acc[:] = 0.0
        for t in range(ny[i]):
            w = wy[i, t]
            row = rows[top + fy[i] + t, base:base + n]
            for q in range(n):
                acc[q] += w * np.float32(row[q])
        for col in range(ncol):
            for c in range(3):
                tmp_t[col, i * 3 + c] = acc[col * 3 + c]
    m = out_h * 3
    col_out = np.empty(m, np.float32)
    for j in range(out_w):
        col_out[:] = 0.0
        for t in range(nx[j]):
            w = wx[j, t]
            column = tmp_t[fx[j] - col_lo + t]
            for q in range(m):
                col_out[q] += w * column[q]
        for i in range(out_h):
            for c in range(3):
                dst[i, j, c] = np.uint8(min(255.0, max(0.0, col_out[i * 3 + c] + 0.5)))


@njit(cache=True, fastmath=True)
def _horizontal_first(src, top, left, fy, ny, wy, fx, nx, wx, dst):
    """:func:`resample`'s two passes in PIL's order, for a filter that overshoots (bicubic): the horizontal pass
    first, clipped to 0..255 as PIL stores it in uint8, then the vertical pass. Both run over contiguous rows, as
    :func:`resample`'s do: the first over the region's columns (copied transposed), written back transposed."""
    out_h, out_w = dst.shape[0], dst.shape[1]
    row_lo, col_lo = fy[0], fx[0]
    nrow, ncol = fy[out_h - 1] + ny[out_h - 1] - row_lo, fx[out_w - 1] + nx[out_w - 1] - col_lo
    m, n = nrow * 3, out_w * 3
    columns = np.empty((ncol, m), np.float32)  # the rows and columns any output pixel reads: [column, row * 3 + c]
    for r in range(nrow):
        for col in range(ncol):
            for c in range(3):
                columns[col, r * 3 + c] = src[top + row_lo + r, left + col_lo + col, c]
    acc = np.empty(m, np.float32)
    tmp = np.empty((nrow, n), np.float32)  # horizontal pass result, clipped: [row, column * 3 + c]
    for j in range(out_w):
        acc[:] = 0.0
        for t in range(nx[j]):
            w = wx[j, t]
            column = columns[fx[j] - col_lo + t]
            for q in range(m):
                acc[q] += w * column[q]
        for r in range(nrow):
            for c in range(3):
                tmp[r, j * 3 + c] = min(np.float32(255.0), max(np.float32(0.0), acc[r * 3 + c]))
    row_out = np.empty(n, np.float32)
    for i in range(out_h):
        row_out[:] = 0.0
        for t in range(ny[i]):
            w = wy[i, t]
            row = tmp[fy[i] - row_lo + t]
            for q in range(n):
                row_out[q] += w * row[q]
        for q in range(n):
            dst[i, q // 3, q % 3] = np.uint8(min(255.0, max(0.0, row_out[q] + 0.5)))


@njit(cache=True)
def flip_in_place(img):
    w = img.shape[1]
    for x in range(w // 2):
        for y in range(img.shape[0]):
            for c in range(3):
                img[y, x, c], img[y, w - 1 - x, c] = img[y, w - 1 - x, c], img[y, x, c]


@njit(cache=True, inline="always")
def _blend(degenerate, x, f):
    """PIL's ``Image.blend(degenerate, image, f)`` on one value: float32, truncated and clipped to uint8."""
    v = np.float32(degenerate) + np.float32(f) * (np.float32(x) - np.float32(degenerate))
    return np.uint8(0) if v <= 0 else (np.uint8(255) if v >= 255 else np.uint8(v))


@njit(cache=True, inline="always")
def _luma(r, g, b):
    """PIL's RGB -> L conversion (ITU-R 601-2 luma, 16-bit fixed point, rounded)."""
    return (np.int64(r) * 19595 + np.int64(g) * 38470 + np.int64(b) * 7471 + 0x8000) >> 16


@njit(cache=True)
def colour_jitter(img, strength):
    """torchvision's ColorJitter(s, s, s) without hue on PIL images, in place on HWC uint8: factors
    U(1-s, 1+s), in random order, each op PIL's ImageEnhance (a blend with black for brightness, with the
    rounded mean grey for contrast, with each pixel's grey for saturation), with PIL's arithmetic."""
    flat = img.reshape(-1)
    n = flat.shape[0] // 3
    for op in np.random.permutation(3):  # 0 brightness, 1 contrast, 2 saturation
        f = np.random.uniform(max(0.0, 1.0 - strength), 1.0 + strength)
        if op == 2:
            for p in range(n):
                r, g, b = flat[3 * p], flat[3 * p + 1], flat[3 * p + 2]
                grey = _luma(r, g, b)
                flat[3 * p], flat[3 * p + 1], flat[3 * p + 2] = _blend(grey, r, f), _blend(grey, g, f), _blend(grey, b, f)
            continue
        degenerate = 0
        if op == 1:
            total = 0
            for p in range(n):
                total += _luma(flat[3 * p], flat[3 * p + 1], flat[3 * p + 2])
            degenerate = int(total / n + 0.5)
        for q in range(flat.shape[0]):
            flat[q] = _blend(degenerate, flat[q], f)


@njit(cache=True)
def normalise(src, mean, inv_std, dst):
    """``dst = (src - mean) * inv_std`` per channel, over flat interleaved RGB: uint8 ``src`` -> float32 ``dst``.

    One pass in float32, the arithmetic of torch's ``x.float().sub_(mean).mul_(inv_std)``; that type-converting,
    broadcasting torch expression over a channels_last view takes several times longer on the CPU."""
    for p in range(src.shape[0] // 3):
        for c in range(3):
            dst[3 * p + c] = (np.float32(src[3 * p + c]) - mean[c]) * inv_std[c]


def _c_function(name: str, restype, *argtypes):
    """Function ``name`` of the ``_jpeg`` extension, called through ctypes (so numba can compile calls to it)."""
    f = getattr(ctypes.CDLL(_jpeg.__file__), name)
    f.argtypes, f.restype = list(argtypes), restype
    return f


_I32, _U64, _PTR = ctypes.c_int32, ctypes.c_uint64, ctypes.c_void_p
_DECODE_REGION = _c_function("decode_region", ctypes.c_int, _PTR, _U64, ctypes.c_uint32, _I32, _I32, _I32, _I32, _PTR,
                             _U64, _PTR)
_CHECK_JPEG = _c_function("check_jpeg", ctypes.c_int, _PTR, _U64)
_RECORD_CRC32 = _c_function("record_crc32", ctypes.c_uint32, _PTR, _U64)


def record_crc32(data: np.ndarray) -> int:
    """zlib's CRC-32 of ``data`` (contiguous uint8), as ``zlib.crc32`` gives it: what the converter wrote for a record
    in ``NAME.crc32``. Releases the GIL; plain Python that numba compiles (the ffcv decoder calls it once per record)."""
    return _RECORD_CRC32(data.ctypes.data, data.size)


#: What :func:`check_jpeg` and :func:`decode_region` codes mean for a record's data.
JPEG_DAMAGE = {-1: "libjpeg cannot decode it", -4: "libjpeg reports corrupt data in it"}


def check_jpeg(data: np.ndarray) -> int:
    """0 if libjpeg decodes all of JPEG ``data`` (contiguous uint8) without a complaint, -1 where it fails, -4 where
    it warns of corrupt data (PIL and DALI decode around such data; a bit flipped in the scan often shows only at
    its end, as bytes before the end marker, so a decode that stops early does not see it). Entropy-decodes the
    whole scan at 1/8 scale: measured 1.1 ms on a 512 x 512 record, 2/3 of PIL's full decode. Releases the GIL;
    plain Python that numba compiles (the ffcv decoder calls it once per record)."""
    return _CHECK_JPEG(data.ctypes.data, data.size)


def decode_region(data, scale, top, left, height, width, dst, held):
    """Decode rows ``[top, top + height)`` x columns ``[left, left + width)`` of JPEG ``data`` at 1/``scale``
    into ``dst`` (flat uint8) as rows of ``held[3]`` RGB pixels; ``held`` (int32[4]) gets the first row, first
    column, rows and columns of the scaled image ``dst`` holds. Returns 0, or a negative libjpeg failure
    (see ``_jpeg.c``). Pixels: PIL's full decode at that scale, restricted to the region. Plain Python that numba
    compiles (the ffcv backend compiles it per loader); callable as it is."""
    return _DECODE_REGION(data.ctypes.data, data.size, scale, top, left, height, width, dst.ctypes.data, dst.size,
                          held.ctypes.data)


@intrinsic
def _int8_pointer(typingctx, address):
    """An integer address -> ``int8*``."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return types.CPointer(types.int8)(address), codegen


@njit(cache=True)
def int8_array_at(address, n):
    """The int8 array of ``n`` elements at ``address`` (one that outlives the caller: the ffcv decoder's verdicts)."""
    return carray(_int8_pointer(address), (n,))


@intrinsic
def _uint32_pointer(typingctx, address):
    """An integer address -> ``uint32*``."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return types.CPointer(types.uint32)(address), codegen


@njit(cache=True)
def uint32_array_at(address, n):
    """The uint32 array of ``n`` elements at ``address`` (one that outlives the caller: the ffcv decoder's CRCs)."""
    return carray(_uint32_pointer(address), (n,))


@intrinsic
def _uint64_pointer(typingctx, address):
    """An integer address -> ``uint64*`` (``numba.carray`` takes a pointer, not an integer)."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return types.CPointer(types.uint64)(address), codegen


def keyed_order(indices: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """An epoch's sample ids with a key per position stored right after them in the same buffer.

    FFCV hands its decoder views of the order it is given (``order[:k]``, then one slice per
    batch), never copies, so :func:`trailing_keys` finds a batch's keys ``len(indices)`` places
    after its ids. Returns the ids, a view of that buffer (which the views keep alive)."""
    n = len(indices)
    buffer = np.empty(2 * n, np.uint64)
    buffer[:n], buffer[n:] = indices, keys
    return buffer[:n]


@njit(cache=True)
def trailing_keys(batch_indices, epoch_length):
    """The keys of a batch cut from a :func:`keyed_order` of ``epoch_length`` ids (uint64, one per sample)."""
    address = batch_indices.ctypes.data + epoch_length * batch_indices.itemsize
    return carray(_uint64_pointer(address), batch_indices.shape)
