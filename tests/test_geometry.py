"""geometry.py against torchvision: the RoC law (KS), its analytic form on squares, test DA's window, DA2's range."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from fixres_fast import geometry
from fixres_fast import spec as fspec
from fixres_fast.spec import AREA_RANGE, ASPECT_RANGE, TrainDA

N = 3000


def torchvision_law(height, width, n=N, seed=0):
    torch.manual_seed(seed)
    img = torch.zeros(1, height, width)
    boxes = [v2.RandomResizedCrop.get_params(img, list(AREA_RANGE), list(ASPECT_RANGE)) for _ in range(n)]
    return law(boxes, height, width)


def geometry_law(height, width, n=N, seed=0):
    geometry.seed(seed)
    spec = TrainDA()
    boxes = [geometry.random_resized_crop(height, width, *spec.area_range, *spec.aspect_range, spec.max_attempts)
             for _ in range(n)]
    return law(boxes, height, width)


def law(boxes, height, width):
    b = np.array(boxes, dtype=float)
    return b[:, 2] * b[:, 3] / (height * width), np.log(b[:, 3] / b[:, 2]), b


@pytest.mark.parametrize("height,width", [(384, 384), (375, 500), (512, 128), (100, 800), (7, 9)])
def test_roc_law_matches_torchvision(height, width):
    area, log_aspect, boxes = geometry_law(height, width)
    ref_area, ref_log_aspect, _ = torchvision_law(height, width)
    assert stats.ks_2samp(area, ref_area).pvalue > 1e-4
    assert stats.ks_2samp(log_aspect, ref_log_aspect).pvalue > 1e-4
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= height).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= width).all()


def test_fallback_is_torchvisions_centre_crop():
    # a 1:20 strip: every attempt is rejected, so both give the same deterministic centred box
    geometry.seed(1)
    box = geometry.random_resized_crop(20, 400, *AREA_RANGE, *ASPECT_RANGE, 10)
    assert box == v2.RandomResizedCrop.get_params(torch.zeros(1, 20, 400), list(AREA_RANGE), list(ASPECT_RANGE))
    assert box == geometry.fallback_crop(20, 400, *ASPECT_RANGE) == (0, 186, 20, 27)


def test_analytic_law_on_square_images():
    # sigma^2 <= 3/4 is never rejected on a square, so there sigma^2 ~ U(0.08, 0.75) and ln alpha ~ U(ln 3/4, ln 4/3)
    area, log_aspect, _ = geometry_law(512, 512, n=6000, seed=3)
    small = area <= 0.74
    lo, hi = math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])
    assert stats.kstest(area[small], stats.uniform(0.08, 0.74 - 0.08).cdf).pvalue > 1e-4
    assert stats.kstest(log_aspect[small], stats.uniform(lo, hi - lo).cdf).pvalue > 1e-4
    # above 3/4 a draw survives with probability -ln(sigma^2) / ln(4/3) (|ln alpha| <= -ln sigma^2), so
    # the share of crops below 0.74 is 0.66 / (0.67 + int_0.75^1 -ln s ds / ln(4/3))
    tail = (1 - 0.75 + 0.75 * math.log(0.75)) / math.log(4 / 3)
    assert abs(small.mean() - 0.66 / (0.67 + tail)) < 0.02


@pytest.mark.parametrize("height,width,k_test", [(512, 512, 224), (375, 500, 224), (500, 333, 288), (241, 640, 160)])
def test_test_da_window_is_torchvisions(height, width, k_test):
    spec = fspec.TestDA(k_test=k_test)
    resized = TF.resize(torch.zeros(1, height, width), spec.resize_short, antialias=True)
    assert tuple(resized.shape[1:]) == geometry.resized_size(height, width, spec.resize_short)
    rh, rw = resized.shape[1:]
    cols = TF.center_crop(torch.arange(rw).expand(1, rh, rw), k_test)
    rows = TF.center_crop(torch.arange(rh)[:, None].expand(1, rh, rw), k_test)
    assert int(cols[0, 0, 0]) == geometry.centre_left(rw, k_test)
    assert int(rows[0, 0, 0]) == geometry.centre_left(rh, k_test)
    top, left, h, w = geometry.test_box(height, width, k_test, spec.resize_short, 0.5)
    assert abs(h - k_test * height / rh) <= 1 and abs(w - k_test * width / rw) <= 1


def test_da2_position_covers_the_slack():
    assert geometry.da2_position_range(1.0) == (0.0, 1.0)
    assert geometry.da2_position_range(0.0) == (0.5, 0.5)
    lefts = [geometry.da2_left(41, p) for p in np.linspace(0, 1, 101)]
    assert min(lefts) == 0 and max(lefts) == 41
    assert geometry.da2_left(41, 0.5) == geometry.centre_left(41 + 224, 224)
