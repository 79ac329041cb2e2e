"""The thermal noise in tissue: the part of a residual's variance that does not decay with the
signal.

A fit's residual in bright tissue carries the thermal noise and more: model misfit (fat, two
pools), motion and ghosts of the object that change from echo to echo (respiration). All of
that more is a share of the signal, so it decays with it, echo by echo; the thermal noise
does not. So, from residuals whose model is linear to first order (:class:`Residuals`: each
residual, the Jacobian of its model, the signal level at each echo):

1. each residual is scaled by 1 / sqrt(1 - h) (h its leverage, the hat matrix's diagonal):
   under noise alone it then has the variance sigma^2 at every echo, whatever the fit took;
2. a voxel whose residual sum of squares exceeds the upper ``_TRIM_P`` point of chi-square
   (its E - p degrees of freedom) times a first estimate is left out (gross misfit), twice;
3. per echo, the robust variance v_k of the scaled residuals over the kept voxels (the MAD),
   those that kept every echo where enough did (a magnitude fit keeps, per voxel, the echoes
   whose signal stays Gaussian: ``Residuals.kept``; one trend needs the same voxels at every
   echo);
4. with ``MIN_ECHOES_FLOOR`` echoes or more, v_k = sigma^2 + c m_k (m_k the mean squared
   signal at echo k, c >= 0) fitted by least squares: sigma^2 is the intercept, the part
   that does not decay (held within [0, mean v_k]); with fewer, the pooled median over the
   voxels (misfit is not told from noise then: an upper bound).

Each voxel's own intercept (the same fit over the echoes it kept, against its own signal's
square) is unbiased where the excess there decays as that signal does: smoothed over the
image, it gives the noise map of parallel imaging (:mod:`t2starmap.noise.spatial`).

Pure numpy, no I/O.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from t2starmap.noise.samples import _MAD_TO_SD

#: The floor is an extrapolation to no signal from the echoes' mean squared signal (its
#: intercept); where the least of it over the train is above this share of the greatest
#: (the signal's power falls by less than 5 x), what decays with the signal cannot be told
#: from what does not, whichever the residual, and the estimate carries a caveat
#: (:func:`t2starmap.noise.thermal._floor_caveat`). The decayed tail's premise fails there
#: too (:func:`t2starmap.noise.tail.decayed_tail`). The body
#: simulator (every effect, TE 4.6-55 ms) and the GE kidney: 0.02-0.04 across the complex
#: model, 0.05-0.09 from the magnitude; echoes 0.7-8.3 ms (S0 2000, ghosts): 0.26-0.41,
#: with phase the across-model sigma 1.8-15 x the truth.
LEAST_POWER = 0.2

#: Echoes from which the decaying part is fitted and taken out (below: the pooled median).
MIN_ECHOES_FLOOR = 6
#: A voxel whose residual sum of squares lies above this upper point of its chi-square (times
#: the current sigma^2) is gross misfit and left out.
_TRIM_P = 1e-3
#: Leverages above this are left out (a residual with no freedom left says nothing).
_MAX_LEVERAGE = 0.98


@dataclass(frozen=True)
class Residuals:
    """Residuals of a fit linear to first order in its parameters, voxel by voxel.

    residual: (n, E) each echo's residual (the imaginary part across a complex model, or
    magnitude minus model); design: (n, E, p) the model's Jacobian at the solution (its
    columns as the fit saw them); amplitude: (n, E) the signal level at each echo (the
    decaying part scales with its square); index: (n,) where each voxel lies in the flattened
    image (for the noise map); kept: (n, E) bool, the echoes each voxel's fit used (None:
    all; a magnitude fit leaves out the echoes its signal no longer keeps Gaussian)."""

    residual: np.ndarray
    design: np.ndarray
    amplitude: np.ndarray
    index: np.ndarray
    kept: np.ndarray | None = None


@dataclass(frozen=True)
class Floor:
    """What :func:`thermal_floor` found. sigma: the thermal noise SD (None when refused, with
    ``reason``); pooled: the median-based SD over the kept voxels (noise and what decays);
    decaying: the share of the mean residual variance that decays with the signal; per_echo:
    (E,) the robust SD of each echo's scaled residuals; n_voxels: voxels kept; voxel_variance:
    (n_kept,) each kept voxel's own intercept (unbiased, noisy); index: (n_kept,) their
    flattened positions; dof: E - p; least_power: the least mean squared signal of the
    echoes over the greatest (how far the intercept is extrapolated; 0 where unknown)."""

    sigma: float | None
    pooled: float
    decaying: float
    per_echo: np.ndarray
    n_voxels: int
    voxel_variance: np.ndarray
    index: np.ndarray
    dof: int
    reason: str = ""
    least_power: float = 0.0


def leverage(design: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(h, ok): the hat matrix diagonal of each voxel's least-squares design (n, E, p) as
    (n, E), and the voxels whose normal matrix is well conditioned (n,) bool."""
    gram = np.swapaxes(design, 1, 2) @ design  # batched matmul: 3x faster than einsum
    scale = np.sqrt(np.einsum("npp->np", gram)).clip(1e-300)
    unit = gram / scale[:, :, None] / scale[:, None, :]
    ok = np.linalg.det(unit) > 1e-10  # unit diagonal: the determinant is 1 at best
    unit[~ok] = np.eye(design.shape[2])
    inverse = np.linalg.inv(unit) / scale[:, :, None] / scale[:, None, :]
    h = np.sum((design @ inverse) * design, axis=2)
    return h, ok & np.all(np.isfinite(h), axis=1)


def thermal_floor(residuals: Residuals, min_voxels: int) -> Floor:
    """The thermal noise SD from ``residuals`` (module docstring); refused (sigma None) with
    fewer than ``min_voxels`` usable voxels or no degree of freedom. Echoes a voxel's fit
    left out (``kept``) count nowhere: its degrees of freedom are its kept echoes less p, an
    echo's variance is taken over the voxels that kept it (refused below ``min_voxels``)."""
    n_echo, n_params = residuals.residual.shape[1], residuals.design.shape[2]
    empty = np.zeros(0)
    if n_echo - n_params < 1:
        return Floor(None, 0.0, 0.0, empty, 0, empty, empty.astype(int), n_echo - n_params,
                     "no freedom")  # fmt: skip
    kept = np.ones(residuals.residual.shape, bool) if residuals.kept is None else residuals.kept
    r = np.where(kept, residuals.residual, 0.0)
    h, ok = leverage(np.where(kept[:, :, None], residuals.design, 0.0))
    dofs = kept.sum(axis=1) - n_params
    ok &= np.all(h < _MAX_LEVERAGE, axis=1) & np.all(np.isfinite(r), axis=1) & (dofs >= 1)
    scaled = r[ok] / np.sqrt(1.0 - h[ok])
    amplitude, index, kept, dofs = residuals.amplitude[ok], residuals.index[ok], kept[ok], dofs[ok]
    dof = int(dofs.max()) if dofs.size else n_echo - n_params
    if scaled.shape[0] < min_voxels:
        why = f"too few voxels for the residual floor ({scaled.shape[0]} < {min_voxels})"
        return Floor(None, 0.0, 0.0, empty, scaled.shape[0], empty, empty.astype(int), dof, why)
    ssr = np.einsum("ne,ne->n", r[ok], r[ok])
    # one trend over the echoes needs the same voxels at every echo (those that kept them
    # all, where enough did), each voxel's own intercept (the map) only its own echoes
    full = kept.all(axis=1)
    full = full if int(full.sum()) >= min_voxels else np.ones(full.size, dtype=bool)
    trend, pooled2 = _trimmed(ssr[full], dofs[full], min_voxels)
    trend = np.flatnonzero(full)[trend]
    keep = _trimmed(ssr, dofs, min_voxels)[0]
    scaled_t, amplitude_t, kept_t = scaled[trend], amplitude[trend], kept[trend]
    scaled, amplitude, index, kept = scaled[keep], amplitude[keep], index[keep], kept[keep]
    per_echo, power, counts = _per_echo(scaled_t, amplitude_t, kept_t, min_voxels)
    measured = np.isfinite(per_echo)
    total = float(np.mean(per_echo[measured] ** 2))
    weights = _intercept_weights(power[measured], per_echo[measured] ** 2, counts[measured])
    if weights is None:
        sigma2 = pooled2
        voxel = np.sum(scaled * scaled, axis=1) / np.maximum(kept.sum(axis=1), 1)
    else:
        sigma2 = float(np.clip(weights @ per_echo[measured] ** 2, 0.0, total))
        # the pooled fit's echo weights: an echo whose variance the ghosts of that echo
        # raised for every voxel alike counts as little in each voxel's own fit
        echo_weights = np.where(measured, counts / np.clip(per_echo**2, 1e-3 * total, None) ** 2, 0)
        voxel = _voxel_intercepts(scaled * scaled, amplitude * amplitude, kept * echo_weights)
    return Floor(
        math.sqrt(sigma2) if sigma2 > 0 else None,
        math.sqrt(pooled2),
        max(0.0, 1.0 - sigma2 / total) if total > 0 else 0.0,
        per_echo,
        int(trend.size),
        voxel,
        index,
        dof,
        "" if sigma2 > 0 else "the residuals leave no part that does not decay",
        least_power(power[measured]),
    )


def least_power(power: np.ndarray) -> float:
    """The least of the echoes' mean squared signal ``power`` over the greatest (0 where
    none is positive)."""
    top = float(np.max(power)) if power.size else 0.0
    return float(np.min(power)) / top if top > 0 else 0.0


def _trimmed(ssr: np.ndarray, dofs: np.ndarray, min_voxels: int) -> tuple[np.ndarray, float]:
    """(voxels kept, pooled sigma^2): twice, the voxels whose residual sum of squares ``ssr``
    (n,) lies above the upper ``_TRIM_P`` point of chi-square with their ``dofs`` (n,) times
    the pooled sigma^2 (the median of ssr over its chi-square median) are left out; all are
    kept when fewer than ``min_voxels`` would remain."""
    unique, inverse = np.unique(dofs, return_inverse=True)
    median = np.array([_chi2_median(int(d)) for d in unique])[inverse]
    upper = np.array([_chi2_upper(int(d), _TRIM_P) for d in unique])[inverse]
    unit = ssr / median
    keep = np.ones(ssr.size, dtype=bool)
    for _ in range(2):
        keep = ssr <= upper * float(np.median(unit[keep]))
    if int(keep.sum()) < min_voxels:
        keep = np.ones(ssr.size, dtype=bool)
    return keep, float(np.median(unit[keep]))


def _per_echo(
    scaled: np.ndarray, amplitude: np.ndarray, kept: np.ndarray, min_voxels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(robust SD of each echo's scaled residuals, mean squared signal, voxels) over the
    voxels that kept the echo, (E,) each; SD and power NaN where fewer than ``min_voxels``
    kept it."""
    counts = kept.sum(axis=0)
    if bool(kept.all()):
        centre = np.median(scaled, axis=0)
        sd = _MAD_TO_SD * np.median(np.abs(scaled - centre), axis=0)
        return sd, np.mean(amplitude * amplitude, axis=0), counts
    sd, power = np.full(counts.size, np.nan), np.full(counts.size, np.nan)
    for k in np.flatnonzero(counts >= min_voxels):
        values = scaled[kept[:, k], k]
        sd[k] = _MAD_TO_SD * float(np.median(np.abs(values - np.median(values))))
        power[k] = float(np.mean(amplitude[kept[:, k], k] ** 2))
    return sd, power, counts


def _intercept_weights(
    power: np.ndarray, variance: np.ndarray, counts: np.ndarray | None = None
) -> np.ndarray | None:
    """The weights w (E,) with w @ v = the intercept a of v_k = a + c m_k fitted by least
    squares, m_k = ``power`` (mean squared signal per echo), each echo weighted by the inverse
    square of its measured variance (the spread of a variance estimate grows with it).
    Reweighting by the fitted variance is unstable where the excess does not follow m_k (an
    early echo's phase error on the GE kidney set): it oscillates, or, held above the least
    measured variance, gives sigma 16.7 where the late echoes' variance is flat at 36^2 and
    a fit with 26-28 is unbiased against the complex reference; the measured weights give
    27.7 there. None with fewer than ``MIN_ECHOES_FLOOR`` echoes, a
    signal that does not change, or a slope c <= 0 (nothing decays: the pooled median is the
    estimate)."""
    if power.size < MIN_ECHOES_FLOOR or not np.ptp(power) > 0:
        return None
    m = power / power.max()
    design = np.stack([np.ones_like(m), m], axis=1)
    w = 1.0 / np.clip(variance, 1e-3 * float(np.mean(variance)), None) ** 2
    if counts is not None:  # a variance over fewer voxels spreads more
        w = w * counts / float(np.max(counts))
    normal = design.T @ (design * w[:, None])
    solve = np.linalg.solve(normal, (design * w[:, None]).T)  # (2, E)
    if not float(solve[1] @ variance) > 0:
        return None
    return np.asarray(solve[0])


def _voxel_intercepts(
    squares: np.ndarray, power: np.ndarray, echo_weights: np.ndarray | None = None
) -> np.ndarray:
    """Each voxel's intercept a_v of squares_vk = a_v + c_v power_vk by least squares over
    its echoes (n,): its own signal's decay, which the ghosts of tissue like it share.
    ``echo_weights`` (E,): each echo's weight (default equal). Ghosts drawn anew at each
    echo raise that echo's variance in every voxel at once: unweighted, the error they leave
    in the intercepts is common to all voxels and survives the smoothing (the map of a body
    simulator with ghosts alone came out 1.13-1.19 x the truth on seeds 6-11; weighted as the
    pooled fit weights its echoes, 0.96-1.11 on seeds 0-11)."""
    m = power / np.clip(power.max(axis=1, keepdims=True), 1e-300, None)
    w = np.ones(m.shape) if echo_weights is None else np.broadcast_to(echo_weights, m.shape)
    w = w / np.clip(w.mean(axis=1, keepdims=True), 1e-300, None)
    s1, sm, smm = w.sum(axis=1), (m * w).sum(axis=1), (m * m * w).sum(axis=1)
    sy, smy = (squares * w).sum(axis=1), (m * squares * w).sum(axis=1)
    det = s1 * smm - sm * sm
    ok = det > 1e-6 * s1 * smm
    intercept = (smm * sy - sm * smy) / np.where(ok, det, 1.0)
    return np.asarray(np.where(ok, intercept, sy / np.clip(s1, 1e-300, None)))


def _chi2_median(dof: int) -> float:
    return _chi2_upper(dof, 0.5)


@functools.cache
def _chi2_upper(dof: int, p: float) -> float:
    """Cached: each is 200 bisection steps of torch's incomplete gamma (2-5 ms)."""
    from t2starmap.fit.stats import chi2_upper

    return chi2_upper(dof, p)
