"""Apparent object size (Sec. 3.1, Eq. 1-5): the formula pinned to the paper, the samplers to the formula."""
import math
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.integrate import quad

from fixres_fast import geometry
from fixres_fast.analysis.scale import ScaleConfig, analyze_scale, monte_carlo, parse_ratio
from fixres_fast.cli import main
from fixres_fast.errors import UserError

from .conftest import each

PAPER_SIGMA = (0.28, 1.0)  # Sec. 3.1: [sigma_-, sigma_+]; sigma^2 is the area fraction
PAPER_AREA = (PAPER_SIGMA[0] ** 2, PAPER_SIGMA[1] ** 2)
DRAWS = {"geometry": 50_000, "dali": 50_000, "torchvision": 3_000}  # torchvision's get_params is slow


def test_eq5_reproduces_the_papers_080():
    assert geometry.scale_factor_f(PAPER_AREA) == pytest.approx(2 / 3 * (1 - 0.28 ** 3) / (1 - 0.28 ** 2))
    assert geometry.expected_apparent_size_ratio(224, 224, 256 / 224, PAPER_AREA) == pytest.approx(0.80, abs=0.01)
    assert geometry.expected_apparent_size_ratio(224, 224) == pytest.approx(0.8094, abs=1e-4)  # spec's (0.08, 1)


def test_f_is_the_mean_side_scale_when_the_area_is_uniform():
    lo, hi = PAPER_SIGMA
    density = lambda s: 2 * s / (hi ** 2 - lo ** 2)  # noqa: E731 - sigma^2 ~ U(lo^2, hi^2)
    assert quad(lambda s: s * density(s), lo, hi)[0] == pytest.approx(geometry.scale_factor_f(PAPER_AREA))
    assert geometry.scale_factor_f((0.25, 0.25)) == pytest.approx(0.5)  # a fixed area: sigma itself


def test_calibration_follows_sec_4_1_and_appendix_b():
    assert geometry.calibration_factor(224, 224, 256 / 224, PAPER_AREA) == pytest.approx(1.25, abs=0.02)
    k = geometry.k_test_calibrated(224)
    assert geometry.expected_apparent_size_ratio(224, 224) * k / 224 == pytest.approx(1, abs=0.01)
    assert geometry.suggest_k_test(224) == 288 and geometry.suggest_k_test(224) % 32 == 0


def test_eq4_for_one_box_of_a_square_image():
    # sigma = 0.5: r_test / r_train = 0.5 * 256 / 224
    assert geometry.apparent_size_ratio(250, 250, 500, 500, 224, 256) == pytest.approx(0.5 * 256 / 224)


@pytest.mark.parametrize("sampler", each(("geometry", "torchvision", "dali")))
def test_monte_carlo_agrees_with_eq5_under_its_assumptions(sampler):
    cfg = ScaleConfig(samples=DRAWS[sampler])
    est = monte_carlo(sampler, cfg, (500, 500), (1.0, 1.0), "square")
    assert abs(est.mean - geometry.expected_apparent_size_ratio(224, 224)) < 3 * est.stderr
    assert 0 < est.stderr < 0.01


@pytest.mark.parametrize("sampler", each(("torchvision", "dali")))
def test_backends_draw_the_same_law_as_geometry_as_trained(sampler):
    cfg = ScaleConfig(samples=DRAWS[sampler])
    ours = monte_carlo("geometry", ScaleConfig(), (375, 500), cfg.aspect_range, "as trained")
    theirs = monte_carlo(sampler, cfg, (375, 500), cfg.aspect_range, "as trained")
    assert abs(ours.mean - theirs.mean) < 4 * math.hypot(ours.stderr, theirs.stderr)


def test_rejected_draws_make_objects_look_larger_in_training_than_eq5_says():
    report = analyze_scale(ScaleConfig(samples=20_000))
    square, as_trained = report.estimates
    assert as_trained.mean < report.expected_ratio - 10 * as_trained.stderr  # large non-square areas are redrawn
    assert abs(square.mean - report.expected_ratio) < 3 * square.stderr


@pytest.mark.parametrize("area", [(0.0, 1.0), (0.08, 1.2), (0.9, 0.5), (-0.1, 0.5)])
def test_a_scale_range_outside_0_1_is_refused(area):
    with pytest.raises(UserError, match="0 < lo <= hi <= 1"):
        ScaleConfig(area_range=area)


@pytest.mark.parametrize("bad", [dict(k_train=-224), dict(k_test=0), dict(samplers=("opencv",)), dict(samples=1),
                                 dict(aspect_range=(2.0, 1.0)), dict(resize_ratio=0.0)])
def test_other_bad_arguments_are_refused(bad):
    with pytest.raises(UserError):
        ScaleConfig(**bad)


def test_ratio_parsing():
    assert parse_ratio("256/224") == pytest.approx(256 / 224) and parse_ratio("1.25") == 1.25
    for text in ("abc", "1/0", ""):
        with pytest.raises(UserError, match="expected a ratio"):
            parse_ratio(text)


def test_cli_prints_eq5_and_the_suggested_k_test():
    res = CliRunner().invoke(main, ["analyze", "scale", "--samples", "2000"])
    assert res.exit_code == 0, res.output
    assert "0.8094" in res.output and "-> 288" in res.output and "geometry" in res.output


def test_cli_bad_scale_is_a_one_line_error():
    proc = subprocess.run([sys.executable, "-m", "fixres_fast.cli", "analyze", "scale", "--scale", "0.5", "1.5"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "0 < lo <= hi <= 1" in proc.stderr


def test_monte_carlo_is_reproducible():
    a = monte_carlo("geometry", ScaleConfig(samples=500, seed=3), (400, 300), (0.75, 4 / 3), "x")
    b = monte_carlo("geometry", ScaleConfig(samples=500, seed=3), (400, 300), (0.75, 4 / 3), "x")
    assert a == b and np.isfinite(a.mean)
