"""Apparent object size at train and at test time (Sec. 3.1, Eq. 1-5), by formula and by Monte Carlo.

The formula (:mod:`fixres_fast.geometry`) assumes what the paper assumes: a square image and a
square RoC (aspect 1), sigma^2 ~ U(area_range). The Monte Carlo estimate draws RoCs from the
samplers the loaders use, and computes r_test / r_train = s_test / s_train for each one
(:func:`~fixres_fast.geometry.apparent_size_ratio`). It is reported twice per sampler: under the
formula's assumptions, where it must agree with Eq. 5 within its standard error, and as trained
(the image size and aspect range given), where torchvision's rejection loop and non-square images
move it away from Eq. 5. Measured here (100,000 draws, geometry sampler): 0.809 +/- 0.001 under the
assumptions against 0.809 by Eq. 5; 0.762 for a square image with aspect 3/4-4/3, because
large areas with a non-square aspect do not fit and are redrawn.

Samplers: ``geometry`` (:func:`~fixres_fast.geometry.random_resized_crop`: the FFCV backend and the
torch backend on a GPU), ``torchvision`` (``RandomResizedCrop.get_params``: the torch backend on a
CPU; about 150 us a draw) and ``dali`` (``fn.random_crop_generator``, the RoC generator of the DALI
backend's ``decoders.image_random_crop``, given the same arguments; DALI is imported only then).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .. import geometry
from ..errors import UserError
from ..spec import AREA_RANGE, ASPECT_RANGE, RESIZE_RATIO, k_test_image
from .samplers import SAMPLERS, draw_rocs



@dataclass(frozen=True)
class ScaleConfig:
    k_train: int = 224
    k_test: int = 224
    resize_ratio: float = RESIZE_RATIO  # K_test^image / K_test
    area_range: tuple[float, float] = AREA_RANGE  # sigma^2 ~ U(area_range), fraction of the image area
    aspect_range: tuple[float, float] = ASPECT_RANGE  # as trained; the formula assumes aspect 1
    image_size: tuple[int, int] = (500, 500)  # (height, width) of the image the Monte Carlo crops, pixels
    samplers: tuple[str, ...] = ("geometry",)
    samples: int = 100_000  # Monte Carlo draws per sampler and setting
    seed: int = 0

    def __post_init__(self):
        if self.k_train <= 0 or self.k_test <= 0:
            raise UserError(f"resolutions must be positive numbers of pixels, got k_train={self.k_train}, "
                            f"k_test={self.k_test}")
        if not self.resize_ratio > 0:
            raise UserError(f"resize ratio K_test^image / K_test must be positive (e.g. 256/224), got {self.resize_ratio}")
        lo, hi = self.area_range
        if not 0 < lo <= hi <= 1:
            raise UserError(f"scale range must satisfy 0 < lo <= hi <= 1 (fractions of the image area, sigma^2), "
                            f"got {lo} {hi}; the paper's is 0.08 1")
        if not 0 < self.aspect_range[0] <= self.aspect_range[1]:
            raise UserError(f"aspect range must satisfy 0 < lo <= hi (width / height), got {self.aspect_range}")
        if min(self.image_size) < 1:
            raise UserError(f"image size must be positive (height width in pixels), got {self.image_size}")
        unknown = [s for s in self.samplers if s not in SAMPLERS]
        if unknown:
            raise UserError(f"unknown sampler {unknown[0]!r}; choose among {', '.join(SAMPLERS)}")
        if self.samples < 2:
            raise UserError(f"the Monte Carlo needs at least 2 samples, got {self.samples}")


def parse_ratio(text: str) -> float:
    """'256/224' or '1.142857' -> a float, with a message a user can act on for anything else."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise UserError(f"expected a ratio such as 256/224 or 1.1429, got {text!r}") from None


@dataclass(frozen=True)
class Estimate:
    sampler: str
    setting: str  # what was sampled, in words
    mean: float  # Monte Carlo estimate of E[r_test / r_train]
    stderr: float  # its standard error
    samples: int


@dataclass(frozen=True)
class ScaleReport:
    config: ScaleConfig
    f: float  # F of Eq. 5
    k_test_image: int  # K_test^image, pixels
    expected_ratio: float  # E[r_test / r_train], Eq. 5
    calibration_factor: float  # Sec. 4.1's alpha = 1 / E[r_test / r_train]
    k_test_calibrated: float  # the K_test at which E[r_test / r_train] = 1
    k_test_suggested: int  # that K_test, at a multiple of 32 (Appendix B)
    estimates: tuple[Estimate, ...]


def analyze_scale(cfg: ScaleConfig) -> ScaleReport:
    """Eq. 1-5 for ``cfg``, with a Monte Carlo estimate from each of ``cfg.samplers``."""
    args = (cfg.resize_ratio, cfg.area_range)
    side = max(cfg.image_size)
    estimates = []
    for sampler in cfg.samplers:
        estimates.append(monte_carlo(sampler, cfg, (side, side), (1.0, 1.0), "square image, aspect 1 (Eq. 5)"))
        setting = f"{cfg.image_size[0]}x{cfg.image_size[1]} image, aspect {cfg.aspect_range[0]:.3g}-{cfg.aspect_range[1]:.3g}"
        estimates.append(monte_carlo(sampler, cfg, cfg.image_size, cfg.aspect_range, setting))
    return ScaleReport(
        config=cfg, f=geometry.scale_factor_f(cfg.area_range), k_test_image=k_test_image(cfg.k_test, cfg.resize_ratio),
        expected_ratio=geometry.expected_apparent_size_ratio(cfg.k_train, cfg.k_test, *args),
        calibration_factor=geometry.calibration_factor(cfg.k_train, cfg.k_test, *args),
        k_test_calibrated=geometry.k_test_calibrated(cfg.k_train, *args),
        k_test_suggested=geometry.suggest_k_test(cfg.k_train, *args), estimates=tuple(estimates))


def monte_carlo(sampler: str, cfg: ScaleConfig, image_size, aspect_range, setting: str) -> Estimate:
    """E[r_test / r_train] over ``cfg.samples`` RoCs drawn by ``sampler`` in an image of ``image_size``."""
    height, width = image_size
    hw = draw_rocs(sampler, height, width, cfg.area_range, aspect_range, cfg.samples, cfg.seed)
    ratios = geometry.apparent_size_ratio(hw[:, 0], hw[:, 1], height, width, cfg.k_train,
                                          k_test_image(cfg.k_test, cfg.resize_ratio))
    return Estimate(sampler, setting, float(ratios.mean()), float(ratios.std(ddof=1) / np.sqrt(len(ratios))), len(ratios))


def report_lines(report: ScaleReport) -> list[str]:
    cfg = report.config
    lines = [f"K_train {cfg.k_train}, K_test {cfg.k_test}, K_test^image {report.k_test_image} "
             f"(resize ratio {cfg.resize_ratio:.4f}), sigma^2 ~ U({cfg.area_range[0]:g}, {cfg.area_range[1]:g})",
             f"F (Eq. 5)                        {report.f:.4f}",
             f"E[r_test / r_train] (Eq. 5)      {report.expected_ratio:.4f}",
             f"alpha = 1 / E (Sec. 4.1)         {report.calibration_factor:.4f}",
             f"K_test equalising apparent size  {report.k_test_calibrated:.1f} -> {report.k_test_suggested} "
             "(nearest multiple of 32, Appendix B)"]
    if report.estimates:
        lines.append("Monte Carlo E[r_test / r_train]:")
    for e in report.estimates:
        off = (e.mean - report.expected_ratio) / e.stderr
        lines.append(f"  {e.sampler:<11} {e.setting:<36} {e.mean:.4f} +/- {e.stderr:.4f} "
                     f"({e.samples} draws; {off:+.1f} s.e. from Eq. 5)")
    return lines
