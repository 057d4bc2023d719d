"""Reduced-size JPEG decoding: decoder engineering, not the paper's mathematics (that is :mod:`..geometry`).

libjpeg decodes at 1/8, 1/4, 1/2 or full size for the cost of its entropy decoding plus a smaller inverse DCT;
the ffcv backend (:mod:`.kernels`) and the torch backend decode at the smallest scale that needs no upsampling.
"""
from __future__ import annotations

from numba import njit

#: libjpeg's DCT scalings, largest first. Output pixel j of a 1/s decode covers input pixels [j*s, (j+1)*s).
DCT_SCALES = (8, 4, 2, 1)
#: Where the scaled IDCT does the whole downscale (a box of exactly s*K px, as test DA at 224 on a 512-px
#: image), the antialiased resize that follows degenerates to a copy and the reference's antialias blur
#: (bilinear taps 1, 3, 3, 1 / 8 at scale 2; bicubic's are sharper) is missing: these taps, on each axis, stand
#: in for it, per interpolation. On the test photos they bring the mean difference to the reference from ~2.8
#: grey levels to ~1.0 (bilinear), and from ~1.7 to ~1.4 (bicubic, where the bilinear taps give ~2.1).
IDCT_BLUR_TAPS = {"bilinear": (0.1, 0.8, 0.1), "bicubic": (0.04, 0.92, 0.04)}


@njit(cache=True)
def dct_reduction(region_w, region_h, out_w, out_h):
    """The largest s in :data:`DCT_SCALES` at which a ``region_w`` x ``region_h`` px region, decoded at 1/s,
    still spans at least ``out_w`` x ``out_h`` px: reduced decoding never adds upsampling."""
    for s in DCT_SCALES:
        if region_w >= s * out_w and region_h >= s * out_h:
            return s
    return 1
