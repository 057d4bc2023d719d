"""Pixel kernels for the FFCV decoder, in numba-compilable Python: resampling, flip and colour jitter.

:func:`resample` is PIL's antialiased bilinear resize (``Image.resize(..., BILINEAR)``, the
filter torchvision uses on PIL images): a triangle filter widened by the downscale factor,
taps clipped to the region being resized, a horizontal pass rounded to uint8, then a vertical
pass. It resizes a region of the source into an output window, so both of the spec's orders
are exact: train DA's crop-then-resize (region = the RoC, window offset 0) and test DA's
resize-then-crop (region = the whole image, window offset = the crop's place in the resized image).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def filter_taps(n_out, region_size, scale, offset):
    """Per output pixel: first source tap (region-relative), tap count and weights (PIL's precompute_coeffs)."""
    filterscale = max(scale, 1.0)
    support = filterscale  # the bilinear filter's support is 1
    ksize = int(math.ceil(support)) * 2 + 1
    first = np.zeros(n_out, np.int64)
    count = np.zeros(n_out, np.int64)
    weights = np.zeros((n_out, ksize), np.float64)
    for i in range(n_out):
        center = (i + offset + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), region_size)
        total = 0.0
        for x in range(lo, hi):
            w = max(0.0, 1.0 - abs((x - center + 0.5) / filterscale))
            weights[i, x - lo] = w
            total += w
        if total != 0.0:
            weights[i, :hi - lo] /= total
        first[i], count[i] = lo, hi - lo
    return first, count, weights


@njit(cache=True)
def resample(src, top, left, height, width, scale_y, scale_x, off_y, off_x, dst):
    """Resize src[top:top+height, left:left+width] by 1/scale and write the window starting at (off_y, off_x) to dst."""
    out_h, out_w = dst.shape[0], dst.shape[1]
    fy, ny, wy = filter_taps(out_h, height, scale_y, off_y)
    fx, nx, wx = filter_taps(out_w, width, scale_x, off_x)
    row_lo = fy[0]
    row_hi = fy[out_h - 1] + ny[out_h - 1]
    tmp = np.empty((row_hi - row_lo, out_w, 3), np.uint8)
    for r in range(row_lo, row_hi):  # horizontal pass over the rows the vertical pass reads
        for j in range(out_w):
            for c in range(3):
                acc = 0.0
                for t in range(nx[j]):
                    acc += wx[j, t] * src[top + r, left + fx[j] + t, c]
                tmp[r - row_lo, j, c] = min(255.0, max(0.0, math.floor(acc + 0.5)))
    for i in range(out_h):
        for j in range(out_w):
            for c in range(3):
                acc = 0.0
                for t in range(ny[i]):
                    acc += wy[i, t] * tmp[fy[i] + t - row_lo, j, c]
                dst[i, j, c] = min(255.0, max(0.0, math.floor(acc + 0.5)))


@njit(cache=True)
def flip_in_place(img):
    w = img.shape[1]
    for x in range(w // 2):
        for y in range(img.shape[0]):
            for c in range(3):
                img[y, x, c], img[y, w - 1 - x, c] = img[y, w - 1 - x, c], img[y, x, c]


@njit(cache=True)
def colour_jitter(img, strength):
    """torchvision's ColorJitter(s, s, s) without hue, in place on HWC uint8: factors U(1-s, 1+s), random order."""
    h, w = img.shape[0], img.shape[1]
    for op in np.random.permutation(3):  # 0 brightness, 1 contrast, 2 saturation
        f = np.random.uniform(max(0.0, 1.0 - strength), 1.0 + strength)
        mean = 0.0
        if op == 1:
            for y in range(h):
                for x in range(w):
                    mean += 0.299 * img[y, x, 0] + 0.587 * img[y, x, 1] + 0.114 * img[y, x, 2]
            mean = np.floor(mean / (h * w) + 0.5)
        for y in range(h):
            for x in range(w):
                grey = mean
                if op == 2:
                    grey = 0.299 * img[y, x, 0] + 0.587 * img[y, x, 1] + 0.114 * img[y, x, 2]
                for c in range(3):
                    v = f * img[y, x, c] + (1.0 - f) * grey
                    img[y, x, c] = np.uint8(min(255.0, max(0.0, v + 0.5)))


