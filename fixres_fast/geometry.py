"""The mathematics of the augmentation modes in :mod:`fixres_fast.spec`: where each crop lies.

Boxes are ``(top, left, h, w)`` in pixels of the image they index. The functions use only
``math`` and ``numpy.random`` on scalars and are numba-compiled (when numba is installed), so the
FFCV decoder calls them from its compiled loop and Python calls the same code; their random
draws come from numba's generator, which :func:`seed` seeds (``np.random.seed`` does not).

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

from .spec import AREA_RANGE, RESIZE_RATIO, k_test_image

try:
    from numba import njit
except ImportError:  # the same functions, in plain Python
    def njit(**_):
        return lambda fn: fn

jit = njit(cache=True)


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


@jit
def test_box(height, width, k_test, resize_short, position):
    """Input-image box of test DA (``position`` = 0.5) or test DA2 (``position`` drawn by the caller)."""
    rh, rw = resized_size(height, width, resize_short)
    top = centre_left(rh, k_test)
    left = da2_left(rw - k_test, position)  # position 0.5 is centre_left(rw, k_test)
    return source_box(top, left, k_test, height, width, resize_short)


#: libjpeg's DCT scalings, largest first: a JPEG decodes at 1/8, 1/4, 1/2 or full size for the cost of its
#: entropy decoding plus a smaller inverse DCT. Output pixel j of a 1/s decode covers input pixels [j*s, (j+1)*s).
DCT_SCALES = (8, 4, 2, 1)
#: Where the scaled IDCT does the whole downscale (a box of exactly s*K px, as test DA at 224 on a 512-px
#: image), the antialiased resize that follows degenerates to a copy and the reference's antialias blur
#: (bilinear taps 1, 3, 3, 1 / 8 at scale 2) is missing: these taps, on each axis, stand in for it. On the test
#: photos they bring the mean difference to the reference from ~2.9 grey levels to ~1.1.
IDCT_BLUR_TAPS = (0.1, 0.8, 0.1)


@jit
def dct_reduction(region_w, region_h, out_w, out_h):
    """The largest s in :data:`DCT_SCALES` at which a ``region_w`` x ``region_h`` px region, decoded at 1/s,
    still spans at least ``out_w`` x ``out_h`` px: reduced decoding never adds upsampling."""
    for s in DCT_SCALES:
        if region_w >= s * out_w and region_h >= s * out_h:
            return s
    return 1


def area_fraction_and_aspect(h, w, height, width):
    """What a crop box is in the paper's variables: sigma^2 = hw / HW and alpha = w / h."""
    return (h * w) / (height * width), w / h


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


def suggest_k_test(k_train, resize_ratio=RESIZE_RATIO, area_range=AREA_RANGE, step=32):
    """The calibrated K_test rounded to the nearest multiple of ``step`` (Appendix B: the activation map's
    size changes at multiples of 32, so the paper tests only those); 288 for K_train = 224."""
    return max(step, step * int(math.floor(k_test_calibrated(k_train, resize_ratio, area_range) / step + 0.5)))
