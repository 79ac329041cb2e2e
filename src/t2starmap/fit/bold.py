"""T2* and S0 of multi-echo BOLD: the decay fits of tedana's ``t2smap``, and a noise-aware one.

Pure: arrays in, arrays out; no I/O, no logging. Voxels on the first axis, echoes on the last
(ascending), echo times in seconds, T2* in s, R2* in 1/s.

Every fit works on per-voxel temporal moments (:class:`EchoMoments`), never on the echo x time
samples themselves: least squares over all samples of a voxel equals least squares on the
echoes' temporal means with weight T (the model does not depend on time), so

* ``loglin`` (tedana's): ordinary least squares of log(|S| + 1) against -TE over all samples
  = the straight line through the temporal means of log(|S| + 1);
* ``curvefit`` (tedana's): S0 exp(-TE/T2*) by least squares over all samples = the Gaussian
  Levenberg-Marquardt fit of the temporal means (:func:`gaussian_fit`: the torch solver,
  :func:`t2starmap.fit.fit_t2star`, or on the CPU its numpy engine,
  :mod:`t2starmap.fit.decay_cpu`, which spares the torch import); its covariance is
  curve_fit's, s^2 (J^T J)^-1 over all samples, s^2 the residual variance over all samples
  (the part across time included);
* ``nlls`` (ours): the noise-aware fit of the temporal mean of M^2 (whose expectation is
  S0^2 exp(-2 TE R2*) + 2 sigma^2 at any SNR) over ALL echoes, sigma the thermal noise
  (:func:`temporal_noise`), so that echoes on the noise floor inform the fit instead of biasing
  it; its standard errors are those of the mean of T volumes.

A voxel is fitted from its first ``used`` echoes (:func:`t2starmap.fit.adaptive_mask.echoes_used`
for tedana's fits; all echoes for ``nlls``). ``fitmode ts`` fits each volume: moments of one
volume (:func:`volume_moments`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from t2starmap.fit.bold_refit import Profile, profile_search, second_moment_errors
from t2starmap.fit.bold_sigma import voxel_noise
from t2starmap.fit.limits import T2STAR_MAX, T2STAR_MIN
from t2starmap.fit.status import Failure

if TYPE_CHECKING:
    from t2starmap.fit import dispatch

FIT_TYPES = ("loglin", "curvefit", "nlls")
#: Failure bits that make a curvefit voxel a failure in tedana's sense (its fit map).
FAILED_BITS = int(Failure.NOT_CONVERGED | Failure.BAD_INPUT | Failure.S0_NONPOSITIVE)


@dataclass(frozen=True)
class EchoMoments:
    """Temporal moments of each voxel and echo, (V, E) float64 unless said: ``mean``;
    ``log_mean``: mean of log(|S| + 1); ``sq_dev``, ``log_sq_dev``: sums of squared deviations
    from those means; ``mean_square``: mean of S^2; ``diff_var``: half the mean squared
    volume-to-volume difference (the noise variance, slow drifts removed; NaN for one volume);
    ``bad`` bool: a NaN or non-positive sample; ``n_volumes``: T."""

    mean: np.ndarray
    log_mean: np.ndarray
    sq_dev: np.ndarray
    log_sq_dev: np.ndarray
    mean_square: np.ndarray
    diff_var: np.ndarray
    bad: np.ndarray
    n_volumes: int


#: Voxel rows whose moments are formed at a time: bounds the (rows, T) temporaries.
ROWS = 1 << 14


def _one_block(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """The moments of one block of an echo's (n, T) samples (see :class:`EchoMoments`)."""
    mean = x.mean(axis=1, dtype=np.float64)
    logs = np.log1p(np.abs(x, dtype=np.float32))
    log_mean = logs.mean(axis=1, dtype=np.float64)
    logs -= log_mean[:, None].astype(np.float32)
    log_sq_dev = np.square(logs).sum(axis=1, dtype=np.float64)
    dev = x - mean[:, None].astype(np.float32)
    sq_dev = np.square(dev).sum(axis=1, dtype=np.float64)
    mean_square = np.square(x, dtype=np.float32).mean(axis=1, dtype=np.float64)
    if x.shape[1] > 1:
        diff_var = np.square(np.diff(x, axis=1)).mean(axis=1, dtype=np.float64) / 2.0
    else:
        diff_var = np.full(x.shape[0], np.nan)
    bad = np.isnan(x).any(axis=1) | (x <= 0).any(axis=1)
    return mean, log_mean, sq_dev, log_sq_dev, mean_square, diff_var, bad


def _one_echo(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """The moments of one echo's (V, T) samples, :data:`ROWS` voxels at a time."""
    blocks = [_one_block(x[a : a + ROWS]) for a in range(0, max(x.shape[0], 1), ROWS)]
    return tuple(np.concatenate([b[i] for b in blocks]) for i in range(7))


def echo_moments(echoes: Sequence[np.ndarray], volumes: np.ndarray | None = None) -> EchoMoments:
    """Moments over time of each echo's (V, T) samples; ``volumes``: bool (T,), the volumes to
    use (None: all)."""
    parts = []
    for x in echoes:
        parts.append(_one_echo(x if volumes is None else x[:, volumes]))
    mean, log_mean, sq_dev, log_sq_dev, mean_square, diff_var, bad = (
        np.stack([p[i] for p in parts], axis=1) for i in range(7)
    )
    n = echoes[0].shape[1] if volumes is None else int(np.count_nonzero(volumes))
    return EchoMoments(mean, log_mean, sq_dev, log_sq_dev, mean_square, diff_var, bad, n)


def echo_means(
    echoes: Sequence[np.ndarray], volumes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, bad) of :func:`echo_moments` alone, (V, E) each: what the adaptive mask needs
    (``fitmode ts`` fits the volumes, not the moments)."""
    mean = np.zeros((echoes[0].shape[0], len(echoes)))
    bad = np.zeros(mean.shape, dtype=bool)
    for k, x in enumerate(echoes):
        for a in range(0, x.shape[0], ROWS):
            block = x[a : a + ROWS] if volumes is None else x[a : a + ROWS, volumes]
            mean[a : a + ROWS, k] = block.mean(axis=1, dtype=np.float64)
            bad[a : a + ROWS, k] = np.isnan(block).any(axis=1) | (block <= 0).any(axis=1)
    return mean, bad


def volume_moments(echoes: Sequence[np.ndarray], start: int, stop: int) -> EchoMoments:
    """Moments of single volumes ``start:stop`` as (V * (stop - start), E) float32 rows,
    volume-minor (row v * n + t): the moments ``fitmode ts`` fits (the sums of squared
    deviations 0 and the volume-to-volume differences NaN, as views)."""
    mean = np.stack([x[:, start:stop].reshape(-1) for x in echoes], axis=1)
    return EchoMoments(
        mean=mean,
        log_mean=np.log1p(np.abs(mean)),
        sq_dev=np.broadcast_to(np.float32(0.0), mean.shape),
        log_sq_dev=np.broadcast_to(np.float32(0.0), mean.shape),
        mean_square=mean * mean,
        diff_var=np.broadcast_to(np.float32(np.nan), mean.shape),
        bad=np.isnan(mean) | (mean <= 0),
        n_volumes=1,
    )


@dataclass(frozen=True)
class DecayFit:
    """One decay fit, each (V,) float64: ``t2star`` (s, as fitted: may be <= 0 or inf for
    loglin), ``s0``; the variances and covariance of (T2*, S0) (s^2, S0 units^2, s x S0 units;
    0 where unknown); ``reason``: uint8 :class:`~t2starmap.fit.status.Failure` bits;
    ``failed``: bool, the fit failed (tedana's decayFitFailures; False for loglin)."""

    t2star: np.ndarray
    s0: np.ndarray
    t2star_var: np.ndarray
    s0_var: np.ndarray
    covar: np.ndarray
    reason: np.ndarray
    failed: np.ndarray


def _groups(used: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(echo count, voxel indices) for every count >= 2 present."""
    return [(int(k), np.flatnonzero(used == k)) for k in np.unique(used) if k >= 2]


def _rate_bits(r2: np.ndarray) -> np.ndarray:
    """R2STAR_LOW / R2STAR_HIGH where a rate lies outside the reported range."""
    low = ~(r2 >= 1.0 / T2STAR_MAX)
    high = r2 > 1.0 / T2STAR_MIN
    return (low * int(Failure.R2STAR_LOW) + high * int(Failure.R2STAR_HIGH)).astype(np.uint8)


def empty_result(n: int, covariance: bool = True) -> dict[str, np.ndarray]:
    """The result arrays of a fit of n voxels; without ``covariance`` its three arrays are
    read-only zeros (views: ``fitmode ts`` fits a million rows at a time)."""
    z = {k: np.zeros(n) for k in ("t2star", "s0")}
    for k in ("t2star_var", "s0_var", "covar"):
        z[k] = np.zeros(n) if covariance else np.broadcast_to(0.0, (n,))
    return {**z, "reason": np.zeros(n, np.uint8), "failed": np.zeros(n, bool)}


def store_fit(
    out: dict[str, np.ndarray],
    sel: np.ndarray,
    fit: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    reason: np.ndarray,
    failed_bits: int = FAILED_BITS,
) -> None:
    """Store a fit of the voxels ``sel``, ``fit`` = (S0, R2*, their standard errors, no
    covariance), with its Failure bits ``reason``, and which of them failed (any of
    ``failed_bits``), into ``out``."""
    s0, r2, s0_se, r2_se = fit
    store_t2star(out, sel, s0, r2, (s0_se**2, r2_se**2, np.zeros_like(s0)))
    out["reason"][sel] = reason
    out["failed"][sel] = (out["reason"][sel] & failed_bits) != 0


def store_t2star(out: dict[str, np.ndarray], sel: np.ndarray, s0: np.ndarray, r2: np.ndarray,
               cov: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> None:  # fmt: skip
    """Store (S0, R2*) and their covariance (var S0, var R2*, cov; None: left 0) as (T2*, S0):
    T2* = 1/R2*, var T2* = var R2* / R2*^4, cov(T2*, S0) = -cov / R2*^2 (the delta method;
    exact for the linearised covariance)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t2 = 1.0 / r2
        out["t2star"][sel] = t2
        out["s0"][sel] = s0
        if cov is None:
            return
        var_s0, var_r2, cov_sr = cov
        out["t2star_var"][sel] = np.nan_to_num(var_r2 * t2**4, nan=0.0, posinf=0.0)
        out["s0_var"][sel] = np.nan_to_num(var_s0, nan=0.0, posinf=0.0)
        out["covar"][sel] = np.nan_to_num(-cov_sr * t2 * t2, nan=0.0, posinf=0.0, neginf=0.0)


def _inverse2(a11: np.ndarray, a12: np.ndarray, a22: np.ndarray, scale: np.ndarray) -> tuple[
    np.ndarray, np.ndarray, np.ndarray
]:  # fmt: skip
    """scale x inverse of [[a11, a12], [a12, a22]]: (first, second, off-diagonal); 0 where
    singular."""
    det = a11 * a22 - a12 * a12
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(det > 0, scale / det, 0.0)
    return np.nan_to_num(a22 * f), np.nan_to_num(a11 * f), np.nan_to_num(-a12 * f)


def fit_loglin(
    m: EchoMoments, te: np.ndarray, used: np.ndarray, *, covariance: bool = True
) -> DecayFit:
    """tedana's ``loglin``: OLS of log(|S| + 1) on (1, -TE) over the first ``used`` echoes of
    all samples (its pseudo-inverse applied to the temporal means of the logs). Its covariance
    (unless ``covariance`` is False: zeros): s^2 (X^T X)^-1, s^2 the residual variance of the
    logs over all samples."""
    out = empty_result(used.size, covariance)
    n_t = m.n_volumes
    for k, sel in _groups(used):
        tk = te[:k]
        x = np.stack([np.ones(k), -tk], axis=1)
        y = m.log_mean[sel, :k]
        beta = np.linalg.pinv(x) @ y.T  # (2, n)
        s0 = np.exp(beta[0])
        cov = None
        if covariance:
            resid = y - (x @ beta).T
            ssr = n_t * np.square(resid).sum(axis=1) + m.log_sq_dev[sel, :k].sum(axis=1)
            dof = k * n_t - 2
            s2 = ssr / dof if dof > 0 else np.zeros_like(ssr)
            xtx = n_t * (x.T @ x)
            full = [np.full(sel.size, v) for v in (xtx[0, 0], xtx[0, 1], xtx[1, 1])]
            var_a, var_b, cov_ab = _inverse2(full[0], full[1], full[2], s2)
            cov = (s0 * s0 * var_a, var_b, s0 * cov_ab)
        store_t2star(out, sel, s0, beta[1], cov)
        out["reason"][sel] = _rate_bits(beta[1])
    return DecayFit(**out)


@dataclass(frozen=True)
class Compute:
    """Where the Levenberg-Marquardt fits run: ``device`` ("auto", "cpu", "cuda") and chunk
    ``workers`` (None: the CPUs available); ``engine`` of the Gaussian (``curvefit``) fit:
    "auto" runs it in numpy (:mod:`t2starmap.fit.decay_cpu`, no torch import) when ``device``
    is "cpu" (the caller resolves "auto" to "cpu" where no GPU can be seen), "torch" always
    in the torch solver (``--fitmode ts``: millions of fits in chunk workers), "numpy" always
    in numpy (the tests that hold the engines to each other). Torch-free, so
    that the workflow makes it without loading torch; :meth:`torch` is the solver's own
    :class:`t2starmap.fit.dispatch.Compute`."""

    device: str = "auto"
    workers: int | None = None
    engine: str = "auto"

    @property
    def numpy_engine(self) -> bool:
        """The Gaussian fit runs in numpy: on the CPU, unless the torch engine is asked for."""
        return self.engine == "numpy" or (self.engine == "auto" and self.device == "cpu")

    def torch(self) -> dispatch.Compute:
        from t2starmap.fit.dispatch import Compute as TorchCompute

        return TorchCompute(device=self.device, workers=self.workers)


def gaussian_fit(
    mean: np.ndarray, te: np.ndarray, how: Compute
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S0, R2* float64, Failure bits) of the Gaussian decay fit of ``mean`` (n, E), by the
    engine ``how`` names (the same algorithm: :mod:`t2starmap.fit.decay_cpu`)."""
    if how.numpy_engine:
        from t2starmap.fit.decay_cpu import fit_gaussian

        fit = fit_gaussian(mean.astype(np.float32), te)
        return fit.s0.astype(np.float64), fit.r2star.astype(np.float64), fit.reason
    from t2starmap.fit.magnitude import fit_t2star

    res = fit_t2star(mean.astype(np.float32), te, method="nlls-gaussian", compute=how.torch())
    s0 = res.s0.cpu().numpy().astype(np.float64)
    return s0, res.r2star.cpu().numpy().astype(np.float64), res.reason.cpu().numpy()


def _decay_normal(s0: np.ndarray, r2: np.ndarray, tk: np.ndarray) -> tuple[np.ndarray, ...]:
    """J^T J of S0 exp(-TE R2*) over the echoes ``tk`` at (S0, R2*), and the model (n, k)."""
    e = np.exp(-np.outer(r2, tk))
    ee = e * e
    a11 = ee.sum(axis=1)
    a12 = -s0 * (ee * tk).sum(axis=1)
    a22 = s0 * s0 * (ee * tk * tk).sum(axis=1)
    return a11, a12, a22, s0[:, None] * e


def fit_curvefit(
    m: EchoMoments, te: np.ndarray, used: np.ndarray, how: Compute, *, covariance: bool = True
) -> DecayFit:
    """tedana's ``curvefit``: least squares of S0 exp(-TE R2*) over the first ``used`` echoes of
    all samples, by the project's Levenberg-Marquardt fit of the temporal means
    (:func:`gaussian_fit`: in numpy on the CPU, else in torch). Its
    covariance (unless ``covariance`` is False: zeros) is curve_fit's: s^2 (J^T J)^-1 over
    all samples, s^2 = SSR / (k T - 2)."""
    out = empty_result(used.size, covariance)
    n_t = m.n_volumes
    for k, sel in _groups(used):
        tk = te[:k]
        s0, r2, reason = gaussian_fit(m.mean[sel, :k], tk, how)
        redo = _unconverged(reason)
        if redo.any():
            prof = profile_search(m.mean[sel[redo], :k], tk)
            s0[redo], r2[redo] = prof.amplitude, prof.r2star
            reason[redo] = _refit_bits(prof)
        cov = None
        if covariance:
            a11, a12, a22, model = _decay_normal(s0, r2, tk)
            ssr = n_t * np.square(m.mean[sel, :k] - model).sum(axis=1) + m.sq_dev[sel, :k].sum(1)
            dof = k * n_t - 2
            s2 = ssr / (n_t * dof) if dof > 0 else np.zeros_like(ssr)
            cov = _inverse2(a11, a12, a22, s2)
        store_t2star(out, sel, s0, r2, cov)
        out["reason"][sel] = reason
        out["failed"][sel] = (out["reason"][sel] & FAILED_BITS) != 0
    return DecayFit(**out)


def _unconverged(reason: np.ndarray) -> np.ndarray:
    """The voxels to refit: the first fit did not converge, the input is usable."""
    return np.asarray(
        ((reason & int(Failure.NOT_CONVERGED)) != 0) & ((reason & int(Failure.BAD_INPUT)) == 0)
    )


def _refit_bits(prof: Profile, misfit: np.ndarray | None = None) -> np.ndarray:
    """The Failure bits of refitted voxels: REFITTED, R2STAR_LOW / R2STAR_HIGH where the
    minimum is on an end of the range, S0_NONPOSITIVE, MISFIT where given."""
    bits = np.full(prof.r2star.shape, int(Failure.REFITTED), dtype=np.uint8)
    bits |= prof.at_low * np.uint8(Failure.R2STAR_LOW)
    bits |= prof.at_high * np.uint8(Failure.R2STAR_HIGH)
    bits |= (prof.amplitude <= 0) * np.uint8(Failure.S0_NONPOSITIVE)
    if misfit is not None:
        bits |= misfit * np.uint8(Failure.MISFIT)
    return bits


def fit_nlls(m: EchoMoments, te: np.ndarray, inside: np.ndarray, sigma: float | np.ndarray,
             how: Compute) -> DecayFit:  # fmt: skip
    """Ours: the noise-aware (Rician) fit of the temporal mean of M^2 over all echoes, in the
    voxels ``inside`` (V,) bool, ``sigma`` the thermal noise of one sample, one for the run
    or one per voxel (V,) (see the module and :mod:`t2starmap.fit.bold_sigma`).
    Standard errors: the fit's for one sample over sqrt(T)."""
    from t2starmap.fit.bold_nlls import fit_second_moment

    out = empty_result(inside.size)
    sel = np.flatnonzero(inside)
    one = np.ndim(sigma) == 0  # one sigma: the fit's figures as they were before per-voxel
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), inside.shape)[sel]
    rms = np.sqrt(m.mean_square[sel]).astype(np.float32)
    res = fit_second_moment(rms, te, float(sigma) if one else sig, how.torch())
    s0 = res.s0.cpu().numpy().astype(np.float64)
    r2 = res.r2star.cpu().numpy().astype(np.float64)
    root_t = np.sqrt(m.n_volumes)
    r2_se = res.r2star_se.cpu().numpy().astype(np.float64) / root_t
    s0_se = res.s0_se.cpu().numpy().astype(np.float64) / root_t
    reason = res.reason.cpu().numpy()
    redo = _unconverged(reason)
    if redo.any():
        var = sig[redo] ** 2
        z = m.mean_square[sel[redo]] - 2.0 * var[:, None]
        prof = profile_search(z, 2.0 * te, var)
        s0[redo], r2[redo] = np.sqrt(np.maximum(prof.amplitude, 0.0)), prof.r2star
        s0_se[redo], r2_se[redo], misfit = second_moment_errors(prof, 2.0 * te, sig[redo])
        s0_se[redo] /= root_t
        r2_se[redo] /= root_t
        reason[redo] = _refit_bits(prof, misfit)
    store_fit(out, sel, (s0, r2, s0_se, r2_se), reason)
    return DecayFit(**out)


def temporal_noise(m: EchoMoments, inside: np.ndarray) -> float:
    """The thermal noise sigma of one sample, from the last echo (the least signal, so the
    least physiological noise, which grows with the signal): per voxel the half mean squared
    volume-to-volume difference (slow drifts removed) over the Rician variance factor its
    mean / sd ratio implies (0.43 on the noise floor, 1 at high SNR); the median over the
    voxels ``inside``. NaN with one volume."""
    per_voxel = voxel_noise(m.mean[inside, -1], m.diff_var[inside, -1])
    per_voxel = per_voxel[np.isfinite(per_voxel) & (per_voxel > 0)]
    return float(np.median(per_voxel)) if per_voxel.size else float("nan")
