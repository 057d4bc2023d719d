"""The supplement's Fréchet model of pooled activations (Appendix A.1): the fit and the equalisation."""
import numpy as np
import pytest
import torch
from scipy.stats import genextreme

from fixres_fast.frechet import XI, equalize, equalizer, fit_frechet, frechet_cdf


def frechet_samples(mu, sigma, n=40_000, zeros=0.2, seed=0):
    """Fréchet (GEV with shape xi = 0.3; scipy's c = -xi) samples, plus a share of exact zeros (ReLU'd pools)."""
    x = genextreme.rvs(c=-XI, loc=mu, scale=sigma, size=n, random_state=seed)
    return np.concatenate([x, np.zeros(int(zeros * n))])


def test_cdf_is_the_papers_formula():
    x, mu, sigma = 1.3, 0.5, 0.4
    assert frechet_cdf(x, mu, sigma) == pytest.approx(np.exp(-(1 + XI / sigma * (x - mu)) ** (-1 / XI)))
    assert frechet_cdf(mu - sigma / XI - 0.1, mu, sigma) == 0.0  # left of the support
    assert frechet_cdf(x, mu, sigma) == pytest.approx(genextreme.cdf(x, c=-XI, loc=mu, scale=sigma))


@pytest.mark.parametrize("mu, sigma", [(0.5, 0.2), (2.0, 1.5), (-1.0, 0.1)])
def test_fit_recovers_the_parameters_with_zeros_excluded(mu, sigma):
    fit_mu, fit_sigma = fit_frechet(frechet_samples(mu, sigma))
    assert fit_mu == pytest.approx(mu, abs=0.03 * sigma)
    assert fit_sigma == pytest.approx(sigma, rel=0.03)


def test_equalizer_maps_one_law_onto_the_other_and_keeps_zeros():
    reference, observed = (0.5, 0.2), (1.1, 0.35)
    scale, shift = equalizer(reference, observed)
    x = torch.from_numpy(frechet_samples(*observed, seed=1)).float()
    y = equalize(x, scale, shift)
    assert torch.equal(y[x == 0], x[x == 0])
    assert fit_frechet(y.numpy()) == pytest.approx(reference, rel=0.05)
    with pytest.raises(ValueError, match="at least 10 non-zero"):
        fit_frechet(np.zeros(100))


def test_too_few_values_for_a_fit_is_a_user_error():
    from fixres_fast.errors import UserError

    with pytest.raises(UserError, match="at least 10 non-zero values, got 0"):
        fit_frechet(np.zeros(100))
