"""The mathematics of the augmentation modes in :mod:`fixres_fast.spec`: where each crop lies.

Boxes are ``(top, left, h, w)`` in pixels of the image they index. The functions use only
``math`` and ``numpy.random`` on scalars, so numba compiles them unchanged (the FFCV decoder
does); in Python they draw from numpy's global generator (seed it with ``np.random.seed``).

* Train DA: :func:`random_resized_crop` is torchvision's ``RandomResizedCrop.get_params``,
  rejection loop and centre-crop fallback included (Sec. 3.1: sigma^2 ~ U(area_range),
  ln alpha ~ U(ln aspect_range)).
* Test DA: resize the short side to K_test^image (:func:`resized_size`), then centre crop
  K_test (:func:`centre_left`); :func:`source_box` maps that crop back to the input image for
  backends that crop first and resize second.
* Test DA2: the same resize, then the crop's left edge at ``round(position * slack)`` with
  ``position ~ U(da2_position_range(shift))``; it stays vertically centred.
"""
from __future__ import annotations

import math

import numpy as np


def random_resized_crop(height, width, area_lo, area_hi, aspect_lo, aspect_hi, max_attempts):
    """A RoC ``(top, left, h, w)`` in a ``height`` x ``width`` image, drawn as torchvision draws it."""
    area = height * width
    log_lo = math.log(aspect_lo)
    log_hi = math.log(aspect_hi)
    for _ in range(max_attempts):
        target_area = area * np.random.uniform(area_lo, area_hi)
        aspect = math.exp(np.random.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = np.random.randint(0, height - h + 1)
            left = np.random.randint(0, width - w + 1)
            return top, left, h, w
    return fallback_crop(height, width, aspect_lo, aspect_hi)


def fallback_crop(height, width, aspect_lo, aspect_hi):
    """torchvision's fallback after ``max_attempts`` rejections: the largest centred crop whose aspect is in range."""
    in_ratio = width / height
    if in_ratio < aspect_lo:
        w = width
        h = int(round(w / aspect_lo))
    elif in_ratio > aspect_hi:
        h = height
        w = int(round(h * aspect_hi))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_size(height, width, resize_short):
    """(h, w) after resizing the short side to ``resize_short`` (torchvision's ``Resize(int)``: long side truncated)."""
    if height <= width:
        return resize_short, int(resize_short * width / height)
    return int(resize_short * height / width), resize_short


def centre_left(length, crop):
    """Offset of a centred ``crop`` in ``length`` pixels (torchvision's CenterCrop)."""
    return int(round((length - crop) / 2.0))


def da2_position_range(shift):
    """Range of the normalised left-edge position of the test DA2 crop: 0 is flush-left, 1 flush-right."""
    return 0.5 - shift / 2.0, 0.5 + shift / 2.0


def da2_left(slack, position):
    """Left edge of the test DA2 crop, ``slack`` = resized width - K_test, ``position`` in [0, 1]."""
    return int(round(position * slack))


def source_box(top, left, crop, height, width, resize_short):
    """The box in the input image that a ``crop`` x ``crop`` window at (top, left) of the resized image shows."""
    rh, rw = resized_size(height, width, resize_short)
    sy, sx = height / rh, width / rw
    return int(round(top * sy)), int(round(left * sx)), max(1, int(round(crop * sy))), max(1, int(round(crop * sx)))


def test_box(height, width, k_test, resize_short, position):
    """Input-image box of test DA (``position`` = 0.5) or test DA2 (``position`` drawn by the caller)."""
    rh, rw = resized_size(height, width, resize_short)
    top = centre_left(rh, k_test)
    left = da2_left(rw - k_test, position)  # position 0.5 is centre_left(rw, k_test)
    return source_box(top, left, k_test, height, width, resize_short)


test_box.__test__ = False  # not a pytest test, despite its name


def area_fraction_and_aspect(h, w, height, width):
    """What a crop box is in the paper's variables: sigma^2 = hw / HW and alpha = w / h."""
    return (h * w) / (height * width), w / h
