"""Quantiles of the null distributions the fits test against (chi-square, F): bisection on
torch's incomplete gamma function, and on the incomplete beta function's continued fraction,
which torch lacks. Importing this module loads no torch; the chi-square quantile loads it on
first use."""

from __future__ import annotations

import math


def chi2_upper(dof: int, p: float) -> float:
    """The upper-p quantile of chi-square with ``dof`` degrees of freedom: x with
    Q(dof/2, x/2) = p, Q the regularised upper incomplete gamma function (bisection)."""
    lo, hi = 0.0, float(dof) + 60.0 * math.sqrt(2.0 * dof) + 100.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if gamma_upper(0.5 * dof, 0.5 * mid) > p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def gamma_upper(a: float, x: float) -> float:
    """Q(a, x) = Gamma(a, x) / Gamma(a), the regularised upper incomplete gamma function
    (torch's, in float64)."""
    if x <= 0.0:
        return 1.0
    import torch

    value = torch.special.gammaincc(
        torch.tensor(a, dtype=torch.float64), torch.tensor(x, dtype=torch.float64)
    )
    return float(value)


def f_upper(dof: int, p: float) -> float:
    """The upper-p quantile of F(dof, dof): F = x / (1 - x) where the regularised incomplete
    beta function I_x(dof/2, dof/2) = 1 - p (bisection on x)."""
    half = 0.5 * dof
    lo, hi = 0.5, 1.0  # F >= 1 for p < 0.5
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if 1.0 - beta_regularised(mid, half, half) > p:
            lo = mid
        else:
            hi = mid
    x = 0.5 * (lo + hi)
    return x / (1.0 - x)


def beta_regularised(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (modified Lentz), x in (0, 1)."""
    if x >= (a + 1.0) / (a + b + 2.0):
        return 1.0 - beta_regularised(1.0 - x, b, a)
    log_front = a * math.log(x) + b * math.log1p(-x) - math.log(a) - _log_beta(a, b)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
