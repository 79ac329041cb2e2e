"""sigma from the residuals of the weighted log-linear fit in bright tissue."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from t2starmap.noise.floor import MIN_ECHOES_FLOOR, Residuals
from t2starmap.noise.result import NoiseEstimate
from t2starmap.noise.samples import MIN_BACKGROUND, _all_positive, _brighter, _Sample

#: Residuals: voxels whose fitted signal at the last echo exceeds this many sigma count.
_RESIDUAL_SNR = 10.0
#: The residual floor (:mod:`t2starmap.noise.floor`) takes the echoes whose fitted signal
#: exceeds this many (residual) sigma: the magnitude is near Gaussian there, and body tissue
#: of R2* 100-400 1/s keeps few voxels at 10.
_FLOOR_SNR = 4.0
#: Echoes a voxel keeps above ``_FLOOR_SNR`` to join the floor (with ``MIN_ECHOES_FLOOR``
#: echoes or more): two degrees of freedom for the straight line in log S.
_MIN_KEPT = 6


def noise_from_residuals(
    magnitude: np.ndarray,
    echo_times: Sequence[float] | np.ndarray,
    *,
    mask: np.ndarray | None = None,
    max_voxels: int = 50_000,
    workers: int | None = 1,
) -> NoiseEstimate:
    """Noise SD from the residuals of the weighted log-linear fit (``wls``) in bright voxels.

    magnitude: (..., n_echoes), echoes last; echo_times: (n_echoes,) in s; mask: (...) bool,
    voxels that may be used (default: above the Otsu threshold of the first echo). At least 3
    echoes. Voxels whose fitted signal at the last echo exceeds ``_RESIDUAL_SNR`` sigma count
    (the magnitude is Gaussian with SD sigma there, whatever L); sigma^2 = median(SSR) /
    median(chi^2 with E - 2 degrees of freedom), refined twice. Model misfit (several
    compartments, fat) only adds, so this is an upper bound on real data. L is taken as 1.
    In bright voxels the S^2 weights are the inverse variances of log S, so ``wls`` is the
    least-squares fit to first order and costs no solver run: its residual sigma exceeds that
    of Levenberg-Marquardt by 0.05-0.15 % on the simulator and the bundled example, by 2.3 %
    on the GE kidney set, whose misfit it amplifies. Every ``k``-th usable voxel is fitted
    so that at most ``max_voxels`` are, in ``workers`` chunk workers (see
    :func:`t2starmap.fit.fit_t2star`).
    """
    return tissue_residuals(
        magnitude, echo_times, mask=mask, max_voxels=max_voxels, workers=workers
    )[0]


def tissue_residuals(
    magnitude: np.ndarray,
    echo_times: Sequence[float] | np.ndarray,
    *,
    mask: np.ndarray | None = None,
    max_voxels: int = 50_000,
    workers: int | None = 1,
    voxels: np.ndarray | None = None,
) -> tuple[NoiseEstimate, Residuals | None]:
    """(:func:`noise_from_residuals`, the residuals of its bright voxels for
    :func:`t2starmap.noise.floor.thermal_floor`: magnitude minus the ``wls`` model, its
    Jacobian model * (1, -TE), the model as the amplitude, in the voxels above
    ``_FLOOR_SNR``; None when refused). ``voxels``: the flattened indices to fit when already
    chosen (:func:`tissue_voxels` with the same ``mask`` and ``max_voxels``)."""
    from t2starmap.fit import Compute, fit_t2star

    data = np.asarray(magnitude)  # float64 only for the voxels fitted (a volume is large)
    te = np.asarray(echo_times, dtype=np.float64)
    n_echo = te.size
    if data.ndim < 1 or data.shape[-1] != n_echo:
        raise ValueError(f"magnitude has {data.shape[-1]} echoes but {n_echo} echo times")
    if n_echo < 3:
        return NoiseEstimate(None, 0, "residuals need at least 3 echoes"), None
    flat = data.reshape(-1, n_echo)
    index = tissue_voxels(flat, mask, max_voxels) if voxels is None else voxels
    if index.size < MIN_BACKGROUND:
        return NoiseEstimate(None, int(index.size), "too few voxels for the residuals"), None
    rows = flat[index].astype(np.float64)
    compute = Compute(dtype=torch.float64, workers=workers)
    result = fit_t2star(rows, te, method="wls", compute=compute)
    ok = ~result.failed.numpy()
    model = result.s0.numpy()[:, None] * np.exp(-te * result.r2star.numpy()[:, None])
    ssr = result.rmse.numpy() ** 2 * n_echo
    dof = n_echo - 2
    chi2_median = dof * (1.0 - 2.0 / (9.0 * dof)) ** 3  # Wilson-Hilferty
    sigma = math.sqrt(float(np.median(ssr[ok])) / chi2_median) if ok.any() else 0.0
    residuals = _floor_residuals(rows, model, ok & (model[:, 0] > _FLOOR_SNR * sigma), sigma, te)
    residuals = replace(residuals, index=index[residuals.index])
    bright = ok
    for _ in range(2):
        bright = ok & (model[:, -1] > _RESIDUAL_SNR * sigma)
        if bright.sum() < MIN_BACKGROUND:
            why = "too few bright voxels for residuals"
            return NoiseEstimate(None, int(bright.sum()), why), residuals
        sigma = math.sqrt(float(np.median(ssr[bright])) / chi2_median)
    if not sigma > 0:
        return NoiseEstimate(None, int(bright.sum()), "the fit leaves no residual"), None
    return NoiseEstimate(
        sigma,
        int(bright.sum()),
        "sigma from the fit residuals of bright voxels (an upper bound), coils assumed 1",
        coils=1.0,
        method="residuals",
    ), residuals


def _floor_residuals(
    rows: np.ndarray, model: np.ndarray, usable: np.ndarray, sigma: float, te: np.ndarray
) -> Residuals:
    """The :class:`Residuals` of the floor (its ``index`` into ``rows``): the ``usable``
    voxels whose fitted signal stays above ``_FLOOR_SNR`` sigma at every echo; with
    ``MIN_ECHOES_FLOOR`` echoes or more, also those that keep ``_MIN_KEPT`` echoes above it,
    on those echoes only (``kept``), refitted there (:func:`_loglinear_on`). Without them the
    floor sees only the tissue that stays bright to the last echo (on a SENSE R = 3 body
    simulation, one end of its R2* range, whose noise is not the rest's)."""
    above = model > _FLOOR_SNR * sigma
    if te.size < MIN_ECHOES_FLOOR:
        where = np.flatnonzero(usable & above.all(axis=1))
        kept = None
    else:
        where = np.flatnonzero(usable & (above.sum(axis=1) >= _MIN_KEPT))
        kept = above[where]
    fitted = model[where]
    if kept is not None and not kept.all():
        part = ~kept.all(axis=1)
        fitted[part] = _loglinear_on(rows[where][part], te, kept[part])
    else:
        kept = None
    jacobian = fitted[:, :, None] * np.stack([np.ones_like(te), -te], axis=1)[None]
    return Residuals(rows[where] - fitted, jacobian, fitted, where, kept)


def _loglinear_on(rows: np.ndarray, te: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The model S0 exp(-R2* TE) at every echo of the weighted log-linear fit (weights S^2,
    the inverse variances of log S) of each row (n, E) over its ``kept`` echoes (n, E)."""
    w = rows * rows * kept
    y = np.log(np.clip(rows, 1e-300, None))
    sw, sx, sxx = w.sum(axis=1), w @ te, w @ (te * te)
    sy, sxy = (w * y).sum(axis=1), (w * y) @ te
    det = np.clip(sw * sxx - sx * sx, 1e-300, None)
    slope = (sw * sxy - sx * sy) / det
    intercept = (sxx * sy - sx * sxy) / det
    return np.asarray(np.exp(intercept[:, None] + slope[:, None] * te[None, :]))


def tissue_voxels(flat: np.ndarray, mask: np.ndarray | None, max_voxels: int) -> np.ndarray:
    """Flat indices of the voxels to fit: every sample positive and finite, in ``mask`` or
    (default) above the Otsu threshold of the first echo; every k-th, at most
    ``max_voxels``."""
    usable = _all_positive(flat)
    if mask is None:
        first = _Sample.of(flat[usable, 0])
        if first.size < MIN_BACKGROUND:
            return np.zeros(0, dtype=np.int64)
        usable &= _brighter(flat[:, 0], first.log_otsu())
    else:
        usable &= np.asarray(mask, dtype=bool).reshape(-1)
    index = np.flatnonzero(usable)
    return index[:: max(1, -(-index.size // max_voxels))]
