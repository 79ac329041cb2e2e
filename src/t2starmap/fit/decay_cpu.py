"""The Gaussian mono-exponential fit S0 exp(-TE R2*) on the CPU without torch: the second
engine of one algorithm.

Pure numpy: no I/O, no logging, no torch. Rows are voxels, columns echoes (ascending), echo
times in s, R2* in 1/s.

Why two engines. ``t2starmap t2smap --fittype curvefit`` fits one decay per voxel (19 k
voxels on the small run of ``benchmarks/bench_t2smap.py``): a few milliseconds of arithmetic.
The torch solver (:func:`t2starmap.fit.fit_t2star` with ``method="nlls-gaussian"``) needs
``import torch`` first, about 1.1 s on these machines, against a budget of 0.65 s for the whole
command (30x faster than tedana's). So on the CPU this module runs the same fit in numpy, and
torch stays where it earns its import: a CUDA device, ``--fitmode ts`` (millions of fits in
chunk workers), ``nlls`` and the complex fit. Which one runs is decided in
:func:`t2starmap.fit.bold.fit_curvefit` (:meth:`t2starmap.fit.bold.Compute.numpy_engine`).

One algorithm, step for step, in float32: the kernel ``_kernel_gaussian`` of
:mod:`t2starmap.fit.magnitude` (the usable test and the units of each voxel's largest sample of
``prepare``; the ``wls`` start of :func:`t2starmap.fit.starts.loglinear`), the Levenberg-Marquardt
loop of :mod:`t2starmap.fit.solver` on :class:`t2starmap.fit.models.Exponential` (its bounds,
tolerance, damping, iteration cap and rounding-level test, read from
:mod:`t2starmap.fit.lm_policy`, the one place they are set), and the Failure bits of
:func:`t2starmap.fit.result.derive` (no noise level: no misfit test).
``tests/fit/test_decay_cpu.py`` holds the two engines to each other: T2* and S0 within 1e-4
(median relative; about 1e-7 measured), the same Failure bits voxel for voxel on the synthetic
run and tedana's test data. Bit-identical they are not (numpy's and torch's exp differ in the
last place): a voxel still creeping at the iteration cap may stop on either side of the
tolerance (6 of 6000 adversarial fast decays). Where the torch solver's numbers change, change
them in :mod:`t2starmap.fit.lm_policy`; where its steps change, change them here too.

Why not numpy for ``--fitmode ts`` as well: one thread of it fits 1 M decays in 0.83 s of CPU,
the torch solver's two one-thread chunk workers in 0.89 s, so on two idle cores torch takes
half the wall time there, and its import is a small part of a run of millions of fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from t2starmap.fit import lm_policy as policy
from t2starmap.fit.limits import T2STAR_MAX, T2STAR_MIN, check_echo_times
from t2starmap.fit.status import Failure

_F = np.float32
_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class GaussianFit:
    """What the fit gives, each (n,): ``s0`` (signal units, >= 0, 0 where not usable),
    ``r2star`` (1/s, clamped to [1/T2STAR_MAX, 1/T2STAR_MIN], 0 where not usable) float32,
    ``reason`` uint8 Failure bits (as :attr:`t2starmap.fit.FitResult.reason`)."""

    s0: np.ndarray
    r2star: np.ndarray
    reason: np.ndarray


def fit_gaussian(signal: np.ndarray, echo_times: np.ndarray) -> GaussianFit:
    """Least squares of S0 exp(-TE R2*) to each row of ``signal`` (n, E), echo times (E,) in
    s, ascending; what ``fit_t2star(signal, te, method="nlls-gaussian")`` gives on the CPU."""
    te = check_echo_times(echo_times).astype(_F)
    if np.any(np.diff(te) < 0):
        raise ValueError("echo times must be ascending")
    y = np.ascontiguousarray(np.asarray(signal, dtype=_F).T)  # (E, n), a copy worked in
    yn, usable, scale = _prepare(y, bool(np.unique(te).size == te.size), te)
    s0n, r2 = _loglinear(yn, te)
    point, converged = _levenberg_marquardt(yn, te, np.stack([s0n, r2]))
    return _derive(point[0], point[1], scale, usable, converged)


def _prepare(y: np.ndarray, distinct: bool, te: np.ndarray) -> tuple[np.ndarray, ...]:
    """(yn, usable, scale) of ``magnitude.prepare`` with no noise floor: non-finite samples
    set to 0; usable (float 0/1): all finite, none negative, two positive at different echo
    times; scale: the largest |sample|."""
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.isfinite(y.sum(0)).astype(_F)
    if not ok.min(initial=1.0) > 0:
        np.nan_to_num(y, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    high, low = y.max(0, initial=-np.inf), y.min(0, initial=np.inf)
    if low.min(initial=1.0) > 0:
        usable = ok
    else:
        positive = y > 0
        if distinct:
            enough = positive.sum(0) > 1.5
        else:
            big = float(np.finfo(_F).max)
            t = te[:, None]
            enough = np.where(positive, t, big).min(0) < np.where(positive, t, -big).max(0)
        usable = ok * (low >= 0) * enough
    scale = np.maximum(np.maximum(high, -low), _F(_TINY))
    y /= scale
    return y, usable.astype(_F), scale


def _loglinear(yn: np.ndarray, te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`t2starmap.fit.starts.loglinear` with the ``wls`` weights S^2: (S0, R2*)."""
    w = np.maximum(yn, _F(0.0))
    w *= w
    te_mean = te.mean(dtype=_F)
    x = te - te_mean
    sw = w.sum(0)
    sx = x @ w
    sxx = (x * x) @ w
    wz = np.log(np.maximum(yn, _F(_TINY))) * w
    sz = wz.sum(0)
    sxz = x @ wz
    det = sw * sxx - sx * sx
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        slope = (sw * sxz - sx * sz) * ((det > 0) / np.maximum(det, _F(_TINY))).astype(_F)
        intercept = (sz - slope * sx) / np.maximum(sw, _F(_TINY))
        log_s0 = np.minimum(intercept - slope * te_mean, _F(80.0))
        return np.exp(log_s0), -slope


#: Rows of the state: the point, J^T J (a11, a12, a22), J^T r (g1, g2), the cost.
_P, _R2, _A11, _A12, _A22, _G1, _G2, _COST = range(8)


def _evaluate(yn: np.ndarray, neg_tau: np.ndarray, point: np.ndarray) -> np.ndarray:
    """The state (8, n) at ``point`` (2, n) of :meth:`t2starmap.fit.models.Exponential
    .evaluate` for the Gaussian fit (z = yn, w = 1)."""
    p, r2 = point[0], point[1]
    with np.errstate(over="ignore", invalid="ignore"):
        f = np.exp(neg_tau * r2)
        r = f * p - yn  # model - data
        state = np.empty((8, p.size), dtype=_F)
        state[:2] = point
        moment = f * f
        state[_A11] = moment.sum(0)
        moment *= neg_tau
        state[_A12] = p * moment.sum(0)
        moment *= neg_tau
        state[_A22] = p * p * moment.sum(0)
        f *= r
        state[_G1] = f.sum(0)
        f *= neg_tau
        state[_G2] = p * f.sum(0)
        r *= r
        state[_COST] = r.sum(0)
    return state


def _step(state: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """The damped Gauss-Newton step of :func:`t2starmap.fit.solver._step` for one 2 x 2 block,
    (2, n); 0 where singular or not finite."""
    damp = lam + _F(1.0)
    m00, m01, m11 = state[_A11] * damp, state[_A12], state[_A22] * damp
    g0, g1 = state[_G1], state[_G2]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        det = m00 * m11 - m01 * m01
        inv = (det > 0).astype(_F) / np.maximum(det, _F(_TINY))
        step: np.ndarray = np.stack([m01 * g1 - m11 * g0, m01 * g0 - m00 * g1]) * inv
    np.nan_to_num(step, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return step


def _levenberg_marquardt(
    yn: np.ndarray, te: np.ndarray, start: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`t2starmap.fit.solver.levenberg_marquardt` on the Gaussian decay: (point (2, n),
    converged (n,) bool)."""
    neg_tau = -te[:, None]
    low = np.array([[-policy.AMPLITUDE_MAX], [0.0]], dtype=_F)
    high = np.array([[policy.AMPLITUDE_MAX], [policy.R2_MAX]], dtype=_F)
    floor = np.array([[1e-12], [1.0]], dtype=_F)
    point = np.clip(np.nan_to_num(start, nan=0.0, posinf=0.0, neginf=0.0), low, high)
    state = _evaluate(yn, neg_tau, point.astype(_F))
    lam = np.full(state.shape[1], policy.LAMBDA_START, dtype=_F)
    converged = np.zeros(state.shape[1], dtype=bool)
    for _ in range(policy.MAGNITUDE_MAX_ITER):
        here = state[:2]
        point = np.clip(here + _step(state, lam), low, high)
        scale = np.maximum(np.abs(here), floor)
        done = (np.abs(point - here) / scale).max(0) < policy.TOL
        done &= ~converged
        here[:, done] = point[:, done]
        converged |= done
        if converged.all():
            break
        trial = _evaluate(yn, neg_tau, point)
        better = (trial[_COST] < state[_COST]) & ~converged
        state[:, better] = trial[:, better]
        lam *= np.where(better, _F(10.0) - _F(9.9), _F(10.0))
        np.clip(lam, _F(policy.LAMBDA_MIN), _F(policy.LAMBDA_MAX), out=lam)
    else:
        energy = (yn * yn).sum(0)
        converged |= state[_COST] < policy.ROUNDING * energy
    return state[:2], converged


def _derive(
    s0n: np.ndarray, r2: np.ndarray, scale: np.ndarray, usable: np.ndarray, converged: np.ndarray
) -> GaussianFit:
    """:func:`t2starmap.fit.result.derive` of S0, R2* and the Failure bits (no noise level)."""
    ok = usable > 0
    with np.errstate(invalid="ignore"):
        bits = (r2 < 1.0 / T2STAR_MAX) * int(Failure.R2STAR_LOW)
        bits |= (r2 > 1.0 / T2STAR_MIN) * int(Failure.R2STAR_HIGH)
        fit_ok = np.isfinite(s0n) & np.isfinite(r2) & converged
        bits |= ~fit_ok * int(Failure.NOT_CONVERGED)
        bits |= (s0n <= 0) * int(Failure.S0_NONPOSITIVE)
    reason = np.where(ok, bits, int(Failure.BAD_INPUT)).astype(np.uint8)
    rate = np.clip(np.nan_to_num(r2, nan=0.0, posinf=0.0, neginf=0.0), 1.0 / T2STAR_MAX,
                   1.0 / T2STAR_MIN).astype(_F)  # fmt: skip
    with np.errstate(invalid="ignore", over="ignore"):
        s0 = np.nan_to_num(s0n * scale, nan=0.0, posinf=0.0, neginf=0.0)
    return GaussianFit(np.maximum(s0, _F(0.0)) * ok, rate * ok, reason)
