"""Resampling filters against PIL's, piece by piece: the ffcv kernels' bilinear and bicubic taps on a synthetic
image (shrinking and enlarging, non-integer scales, fractional windows), the region the ffcv decoder decodes for
them (bicubic's support is twice bilinear's), and the torch backend's GPU path for bicubic (run on the CPU). The
loaders' batches against torchvision's: tests/test_loaders.py (test_test_da_agrees_with_torchvision)."""
import numpy as np
import pytest
import torch
from PIL import Image

from fixres_fast import geometry
from fixres_fast.loaders import kernels
from fixres_fast.spec import INTERPOLATIONS, make_spec


def pil_resize(im, size, interpolation, box=None):
    """PIL's antialiased resize of ``box`` (float, default the whole image) of ``im`` to ``size`` (w, h) with filter
    ``interpolation``, as uint8 HWC: the horizontal pass first, as two one-axis PIL resizes (each PIL's filter and
    uint8 rounding). That is PIL's order up to Pillow 12; Pillow 13 starts with the vertical pass when the height
    shrinks much more than the width. The order shows only where the first pass overshoots 0..255 (bicubic), which
    PIL clips to uint8 before the second."""
    f = Image.Resampling[interpolation.upper()]
    x0, y0, x1, y1 = box or (0, 0, *im.size)
    wide = im.resize((size[0], im.height), f, box=(x0, 0, x1, im.height))
    return np.asarray(wide.resize(size, f, box=(0, y0, size[0], y1)))


def synthetic(height=173, width=211):
    """RGB: a horizontal ramp, a 7 x 5 px black-and-white checkerboard (edges where the cubic overshoots), noise."""
    y, x = np.mgrid[:height, :width]
    noise = np.random.default_rng(0).integers(0, 256, (height, width))
    return np.stack([x * 255 // (width - 1), (x // 7 + y // 5) % 2 * 255, noise], -1).astype(np.uint8)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("top,left,h,w,k", [
    (5, 3, 161, 197, 61),  # shrinking by 2.64 x 3.23
    (0, 0, 173, 211, 50),  # the whole image, by 3.46 x 4.22
    (40, 50, 37, 29, 64),  # enlarging by 1 / 0.58 x 1 / 0.45
    (10, 20, 150, 40, 64),  # shrinking rows by 2.34, enlarging columns by 1.6
])
def test_crop_then_resize_is_pils(interpolation, top, left, h, w, k):
    """Train DA's order: a region resized to K x K, as PIL resizes its crop."""
    src = synthetic()
    got = np.empty((k, k, 3), np.uint8)
    kernels.resample(src, top, left, h, w, h / k, w / k, 0.0, 0.0, got, False, kernels.FILTERS[interpolation])
    ref = pil_resize(Image.fromarray(src).crop((left, top, left + w, top + h)), (k, k), interpolation)
    assert np.abs(got.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("factor,offset", [(1.37, (0.0, 0.0)), (1.37, (31.0, 17.0)), (0.61, (12.0, 29.0)),
                                           (0.61, (12.5, 29.25)), (0.29, (3.75, 0.5))])
def test_window_of_the_resized_image_is_pils(interpolation, factor, offset):
    """Test DA's order: the whole image resized (enlarged by 1.37, shrunk by 0.61 or 0.29) and a 40 x 40 window of
    it, at whole (test DA) or fractional (a reduced decode's) output offsets: PIL's resize of that box."""
    src, k = synthetic(), 40
    height, width = src.shape[:2]
    rh, rw = round(height * factor), round(width * factor)
    sy, sx = height / rh, width / rw
    oy, ox = offset
    got = np.empty((k, k, 3), np.uint8)
    kernels.resample(src, 0, 0, height, width, sy, sx, oy, ox, got, False, kernels.FILTERS[interpolation])
    im = Image.fromarray(src)
    if oy == int(oy) and ox == int(ox):
        y, x = int(oy), int(ox)
        ref = pil_resize(im, (rw, rh), interpolation)[y:y + k, x:x + k]
    else:
        ref = pil_resize(im, (k, k), interpolation, box=(ox * sx, oy * sy, (ox + k) * sx, (oy + k) * sy))
    assert np.abs(got.astype(int) - ref).max() <= 1


def test_bicubic_is_not_bilinear():
    """The filter reaches the kernel: the checkerboard's edges come out sharper (and clipped) with bicubic."""
    src, k = synthetic(), 50
    out = {}
    for name, filt in kernels.FILTERS.items():
        out[name] = np.empty((k, k, 3), np.uint8)
        kernels.resample(src, 0, 0, 173, 211, 173 / k, 211 / k, 0.0, 0.0, out[name], False, filt)
    checker = [out[name][..., 1].astype(float) for name in ("bilinear", "bicubic")]
    assert checker[1].std() > checker[0].std() + 1  # more contrast left after the shrink


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_region_decode_reads_every_tap(photos, interpolation):
    """The ffcv decoder decodes only the rows and columns its resampling reads (kernels.reduced_box -> tap_span);
    resampling from that region gives exactly the pixels resampling the whole decode gives, for train DA's and test
    DA's boxes, shrinking and enlarging, with and without a reduced decode. Bicubic reads a wider region."""
    filt, k = kernels.FILTERS[interpolation], 96
    data = np.frombuffer(open(photos[0], "rb").read(), np.uint8)
    height, width = Image.open(photos[0]).size[::-1]
    boxes = [kernels.Resampling(40, 17, 300, 260, 300 / k, 260 / k, 0.0, 0.0),  # train DA's RoC, shrunk
             kernels.Resampling(200, 150, 60, 70, 60 / k, 70 / k, 0.0, 0.0),  # enlarged
             kernels.Resampling(0, 0, height, width, height / 140, width / 140, 20.0, 30.0),  # test DA's window
             kernels.Resampling(0, 0, height, width, height / 700, width / 700, 300.0, 250.0)]  # of an enlargement
    for box in boxes:
        for reduce in (False, True):
            s, at_s, blur, region = kernels.reduced_box(height, width, k, reduce, box, filt)
            h_s, w_s = -(-height // s), -(-width // s)
            whole, held = np.zeros(h_s * w_s * 3, np.uint8), np.zeros(4, np.int32)
            assert kernels.decode_region(data, s, 0, 0, h_s, w_s, whole, held) == 0
            want = np.empty((k, k, 3), np.uint8)
            kernels.resample(whole.reshape(h_s, w_s, 3), at_s.top, at_s.left, at_s.height, at_s.width, at_s.scale_y,
                             at_s.scale_x, at_s.off_y, at_s.off_x, want, blur, filt)
            part = np.zeros_like(whole)  # what lies past the decoded region reads as zeros
            assert kernels.decode_region(data, s, *region, part, held) == 0
            pixels = part[:3 * held[2] * held[3]].reshape(held[2], held[3], 3)
            got = np.empty((k, k, 3), np.uint8)
            kernels.resample(pixels, at_s.top - held[0], at_s.left - held[1], at_s.height, at_s.width, at_s.scale_y,
                             at_s.scale_x, at_s.off_y, at_s.off_x, got, blur, filt)
            assert np.array_equal(got, want), (box, reduce)
    # test DA's window inside its image: bicubic's support (2, widened by the scale) spans more of it than bilinear's
    # (1); train DA's RoC clips the taps to itself (crop-then-resize), so there the region is the RoC for both
    filters = (kernels.BILINEAR, kernels.BICUBIC)
    test, train = ([kernels.reduced_box(height, width, k, False, box, f).decode for f in filters]
                   for box in (boxes[2], boxes[0]))
    assert test[1].height >= test[0].height + 4 and test[1].width >= test[0].width + 4 and train[0] == train[1]


@pytest.mark.parametrize("mode,res", [("test", 128), ("test", 224), ("test", 288), ("train", 160)])
def test_gpu_path_bicubic_is_pils(photos, mode, res):
    """The torch backend on CUDA (gpu_augment, run here on the CPU) with bicubic: interpolate(mode='bicubic',
    antialias=True), horizontal pass first, clipped: PIL's resize to 1 grey level, in both modes' orders."""
    from .test_gpu_augment import batch_of
    from fixres_fast.loaders.torch import gpu_augment

    spec = make_spec(mode, res, interpolation="bicubic", **(dict(jitter=0.0, flip=False) if mode == "train" else {}))
    batch = batch_of(photos[:6], spec)
    got = gpu_augment(batch, spec, torch.device("cpu")).numpy().astype(int)
    for b, (photo, box) in enumerate(zip(photos[:6], batch.boxes.tolist())):
        im = Image.open(photo).convert("RGB")
        if mode == "train":
            x0, y0, x1, y1 = (int(v) for v in box)
            ref = pil_resize(im.crop((x0, y0, x1, y1)), (res, res), "bicubic")
        else:
            window = geometry.plain(geometry.test_window)(im.height, im.width, res, spec.resize_short, 0.5)
            resized = pil_resize(im, (window.resized_w, window.resized_h), "bicubic")
            ref = resized[window.top:window.top + res, window.left:window.left + res]
        assert np.abs(got[b] - ref).max() <= 1, (mode, res, b)


def test_every_backend_knows_every_interpolation():
    """spec.INTERPOLATIONS is the one list: the ffcv kernels' filters, their reduced-decode blur taps, DALI's filters
    and PIL's (the torch backend) cover it."""
    from fixres_fast.loaders import dali, dct
    from fixres_fast.loaders.torch import IDCT_BLUR, pil_filter

    for table in (kernels.FILTERS, dct.IDCT_BLUR_TAPS, dali.INTERP, IDCT_BLUR):
        assert sorted(table) == sorted(INTERPOLATIONS)
    assert sorted(kernels.FILTERS.values()) == list(range(len(INTERPOLATIONS)))  # kernels._IDCT_BLUR's indices
    for name in INTERPOLATIONS:
        assert pil_filter(make_spec("test", 32, interpolation=name)).name == name.upper()
