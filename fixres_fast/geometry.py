"""The mathematics of the augmentation modes in :mod:`fixres_fast.spec`: where each crop lies.

Boxes are ``(top, left, h, w)`` in pixels of the image they index. The functions use only
``math`` and ``numpy.random`` on scalars and are numba-compiled, so the FFCV decoder calls them from
its compiled loop and Python calls the same code (:func:`plain`: without numba); their random draws
come from numba's generator, which :func:`seed` seeds (``np.random.seed`` does not).

* Train DA: :func:`random_resized_crop` is torchvision's ``RandomResizedCrop.get_params``,
  rejection loop and centre-crop fallback included (Sec. 3.1: sigma^2 ~ U(area_range),
  ln alpha ~ U(ln aspect_range)).
* Test DA: resize the short side to K_test^image (:func:`resized_size`), then centre crop
  K_test (:func:`centre_left`): :func:`test_window`, which every backend calls; :func:`test_box` maps
  that crop back to the input image for code that crops first and resizes second.
* Test DA2: the same resize, then the crop's left edge at ``round(position * slack)`` with
  ``position ~ U(da2_position_range(shift))``; it stays vertically centred.
* Train-fixed (Appendix D, Table 9): test DA's resize (of the short side to K_train * resize_ratio), then the
  K_train window at a top and left each uniform over every integer offset (:func:`drawn_fixed_window`,
  torchvision's ``RandomCrop``); its Eq. 5 has a fixed sigma = 1 / resize_ratio (``TrainFixedDA.area_range``).
* Appendix B: candidate test resolutions are multiples of :data:`RESOLUTION_STEP`.
"""
from __future__ import annotations

import math
import types
from functools import cache
from typing import NamedTuple

import numpy as np
from numba import njit

from .spec import AREA_RANGE, RESIZE_RATIO, k_test_image

jit = njit(cache=True)

#: px. The activation map's size changes at multiples of 32 (ResNet-50's stride), so the paper tests only those
#: resolutions (Appendix B): candidate and suggested test resolutions are multiples of it.
RESOLUTION_STEP = 32


@cache
def plain(fn):
    """The plain-Python body of one of this module's compiled functions, calling the plain bodies of the
    others (a forked DataLoader worker can deadlock in numba's compiled code)."""
    body = fn.py_func
    names = {k: getattr(v, "py_func", v) for k, v in globals().items()}
    return types.FunctionType(body.__code__, names, body.__name__, body.__defaults__)


@jit
def seed(value):
    """Seed the generator that the crop laws below draw from."""
    np.random.seed(value)


@jit
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


@jit
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


@jit
def resized_size(height, width, resize_short):
    """(h, w) after resizing the short side to ``resize_short`` (torchvision's ``Resize(int)``: long side truncated)."""
    if height <= width:
        return resize_short, int(resize_short * width / height)
    return int(resize_short * height / width), resize_short


@jit
def centre_left(length, crop):
    """Offset of a centred ``crop`` in ``length`` pixels (torchvision's CenterCrop)."""
    return int(round((length - crop) / 2.0))


@jit
def da2_position_range(shift):
    """Range of the normalised left-edge position of the test DA2 crop: 0 is flush-left, 1 flush-right."""
    return 0.5 - shift / 2.0, 0.5 + shift / 2.0


@jit
def da2_left(slack, position):
    """Left edge of the test DA2 crop, ``slack`` = resized width - K_test, ``position`` in [0, 1]."""
    return int(round(position * slack))


@jit
def source_box(top, left, crop, height, width, resize_short):
    """The box in the input image that a ``crop`` x ``crop`` window at (top, left) of the resized image shows."""
    rh, rw = resized_size(height, width, resize_short)
    sy, sx = height / rh, width / rw
    return int(round(top * sy)), int(round(left * sx)), max(1, int(round(crop * sy))), max(1, int(round(crop * sx)))


class TestWindow(NamedTuple):
    """Test DA's K_test x K_test window (DA2's, shifted): the image resized to ``resized_h`` x ``resized_w``
    (its short side K_test^image), and the window's top-left corner ``(top, left)`` in that resized image."""

    resized_h: int
    resized_w: int
    top: int
    left: int


@jit
def test_window(height, width, k_test, resize_short, position):
    """The :class:`TestWindow` of a ``height`` x ``width`` image: test DA with ``position`` = 0.5 (centred),
    test DA2 with ``position`` drawn from :func:`da2_position_range` by the caller. Vertically centred."""
    rh, rw = resized_size(height, width, resize_short)
    return TestWindow(rh, rw, centre_left(rh, k_test), da2_left(rw - k_test, position))  # 0.5: centre_left(rw, k)


@jit
def drawn_test_window(height, width, k_test, resize_short, position_lo, position_hi):
    """:func:`test_window` at ``position ~ U(position_lo, position_hi)`` (numba's generator, see :func:`seed`);
    (0.5, 0.5) is test DA, :func:`da2_position_range` test DA2."""
    return test_window(height, width, k_test, resize_short, np.random.uniform(position_lo, position_hi))


@jit
def random_crop_offsets(resized_h, resized_w, k):
    """(top, left) of a ``k`` x ``k`` crop of a ``resized_h`` x ``resized_w`` image, each uniform over every integer
    offset (0 .. slack, both ends included), top drawn first: torchvision's ``RandomCrop.get_params``."""
    return np.random.randint(0, resized_h - k + 1), np.random.randint(0, resized_w - k + 1)


@jit
def drawn_fixed_window(height, width, k_train, resize_short):
    """Train-fixed's :class:`TestWindow` of a ``height`` x ``width`` image: test DA's resize of the short side to
    ``resize_short``, the ``k_train`` window at :func:`random_crop_offsets` (numba's generator, see :func:`seed`)."""
    rh, rw = resized_size(height, width, resize_short)
    top, left = random_crop_offsets(rh, rw, k_train)
    return TestWindow(rh, rw, top, left)


@jit
def test_box(height, width, k_test, resize_short, position):
    """Input-image box ``(top, left, h, w)`` of :func:`test_window` (same arguments)."""
    window = test_window(height, width, k_test, resize_short, position)
    return source_box(window.top, window.left, k_test, height, width, resize_short)


# Apparent object size (Sec. 3.1, Eq. 1-5) and the test resolution that calibrates it (Sec. 4.1, Appendix B).
# sigma is the RoC's side as a fraction of the image side: sigma^2 ~ U(area_range), so the paper's
# [sigma_-, sigma_+] = [0.28, 1] is area_range (0.08, 1).


def scale_factor_f(area_range=AREA_RANGE):
    """F of Eq. 5: E[sigma] when sigma^2 ~ U(area_range); (0.08, 1) gives 0.708."""
    s_lo, s_hi = math.sqrt(area_range[0]), math.sqrt(area_range[1])
    if s_hi - s_lo < 1e-12:  # a fixed area: the limit of the formula is sigma itself
        return s_hi
    return 2.0 / 3.0 * (s_hi ** 3 - s_lo ** 3) / (s_hi ** 2 - s_lo ** 2)


def apparent_size_ratio(h, w, height, width, k_train, k_test_image):
    """r_test / r_train for one train RoC of ``h`` x ``w`` in a ``height`` x ``width`` image.

    The train crop scales the RoC by K_train / sqrt(hw) (Eq. 1, geometric mean of the anisotropic
    factors); the test resize scales the image by K_test^image / min(height, width). For a square
    image this is Eq. 4: sigma * K_test^image / K_train with sigma = sqrt(hw / (height * width)).
    """
    return k_test_image * (h * w) ** 0.5 / (k_train * min(height, width))  # scalars or numpy arrays


def expected_apparent_size_ratio(k_train, k_test, resize_ratio=RESIZE_RATIO, area_range=AREA_RANGE):
    """Eq. 5: E[r_test / r_train] = F * K_test^image / K_train (0.81 for 224, 224, 256/224, (0.08, 1))."""
    return scale_factor_f(area_range) * k_test_image(k_test, resize_ratio) / k_train


def calibration_factor(k_train, k_test, resize_ratio=RESIZE_RATIO, area_range=AREA_RANGE):
    """Sec. 4.1's alpha (not the aspect ratio): 1 / E[r_test / r_train], the factor by which to enlarge
    K_test^image, and K_test with it, so that objects look as large at test time as in training (~1.25)."""
    return 1.0 / expected_apparent_size_ratio(k_train, k_test, resize_ratio, area_range)


def k_test_calibrated(k_train, resize_ratio=RESIZE_RATIO, area_range=AREA_RANGE):
    """The K_test (unrounded) at which E[r_test / r_train] = 1: K_train / (F * resize_ratio); 277 for 224."""
    return k_train / (scale_factor_f(area_range) * resize_ratio)


def suggest_k_test(k_train, resize_ratio=RESIZE_RATIO, area_range=AREA_RANGE, step=RESOLUTION_STEP):
    """The calibrated K_test rounded to the nearest multiple of ``step`` (:data:`RESOLUTION_STEP`, Appendix B);
    288 for K_train = 224."""
    return max(step, step * int(math.floor(k_test_calibrated(k_train, resize_ratio, area_range) / step + 0.5)))
