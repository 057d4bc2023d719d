"""The supplement's parametric adaptation (Appendix A.1): equalise the pooled activations' distribution.

The components of the vector after global average pooling follow, zeros aside, a Fréchet (inverse
Weibull, GEV with xi > 0) law P(x; mu, sigma) = exp(-(1 + xi (x - mu) / sigma) ** (-1 / xi)), with
the shape xi kept at 0.3. ``mu`` and ``sigma`` are fitted by least squares to the empirical CDF,
zeros excluded (outliers). Fitting at K_train (reference) and at K_test gives the scalar map that
sends the K_test law onto the reference one, x -> mu_ref + sigma_ref / sigma_0 * (x - mu_0), applied
after pooling to the non-zero components. The paper found it "measurable but limited".
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import UserError

XI = 0.3  # the shape parameter, "kept constant at 0.3"
MAX_SAMPLES = 200_000  # values used for one fit (a random subset of the non-zero components)


def frechet_cdf(x, mu: float, sigma: float, xi: float = XI):
    """P(x; mu, sigma), 0 left of the support's edge mu - sigma / xi."""
    z = 1 + xi * (np.asarray(x, dtype=np.float64) - mu) / sigma
    return np.where(z > 0, np.exp(-np.clip(z, 1e-12, None) ** (-1 / xi)), 0.0)


def fit_frechet(values, xi: float = XI, seed: int = 0) -> tuple[float, float]:
    """(mu, sigma) minimising the squared distance between P and the empirical CDF of the non-zero ``values``."""
    from scipy.optimize import least_squares

    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[x != 0]
    if x.size < 10:
        raise UserError(f"a Fréchet fit needs at least 10 non-zero values, got {x.size}: the pooled activations "
                        "are (almost) all zero; use more images (--stats-images) or adapt with --method finetune")
    if x.size > MAX_SAMPLES:
        x = np.random.default_rng(seed).choice(x, MAX_SAMPLES, replace=False)
    x.sort()
    ecdf = (np.arange(x.size) + 0.5) / x.size
    median, spread = float(np.median(x)), float(np.subtract(*np.percentile(x, [75, 25]))) or 1.0
    # start at the law whose median and spread match the data's: median of P is mu + sigma (ln 2^-xi - 1) / xi
    sigma0 = spread / 1.5
    mu0 = median - sigma0 * (np.log(2) ** -xi - 1) / xi

    def residuals(p):
        return frechet_cdf(x, p[0], np.exp(p[1]), xi) - ecdf

    fit = least_squares(residuals, [mu0, np.log(sigma0)], method="lm")
    return float(fit.x[0]), float(np.exp(fit.x[1]))


def equalizer(reference: tuple[float, float], observed: tuple[float, float]) -> tuple[float, float]:
    """(scale, shift) of the affine map x -> scale * x + shift that sends the ``observed`` law (mu_0, sigma_0)
    onto the ``reference`` one (mu_ref, sigma_ref): with xi fixed, P(x; observed) = P(scale x + shift; reference)."""
    (mu_ref, sigma_ref), (mu_0, sigma_0) = reference, observed
    scale = sigma_ref / sigma_0
    return scale, mu_ref - scale * mu_0


def equalize(x: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """The map on the non-zero components; zeros stay zeros."""
    return torch.where(x != 0, x * scale + shift, x)


def attach(head: torch.nn.Module, scale: float, shift: float):
    """Apply :func:`equalize` to the input of ``head`` (the classifier, right after pooling); returns the hook handle."""
    return head.register_forward_pre_hook(lambda module, args: (equalize(args[0], scale, shift), *args[1:]))
