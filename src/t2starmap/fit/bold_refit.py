"""The refit of decay fits that did not converge: a bounded 1-D profile search over R2*.

Pure numpy: no I/O, no logging. Rows are voxels, columns echoes; ``tau`` the decay times of
the model's columns (TE for a magnitude, 2 TE for a squared magnitude), in s; rates in 1/s.

The model is p exp(-tau R2*) against data z. For a given R2* the best amplitude p has a closed
form (Gaussian least squares), or, for the noise-aware fit whose weights 1 / (L s^2 + p
exp(-tau R2*)) depend on p, is the fixed point of a few weighted least-squares steps (the
iteratively reweighted fit the Levenberg-Marquardt solver does). So the cost is a function of
R2* alone, its profile, and a 2-D fit that creeps along a flat valley (one informative echo
for two unknowns) becomes a 1-D search that always ends:

1. the profile on a geometric grid of :data:`GRID` rates spanning the reported range
   [1/T2STAR_MAX, 1/T2STAR_MIN] (a grid, not a local search: robust to a poor start and to
   several minima);
2. golden-section search in log R2* on the two grid intervals around the grid's minimum, to a
   relative width of :data:`TOL` (converged by construction: the bracket always shrinks).

A grid minimum on an end of the range is a bound hit (``at_low`` / ``at_high``; the refined
minimum then lies within one grid step of the bound, where the profile is flat to rounding):
the data say only that R2* is at most / at least about that (the signal flat, or gone before
the second echo can see it); the caller flags it as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from t2starmap.fit.limits import T2STAR_MAX, T2STAR_MIN
from t2starmap.fit.status import MISFIT_P

#: Rates on the grid of the first pass (ratio 1.075 between neighbours over the range).
GRID = 96
#: Relative width of the final bracket in R2*.
TOL = 1e-7
#: Weighted least-squares steps for the noise-aware amplitude at one rate.
INNER = 12
#: Golden ratio conjugate.
_PHI = (np.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True)
class Profile:
    """The minimum of the profile, each (n,): ``amplitude`` p and ``r2star`` (1/s) there,
    ``cost`` (the weighted sum of squared residuals), ``at_low`` / ``at_high`` bool: the
    minimum is on the lower / upper end of the range searched."""

    amplitude: np.ndarray
    r2star: np.ndarray
    cost: np.ndarray
    at_low: np.ndarray
    at_high: np.ndarray


def _amplitude_cost(
    z: np.ndarray, tau: np.ndarray, r2: np.ndarray, noise_var: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(p, cost) at rates ``r2`` (n,): p the best amplitude, cost the weighted sum of squares
    (weights 1, or 1 / (noise_var + max(p, 0) f) at the fixed point)."""
    f = np.exp(-np.outer(r2, tau))
    ff = np.einsum("ne,ne->n", f, f)
    p = np.einsum("ne,ne->n", f, z) / np.maximum(ff, 1e-300)
    if noise_var is None:
        r = f * p[:, None] - z
        return p, np.einsum("ne,ne->n", r, r)
    nv = noise_var[:, None]
    for _ in range(INNER):
        wf = f / (nv + f * np.maximum(p, 0.0)[:, None])
        p = np.einsum("ne,ne->n", wf, z) / np.maximum(np.einsum("ne,ne->n", wf, f), 1e-300)
    w = 1.0 / (nv + f * np.maximum(p, 0.0)[:, None])
    r = f * p[:, None] - z
    return p, np.einsum("ne,ne->n", w * r, r)


def profile_search(z: np.ndarray, tau: np.ndarray, noise_var: np.ndarray | None = None) -> Profile:
    """The minimum over R2* in [1/T2STAR_MAX, 1/T2STAR_MIN] of the profile cost of each row
    of ``z`` (n, E) against p exp(-``tau`` R2*); ``noise_var`` (n,): L s^2 of the noise-aware
    weights (None: Gaussian least squares)."""
    z = np.asarray(z, dtype=np.float64)
    tau = np.asarray(tau, dtype=np.float64)
    n = z.shape[0]
    lo_rate, hi_rate = 1.0 / T2STAR_MAX, 1.0 / T2STAR_MIN
    grid = np.geomspace(lo_rate, hi_rate, GRID)
    costs = np.empty((n, GRID))
    for j, rate in enumerate(grid):
        costs[:, j] = _amplitude_cost(z, tau, np.full(n, rate), noise_var)[1]
    costs = np.nan_to_num(costs, nan=np.inf)
    best = np.argmin(costs, axis=1)
    a = np.log(grid[np.maximum(best - 1, 0)])
    b = np.log(grid[np.minimum(best + 1, GRID - 1)])
    r2, p, cost = _golden(z, tau, noise_var, a, b)
    return Profile(p, r2, cost, best == 0, best == GRID - 1)


def _golden(
    z: np.ndarray, tau: np.ndarray, noise_var: np.ndarray | None, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Golden-section search of the profile in log R2* on [a, b] (n,) to a relative width of
    :data:`TOL`; the bracket's ends are candidates too (a minimum on a bound). (R2*, p, cost)."""

    def at(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _amplitude_cost(z, tau, np.exp(x), noise_var)

    width = float(np.max(b - a, initial=0.0))
    steps = int(np.ceil(np.log(TOL / max(width, TOL)) / np.log(_PHI)))
    c, d = b - _PHI * (b - a), a + _PHI * (b - a)
    fc, fd = at(c)[1], at(d)[1]
    for _ in range(steps):  # one new point a step: the other inner point is kept
        left = fc <= fd  # the minimum lies in [a, d]: d moves to c, a new c
        a, b = np.where(left, a, c), np.where(left, d, b)
        c, d = np.where(left, b - _PHI * (b - a), d), np.where(left, c, a + _PHI * (b - a))
        fx = at(np.where(left, c, d))[1]
        fc, fd = np.where(left, fx, fd), np.where(left, fc, fx)
    candidates = np.stack([a, 0.5 * (a + b), b])
    found = [at(x) for x in candidates]
    pick = np.argmin(np.stack([np.nan_to_num(cst, nan=np.inf) for _, cst in found]), axis=0)
    rows = np.arange(a.size)
    x = candidates[pick, rows]
    p = np.stack([amp for amp, _ in found])[pick, rows]
    cost = np.stack([cst for _, cst in found])[pick, rows]
    return np.exp(x), p, cost


def second_moment_errors(
    prof: Profile, tau: np.ndarray, sigma: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(SE of S0, SE of R2*, misfit) of one sample at a noise-aware profile minimum (p = S0^2,
    ``tau`` = 2 TE): the generalised least-squares covariance 4 s^2 (J^T W J)^-1 of (p, R2*)
    as the Levenberg-Marquardt fit forms it, inflated by sqrt(reduced chi-square) where it
    exceeds 1; misfit (bool) where the reduced chi-square cost / (4 s^2) / (E - 2) exceeds
    its upper ``MISFIT_P`` point (never with two echoes)."""
    from t2starmap.fit.stats import chi2_upper  # loads torch: only the solver's fits get here

    p = np.maximum(prof.amplitude, 0.0)
    f = np.exp(-np.outer(prof.r2star, tau))
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), p.shape)
    wff = f * f / ((sig * sig)[:, None] + f * p[:, None])
    a11, a12, a22 = wff.sum(1), -p * (wff * tau).sum(1), p * p * (wff * tau * tau).sum(1)
    det = a11 * a22 - a12 * a12
    dof = tau.size - 2
    with np.errstate(divide="ignore", invalid="ignore"):
        reduced = prof.cost / (4.0 * sig * sig) / max(dof, 1)
        scale = 4.0 * sig * sig * np.maximum(reduced if dof > 0 else 1.0, 1.0)
        var_p = np.where(det > 0, scale * a22 / det, 0.0)
        var_r2 = np.where(det > 0, scale * a11 / det, 0.0)
        s0_se = np.nan_to_num(np.sqrt(var_p) / (2.0 * np.sqrt(p)), nan=0.0, posinf=0.0)
    misfit = (reduced > chi2_upper(dof, MISFIT_P) / dof) if dof > 0 else np.zeros(p.size, bool)
    return s0_se, np.nan_to_num(np.sqrt(var_r2)), misfit
